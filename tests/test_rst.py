"""RST training: batches mixing labeled and extra examples at the configured fraction, an epoch
counted in labeled-set sizes, a weight for the extra examples, and exact resume."""

import pytest
import torch

from conftest import SEED, crashing_at_call, fashion_mnist_available
from wpat.checkpoints.files import load_checkpoint
from wpat.configuration.config import load_config
from wpat.data import load_dataset, write_npz

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

TINY = ["model.small_cnn.width=4", "data.train_subset=512", "data.test_subset=64", "data.batch_size=64",
        "eval.n_train=32", "attack.steps=1", "eval.steps=1", "perturb.rwp.steps=2", "run.progress=false",
        "run.threads=1", f"run.seed={SEED}", "schedule.epochs=2"]


@pytest.fixture(scope="module")
def extra(tmp_path_factory):
    """2,000 held-out Fashion-MNIST images as the extra data, with their true labels."""
    x, y = load_dataset("fashion_mnist", "train")
    path = tmp_path_factory.mktemp("extra") / "extra.npz"
    write_npz(path, x[40000:42000].numpy(), y[40000:42000].numpy(), layout="NCHW")
    return path


def rst(tmp_path, extra, *more):
    return load_config("fmnist-smallcnn-linf-rst", [*TINY, f"data.extra={extra}", f"run.out_dir={tmp_path}", *more])


def test_batches_mix_at_the_fraction_and_an_epoch_counts_labeled_set_sizes(tmp_path, extra, monkeypatch):
    import wpat.training.loop as training

    seen = []
    real = training.train_step

    def spy(model, batch, attack, objective, perturbation, optimizer, alternations=1, l1=0.0, weights=None,
            score_forward=False):
        seen.append((len(batch.x), weights.clone()))
        return real(model, batch, attack, objective, perturbation, optimizer, alternations, l1, weights,
                    score_forward=score_forward)

    monkeypatch.setattr(training, "train_step", spy)
    cfg = rst(tmp_path, extra, "data.extra_fraction=0.75", "data.extra_weight=0.5", "schedule.epochs=1",
              "run.name=mix")
    training.train(cfg)
    assert len(seen) == 512 // 64  # whole global batches per labeled-set size
    for size, weights in seen:
        assert size == 64 and int((weights == 0.5).sum()) == 48 and int((weights == 1).sum()) == 16


def test_a_few_step_rst_rwp_run_learns(tmp_path, extra):
    from wpat.training.loop import train

    summary = train(rst(tmp_path, extra, "run.name=learns", "model.small_cnn.width=8", "attack.steps=2"))
    last = summary["last"]
    assert last["test_nat_acc"] > 0.3 and last["perturb_active"]  # chance: 0.1


def test_a_killed_rst_run_resumes_bitwise(tmp_path, extra, monkeypatch):
    import wpat.training.loop as training

    common = ["run.checkpoint_every=3", "run.deterministic=true"]
    training.train(rst(tmp_path, extra, *common, "run.name=whole"))
    real = training.train_step
    # epoch 2, step 5: after its step-3 checkpoint
    monkeypatch.setattr(training, "train_step", crashing_at_call(real, 13))
    with pytest.raises(KeyboardInterrupt):
        training.train(rst(tmp_path, extra, *common, "run.name=cut"))
    monkeypatch.setattr(training, "train_step", real)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 3
    training.resume(tmp_path / "cut")
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["extra_stream"] == b["extra_stream"]


def test_extra_fraction_without_extra_data_is_one_line(tmp_path):
    from wpat.cli import main

    code = main(["train", "fmnist-smallcnn-linf-rst", *TINY, f"run.out_dir={tmp_path}"])
    assert code == 2 and not any(tmp_path.iterdir())
