import os

import pytest
import torch

# The suite runs on a 2-core machine; tiny models are fastest single-threaded and tests
# running side by side must not fight over cores. WPAT_TEST_THREADS and WPAT_TEST_SEED run the
# suite under another thread count and another seed of its trained fixtures: no assertion may
# depend on the last bits of floating point, so the suite must pass under every combination.
THREADS = int(os.environ.get("WPAT_TEST_THREADS", "1"))
SEED = int(os.environ.get("WPAT_TEST_SEED", "0"))
torch.set_num_threads(THREADS)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)


def fashion_mnist_available() -> bool:
    return os.path.isdir(FASHION_MNIST_DIR)
