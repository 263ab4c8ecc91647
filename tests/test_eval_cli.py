"""`wpat eval` end to end: the table is printed, eval.json and eval.md are written and parse, a
foreign state_dict is evaluated with --config, and every bad checkpoint ends with one line and
exit status 2, without a traceback. Results accumulate in eval.json, each with its settings,
and an eval.json written before (main's layout) is read and added to."""

import json
import os
import re
import shutil
from pathlib import Path

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


# ---------------------------------------------------------------------- results accumulate

MAIN_EVAL_JSON = Path(__file__).parent / "data" / "eval-json-main-934f5a6.json"  # as main wrote it


def copy_run(run, tmp_path):
    dest = tmp_path / run.name
    shutil.copytree(run, dest)
    return dest


def legend(md_text):
    """eval.md's settings lines: {letter: text}, and the line of shared settings."""
    lines = md_text.splitlines()
    shared = next(line for line in lines if line.startswith("Settings"))
    return {line[1]: line[4:] for line in lines if re.match(r"^\([a-z]\) ", line)}, shared


def cell(md_text, row, column):
    table = [line for line in md_text.splitlines() if line.startswith("|")]
    headers = [c.strip() for c in table[0].strip("|").split("|")]
    line = next(line for line in table[2:] if line.startswith(f"| {row} "))
    return [c.strip() for c in line.strip("|").split("|")][headers.index(column)]


def test_eval_adds_to_earlier_results_and_replaces_only_the_attack_run_again(run, tmp_path, capsys):
    run = copy_run(run, tmp_path)
    assert main(["eval", str(run), "--attacks", "natural,fgsm,pgd20", *FAST]) == 0
    first = json.loads((run / "eval.json").read_text())["checkpoints"]["last"]
    # PGD-20 again, on other examples with another seed, and no masking checks
    assert main(["eval", str(run), "--attacks", "pgd20", "--n-examples", "24", "--seed", "3",
                 "--no-checks", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    last = json.loads((run / "eval.json").read_text())["checkpoints"]["last"]
    assert set(last["accuracy"]) == {"natural", "fgsm", "pgd20"}
    for kept in ("natural", "fgsm"):
        assert last["accuracy"][kept] == first["accuracy"][kept]
        assert last["settings"][kept] == first["settings"][kept]
    assert last["settings"]["fgsm"]["n_examples"] == 16 and last["settings"]["fgsm"]["seed"] == 0
    assert last["settings"]["pgd20"]["n_examples"] == 24 and last["settings"]["pgd20"]["seed"] == 3
    assert last["settings"]["pgd20"]["eps"] == 0.1 and last["settings"]["pgd20"]["batch_size"] == 500
    assert last["checks"] == first["checks"]  # the second run made none: the first's are kept
    assert "kept from earlier evaluations: best Natural, FGSM; last Natural, FGSM" in printed

    # the report shows each number with its settings
    md = (run / "eval.md").read_text()
    letters, shared = legend(md)
    pgd20, fgsm = cell(md, "last", "PGD-20"), cell(md, "last", "FGSM")
    assert pgd20.startswith(f"{100 * last['accuracy']['pgd20']:.2f} (")
    assert "first 24 test examples" in letters[pgd20[-2]] and "seed 3" in letters[pgd20[-2]]
    assert "first 16 test examples" in letters[fgsm[-2]] and "seed 0" in letters[fgsm[-2]]
    assert "fashion_mnist" in shared and "linf eps 0.1" in shared and "batches of 500" in shared
    assert all(line in printed for line in md.splitlines() if line.startswith(("|", "(")))


def test_results_of_weights_a_checkpoint_no_longer_holds_are_kept_apart(run, tmp_path, capsys):
    run = copy_run(run, tmp_path)
    assert main(["eval", str(run), "--attacks", "natural,fgsm", "--no-checks", *FAST]) == 0
    before = json.loads((run / "eval.json").read_text())["checkpoints"]["last"]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, run / "last.pt")  # e.g. the run was trained again into the same directory
    assert main(["eval", str(run), "--attacks", "natural", "--no-checks", *FAST]) == 0
    entries = json.loads((run / "eval.json").read_text())["checkpoints"]
    old = entries[f"last@{before['weights'].split(':')[1][:8]}"]
    assert old["superseded"] and old["accuracy"] == before["accuracy"]
    # FGSM was measured on the old weights only: the current row must not show it
    assert set(entries["last"]["accuracy"]) == {"natural"} and entries["last"]["weights"] != before["weights"]
    assert set(entries["best"]["accuracy"]) == {"natural", "fgsm"}
    assert "earlier results of a checkpoint file that now holds other weights" in (run / "eval.md").read_text()


def test_an_eval_json_written_by_main_is_read_and_added_to(run, tmp_path, capsys):
    run = copy_run(run, tmp_path)
    old = json.loads(MAIN_EVAL_JSON.read_text())
    for name, entry in old["checkpoints"].items():  # the layout of main's file, this run's checkpoints
        entry["path"], entry["epoch"] = str(run / f"{name}.pt"), torch.load(run / f"{name}.pt")["epoch"]
    (run / "eval.json").write_text(json.dumps(old))

    # wpat export reads it as it is
    assert main(["export", str(run), "--robustbench", str(tmp_path / "zoo")]) == 0
    info = json.loads((tmp_path / "zoo" / "tiny.json").read_text())
    assert info["clean_acc"] == "21.88" and info["n_test_examples"] == 32 and info["eps"] == "0.1"
    assert "first 32 test examples of fashion_mnist" in info["wpat"]["measurements"]["clean_acc"]["in_words"]

    # wpat eval adds to it: main's other columns are kept, with the settings main's file implies
    assert main(["eval", str(run), "--attacks", "natural", "--no-checks", *FAST]) == 0
    report = json.loads((run / "eval.json").read_text())
    last = report["checkpoints"]["last"]
    assert list(last["accuracy"]) == ["natural", "fgsm", "pgd20", "pgd100", "cw"]
    assert last["accuracy"]["cw"] == 0.0625 and last["settings"]["natural"]["n_examples"] == 16
    assert last["settings"]["cw"] == {"dataset": "fashion_mnist", "n_examples": 32, "norm": "linf",
                                      "eps": 0.1, "step": 0.01, "seed": 0, "batch_size": None}
    assert last["measured"]["cw"] == {"device": "cpu", "wpat_version": "0.1.0", "date": None}
    assert last["checks"]["large_eps"] == old["checkpoints"]["last"]["checks"]["large_eps"]
    assert report["attacks"] == ["natural", "fgsm", "pgd20", "pgd100", "cw"]
    md = (run / "eval.md").read_text()
    letters, shared = legend(md)
    assert "first 32 test examples" in letters[cell(md, "last", "CW∞")[-2]]
    assert "first 16 test examples" in letters[cell(md, "last", "Natural")[-2]]
    assert "batch size not recorded" in shared  # only main's results have a batch size setting


def test_an_unreadable_eval_json_is_refused_before_any_attack(run, tmp_path, capsys, monkeypatch):
    run = copy_run(run, tmp_path)
    (run / "eval.json").write_text('{"checkpoints": [1, 2')
    import wpat.evaluation.protocol as protocol

    monkeypatch.setattr(protocol, "evaluate_model", lambda *a, **k: pytest.fail("attacked"))
    assert main(["eval", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wpat: error: ") and err.count("\n") == 1 and "eval.json" in err and "--out" in err
    assert (run / "eval.json").read_text() == '{"checkpoints": [1, 2'  # nothing lost
