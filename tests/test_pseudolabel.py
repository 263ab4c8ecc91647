"""`wpat pseudolabel` on Fashion-MNIST: the labels written are the model's predictions, so their
agreement with the withheld labels is the model's accuracy on those images; an interrupted run
reuses its finished chunks; a foreign state_dict works with --config; bad inputs end with one line.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SEED, fashion_mnist_available
from wpat.checkpoints.files import FORMAT, save_atomic
from wpat import cli
from wpat.configuration.config import dump_config, load_config
from wpat.data import load_dataset
from wpat.data.extra import write_npz
from wpat.helpers.errors import WpatError
from wpat.training.experiment import model_from_config
from wpat.measurements.metrics import correct
from wpat.training.pseudolabel import pseudolabel

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

N_EXTRA = 1_000
FAST = ["--batch-size", "100", "--chunk-size", "300", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with ``best.pt``: a width-4 small CNN trained clean for 150 steps (a few
    seconds; well above chance, which is all the agreement check needs)."""
    torch.manual_seed(SEED)
    cfg = load_config("fmnist-smallcnn-linf", ["model.small_cnn.width=4", f"run.seed={SEED}"])
    model = model_from_config(cfg)
    x, y = load_dataset("fashion_mnist", "train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(150):
        index = torch.randint(0, 50_000, (64,))
        optimizer.zero_grad()
        F.cross_entropy(model(x[index].float() / 255), y[index]).backward()
        optimizer.step()
    root = tmp_path_factory.mktemp("run")
    save_atomic({"format": FORMAT, "kind": "best", "config": cfg.to_dict(), "model": model.state_dict(),
                 "epoch": 1}, root / "best.pt")
    dump_config(cfg, root / "config.yaml")
    return root


@pytest.fixture(scope="module")
def extra(tmp_path_factory):
    """The last 1,000 training images as an unlabeled .npz ([N, 28, 28, 1]); the labels withheld."""
    x, y = load_dataset("fashion_mnist", "train")
    x, y = x[-N_EXTRA:], y[-N_EXTRA:]
    path = tmp_path_factory.mktemp("extra") / "unlabeled.npz"
    write_npz(path, x, layout="NCHW")
    return path, x, y


@pytest.fixture(autouse=True)
def _command(monkeypatch):
    """`wpat pseudolabel` through the real CLI, registered here if cli.COMMANDS lacks it still."""
    if "pseudolabel" not in cli.COMMANDS:
        monkeypatch.setitem(cli.COMMANDS, "pseudolabel", "pseudo-labels for unlabeled extra data")


def main(argv: list[str]) -> int:
    return cli.main(argv)


def _model(run):
    from wpat.training.loading import model_from_checkpoint

    return model_from_checkpoint(run / "best.pt")[0].eval()


def test_agreement_with_hidden_labels_is_the_model_accuracy(run, extra, tmp_path, capsys):
    path, x, y = extra
    out = tmp_path / "pseudo.npz"
    assert main(["pseudolabel", str(run), str(path), str(out), *FAST]) == 0
    assert f"wrote {out}: {N_EXTRA} images" in capsys.readouterr().out
    with np.load(out) as f:
        images, labels = f["image"], f["label"]
    assert images.shape == (N_EXTRA, 28, 28, 1) and labels.dtype == np.int64
    np.testing.assert_array_equal(images[..., 0], x[:, 0].numpy())
    flags = correct(_model(run), x, y, batch_size=100)
    agreement = (torch.from_numpy(labels) == y).sum().item()
    assert agreement == flags.sum().item()
    assert agreement > 0.5 * N_EXTRA  # a model that learned something: the check is not vacuous
    assert not (tmp_path / "pseudo.npz.parts").exists()  # chunks removed once OUT is complete


def test_an_interrupted_run_reuses_its_finished_chunks(run, extra, tmp_path):
    path, _, _ = extra
    whole = pseudolabel(run, path, tmp_path / "whole.npz", batch_size=100, chunk_size=300, progress=False)
    assert whole["reused"] == 0 and whole["chunks"] == 4

    def interrupt(k):
        if k == 1:
            raise KeyboardInterrupt

    out = tmp_path / "again.npz"
    with pytest.raises(KeyboardInterrupt):
        pseudolabel(run, path, out, batch_size=100, chunk_size=300, progress=False, on_chunk=interrupt)
    parts = tmp_path / "again.npz.parts"
    assert sorted(p.name for p in parts.glob("labels-*.npy")) == ["labels-000000.npy", "labels-000001.npy"]
    assert not out.exists()
    computed = []
    resumed = pseudolabel(run, path, out, batch_size=100, chunk_size=300, progress=False, on_chunk=computed.append)
    assert resumed["reused"] == 2 and computed == [2, 3]
    with np.load(tmp_path / "whole.npz") as a, np.load(out) as b:
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["image"], b["image"])
    assert resumed["class_counts"] == np.bincount(b_labels(out), minlength=10).tolist()


def b_labels(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return f["label"]


def test_chunks_of_another_run_are_not_mixed_in(run, extra, tmp_path):
    path, _, _ = extra
    out = tmp_path / "mixed.npz"
    with pytest.raises(KeyboardInterrupt):
        pseudolabel(run, path, out, chunk_size=300, progress=False,
                    on_chunk=lambda k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(WpatError, match="another pseudo-labelling run"):
        pseudolabel(run, path, out, chunk_size=500, progress=False)


def test_foreign_state_dict_with_config_and_rst_pickle(run, extra, tmp_path):
    path, x, _ = extra
    state = torch.load(run / "best.pt", weights_only=True)["model"]
    torch.save({f"module.{k[len('net.'):]}": v for k, v in state.items() if k.startswith("net.")},
               tmp_path / "released.pt")
    rst = tmp_path / "extra.pickle"
    with open(rst, "wb") as f:  # RST's layout, with this dataset's image shape
        pickle.dump({"data": x.permute(0, 2, 3, 1).numpy(), "extrapolated_targets": np.zeros(N_EXTRA, int)}, f,
                    protocol=4)
    out = tmp_path / "foreign.npz"
    assert main(["pseudolabel", str(tmp_path / "released.pt"), str(rst), str(out),
                 "--config", str(run / "config.yaml"), *FAST]) == 0
    own = pseudolabel(run, path, tmp_path / "own.npz", batch_size=100, chunk_size=300, progress=False)
    np.testing.assert_array_equal(b_labels(out), b_labels(Path(own["out"])))


def test_bad_inputs_end_with_one_line(run, extra, tmp_path, capsys):
    path, _, _ = extra
    cifar_like = tmp_path / "cifar.npz"
    write_npz(cifar_like, np.zeros((4, 32, 32, 3), np.uint8))
    existing = tmp_path / "exists.npz"
    existing.write_bytes(b"")
    cases = [
        ([str(run), str(cifar_like), str(tmp_path / "a.npz")], "[N,28,28,1]"),
        ([str(run), str(path), str(existing)], "already exists"),
        ([str(run), str(path), str(tmp_path / "out.txt")], "must be an .npz"),
        ([str(tmp_path / "nowhere"), str(path), str(tmp_path / "b.npz")], "not found"),
        ([str(run / "best.pt"), str(path), str(tmp_path / "c.npz"), "--device", "cuda:7"], "--device"),
    ]
    for args, fragment in cases:
        if "cuda" in args and torch.cuda.is_available():
            continue
        assert main(["pseudolabel", *args, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err


def test_the_command_module_imports_nothing_heavy():
    code = ("import sys, argparse, wpat.commands.pseudolabel as m; m.configure(argparse.ArgumentParser()); "
            "print(','.join(k for k in ('torch', 'numpy') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
