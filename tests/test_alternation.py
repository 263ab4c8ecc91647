"""The AWP paper's optimisation ablations (§4.2, §5.2, Fig. 2a-b): alternations A of crafting x'
and updating v, and the L1 size norm."""

import copy

import pytest
import torch
from torch import nn

from wpat.training import experiment
from wpat.attacks import PGD
from wpat.configuration.config import load_config
from wpat.helpers.errors import WpatError
from wpat.models import build_model
from wpat.objectives import OBJECTIVES, Batch
from wpat.perturb import AWP, PERTURBATIONS, RWP, perturbed, perturbed_parameters
from wpat.training.step import train_step


def problem(seed=0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.3,), std=(0.3,), width=4)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    return model, x, y


def reference_step_before_alternations(model, x, y, attack, objective, perturbation, optimizer):
    """wpat's training step as it was before alternations existed (one x', one v), adapted
    only to ``compute`` returning a Perturbation."""
    x_adv = attack(model, x, y)
    model.train()

    def loss_fn(m, index=None):
        return objective.per_example(m, Batch(x, y, x_adv=x_adv))

    buffers = [b.clone() for b in model.buffers()]
    losses = loss_fn(model)
    result = perturbation.compute(model, loss_fn, losses=losses)
    v = {}
    if result.moved:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        losses, v = None, result.v
    with perturbed(model, v):
        if losses is None:
            losses = loss_fn(model)
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()


@pytest.mark.parametrize("make", [lambda: AWP(gamma=0.01), lambda: RWP(gamma=0.01, c_min=float("inf"), steps=3)])
def test_one_alternation_is_exactly_the_previous_step(make):
    model, x, y = problem()
    other = copy.deepcopy(model)
    attack = PGD(0.1, 0.05, 2, bn_mode="train")
    objective = OBJECTIVES.build("at")
    opt_a = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(5)
    train_step(model, Batch(x, y), attack, objective, make(), opt_a, alternations=1)
    torch.manual_seed(5)
    reference_step_before_alternations(other, x, y, attack, objective, make(), opt_b)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name  # bitwise


class RecordingAttack:
    """PGD that records the weights it was called at."""

    def __init__(self):
        self.pgd = PGD(0.1, 0.05, 2, bn_mode="train")
        self.seen = []

    def __call__(self, model, x, y):
        self.seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return self.pgd(model, x, y)


def test_two_alternations_craft_the_second_x_at_w_plus_v_and_match_a_hand_built_step():
    model, x, y = problem()
    by_hand = copy.deepcopy(model)
    objective = OBJECTIVES.build("at")
    attack = RecordingAttack()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(3)
    train_step(model, Batch(x, y), attack, objective, AWP(gamma=0.05), opt, alternations=2)

    # By hand: x1 at w, v1 from x1, x2 at w + v1, v2 continuing from v1 with x2, step at w + v2.
    torch.manual_seed(3)
    pgd, awp = PGD(0.1, 0.05, 2, bn_mode="train"), AWP(gamma=0.05)
    x1 = pgd(by_hand, x, y)
    by_hand.train()
    buffers = {k: t.clone() for k, t in by_hand.state_dict().items() if "running" in k or "num_batches" in k}
    r1 = awp.compute(by_hand, lambda m: objective.per_example(m, Batch(x, y, x_adv=x1)))
    saved = {n: p.detach().clone() for n, p in by_hand.named_parameters()}
    with torch.no_grad():
        for n, p in by_hand.named_parameters():
            if n in r1.v:
                p.add_(r1.v[n])
    x2 = pgd(by_hand, x, y)
    with torch.no_grad():
        for n, p in by_hand.named_parameters():
            p.copy_(saved[n])
    by_hand.train()
    r2 = awp.compute(by_hand, lambda m: objective.per_example(m, Batch(x, y, x_adv=x2)), start=r1)
    opt_hand = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    with perturbed(by_hand, r2.v):
        opt_hand.zero_grad()
        objective.per_example(by_hand, Batch(x, y, x_adv=x2)).mean().backward()
        opt_hand.step()

    assert len(attack.seen) == 2
    assert all(torch.equal(attack.seen[0][n], w0[n]) for n in w0)  # x1 at w
    for n, v in r1.v.items():  # x2 at w + v1
        torch.testing.assert_close(attack.seen[1][n], w0[n] + v)
    assert buffers  # the model has BN statistics, kept to the same rules in both
    for (name, a), b in zip(model.state_dict().items(), by_hand.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_continuing_a_search_equals_one_longer_search_on_the_same_loss():
    model, x, y = problem()
    loss_fn = lambda m: nn.functional.cross_entropy(m(x), y, reduction="none")  # noqa: E731
    first = AWP(gamma=0.05).compute(model, loss_fn)
    continued = AWP(gamma=0.05).compute(model, loss_fn, start=first)
    longer = AWP(gamma=0.05, steps=2).compute(model, loss_fn)
    for n in longer.v:
        torch.testing.assert_close(continued.v[n], longer.v[n], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["awp", "rwp", "awp-lsc"])
def test_l1_size_norm(name):
    model, x, y = problem()
    loss_fn = lambda m: nn.functional.cross_entropy(m(x), y, reduction="none")  # noqa: E731
    options = {"rwp": {"c_min": float("inf")}}.get(name, {})
    v = PERTURBATIONS.build(name, gamma=0.02, norm="l1", **options).compute(model, loss_fn).v
    w = dict(perturbed_parameters(model))
    if name == "rwp":  # global: over the whole model
        total_v = sum(t.abs().sum() for t in v.values())
        total_w = sum(p.detach().abs().sum() for p in w.values())
        torch.testing.assert_close(total_v, 0.02 * total_w)
        ratios = torch.stack([v[n].abs().sum() / w[n].detach().abs().sum() for n in v])
        assert ratios.max() > 1.2 * ratios.min()  # not per layer
    else:  # per layer
        for n in v:
            torch.testing.assert_close(v[n].abs().sum(), 0.02 * w[n].detach().abs().sum())
        l2 = PERTURBATIONS.build(name, gamma=0.02).compute(model, loss_fn).v
        assert any(not torch.allclose(v[n], l2[n]) for n in v)


@pytest.mark.parametrize("overrides, fragment", [
    (["perturb.alternations=0"], "perturb.alternations: 0 is invalid"),
    (["perturb.rwp.norm=linf"], "perturb.rwp: RWP norm: 'linf' is invalid; expected one of l2, l1"),
    (["perturb.name=awp", "perturb.awp.norm=l3"], "perturb.awp: AWP norm: 'l3' is invalid"),
    (["perturb.name=random", "perturb.alternations=2"], "perturb.alternations: 2 needs a searched"),
])
def test_invalid_alternations_and_norms_are_one_line(overrides, fragment):
    with pytest.raises(WpatError, match=fragment) as err:
        experiment.build_components(load_config("fmnist-smallcnn-linf", overrides))
    assert "\n" not in str(err.value)
