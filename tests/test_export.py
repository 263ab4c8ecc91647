"""`wpat export RUN_DIR --robustbench OUT`: a state_dict RobustBench's loader accepts, giving the
run's logits, and a model_info JSON filled from the config and eval.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from conftest import fashion_mnist_available, train_tiny_run
from wpat.cli import main
from wpat.training.experiment import model_from_config
from wpat.training.loading import model_from_checkpoint

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run written by the training loop (2 epochs on 256 images, a few seconds)."""
    return train_tiny_run(tmp_path_factory.mktemp("runs"))


def rm_substr_from_state_dict(state_dict, substr):
    """RobustBench's helper (robustbench/utils.py), as it is: any key containing ``substr``
    loses its first len(substr) characters."""
    new_state_dict = OrderedDict()
    for key in state_dict.keys():
        if substr in key:
            new_state_dict[key[len(substr):]] = state_dict[key]
        else:
            new_state_dict[key] = state_dict[key]
    return new_state_dict


def robustbench_load(path: Path, model: torch.nn.Module) -> torch.nn.Module:
    """What ``robustbench.utils.load_model`` does with a zoo file once the architecture is built."""
    checkpoint = torch.load(path, map_location=torch.device("cpu"))
    if "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]
    elif "model" in checkpoint:
        state_dict = checkpoint["model"]
    else:
        state_dict = checkpoint
    state_dict = rm_substr_from_state_dict(state_dict, "module.")
    state_dict = rm_substr_from_state_dict(state_dict, "model.")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def copy_run(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / run.name
    shutil.copytree(run, dest)
    return dest


@pytest.mark.parametrize("kind", ["best", "last"])
def test_export_loads_the_robustbench_way_with_the_same_logits(kind, run, tmp_path, capsys):
    run = copy_run(run, tmp_path)
    out = tmp_path / "zoo"
    args = ["export", str(run), "--robustbench", str(out)] + (["--checkpoint", "last"] if kind == "last" else [])
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'tiny.pt'}" in printed and f"wrote {out / 'tiny.json'}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["tiny.json", "tiny.pt"]

    raw = torch.load(out / "tiny.pt", weights_only=True)  # plain tensors only: weights-only loads it
    assert isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values())
    assert "normalize.mean" in raw and "normalize.std" in raw  # normalization inside the model

    own, cfg, info = model_from_checkpoint(run / f"{kind}.pt")
    assert info["kind"] == kind
    fresh = robustbench_load(out / "tiny.pt", model_from_config(cfg))
    assert not fresh.training
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # inputs in [0, 1]
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), own.eval()(x), rtol=0, atol=0)


def test_model_info_without_eval_json(run, tmp_path, capsys):
    run = copy_run(run, tmp_path)
    assert main(["export", str(run), "--robustbench", str(tmp_path / "zoo"), "--name", "Me2024Tiny"]) == 0
    printed = capsys.readouterr().out
    info = json.loads((tmp_path / "zoo" / "Me2024Tiny.json").read_text())
    assert info["architecture"] == "SmallCNN (width 4)" and info["dataset"] == "fashion_mnist"
    assert info["threat_model"] == "Linf" and info["eps"] == "0.1"
    assert info["additional_data"] is False and info["number_forward_passes"] == 1
    assert info["wpat"]["version"] and info["wpat"]["kind"] == "best"
    for key in ("link", "name", "authors", "venue", "reported", "leaderboard_key"):
        assert info[key].startswith("TO FILL"), key
    for key in ("clean_acc", "autoattack_acc", "n_test_examples"):
        assert info[key] is None and "no eval.json" in info["notes"][key], key
    assert "to fill by hand" in printed and "note: autoattack_acc" in printed


def test_model_info_from_eval_json(run, tmp_path, capsys):
    run = copy_run(run, tmp_path)
    assert main(["eval", str(run), "--attacks", "natural", "--n-examples", "16", "--no-checks",
                 "--no-progress"]) == 0
    report = json.loads((run / "eval.json").read_text())
    natural = report["checkpoints"]["best"]["accuracy"]["natural"]
    out = tmp_path / "zoo"
    assert main(["export", str(run), "--robustbench", str(out)]) == 0
    printed = capsys.readouterr().out
    info = json.loads((out / "tiny.json").read_text())
    assert info["clean_acc"] == f"{100 * natural:.2f}" and info["n_test_examples"] == 16
    # the number comes with the settings that produced it, in the record and on the screen
    clean = info["wpat"]["measurements"]["clean_acc"]
    assert clean["settings"] == {"dataset": "fashion_mnist", "n_examples": 16}
    assert clean["measured"]["device"] == "cpu" and clean["measured"]["date"]
    assert f"clean_acc {info['clean_acc']}: first 16 test examples of fashion_mnist" in printed
    assert info["autoattack_acc"] is None and "no AA" in info["notes"]["autoattack_acc"]
    assert info["wpat"]["eval_json"] == str(run / "eval.json")

    # the same file with an AA column (as `wpat eval --attacks natural,aa` writes it)
    report["checkpoints"]["best"]["accuracy"]["aa"] = 0.4375
    (run / "eval.json").write_text(json.dumps(report))
    capsys.readouterr()
    assert main(["export", str(run), "--robustbench", str(out)]) == 2  # existing files are kept
    err = capsys.readouterr().err
    assert err.startswith("wpat: error: ") and err.count("\n") == 1 and "--force" in err
    assert json.loads((out / "tiny.json").read_text())["autoattack_acc"] is None
    assert main(["export", str(run), "--robustbench", str(out), "--force"]) == 0
    info = json.loads((out / "tiny.json").read_text())
    assert info["autoattack_acc"] == "43.75" and "autoattack_acc" not in info["notes"]


def test_export_goes_into_the_run_by_default(run, tmp_path, capsys):
    run = copy_run(run, tmp_path)
    assert main(["export", str(run)]) == 0
    assert sorted(p.name for p in (run / "robustbench").iterdir()) == ["tiny.json", "tiny.pt"]
    assert main(["export", str(run), "--robustbench", "--checkpoint", "last", "--name", "Last"]) == 0
    assert (run / "robustbench" / "Last.pt").is_file() and (run / "robustbench" / "Last.json").is_file()
    assert main(["export", str(run / "best.pt"), "--name", "file"]) == 0  # a checkpoint file: its folder
    assert (run / "robustbench" / "file.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.name]  # nothing outside the run


def test_the_default_export_of_a_run_in_a_checkout_is_ignored_by_git():
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    # where `wpat export runs/NAME` writes (the test above), for a run where `wpat train` puts it
    for name in ("NAME.json", "NAME.pt"):
        path = f"runs/NAME/robustbench/{name}"
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=repo).returncode == 0, path


def test_export_command_imports_no_torch():
    code = "import sys, wpat.commands.export; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_additional_data_only_when_the_config_names_extra_files():
    from wpat.evaluation.export import additional_data

    class Cfg:
        def __init__(self, data):
            self.data = data

        def to_dict(self):
            return {"data": self.data}

    assert additional_data(Cfg({"name": "cifar10", "extra_fraction": 0.5})) == (False, None)
    assert additional_data(Cfg({"name": "cifar10", "extra": None, "extra_files": []})) == (False, None)
    assert additional_data(Cfg({"name": "cifar10", "extra": ["ti_500K.npz"]})) == (True, "data.extra")
    assert additional_data(Cfg({"name": "cifar10", "unlabeled_data": "ti.pickle"})) == (True, "data.unlabeled_data")
