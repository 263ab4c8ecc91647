"""`wpat eval` end to end: the table is printed, eval.json and eval.md are written and parse, a
foreign state_dict is evaluated with --config, and every bad checkpoint ends with one line and
exit status 2, without a traceback."""

import json
import os

import pytest
import torch

from conftest import fashion_mnist_available, train_tiny_run
from wpat.cli import main

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

FAST = ["--n-examples", "16", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory written by the training loop: 2 tiny epochs on 256 images (a few seconds;
    what is tested here does not depend on how well the model learned)."""
    return train_tiny_run(tmp_path_factory.mktemp("runs"))


def test_eval_prints_and_writes_the_table(run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", str(run), "--attacks", "natural,fgsm,pgd20", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    assert list(report["checkpoints"]) == ["best", "last"]
    assert set(report["checkpoints"]["last"]["accuracy"]) == {"natural", "fgsm", "pgd20"}
    assert "warnings" in report["checkpoints"]["last"]["checks"]
    table = [line for line in (out / "eval.md").read_text().splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["Checkpoint", "Epoch", "Natural", "FGSM", "PGD-20"]
    assert table[2].startswith("| best") and table[3].startswith("| last") and len(table) == 4
    assert all(line in printed for line in table)


def test_single_checkpoint_goes_to_its_own_folder(run, capsys):
    assert main(["eval", str(run / "last.pt"), "--attacks", "natural", "--no-checks", *FAST]) == 0
    report = json.loads((run / "eval-last" / "eval.json").read_text())
    assert list(report["checkpoints"]) == ["last"] and report["checkpoints"]["last"]["epoch"] == 2
    assert report["checkpoints"]["last"]["settings"]["natural"]["n_examples"] == 16


def test_foreign_state_dict_with_config(run, tmp_path, capsys):
    ckpt = torch.load(run / "last.pt", weights_only=True)
    net = {f"module.{k[len('net.'):]}": v for k, v in ckpt["model"].items() if k.startswith("net.")}
    torch.save(net, tmp_path / "released.pt")
    config = tmp_path / "config.yaml"
    config.write_text((run / "config.yaml").read_text())
    args = ["--attacks", "natural", "--no-checks", *FAST]
    assert main(["eval", str(tmp_path / "released.pt"), "--config", str(config), *args]) == 0
    assert main(["eval", str(run / "last.pt"), "--out", str(tmp_path / "own"), *args]) == 0
    foreign = json.loads((tmp_path / "eval-released" / "eval.json").read_text())["checkpoints"]["released"]
    own = json.loads((tmp_path / "own" / "eval.json").read_text())["checkpoints"]["last"]
    assert foreign["kind"] == "foreign" and foreign["accuracy"] == own["accuracy"]


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def _truncated(run, tmp_path):
    data = (run / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    return [str(tmp_path / "cut.pt")]


def _code(run, tmp_path):
    torch.save({"format": "wpat-checkpoint-v1", "model": _Payload()}, tmp_path / "evil.pt")
    return [str(tmp_path / "evil.pt")]


def _foreign(run, tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    return [str(tmp_path / "other.pt")]


def _wrong_model(run, tmp_path):
    ckpt = torch.load(run / "last.pt", weights_only=True)
    torch.save(ckpt["model"], tmp_path / "small.pt")
    return [str(tmp_path / "small.pt"), "--config", "cifar10-preactresnet18-linf"]


def _empty_dir(run, tmp_path):
    return [str(tmp_path)]


@pytest.mark.parametrize("make_args, says", [
    (lambda run, tmp: [str(run / "missing.pt")], "not found"),
    (_truncated, "truncated or corrupt"),
    (_code, "refused"),
    (_foreign, "not a wpat checkpoint"),
    (_wrong_model, "layout of small_cnn (24 weight tensors) but the config builds preact_resnet18 for cifar10"),
    (_empty_dir, "no best.pt or last.pt"),
    (lambda run, tmp: [str(run), "--attacks", "natural,pgd7"], "unknown evaluation attack 'pgd7'"),
], ids=["missing", "truncated", "code", "foreign", "wrong-model", "empty-dir", "unknown-attack"])
def test_bad_input_is_one_line_and_exit_2(make_args, says, run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", *make_args(run, tmp_path), *FAST]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("wpat: error: ") and captured.err.count("\n") == 1
    assert says in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "pwned-by-checkpoint").exists()
    assert not list(tmp_path.glob("eval-*")) and not (run / "eval-missing").exists()  # nothing written
