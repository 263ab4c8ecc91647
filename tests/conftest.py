import os

import pytest
import torch

# The suite runs on a 2-core machine; tiny models are fastest single-threaded and tests
# running side by side must not fight over cores.
torch.set_num_threads(1)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def fashion_mnist_available() -> bool:
    return os.path.isdir(FASHION_MNIST_DIR)
