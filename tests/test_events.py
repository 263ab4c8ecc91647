"""Live monitoring: TensorBoard event files in the run directory carry the logged scalars."""

import json

import pytest

from conftest import SEED, fashion_mnist_available
from wpat.configuration.config import load_config
from wpat.training.loop import train

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")


def test_event_files_carry_every_logged_metric(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config("fmnist-smallcnn-linf", [
        "model.small_cnn.width=4", "data.train_subset=128", "data.test_subset=32", "data.batch_size=64",
        "eval.n_train=32", "attack.steps=1", "eval.steps=1", "schedule.epochs=2", "perturb.rwp.steps=2",
        "run.progress=false", f"run.seed={SEED}", f"run.out_dir={tmp_path}", "run.name=tb"])
    train(cfg)
    run = tmp_path / "tb"
    assert list(run.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run))
    events.Reload()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("lr", "images_per_s", "train_loss", "lsc_frac_below", "v_over_w", "perturb_steps",
                "test_pgd_acc", "test_nat_acc", "robust_gap"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2], key
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6), key
