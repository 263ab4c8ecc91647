import os
import pickle

import pytest
import torch

from wpat.checkpoints.files import load_checkpoint, save_atomic
from wpat.helpers.errors import WpatError


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def test_round_trip(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"w": torch.arange(3.0), "epoch": 2}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 2 and torch.equal(ckpt["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_code_payload_is_refused_and_does_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(WpatError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned-by-checkpoint").exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(WpatError):
        load_checkpoint(raw)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_truncated_and_missing(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(WpatError, match="c.pt"):
        load_checkpoint(path)
    with pytest.raises(WpatError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ------------------------------------------------------------------ telling bad files apart


def _messages(path):
    with pytest.raises(WpatError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def _corrupt(message):
    assert "refused" not in message and "unsafe" not in message and "could run code" not in message
    return message


@pytest.mark.parametrize("data, says", [
    (b"", "the file is empty"),
    (b"\x80\x02", "truncated or corrupt"),
    (b"hi", "not a checkpoint: a text file"),
    (bytes(range(7, 250)) * 4, "not a checkpoint: unrecognised content"),
    (b"<!DOCTYPE html>\n<html><body>Not Found</body></html>\n", "not a checkpoint: an HTML page"),
    (b"\n  <html><head></head></html>", "not a checkpoint: an HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n", "Git LFS pointer"),
    (b"\x1f\x8b\x08\x00" + bytes(20), "gzip-compressed"),
    (pickle.dumps({"w": [1.0]}, protocol=4), "a plain Python pickle"),
    (pickle.dumps({"w": [1.0]}, protocol=4)[:-5], "truncated or corrupt"),
], ids=["empty", "two-bytes", "text", "random", "html", "html-indented", "lfs", "gzip", "plain-pickle",
        "cut-pickle"])
def test_not_a_checkpoint_is_told_apart_from_unsafe(data, says, tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(data)
    assert says in _corrupt(_messages(path))


def test_truncated_files_of_both_torch_formats(tmp_path):
    for name, zip_format in (("new.pt", True), ("old.pt", False)):
        path = tmp_path / name
        torch.save({"w": torch.randn(1000)}, path, _use_new_zipfile_serialization=zip_format)
        assert load_checkpoint(path)["w"].shape == (1000,)  # the legacy format still loads
        path.write_bytes(path.read_bytes()[:300])
        assert "truncated or corrupt" in _corrupt(_messages(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_directory_and_torchscript(tmp_path):
    assert "is a directory" in _messages(tmp_path)
    path = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    assert "TorchScript" in _corrupt(_messages(path))


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle-4", "pickle-0"])
def test_only_code_is_unsafe(how, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    if how == "zip":
        torch.save({"w": torch.zeros(2), "m": _Payload()}, path)
    elif how == "legacy":
        torch.save({"m": _Payload()}, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps({"m": _Payload()}, protocol=int(how[-1])))
    message = _messages(path)
    assert "refused as unsafe" in message and "system" in message and "nothing in it was run" in message
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_no_warnings_reach_stderr(tmp_path):
    import warnings

    path = tmp_path / "p.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _messages(path)
    assert not caught


def test_pickle_globals_is_static(tmp_path):
    import io

    from wpat.checkpoints.diagnosis import pickle_globals

    for protocol in range(6):
        found = pickle_globals(io.BytesIO(pickle.dumps([_Payload(), _Payload()], protocol=protocol)))
        assert found == {f"{os.system.__module__}.system"}, protocol


# ---------------------------------------------------------------------- an older wpat's run

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "main-resume")


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Fashion-MNIST not installed")
def test_a_last_pt_written_by_an_older_wpat_resumes_to_what_a_fresh_run_gives(tmp_path):
    """tests/fixtures/main-resume holds a run that wpat 934f5a6 cut after batch 3 of epoch 2
    (tests/fixtures/make_resume_fixture.py): RWP, an EMA and mid-epoch statistics. It resumes,
    finishes, and ends where a fresh run of its config.yaml ends."""
    import shutil

    from wpat.configuration.config import load_config
    from wpat.training.loop import resume, train

    run_dir = tmp_path / "main-resume"
    shutil.copytree(FIXTURE, run_dir)
    assert (load_checkpoint(run_dir / "last.pt")["epoch"], load_checkpoint(run_dir / "last.pt")["step"]) == (1, 3)
    resumed = resume(run_dir, progress=False)
    fresh = train(load_config(str(run_dir / "config.yaml"), [f"run.out_dir={tmp_path}", "run.name=fresh"]))
    assert resumed["last"]["epoch"] == fresh["last"]["epoch"] == 2 and not resumed["stopped_early"]
    assert {"best.pt", "ema_last.pt", "metrics.csv"} <= {p.name for p in run_dir.iterdir()}
    # The first half ran on another machine: equal up to the last bits of floating point.
    for key in ("train_loss", "ema_test_nat_acc"):
        assert resumed["last"][key] == pytest.approx(fresh["last"][key], rel=1e-3, abs=1e-3), key
    for key in ("test_nat_acc", "test_pgd_acc", "train_pgd_acc"):  # 32 examples each: one may flip
        assert abs(resumed["last"][key] - fresh["last"][key]) <= 1 / 32, key
    a, b = load_checkpoint(run_dir / "last.pt")["model"], load_checkpoint(tmp_path / "fresh" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)
