"""Crash safety, exact resume, clear errors (the reliability issue)."""

import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SEED, crashing_at_call, fashion_mnist_available
from wpat.checkpoints.files import load_checkpoint
from wpat.cli import main
from wpat.training import experiment
from wpat.configuration.config import Config, load_config
from wpat.helpers.errors import WpatError

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Debian's dataset-fashion-mnist is not installed")

TINY = ["data.name=fashion_mnist", "model.name=small_cnn", "model.small_cnn.width=4", "data.train_subset=320",
        "data.test_subset=64", "data.batch_size=32", "eval.n_train=32", "eval.steps=2", "attack.steps=2",
        "attack.alpha=0.05", "perturb.name=rwp", "perturb.rwp.steps=2", "schedule.epochs=4",
        "run.threads=1", "run.deterministic=true", "run.progress=false", "run.checkpoint_every=3",
        f"run.seed={SEED}"]


def _train_cmd(out_dir, name, *extra):
    return [sys.executable, "-m", "wpat.cli", "train", *TINY, f"run.out_dir={out_dir}", f"run.name={name}", *extra]


def _final_weights(run_dir):
    ckpt = load_checkpoint(run_dir / "last.pt")
    return ckpt["epoch"], ckpt["model"], ckpt["history"]


@needs_fmnist
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    started = time.monotonic()
    subprocess.run(_train_cmd(tmp_path, "clean"), check=True, capture_output=True)
    duration = time.monotonic() - started  # start-up (~2 s) + 4 short epochs
    run_dir = tmp_path / "killed"
    rng = random.Random(1)
    kills = 0
    for attempt in range(30):
        if (run_dir / "last.pt").exists():
            if load_checkpoint(run_dir / "last.pt")["epoch"] == 4:
                break
            cmd = [sys.executable, "-m", "wpat.cli", "train", "--resume", str(run_dir)]
        else:
            cmd = _train_cmd(tmp_path, "killed")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 4:
            time.sleep(rng.uniform(0.3, 0.9) * duration)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
        # whatever the moment of the kill, every checkpoint on disk loads
        for name in ("last.pt", "best.pt"):
            if (run_dir / name).exists():
                load_checkpoint(run_dir / name)
    assert kills >= 1
    epoch, killed, history = _final_weights(run_dir)
    _, clean, clean_history = _final_weights(tmp_path / "clean")
    assert epoch == 4
    for key in clean:
        assert torch.equal(killed[key], clean[key]), key
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]  # noqa: E731
    assert strip(history) == strip(clean_history)
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == [] or all(p.endswith(".tmp") for p in leftovers)


@needs_fmnist
def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from wpat.objectives.at import AT

    real = AT.per_example
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        losses = real(self, model, batch)
        return losses * float("nan") if calls["n"] > 12 else losses  # 10 steps per epoch

    monkeypatch.setattr(AT, "per_example", poisoned)
    code = main(["train", *TINY, "perturb.name=none", f"run.out_dir={tmp_path}", "run.name=nan"])
    err = capsys.readouterr().err
    assert code == 2 and "nan" in err.lower() and "Traceback" not in err
    assert load_checkpoint(tmp_path / "nan" / "last.pt")["epoch"] == 1


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "last.pt").write_bytes(b"precious")
    code = main(["train", *TINY, f"run.out_dir={tmp_path}", "run.name=r"])
    assert code == 2 and "--resume" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == b"precious"


@needs_fmnist
def test_a_run_killed_before_its_first_checkpoint_is_started_again_by_its_command(tmp_path, monkeypatch, capsys):
    """config.yaml and an event file but no last.pt: --resume says so and how to start again;
    the same command starts again in the same directory, in place of the old event file."""
    import wpat.training.loop as training

    args = ["train", *TINY, "run.tensorboard=true", f"run.out_dir={tmp_path}", "run.name=early"]
    real_step = training.train_step
    monkeypatch.setattr(training, "train_step", crashing_at_call(real_step, 2))  # before step 3's checkpoint
    assert main(args) == 130
    run = tmp_path / "early"
    old_events = list(run.glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file() and not (run / "last.pt").exists() and len(old_events) == 1
    capsys.readouterr()

    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "never reached a checkpoint" in err and err.count("\n") == 1, err
    command = shlex.split(err.split("`")[1])
    assert command[:2] == ["wpat", "train"]
    again = load_config(command[2], command[3:])  # the command it gives starts this run, here
    assert Path(again.run.out_dir) / again.run.name == run
    assert again.to_dict() == load_config(None, args[1:]).to_dict()

    monkeypatch.setattr(training, "train_step", real_step)
    assert main(args) == 0
    assert "starting again a run that never reached a checkpoint" in capsys.readouterr().out
    events = list(run.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events != old_events
    assert load_checkpoint(run / "last.pt")["epoch"] == 4


def test_results_without_a_last_checkpoint_are_never_overwritten(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "best.pt").write_bytes(b"precious")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert main(["train", *TINY, f"run.out_dir={tmp_path}", "run.name=r"]) == 2
    err = capsys.readouterr().err
    assert "holds a run's results (best.pt, metrics.jsonl) but no last.pt" in err
    assert main(["train", "--resume", str(run)]) == 2
    assert "never reached" not in capsys.readouterr().err  # it did: its last.pt went away since
    assert (run / "best.pt").read_bytes() == b"precious" and sorted(p.name for p in run.iterdir()) == [
        "best.pt", "metrics.jsonl"]


def test_unwritable_run_dir_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["train", *TINY, f"run.out_dir={blocker}", "run.name=x"])
    assert code == 2 and "run.out_dir" in capsys.readouterr().err


def test_user_errors_are_one_line_and_debug_shows_the_traceback(capsys):
    assert main(["train", "attack.eps=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wpat: error: attack.eps")
    assert main(["train", "attack.eps=-1", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


SECTIONS = {f.name: list(getattr(Config(), f.name).__dataclass_fields__) for f in Config.__dataclass_fields__.values()}
KEYS = ([f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks if k != "options"]
        + ["data.nope", "nope.name", "model", "perturb.rwp.gamma", "perturb.rwp.c_min", "perturb.awp.steps",
           "perturb.nope.x", "model.small_cnn.width", "schedule.piecewise.milestones", "objective.trades.beta"])
VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1e309", "nan", "inf", "-inf", "8/255", "1/0", "abc", "", "null", "true",
                     "[1, 2]", "[0.9, 0.1]", "cifar10", "wrn34_10", "l2", "2**31", "1e-300", "{a: 1}"]),
    st.integers(-10, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_fuzzed_config_values_never_raise_anything_but_a_clear_error(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, ["perturb.name=rwp", *overrides])
        experiment.build_components(cfg)
    except WpatError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert cfg.attack.eps > 0 and math.isfinite(cfg.attack.eps)
    assert cfg.data.batch_size >= 1


@needs_fmnist
def test_resume_from_a_mid_epoch_checkpoint_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    import wpat.training.loop as training

    clean = training.train(load_config(None, [*TINY, "schedule.epochs=2", f"run.out_dir={tmp_path}", "run.name=a"]))
    real_step = training.train_step
    # epoch 2, step 8: after the step-6 checkpoint
    monkeypatch.setattr(training, "train_step", crashing_at_call(real_step, 18))
    with pytest.raises(KeyboardInterrupt):
        training.train(load_config(None, [*TINY, "schedule.epochs=2", f"run.out_dir={tmp_path}", "run.name=b"]))
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 6)
    monkeypatch.setattr(training, "train_step", real_step)
    resumed = training.resume(tmp_path / "b")
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}  # noqa: E731
    assert strip(resumed["last"]) == strip(clean["last"])


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    import os
    import stat

    from wpat.helpers.fs import atomic_file, write_text_atomic

    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # open(): 0o666 less the umask
    write_text_atomic(tmp_path / "report.md", "| a |\n")
    with atomic_file(tmp_path / "last.pt") as f:
        f.write(b"\0")
    expected = stat.S_IMODE(os.stat(plain).st_mode)
    for name in ("report.md", "last.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
