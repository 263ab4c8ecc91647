"""SAM-AT (``perturb/sam_at.py``) against a rendition of its authors' training step.

The rendition is written from reading ``weizeming/SAM_AT`` @ 9a7bd20: ``train.py`` (the
``--adv --opt SAM`` branch: PGD, forward, ``loss.backward()``, ``first_step``, forward,
backward, ``second_step``), ``utils.py`` (``Attack.perturb``: train-mode PGD whose
``loss.backward()`` on the batch-mean cross-entropy also fills the weights' ``.grad``, never
zeroed) and davda54's ``sam.py`` that it imports (``SAM_segmentation/utils/sam.py`` in the same
repository: ρ/(‖g‖ + 1e-12), a copy of ``w`` put back before the base optimizer's step). The
model, batch and weights are those of ``test_method_sam.py``; both sides draw PGD's random start
from the same seed.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SEED, fashion_mnist_available
from test_method_sam import assert_same_model, problem, sgd
from wpat.attacks import PGD, recording_weight_gradients
from wpat.attacks.base import weight_gradient_recording
from wpat.cli import main
from wpat.helpers.errors import WpatError
from wpat.objectives import OBJECTIVES, Batch
from wpat.perturb.sam import SAM
from wpat.perturb.sam_at import SAMAT
from wpat.training.step import train_step

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
EPS, ALPHA, STEPS, RHO = 0.1, 0.03, 5, 0.5


def their_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """utils.py ``Attack.perturb`` (L∞, random start; their ``normalize`` is the identity here)."""
    delta = torch.zeros_like(x)
    delta.uniform_(-EPS, EPS)
    delta = torch.clamp(delta, 0 - x, 1 - x)
    delta.requires_grad = True
    for _ in range(STEPS):
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()  # delta.grad, and every weight's .grad
        g = delta.grad.detach()
        d = torch.clamp(delta + ALPHA * torch.sign(g), min=-EPS, max=EPS).detach()
        d = torch.clamp(d, 0 - x, 1 - x)
        delta.data = d
        delta.grad.zero_()
    return delta.detach()


def their_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds, path: bool = True) -> nn.Module:
    """train.py's SAM branch with davda54's first_step/second_step; ``path=False`` zeroes the
    grads after the attack (SAM on the final x′ only)."""
    model.train()
    opt = sgd(model)
    params = list(model.parameters())
    for seed in seeds:
        torch.manual_seed(seed)
        delta = their_pgd(model, x, y)
        if not path:
            opt.zero_grad()
        F.cross_entropy(model(x + delta), y).backward()
        with torch.no_grad():  # first_step(zero_grad=True)
            grad_norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in params if p.grad is not None]), p=2)
            scale = RHO / (grad_norm + 1e-12)
            old = {}
            for p in params:
                if p.grad is None:
                    continue
                old[p] = p.data.clone()
                p.add_(1.0 * p.grad * scale)
        opt.zero_grad()
        F.cross_entropy(model(x + delta), y).backward()
        with torch.no_grad():  # second_step(zero_grad=True)
            for p in params:
                if p.grad is None:
                    continue
                p.data = old[p]
        opt.step()
        opt.zero_grad()
    return model


def wpat_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds, perturbation) -> nn.Module:
    attack = PGD(EPS, ALPHA, STEPS, bn_mode="train")
    optimizer = sgd(model)
    objective = OBJECTIVES.build("at")
    for seed in seeds:
        torch.manual_seed(seed)
        train_step(model, Batch(x, y), attack, objective, perturbation, optimizer)
    return model


@pytest.mark.parametrize("ascent_grad", ["attack_path", "final"])
def test_two_steps_equal_their_training_step(ascent_grad):
    model, x, _, y = problem()
    seeds = (SEED + 10, SEED + 11)
    reference = their_steps(copy.deepcopy(model), x, y, seeds, path=ascent_grad == "attack_path")
    trained = wpat_steps(copy.deepcopy(model), x, y, seeds, SAMAT(rho=RHO, ascent_grad=ascent_grad))
    assert_same_model(trained, reference)
    # K attack forwards, the ascent forward at w and the forward at w + v, each step
    assert trained.bn.num_batches_tracked.item() == model.bn.num_batches_tracked.item() + 2 * (STEPS + 2)


def test_the_attack_path_changes_the_step():
    model, x, _, y = problem()
    seeds = (SEED + 10,)
    path = wpat_steps(copy.deepcopy(model), x, y, seeds, SAMAT(rho=RHO))
    final = wpat_steps(copy.deepcopy(model), x, y, seeds, SAMAT(rho=RHO, ascent_grad="final"))
    with pytest.raises(AssertionError):
        assert_same_model(path, final)


def test_an_attack_that_records_no_weight_gradients_is_an_error():
    model, x, x_adv, y = problem()
    with pytest.raises(WpatError, match="recorded no weight gradients"):
        train_step(model, Batch(x, y), lambda m, x_, y_: x_adv, OBJECTIVES.build("at"), SAMAT(), sgd(model))


def test_only_a_perturbation_that_declares_it_records_the_attack():
    model, x, x_adv, y = problem()
    seen = []

    def spy(m, x_, y_):
        seen.append(weight_gradient_recording())
        return x_adv

    objective = OBJECTIVES.build("at")
    for perturbation in (None, SAM(), SAMAT(ascent_grad="final")):
        train_step(model, Batch(x, y), spy, objective, perturbation, sgd(model))
    assert seen == [None, None, None]


def test_the_recording_leaves_grad_empty():
    """PGD fills no .grad with the recording either: the sums go to the recording."""
    model, x, _, y = problem()
    attack = PGD(EPS, ALPHA, STEPS, bn_mode="train")
    with recording_weight_gradients(model) as recorded:
        attack(model, x, y)
    assert recorded.iterations == STEPS
    assert set(recorded.sums) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias"}
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------- through wpat train

TINY = ["data.train_subset=128", "data.test_subset=32", "data.batch_size=32", "eval.n_train=32",
        "eval.steps=1", "eval.every=1", "attack.steps=2", "schedule.epochs=1", "run.progress=false",
        "run.tensorboard=false", f"run.seed={SEED}"]


def train(tmp_path, *overrides: str) -> int:
    return main(["train", "fmnist-mlp-linf-overfit-sam-at", *overrides, *TINY, f"run.out_dir={tmp_path}",
                 "run.name=r"])


@needs_fmnist
@pytest.mark.parametrize("overrides", [(), ("objective.name=mart",),
                                       ("objective.name=trades", "perturb.sam-at.ascent_grad=final")])
def test_trains_through_wpat_train(tmp_path, overrides):
    assert train(tmp_path, *overrides) == 0
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["perturb_active"] and record["v_over_w"] > 0


@needs_fmnist
def test_the_attack_path_with_a_kl_attack_is_refused_in_one_line_before_any_data_is_read(tmp_path, capsys):
    assert train(tmp_path, "objective.name=trades") == 2
    err = capsys.readouterr().err.strip()
    assert "perturb.sam-at" in err and "ascent_grad=final" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
