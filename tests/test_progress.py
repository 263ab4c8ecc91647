"""Progress in logs: without a terminal, plain lines at a steady pace instead of a bar, with the
whole run's remaining time next to the epoch's."""

import io
import re

import pytest

from conftest import SEED, fashion_mnist_available
from wpat.helpers.progress import Progress


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


# ---------------------------------------------------------------------- the whole run's ETA


def test_the_line_adds_the_whole_runs_remaining_time():
    from wpat.helpers.progress import After

    stream = io.StringIO()
    # 100 steps now, 200 steps in later epochs at the same pace, 30 s of evaluations measured
    progress = Progress("epoch 1/3", 100, stream=stream, interval=3600, after=After(units=200, seconds=30.0))
    for _ in range(50):
        progress.advance()
    line = progress.line(progress.started + 50.0)  # 1 step/s so far
    assert line.endswith("ETA 0:00:50, run ETA 0:04:40")  # 50 + 200 steps at 1/s + 30 s
    unsure = Progress("epoch 1/3", 100, stream=stream, after=After(units=200, lower_bound=True))
    unsure.advance(50)
    assert unsure.line(unsure.started + 50.0).endswith("ETA 0:00:50, run ETA ≥ 0:04:10")
    assert "run ETA" not in Progress("best PGD-20", 100, stream=stream).line()


def test_run_after_counts_later_epochs_and_evaluations():
    from wpat.configuration.config import load_config
    from wpat.training.loop import run_after

    cfg = load_config(None, ["schedule.epochs=5", "eval.every=2", "perturb.name=awp", "perturb.warmup=2"])
    first = run_after(0, 10, cfg, eval_seconds=None)
    # epochs 2-5 follow (40 steps); evaluations after epochs 2, 4 and 5, none measured yet; the
    # perturbation starts in epoch 3, so later epochs are slower: a minimum either way
    assert first.units == 40 and first.seconds == 0 and first.lower_bound
    fourth = run_after(3, 10, cfg, eval_seconds=4.0)  # epoch 4 (evaluates), then epoch 5 (the last)
    assert fourth.units == 10 and fourth.seconds == 8.0 and not fourth.lower_bound
    assert not run_after(1, 10, load_config(None, ["schedule.epochs=3"]), eval_seconds=1.0).lower_bound


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
def test_a_run_of_two_epochs_tells_its_remaining_time(tmp_path, capsys):
    from wpat.cli import main

    code = main(["train", "fmnist-smallcnn-linf", "model.small_cnn.width=4", "data.train_subset=320",
                 "data.test_subset=32", "data.batch_size=64", "eval.n_train=32", "attack.steps=1",
                 "eval.steps=1", "schedule.epochs=2", "perturb.rwp.steps=1", f"run.seed={SEED}",
                 f"run.out_dir={tmp_path}", "run.name=log"])
    err = capsys.readouterr().err
    assert code == 0
    first = [line for line in err.splitlines() if line.startswith("epoch 1/2: ")]
    second = [line for line in err.splitlines() if line.startswith("epoch 2/2: ")]
    assert first and second
    # no evaluation measured in epoch 1: the run's ETA is a minimum; in epoch 2 it is an estimate
    assert all(re.search(r", run ETA ≥ \d+:\d\d:\d\d$", line) for line in first), first
    assert all(re.search(r", run ETA \d+:\d\d:\d\d$", line) for line in second), second
