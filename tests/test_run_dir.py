"""`wpat.checkpoints.run_dir`: a run directory's files, and the one place a run's checkpoint is found."""

import pytest

from wpat import cli
from wpat.helpers.errors import WpatError
from wpat.checkpoints.run_dir import RunDir, checkpoints_of, find_checkpoint


def test_a_run_directory_names_its_files(tmp_path):
    run = RunDir(tmp_path)
    assert (run.config_path, run.metrics_path) == (tmp_path / "config.yaml", tmp_path / "metrics.jsonl")
    assert run.checkpoint_path("ema_last") == tmp_path / "ema_last.pt"
    for name in ("last.pt", "ema_best.pt", "epoch-002.pt", "epoch-001.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert run.checkpoints() == {"last": tmp_path / "last.pt", "ema_best": tmp_path / "ema_best.pt"}
    assert run.kept_checkpoints() == [tmp_path / "epoch-001.pt", tmp_path / "epoch-002.pt"]


def test_finding_a_runs_checkpoint(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"x")
    assert find_checkpoint(tmp_path) == tmp_path / "last.pt"  # best.pt, else last.pt
    assert find_checkpoint(tmp_path, "last") == tmp_path / "last.pt"
    with pytest.raises(WpatError, match=r"no best.pt \(it has last.pt; use --checkpoint last\)"):
        find_checkpoint(tmp_path, "best")
    (tmp_path / "best.pt").write_bytes(b"x")
    assert find_checkpoint(tmp_path) == tmp_path / "best.pt"
    assert find_checkpoint(tmp_path / "last.pt", "best") == tmp_path / "last.pt"  # a file is itself
    assert checkpoints_of(tmp_path / "last.pt") == {"last": tmp_path / "last.pt"}


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "missing", "checkpoint or run directory not found"),
    (lambda p: p, "no best.pt or last.pt"),
])
def test_a_missing_checkpoint_is_one_line(tmp_path, make, fragment):
    with pytest.raises(WpatError, match=fragment):
        find_checkpoint(make(tmp_path))


@pytest.mark.parametrize("command", ["export", "sensitivity", "plot"])
def test_commands_that_take_a_run_find_its_checkpoint_alike(tmp_path, capsys, command):
    (tmp_path / "last.pt").write_bytes(b"x")
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "config.yaml").write_text("")
    args = {"export": ["export", str(tmp_path), "--robustbench", str(tmp_path / "rb")],
            "sensitivity": ["sensitivity", str(tmp_path)],
            "plot": ["plot", str(tmp_path), "--weights"]}[command]
    assert cli.main(args) == 2
    assert "no best.pt (it has last.pt; use --checkpoint last)" in capsys.readouterr().err
