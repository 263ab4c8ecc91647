"""Progress in logs: without a terminal, plain lines at a steady pace instead of a bar."""

import io
import re

import pytest

from conftest import SEED, fashion_mnist_available
from wpat.progress import Progress


def test_plain_lines_every_tenth_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress("epoch 1/3", 200, images_per_unit=128, stream=stream, interval=3600)
    for _ in range(200):
        progress.advance()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # one per tenth, none more often
    assert re.fullmatch(r"epoch 1/3: 20/200 steps \(10%\), \d+ img/s, ETA \d+:\d\d:\d\d", lines[0])
    assert lines[-1].startswith("epoch 1/3: 200/200 steps (100%)")


def test_a_line_at_least_every_interval_and_none_when_disabled():
    stream = io.StringIO()
    progress = Progress("best PGD-20", 10_000, unit="img", stream=stream, interval=0.0)
    progress.advance(1)
    progress.advance(1)
    assert len(stream.getvalue().splitlines()) == 2  # the interval passed: a line each time
    quiet = io.StringIO()
    off = Progress("x", 10, stream=quiet, enabled=False)
    for _ in range(10):
        off.advance()
    assert quiet.getvalue() == ""


def test_resumed_epoch_starts_from_its_step():
    stream = io.StringIO()
    progress = Progress("epoch 2/3", 100, initial=50, stream=stream, interval=3600)
    for _ in range(50):
        progress.advance()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("epoch 2/3: 60/100") and len(lines) == 5


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
def test_training_into_a_log_prints_progress_lines(tmp_path, capsys):
    from wpat.cli import main

    code = main(["train", "fmnist-smallcnn-linf", "model.small_cnn.width=4", "data.train_subset=640",
                 "data.test_subset=32", "data.batch_size=64", "eval.n_train=32", "attack.steps=1",
                 "eval.steps=1", "schedule.epochs=1", "perturb.rwp.steps=1", f"run.seed={SEED}",
                 f"run.out_dir={tmp_path}", "run.name=log"])
    err = capsys.readouterr().err  # captured: not a terminal, as under nohup
    assert code == 0
    steps = [line for line in err.splitlines() if line.startswith("epoch 1/1: ")]
    assert len(steps) == 10 and "10/10 steps (100%)" in steps[-1]
    assert "epoch   1" in err  # the per-epoch summary line
