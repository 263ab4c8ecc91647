"""wpat.perturb: AWP, RWP, AWP-LSC and random weight perturbation.

The reference functions below follow the authors' algorithm literally (docs/design.md, "Reference semantics"): a deep-copied
proxy model, a plain-SGD step on −mean(loss), the weight difference rescaled. They share no code
with the library.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wpat.helpers.errors import WpatError
from wpat.perturb import (AWP, RWP, LSCRangeAWP, RandomWP, add_perturbation, PERTURBATIONS,
                          perturbed, perturbed_parameters)

BATCH = 16
WEIGHTS = ["conv1.weight", "conv2.weight", "fc.weight"]


class TinyBNNet(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU-pool-linear, 450 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def make_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyBNNet()
    with torch.no_grad():
        model.fc.weight.mul_(4)  # spread the per-example losses so c_min can split the batch
        for _ in range(3):  # non-trivial running statistics to protect
            model(torch.rand(BATCH, 1, 6, 6))
    x = torch.rand(BATCH, 1, 6, 6)
    y = torch.randint(0, 10, (BATCH,))

    def loss_fn(m: nn.Module, index: torch.Tensor | None = None) -> torch.Tensor:
        if index is None:
            return F.cross_entropy(m(x), y, reduction="none")
        return F.cross_entropy(m(x[index]), y[index], reduction="none")

    return model, x, y, loss_fn


def train_losses(model: nn.Module, loss_fn) -> torch.Tensor:
    m = copy.deepcopy(model).train()
    with torch.no_grad():
        return loss_fn(m)


def mean_loss_grad(model: nn.Module, loss_fn, weight=None) -> dict[str, torch.Tensor]:
    """∇ of the (optionally weighted) batch-mean loss at the current weights, train mode."""
    m = copy.deepcopy(model).train()
    losses = loss_fn(m)
    objective = losses.mean() if weight is None else (losses * weight).mean()
    params = [dict(m.named_parameters())[n] for n in WEIGHTS]
    return dict(zip(WEIGHTS, torch.autograd.grad(objective, params)))


def is_perturbed_weight(key: str, t: torch.Tensor) -> bool:
    return t.dim() > 1 and "weight" in key


def reference_awp(model, x, y, gamma):
    """The authors' AWP: one SGD step of a proxy on −mean CE, difference rescaled per layer."""
    proxy = copy.deepcopy(model)
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    optimizer = torch.optim.SGD(proxy.parameters(), lr=0.01)
    loss = -F.cross_entropy(proxy(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    v = {}
    for (key, old), (_, new) in zip(model.state_dict().items(), proxy.state_dict().items()):
        if is_perturbed_weight(key, old):
            diff = new - old
            v[key] = gamma * old.norm() / (diff.norm() + 1e-20) * diff
    return v


def reference_rwp(model, x, y, gamma, c_min, steps, early_exit=True):
    """The authors' RWP: K2 proxy steps at w + v on −mean(CE·I), summed, rescaled globally."""
    proxy = copy.deepcopy(model)
    optimizer = torch.optim.SGD(proxy.parameters(), lr=0.01)
    w = {k: t.clone() for k, t in model.state_dict().items() if is_perturbed_weight(k, t)}
    total = {k: torch.zeros_like(t) for k, t in w.items()}
    v = {k: torch.zeros_like(t) for k, t in w.items()}
    for _ in range(steps):
        proxy.load_state_dict(model.state_dict())
        state = proxy.state_dict()
        with torch.no_grad():
            for k in w:
                state[k].add_(v[k])
        proxy.train()
        losses = F.cross_entropy(proxy(x), y, reduction="none")
        indicator = (losses < c_min).float().detach()
        if early_exit and indicator.sum() == 0:
            break
        before = {k: state[k].clone() for k in w}
        optimizer.zero_grad()
        (-(losses * indicator).mean()).backward()
        optimizer.step()
        for k in w:
            total[k] += state[k] - before[k]
        norm_total = math.sqrt(sum(float(t.norm()) ** 2 for t in total.values()))
        norm_w = math.sqrt(sum(float(t.norm()) ** 2 for t in w.values()))
        v = {k: gamma * norm_w / (norm_total + 1e-20) * t for k, t in total.items()}
    return v


def assert_agrees(v: dict, ref: dict, rtol: float = 1e-3) -> None:
    assert sorted(v) == sorted(ref)
    for key in ref:
        if not ref[key].any():
            assert not v[key].any(), key
        else:
            err = (v[key] - ref[key]).norm() / ref[key].norm()
            assert err < rtol, f"{key}: relative error {err:.2e}"


def norms(tensors) -> torch.Tensor:
    return torch.stack([t.norm() for t in tensors])


def global_norm(tensors) -> torch.Tensor:
    return norms(tensors).norm()


# --- the contract: which tensors, and nothing left changed -----------------------------------

ALL = {
    "awp": lambda: AWP(gamma=0.05),
    "awp-2steps": lambda: AWP(gamma=0.05, steps=2),
    "rwp": lambda: RWP(gamma=0.05, c_min=math.inf, steps=3),
    "awp-lsc": lambda: LSCRangeAWP(gamma=0.05, low=0.0, high=3.0),
    "random": lambda: RandomWP(gamma=0.05, seed=1),
}


def snapshot(model: nn.Module):
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    return params, grads, buffers, modes


def assert_bitwise_same(model: nn.Module, before) -> None:
    params, grads, buffers, modes = before
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert {n: m.training for n, m in model.named_modules()} == modes


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("with_grads", [False, True])
def test_compute_leaves_model_bitwise_unchanged(name, with_grads):
    model, _, _, loss_fn = make_problem()
    if with_grads:  # some .grad set, some None
        for p in [model.conv1.weight, model.bn2.bias, model.fc.weight]:
            p.grad = torch.randn_like(p)
    model.eval()
    model.bn1.train()  # mixed modes must come back per module
    seen_modes = []

    def recording_loss_fn(m):
        seen_modes.append(all(mod.training for mod in m.modules()))
        return loss_fn(m)

    before = snapshot(model)
    v = ALL[name]().compute(model, recording_loss_fn).v
    assert sorted(v) == WEIGHTS  # only >1-D weights: no bias, no BN affine
    assert any(t.any() for t in v.values())
    assert_bitwise_same(model, before)
    assert all(seen_modes)  # the search forwards ran in train mode


@pytest.mark.parametrize("name", PERTURBATIONS.names())
def test_every_registered_perturbation_keeps_the_contract_with_its_defaults(name):
    """Every method in the registry, also one added later in a file of its own: only >1-D
    weights in v, and the model handed back bitwise."""
    model, _, _, loss_fn = make_problem()
    before = snapshot(model)
    v = PERTURBATIONS.build(name).compute(model, loss_fn).v
    assert set(v) <= set(WEIGHTS)
    assert_bitwise_same(model, before)


def test_perturbed_parameters_are_the_multidimensional_trainable_ones():
    model, *_ = make_problem()
    model.conv2.weight.requires_grad_(False)  # frozen: never perturbed
    assert [n for n, _ in perturbed_parameters(model)] == ["conv1.weight", "fc.weight"]
    with pytest.raises(WpatError, match="no trainable parameter"):
        perturbed_parameters(nn.Sequential(nn.BatchNorm1d(3)))


def test_perturbed_steps_at_w_plus_v_and_carries_the_update_back():
    model, _, _, loss_fn = make_problem()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    v = AWP(gamma=0.05).compute(model, loss_fn).v
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with perturbed(model, v):
        for n in WEIGHTS:
            torch.testing.assert_close(dict(model.named_parameters())[n], w[n] + v[n])
        optimizer.zero_grad()
        loss_fn(model).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
    # w_new = (w + v − η∇_{w+v}) − v  (AWP eq. 11)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, w[n] - 0.1 * grads[n])


def test_perturbed_subtracts_v_when_the_block_raises():
    model, _, _, loss_fn = make_problem()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    v = AWP(gamma=0.05).compute(model, loss_fn).v
    with pytest.raises(RuntimeError, match="boom"):
        with perturbed(model, v):
            raise RuntimeError("boom")
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, w[n])


def test_add_perturbation_sign():
    model, *_ = make_problem()
    w = model.fc.weight.detach().clone()
    v = {"fc.weight": torch.full_like(w, 0.5)}
    add_perturbation(model, v, sign=-2.0)
    torch.testing.assert_close(model.fc.weight.detach(), w - 1.0)


# --- AWP ------------------------------------------------------------------------------------

def test_awp_is_gamma_times_layer_norm_along_the_normalized_mean_loss_gradient():
    model, _, _, loss_fn = make_problem()
    gamma = 0.02
    g = mean_loss_grad(model, loss_fn)
    v = AWP(gamma=gamma).compute(model, loss_fn).v
    params = dict(model.named_parameters())
    for n in WEIGHTS:
        torch.testing.assert_close(v[n].norm(), gamma * params[n].norm())
        torch.testing.assert_close(v[n] / v[n].norm(), g[n] / g[n].norm())


def test_awp_agrees_with_the_authors_proxy_algorithm():
    model, x, y, loss_fn = make_problem()
    assert_agrees(AWP(gamma=0.01).compute(model, loss_fn).v, reference_awp(model, x, y, 0.01))


def test_awp_two_steps_ascends_again_at_w_plus_v_and_rescales_the_sum():
    model, _, _, loss_fn = make_problem()
    gamma = 0.1
    g1 = mean_loss_grad(model, loss_fn)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    v1 = {n: gamma * w[n].norm() / g1[n].norm() * g1[n] for n in WEIGHTS}
    shifted = copy.deepcopy(model)
    add_perturbation(shifted, v1)
    g2 = mean_loss_grad(shifted, loss_fn)
    total = {n: g1[n] + g2[n] for n in WEIGHTS}
    expected = {n: gamma * w[n].norm() / total[n].norm() * total[n] for n in WEIGHTS}
    v = AWP(gamma=gamma, steps=2).compute(model, loss_fn).v
    assert_agrees(v, expected, rtol=1e-5)
    assert (v["conv1.weight"] - v1["conv1.weight"]).norm() > 1e-3 * v1["conv1.weight"].norm()


# --- RWP ------------------------------------------------------------------------------------

def test_rwp_global_norm_is_gamma_times_global_weight_norm():
    model, _, _, loss_fn = make_problem()
    rwp = RWP(gamma=0.03, c_min=math.inf, steps=4)
    result = rwp.compute(model, loss_fn)
    v = result.v
    w = [p for _, p in perturbed_parameters(model)]
    torch.testing.assert_close(global_norm(v[n] for n in WEIGHTS), 0.03 * global_norm(w))
    # global, not per layer: the layers' ratios differ
    ratios = norms(v[n] for n in WEIGHTS) / norms(w)
    assert ratios.max() > 1.5 * ratios.min()
    assert int(result.stats["perturb_steps"]) == 4
    assert float(result.stats["rwp_frac_below"]) == 1.0
    assert result.stats["v_over_w"].item() == pytest.approx(0.03, rel=1e-5)


def test_rwp_is_zero_when_every_loss_is_at_least_c_min():
    model, _, _, loss_fn = make_problem()
    c_min = float(train_losses(model, loss_fn).min())  # strict: the smallest loss is not below
    rwp = RWP(gamma=0.05, c_min=c_min)
    result = rwp.compute(model, loss_fn)
    v = result.v
    assert sorted(v) == WEIGHTS and not any(t.any() for t in v.values())
    assert int(result.stats["perturb_steps"]) == 0
    assert float(result.stats["rwp_frac_below"]) == 0.0
    assert float(result.stats["v_over_w"]) == 0.0


def test_rwp_one_step_all_selected_is_globally_normalized_awp():
    model, _, _, loss_fn = make_problem()
    g = mean_loss_grad(model, loss_fn)
    w = [p for _, p in perturbed_parameters(model)]
    scale = 0.05 * global_norm(w) / global_norm(g.values())
    v = RWP(gamma=0.05, c_min=math.inf, steps=1).compute(model, loss_fn).v
    for n in WEIGHTS:
        torch.testing.assert_close(v[n], scale * g[n])


def split_c_min(losses: torch.Tensor) -> float:
    """A c_min in the middle of the largest gap between middle losses: a partial selection."""
    s = losses.sort().values
    i = int(torch.argmax(s[5:11] - s[4:10])) + 4
    return float((s[i] + s[i + 1]) / 2)


@pytest.mark.parametrize("which", ["all", "partial", "none"])
def test_rwp_agrees_with_the_authors_proxy_algorithm(which):
    model, x, y, loss_fn = make_problem()
    losses = train_losses(model, loss_fn)
    c_min = {"all": math.inf, "partial": split_c_min(losses), "none": 0.0}[which]
    rwp = RWP(gamma=0.05, c_min=c_min, steps=10)
    result = rwp.compute(model, loss_fn)
    v = result.v
    assert_agrees(v, reference_rwp(model, x, y, 0.05, c_min, 10))
    expected_frac = float((losses < c_min).float().mean())
    assert float(result.stats["rwp_frac_below"]) == expected_frac
    if which == "partial":
        assert 0 < expected_frac < 1


def test_rwp_early_exit_gives_the_v_of_running_all_steps():
    model, x, y, loss_fn = make_problem()
    # Only the easiest example is below c_min; one large ascent step lifts it above.
    s = train_losses(model, loss_fn).sort().values
    c_min = float((s[0] + s[1]) / 2)
    rwp = RWP(gamma=0.3, c_min=c_min, steps=10)
    result = rwp.compute(model, loss_fn)
    v = result.v
    assert 0 < int(result.stats["perturb_steps"]) < 10  # the exit did fire, after an update
    assert_agrees(v, reference_rwp(model, x, y, 0.3, c_min, 10, early_exit=False))


def test_rwp_subset_matches_exact_when_losses_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[3].weight.mul_(20)
    x, y = torch.rand(BATCH, 1, 6, 6), torch.randint(0, 10, (BATCH,))
    indices = []

    def loss_fn(m, index=None):
        if index is None:
            return F.cross_entropy(m(x), y, reduction="none")
        indices.append(index)
        return F.cross_entropy(m(x[index]), y[index], reduction="none")

    c_min = split_c_min(train_losses(model, loss_fn))
    exact = RWP(gamma=0.05, c_min=c_min, steps=3).compute(model, loss_fn).v
    assert not indices  # the exact default never asks for a subset
    subset = RWP(gamma=0.05, c_min=c_min, steps=3, subset=True).compute(model, loss_fn).v
    assert_agrees(subset, exact, rtol=1e-5)
    selected = (train_losses(model, loss_fn) < c_min).nonzero().squeeze(1)
    assert torch.equal(indices[0], selected)


# --- AWP-LSC and random ---------------------------------------------------------------------

def test_lsc_full_range_is_awp():
    model, _, _, loss_fn = make_problem()
    lsc = LSCRangeAWP(gamma=0.02, low=0.0, high=math.inf).compute(model, loss_fn).v
    awp = AWP(gamma=0.02).compute(model, loss_fn).v
    assert all(torch.equal(lsc[n], awp[n]) for n in WEIGHTS)


def test_lsc_ascends_only_the_band_low_inclusive_high_exclusive():
    model, _, _, loss_fn = make_problem()
    s = train_losses(model, loss_fn).sort().values
    low, high = float(s[3]), float(s[9])  # selects sorted examples 3..8
    losses = train_losses(model, loss_fn)
    band = ((losses >= low) & (losses < high)).float()
    assert int(band.sum()) == 6
    g = mean_loss_grad(model, loss_fn, weight=band)
    lsc = LSCRangeAWP(gamma=0.02, low=low, high=high)
    result = lsc.compute(model, loss_fn)
    v = result.v
    params = dict(model.named_parameters())
    for n in WEIGHTS:
        torch.testing.assert_close(v[n], 0.02 * params[n].norm() / g[n].norm() * g[n])
    assert float(result.stats["lsc_frac_in_range"]) == 6 / BATCH


def test_lsc_empty_band_gives_zero():
    model, _, _, loss_fn = make_problem()
    v = LSCRangeAWP(gamma=0.02, low=100.0, high=200.0).compute(model, loss_fn).v
    assert not any(t.any() for t in v.values())


def test_random_wp_layer_norms_seeded_stream_and_no_loss_evaluation():
    model, *_ = make_problem()

    def no_loss(m):
        raise AssertionError("random WP must not evaluate the loss")

    first = RandomWP(gamma=0.2, seed=3)
    a, b = first.compute(model, no_loss).v, first.compute(model, no_loss).v
    again = RandomWP(gamma=0.2, seed=3).compute(model, no_loss).v
    params = dict(model.named_parameters())
    for n in WEIGHTS:
        torch.testing.assert_close(a[n].norm(), 0.2 * params[n].norm())
        assert torch.equal(a[n], again[n])  # same seed, same stream
        assert not torch.equal(a[n], b[n])  # a new direction every call
    assert RandomWP(gamma=0.2).compute(model, no_loss).stats["v_over_w"].item() == pytest.approx(0.2, rel=1e-5)


def test_random_wp_without_seed_follows_the_global_rng():
    model, *_ = make_problem()
    torch.manual_seed(7)
    a = RandomWP(gamma=0.1).compute(model, None).v
    torch.manual_seed(7)
    b = RandomWP(gamma=0.1).compute(model, None).v
    assert all(torch.equal(a[n], b[n]) for n in WEIGHTS)


# --- user errors and the registry ----------------------------------------------------------

@pytest.mark.parametrize("build, shown", [
    (lambda: AWP(gamma=-0.1), "-0.1"),
    (lambda: AWP(gamma=math.nan), "nan"),
    (lambda: AWP(gamma=math.inf), "inf"),
    (lambda: AWP(gamma="0.01"), "'0.01'"),
    (lambda: AWP(steps=2.0), "steps: 2.0"),
    (lambda: AWP(steps=0), "steps: 0"),
    (lambda: RWP(steps=0), "steps: 0"),
    (lambda: RWP(c_min=-1.0), "c_min: -1.0"),
    (lambda: RWP(gamma=-1.0), "gamma: -1.0"),
    (lambda: RWP(c_min=math.nan), "c_min: nan"),
    (lambda: LSCRangeAWP(low=2.0, high=1.0), "low=2.0"),
    (lambda: RandomWP(gamma=-0.5), "gamma: -0.5"),
])
def test_bad_values_raise_wpat_error_naming_the_value(build, shown):
    with pytest.raises(WpatError, match=shown):
        build()


def test_build_perturbation_by_name():
    rwp = PERTURBATIONS.build("rwp", gamma=0.02, c_min=4.0)
    assert isinstance(rwp, RWP) and rwp.c_min == 4.0 and rwp.steps == 10
    assert PERTURBATIONS.build("awp").steps == 1  # each method its own default: AWP 1, RWP K2 = 10
    assert isinstance(PERTURBATIONS.build("awp-lsc", high=1.5), LSCRangeAWP)
    with pytest.raises(WpatError, match="awp, awp-lsc, random, rwp"):
        PERTURBATIONS.build("sam")
    with pytest.raises(WpatError, match="weight perturbation 'awp' has no option 'c_min'; its options: gamma, steps, norm"):
        PERTURBATIONS.build("awp", c_min=1.7)


def test_every_perturbation_documents_itself():
    for name in PERTURBATIONS.names():
        cls = PERTURBATIONS.get(name)
        assert cls.__dict__.get("__doc__"), name  # its own text, not the base class's
        assert "Args:" in cls.__doc__ and "Statistics:" in cls.__doc__


def test_loss_fn_must_return_per_example_losses():
    model, _, _, loss_fn = make_problem()
    before = snapshot(model)
    with pytest.raises(WpatError, match=r"shape \[B\]"):
        AWP().compute(model, lambda m: loss_fn(m).mean())
    assert_bitwise_same(model, before)  # restored even when the search fails


@pytest.mark.parametrize("which", ["partial", "none", "exit-fires"])
def test_rwp_without_the_early_exit_gives_the_same_v(which):
    """early_exit=False runs all K2 steps with no host synchronisation; v is the same."""
    model, x, y, loss_fn = make_problem()
    s = train_losses(model, loss_fn).sort().values
    c_min = {"partial": split_c_min(s), "none": 0.0, "exit-fires": float((s[0] + s[1]) / 2)}[which]
    gamma = 0.3 if which == "exit-fires" else 0.05
    exact = RWP(gamma=gamma, c_min=c_min, steps=10).compute(model, loss_fn)
    synced_free = RWP(gamma=gamma, c_min=c_min, steps=10, early_exit=False).compute(model, loss_fn)
    assert_agrees(synced_free.v, exact.v)
    assert int(synced_free.stats["perturb_steps"]) == 10
