"""AWP Fig. 3a: adversarial loss under AWP and random weight perturbations over γ."""

import csv
import json

import pytest
import torch

from conftest import fashion_mnist_available
from wpat import cli
from wpat.training import experiment
from wpat.analysis import adversarial_losses, analysis_attack, examples
from wpat.analysis.gamma import crafted_examples, gamma_sensitivity, perturbation
from wpat.configuration.config import load_config
from wpat.training.loading import model_from_checkpoint
from wpat.perturb import perturbed_parameters

needs_data = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")


def tiny_problem():
    cfg = load_config(None, ["model.small_cnn.width=2", "attack.steps=2"])
    model = experiment.model_from_config(cfg)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (12,), generator=generator)
    return model, x, y, analysis_attack(cfg)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_both_perturbations_have_the_relative_size_gamma_per_layer():
    model, x, y, attack = tiny_problem()
    x_adv, y_adv = crafted_examples(model, x, y, attack, batch_size=5)
    assert x_adv.shape == (12, 1, 28, 28) and torch.equal(y_adv, y) and 0 <= x_adv.min() <= x_adv.max() <= 1
    weights = dict(perturbed_parameters(model))
    for kind in ("awp", "random"):
        v = perturbation(kind, 0.02, model, x_adv, y_adv, seed=3)
        assert set(v) == set(weights)
        for name, w in weights.items():
            assert v[name].norm().item() == pytest.approx(0.02 * w.norm().item(), rel=1e-4)
    # the random direction of one seed is the same line at every γ
    small, large = (perturbation("random", g, model, x_adv, y_adv, seed=3) for g in (0.01, 0.5))
    assert all(torch.allclose(large[n], 50 * small[n], rtol=1e-4, atol=1e-7) for n in small)


def test_at_gamma_zero_both_are_the_unperturbed_loss_and_the_model_is_left_alone():
    model, x, y, attack = tiny_problem()
    model.train()
    before = state(model)
    rows = gamma_sensitivity(model, x, y, attack, [0.0, 1e-3, 0.3], directions=2, batch_size=5, seed=1)
    losses, correct = adversarial_losses(model, x, y, attack, batch_size=5, seed=1)
    zero = rows[0]
    assert zero["gamma"] == 0 and zero["awp_loss"] == zero["random_loss"] == losses.mean().item()
    assert zero["awp_acc"] == zero["random_acc"] == correct.float().mean().item()
    assert zero["random_loss_std"] == 0
    assert [r["gamma"] for r in rows] == [0, 1e-3, 0.3]
    assert all(r["awp_loss"] > 0 and r["random_loss"] > 0 and r["random_loss_std"] >= 0 for r in rows)
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN buffers bitwise
    assert all(m.training for m in model.modules())  # and its mode


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_data
def test_cli_on_a_tiny_trained_model(tmp_path, capsys):
    from wpat.training.loop import train

    cfg = load_config(None, ["model.small_cnn.width=2", "data.train_subset=128", "data.test_subset=32",
                             "data.batch_size=64", "schedule.epochs=1", "attack.steps=1", "eval.steps=1",
                             "eval.n_train=32", "run.device=cpu", "run.tensorboard=false",
                             "run.progress=false", f"run.out_dir={tmp_path}", "run.name=at"])
    train(cfg)
    run_dir = tmp_path / "at"
    args = ["sensitivity", str(run_dir), "--gammas", "0.5,0,0.01", "--n-examples", "16",
            "--pgd-steps", "1", "--directions", "2"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "| gamma |" in out and f"wrote {run_dir / 'sensitivity.png'}" in out
    rows = read_csv(run_dir / "sensitivity.csv")
    assert [float(r["gamma"]) for r in rows] == [0, 0.01, 0.5]
    assert (run_dir / "sensitivity.png").stat().st_size > 1000
    meta = json.loads((run_dir / "sensitivity.json").read_text())
    assert meta["attack"]["steps"] == 1 and meta["n_examples"] == 16 and meta["epoch"] == 1

    # γ = 0: the unperturbed model's adversarial loss, measured independently
    model, run_cfg, _ = model_from_checkpoint(run_dir / "best.pt")
    x, y = examples(run_cfg, "train", 16, 0)
    loss = adversarial_losses(model, x, y, analysis_attack(run_cfg, 1), seed=0)[0].mean().item()
    assert float(rows[0]["awp_loss"]) == float(rows[0]["random_loss"]) == pytest.approx(loss, abs=1e-6)


@pytest.mark.parametrize("option", [["--gammas", "0,-1"], ["--gammas", "a"], ["--gammas", "0,0"],
                                    ["--directions", "0"]])
def test_bad_options_are_one_line(option, tmp_path, capsys):
    assert cli.main(["sensitivity", str(tmp_path), *option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wpat: error:") and option[0] in err and "\n" not in err
