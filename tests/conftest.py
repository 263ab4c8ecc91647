import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


def train_tiny_run(out_dir):
    """A real run directory written by the training loop: 2 tiny epochs on 256 Fashion-MNIST
    images (a few seconds; for tests that need a run, not a model that learned much)."""
    from pathlib import Path

    from wpat.configuration.config import load_config
    from wpat.training.loop import train

    cfg = load_config(None, [f"run.out_dir={out_dir}", "run.name=tiny", "run.progress=false",
                             "model.small_cnn.width=4", "data.train_subset=256", "data.test_subset=32",
                             "data.batch_size=64", "schedule.epochs=2", "attack.steps=1", "eval.steps=2",
                             "eval.n_train=32", f"run.seed={SEED}"])
    return Path(train(cfg)["run_dir"])


def crashing_at_call(step_fn, n):
    """``step_fn`` that raises KeyboardInterrupt (a kill) on its n-th call."""
    calls = {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return step_fn(*args, **kwargs)

    return crash


class BNNet(nn.Module):
    """A conv + BatchNorm + linear network small enough for renditions of one training step;
    ``last_scale`` multiplies the initial linear weights (sharper logits, larger losses)."""

    def __init__(self, last_scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.linear = nn.Linear(6, 10)
        with torch.no_grad():
            self.linear.weight.mul_(last_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
