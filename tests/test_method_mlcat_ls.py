"""MLCAT by loss scaling (``objective.name=mlcat-ls``) against the authors' training step.

The renditions below were written from reading ``ChaojianYu/Understanding-Robust-Overfitting``:
``train_step4_scale_15.py`` (MLCAT_LS) and ``train_step2_remove_0_15.py`` (the data-ablation
script whose update the loss scaling turns out to equal). They share no code with wpat.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SEED, fashion_mnist_available
from wpat.training import experiment
from wpat.cli import main
from wpat.configuration.config import load_config
from wpat.objectives import OBJECTIVES, TRADES, Batch
from wpat.perturb import AWP, perturbed
from wpat.training.step import train_step

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

BATCH = 32
C = 1.5  # the scripts' literal


class TinyBNNet(nn.Module):
    """conv-BN-ReLU-pool-linear: the BN running statistics take the step's forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


def problem(seed: int = 0):
    """A model and an adversarial batch whose losses straddle 1.5."""
    torch.manual_seed(seed)
    model = TinyBNNet()
    with torch.no_grad():
        model.fc.weight.mul_(12)  # spread the per-example losses around c
    x_adv = torch.rand(BATCH, 1, 6, 6)
    y = torch.randint(0, 10, (BATCH,))
    with torch.no_grad():
        y[::2] = copy.deepcopy(model).train()(x_adv).argmax(1)[::2]  # half of them predicted right
        losses = F.cross_entropy(copy.deepcopy(model).train()(x_adv), y, reduction="none")
    assert 0.2 < float((losses < C).float().mean()) < 0.8  # both kinds of example in the batch
    return model, x_adv, y


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


# ---------------------------------------------------------------- renditions of the scripts' step


def script_scale_step(model, opt, x_adv, y):
    """train_step4_scale_15.py, after the attack: the factor 1.5/ℓ is not detached."""
    model.train()
    robust_loss = F.cross_entropy(model(x_adv), y, reduction="none")
    scale_rate = 1.5 / robust_loss
    indicator_above = (scale_rate <= 1).float()
    indicator_below = (scale_rate > 1).float()
    robust_loss = robust_loss.mul(scale_rate * indicator_below + indicator_above).mean()
    opt.zero_grad()
    robust_loss.backward()
    opt.step()


def script_remove_step(model, opt, x_adv, y):
    """train_step2_remove_0_15.py: the examples below 1.5 masked out, mean over the batch."""
    model.train()
    robust_loss = F.cross_entropy(model(x_adv), y, reduction="none")
    indicator_reserve = 1 - (robust_loss < 1.5).float()
    robust_loss = robust_loss.mul(indicator_reserve).mean()
    opt.zero_grad()
    robust_loss.backward()
    opt.step()


def constant_factor_step(model, opt, x_adv, y, skip_zero=False):
    """The other reading of the paper's scaling: c/ℓ_i a constant weight of the small losses."""
    model.train()
    losses = F.cross_entropy(model(x_adv), y, reduction="none")
    weight = torch.where(losses < C, C / losses.detach(), torch.ones_like(losses))
    if skip_zero:
        weight = torch.where(losses == 0, torch.zeros_like(losses), weight)
    opt.zero_grad()
    (losses * weight).mean().backward()
    opt.step()


def wpat_step(model, opt, x_adv, y, perturbation=None, **options):
    objective = OBJECTIVES.build("mlcat-ls", objectives=OBJECTIVES.build, **options)
    return train_step(model, Batch(x_adv, y), lambda m, x, t: x_adv, objective, perturbation, opt)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Parameters and BN buffers agree to float tolerance."""
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(ta, tb, rtol=1e-4, atol=1e-6, msg=name)


def run_twice(step, model, x_adv, y, **kw):
    """Two steps (so momentum acts) of ``step`` on a copy of ``model``."""
    m = copy.deepcopy(model)
    opt = sgd(m)
    for _ in range(2):
        step(m, opt, x_adv, y, **kw)
    return m


# ---------------------------------------------------------------- the step


def test_the_step_is_the_scripts_and_equals_removing_the_small_loss_examples():
    model, x_adv, y = problem()
    ours = run_twice(wpat_step, model, x_adv, y)
    assert_same_state(ours, run_twice(script_scale_step, model, x_adv, y))
    # the code's factor is differentiated: the rescaled examples give no gradient at all
    assert_same_state(ours, run_twice(script_remove_step, model, x_adv, y))


def test_detach_factor_is_the_constant_factor_reading_and_changes_the_step():
    model, x_adv, y = problem()
    detached = run_twice(wpat_step, model, x_adv, y, detach_factor=True)
    assert_same_state(detached, run_twice(constant_factor_step, model, x_adv, y))
    code = run_twice(wpat_step, model, x_adv, y)
    gap = max(float((p - q).detach().abs().max()) for p, q in zip(detached.parameters(), code.parameters()))
    assert gap > 1e-3  # a different update, not a rounding difference


def test_the_logged_losses_are_the_unscaled_ones():
    model, x_adv, y = problem()
    m = copy.deepcopy(model)
    with torch.no_grad():
        expected = F.cross_entropy(copy.deepcopy(m).train()(x_adv), y, reduction="none")
    losses, _ = wpat_step(m, sgd(m), x_adv, y)
    torch.testing.assert_close(losses, expected)
    assert bool((losses < C).any())  # the script's histogram would show these at 1.5


def test_threshold_zero_is_plain_at():
    model, x_adv, y = problem()
    at = copy.deepcopy(model)
    opt = sgd(at)
    for _ in range(2):
        train_step(at, Batch(x_adv, y), lambda m, x, t: x_adv, OBJECTIVES.build("at"), None, opt)
    assert_same_state(run_twice(wpat_step, model, x_adv, y, threshold=0.0), at)


def zero_loss_problem():
    """A linear model on which example 0's cross-entropy is exactly 0.0 in float32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.rand(8, 4)
    y = torch.randint(0, 3, (8,))
    with torch.no_grad():
        model[0].weight.mul_(3)
        x[0] = torch.tensor([60.0, 0.0, 0.0, 0.0])
        model[0].weight[:, 0] = 0.0
        model[0].weight[y[0], 0] = 1.0  # a margin of 60 for example 0
        losses = F.cross_entropy(model(x), y, reduction="none")
    assert float(losses[0]) == 0.0 and bool((losses[1:] > 0).all()) and bool((losses[1:] < C).any())
    return model, x, y


def test_a_loss_of_exactly_zero_gives_a_finite_step_where_the_script_gives_nan():
    model, x, y = zero_loss_problem()
    script = run_twice(script_scale_step, model, x, y)
    assert all(bool(p.isnan().all()) for p in script.parameters())  # 0 · (1.5/0) = NaN everywhere
    ours = run_twice(wpat_step, model, x, y)
    assert all(bool(p.isfinite().all()) for p in ours.parameters())
    assert_same_state(ours, run_twice(script_remove_step, model, x, y))  # value c, no gradient
    detached = run_twice(wpat_step, model, x, y, detach_factor=True)
    assert_same_state(detached, run_twice(constant_factor_step, model, x, y, skip_zero=True))


def test_a_perturbation_searches_on_the_base_loss_and_the_update_at_w_plus_v_is_scaled():
    """mlcat-ls with AWP (never run by the authors): v from AWP on the plain cross-entropy,
    then the scaled loss minimised at w + v and v subtracted."""
    model, x_adv, y = problem()
    ours = copy.deepcopy(model)
    wpat_step(ours, sgd(ours), x_adv, y, perturbation=AWP(gamma=0.05))

    expected = copy.deepcopy(model).train()
    v = AWP(gamma=0.05).compute(expected, lambda m: F.cross_entropy(m(x_adv), y, reduction="none")).v
    with perturbed(expected, v):
        script_scale_step(expected, sgd(expected), x_adv, y)
    assert_same_state(ours, expected)


def test_the_base_is_built_with_its_own_options_and_gives_the_attack():
    cfg = load_config("fmnist-mlp-linf-overfit", ["objective.name=mlcat-ls", "objective.mlcat-ls.base=trades",
                                                  "objective.trades.beta=3", "objective.mlcat-ls.threshold=2"])
    objective = experiment.build_components(cfg).objective
    assert isinstance(objective.base, TRADES) and objective.base.beta == 3 and objective.threshold == 2.0
    assert experiment.train_attack(cfg, objective).loss is experiment.train_attack(
        load_config("fmnist-mlp-linf-overfit", ["objective.name=trades"]), objective.base).loss


# ---------------------------------------------------------------- through wpat train

TINY = ["fmnist-smallcnn-linf", "model.small_cnn.width=4", "data.train_subset=64", "data.test_subset=32",
        "data.batch_size=32", "eval.n_train=32", "eval.steps=1", "attack.steps=1", "perturb.name=none",
        "schedule.epochs=1", "run.threads=1", "run.progress=false", "run.tensorboard=false", f"run.seed={SEED}"]


def train(tmp_path, *overrides: str) -> int:
    return main(["train", *TINY, *overrides, f"run.out_dir={tmp_path}", "run.name=r"])


@needs_fmnist
@pytest.mark.parametrize("combination", [
    ["objective.mlcat-ls.base=at", "run.lsc_threshold=1.5"],
    ["objective.mlcat-ls.base=trades", "perturb.name=awp"],  # never run by the authors
    ["objective.mlcat-ls.base=mart", "perturb.name=rwp", "perturb.rwp.steps=2"],  # never run
    ["perturb.name=mlcat-wp", "perturb.mlcat-wp.steps=2"],  # both realizations: never run
])
def test_trains_through_wpat_train_alone_and_combined(tmp_path, combination):
    assert train(tmp_path, "objective.name=mlcat-ls", *combination) == 0
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_loss"] > 0 and 0 <= record["lsc_frac_below"] <= 1


@pytest.mark.parametrize("bad, key", [
    ("objective.mlcat-ls.threshold=-1", "threshold"),
    ("objective.mlcat-ls.threshold=inf", "threshold"),
    ("objective.mlcat-ls.detach_factor=2", "detach_factor"),
    ("objective.mlcat-ls.base=mlcat-ls", "base"),  # a wrapper does not wrap itself
    ("objective.mlcat-ls.c_min=1.5", "c_min"),
])
def test_nonsense_is_refused_in_one_line_before_any_data_is_read(tmp_path, capsys, bad, key):
    assert train(tmp_path, "objective.name=mlcat-ls", bad, "data.root=/nonexistent") == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
