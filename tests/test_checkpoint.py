import os
import pickle

import pytest
import torch

from wpat.checkpoint import load_checkpoint, save_atomic
from wpat.errors import WpatError


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
