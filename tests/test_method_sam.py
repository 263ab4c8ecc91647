"""SAM and ASAM (``perturb/sam.py``) against a rendition of MAIR's minimizers.

The rendition (``MairMinimizer``) is written from reading ``Harry24k/MAIR`` @ 201fca1,
``mair/optim/minimizer.py`` (``SAM.step``, ``SAM.ascent_step``/``descent_step``,
``ASAM.ascent_step`` with its in-place ``p.grad`` scaling) and ``mair/defenses/trainer.py``
(``_update_weight`` hands the cost function, attack included, to ``minimizer.step``). It shares
no code with the library. Weight decay and momentum are on, so a step taken at ``w + v``
instead of ``w`` would show; the model has BatchNorm (two running-statistics updates per step),
biases, a frozen layer and a parameter outside the graph.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SEED, fashion_mnist_available
from wpat.attacks import PGD
from wpat.cli import main
from wpat.helpers.errors import WpatError
from wpat.objectives import OBJECTIVES, Batch
from wpat.perturb import PERTURBATIONS
from wpat.perturb.sam import ASAM, SAM
from wpat.training.step import train_step

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
BATCH = 16


class Net(nn.Module):
    """frozen conv - conv - BN - ReLU - linear, and a layer that never runs (its grad stays None)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Conv2d(3, 3, 1)
        self.frozen.requires_grad_(False)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.spare = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(self.frozen(x)))).flatten(1))


def problem(seed: int = 0):
    torch.manual_seed(seed)
    model = Net()
    with torch.no_grad():
        model.fc.weight.mul_(3)
        model(torch.rand(BATCH, 3, 8, 8))  # non-trivial running statistics
    x = torch.rand(BATCH, 3, 8, 8)
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, 5, (BATCH,))
    return model, x, x_adv, y


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay 20x the usual 5e-4: where the step is taken (w or w + v) then moves the update
    # by ~1e-4, far above the comparison's tolerance.
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)


class MairMinimizer:
    """MAIR's ``SAM`` / ``ASAM`` minimizer, as its code reads."""

    def __init__(self, model, optimizer, rho, adaptive=False, eta=0.01):
        self.model, self.optimizer, self.rho, self.adaptive, self.eta = model, optimizer, rho, adaptive, eta
        self.state = defaultdict(dict)

    def step(self, cost_fn):
        cost_fn().backward()
        self.ascent_step()
        cost_fn().backward()
        self.descent_step()

    @torch.no_grad()
    def ascent_step(self):
        if not self.adaptive:  # SAM.ascent_step
            norms = [torch.norm(p.grad, p=2) for _, p in self.model.named_parameters() if p.grad is not None]
            grad_norm = torch.norm(torch.stack(norms), p=2) + 1.0e-16
            for _, p in self.model.named_parameters():
                if p.grad is None:
                    continue
                self.state[p]["eps"] = self.rho / grad_norm * p.grad.clone().detach()
                p.add_(self.state[p]["eps"])
        else:  # ASAM.ascent_step: p.grad scaled in place twice, the buffer reused for eps
            wgrads = []
            for n, p in self.model.named_parameters():
                if p.grad is None:
                    continue
                t_w = self.state[p].get("eps")
                if t_w is None:
                    t_w = torch.clone(p).detach()
                    self.state[p]["eps"] = t_w
                if "weight" in n:
                    t_w[...] = p[...]
                    t_w.abs_().add_(self.eta)
                    p.grad.mul_(t_w)
                wgrads.append(torch.norm(p.grad, p=2))
            wgrad_norm = torch.norm(torch.stack(wgrads), p=2) + 1.0e-16
            for n, p in self.model.named_parameters():
                if p.grad is None:
                    continue
                t_w = self.state[p].get("eps")
                if "weight" in n:
                    p.grad.mul_(t_w)
                eps = t_w
                eps[...] = p.grad[...]
                eps.mul_(self.rho / wgrad_norm)
                p.add_(eps)
        self.optimizer.zero_grad()

    @torch.no_grad()
    def descent_step(self):
        for _, p in self.model.named_parameters():
            if p.grad is None:
                continue
            p.sub_(self.state[p]["eps"])
        self.optimizer.step()
        self.optimizer.zero_grad()


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    for (name, t), u in zip(a.state_dict().items(), b.state_dict().values()):
        if t.is_floating_point():
            torch.testing.assert_close(t, u, rtol=1e-4, atol=1e-6, msg=name)
        else:
            assert torch.equal(t, u), name  # num_batches_tracked: two updates per step


def wpat_steps(model, x, x_adv, y, perturbation, steps=2, **options):
    optimizer = sgd(model)
    objective = OBJECTIVES.build("at")
    for _ in range(steps):
        train_step(model, Batch(x, y), lambda m, x_, y_: x_adv, objective, perturbation, optimizer, **options)
    return model


def mair_steps(model, x_adv, y, steps=2, **options):
    model.train()
    minimizer = MairMinimizer(model, sgd(model), **options)
    for _ in range(steps):
        minimizer.step(lambda: F.cross_entropy(model(x_adv), y))
    return model


@pytest.mark.parametrize("perturbation, options", [
    (SAM(rho=0.5), {"rho": 0.5}),
    (ASAM(rho=2.0, eta=0.01), {"rho": 2.0, "adaptive": True, "eta": 0.01}),
    (ASAM(rho=2.0, eta=0.0), {"rho": 2.0, "adaptive": True, "eta": 0.0}),
])
def test_two_steps_equal_mairs_minimizer(perturbation, options):
    model, x, x_adv, y = problem()
    reference = mair_steps(copy.deepcopy(model), x_adv, y, **options)
    trained = wpat_steps(copy.deepcopy(model), x, x_adv, y, perturbation)
    assert_same_model(trained, reference)
    assert trained.bn.num_batches_tracked.item() == model.bn.num_batches_tracked.item() + 4
    assert torch.equal(trained.spare.weight, model.spare.weight)  # outside the graph: never moved
    assert torch.equal(trained.frozen.weight, model.frozen.weight)


def test_the_step_is_taken_from_w_with_weight_decay_there():
    """The same ascent with the AWP/RWP step (at w + v, v subtracted after) is another update:
    the rendition tells them apart."""
    model, x, x_adv, y = problem()
    reference = mair_steps(copy.deepcopy(model), x_adv, y, rho=0.5)

    class AtWPlusV(SAM):
        descends_from_w = False

    trained = wpat_steps(copy.deepcopy(model), x, x_adv, y, AtWPlusV(rho=0.5))
    with pytest.raises(AssertionError):
        assert_same_model(trained, reference)


def test_the_ascent_forward_counts_in_the_running_statistics():
    model, x, x_adv, y = problem()
    reference = mair_steps(copy.deepcopy(model), x_adv, y, steps=1, rho=0.5)

    class ProxyForward(SAM):  # the AWP/RWP rule: the forward at w does not count
        search_forward_counts = False

    trained = wpat_steps(copy.deepcopy(model), x, x_adv, y, ProxyForward(rho=0.5), steps=1)
    assert trained.bn.num_batches_tracked.item() == reference.bn.num_batches_tracked.item() - 1
    assert not torch.allclose(trained.bn.running_mean, reference.bn.running_mean, rtol=1e-4, atol=1e-6)


def test_the_scripts_scoring_forward_counts_with_the_ascent_forward():
    """With ``attack.script_forwards`` (AT) the forward at w is also the score of x′: three
    updates per step, as a scoring forward followed by MAIR's step."""
    model, x, x_adv, y = problem()
    reference = copy.deepcopy(model).train()
    minimizer = MairMinimizer(reference, sgd(reference), rho=0.5)
    with torch.no_grad():
        reference(x_adv)  # the score
    minimizer.step(lambda: F.cross_entropy(reference(x_adv), y))
    trained = wpat_steps(copy.deepcopy(model), x, x_adv, y, SAM(rho=0.5), steps=1, score_forward=True)
    assert_same_model(trained, reference)


def test_recraft_crafts_the_second_example_against_w_plus_v():
    """MAIR's trainer: the cost function, attack included, runs at w and again at w + v. The same
    deterministic eval-mode PGD (torchattacks' mode) serves both sides."""
    model, x, _, y = problem()
    attack = PGD(0.1, 0.03, 3, random_start=False, bn_mode="eval")
    reference = copy.deepcopy(model).train()
    minimizer = MairMinimizer(reference, sgd(reference), rho=0.5)
    for _ in range(2):
        minimizer.step(lambda: F.cross_entropy(reference(attack(reference, x, y)), y))

    objective = OBJECTIVES.build("at")
    results = {}
    for recraft in (True, False):
        trained = copy.deepcopy(model)
        optimizer = sgd(trained)
        for _ in range(2):
            train_step(trained, Batch(x, y), attack, objective, SAM(rho=0.5, recraft=recraft), optimizer)
        results[recraft] = trained
    assert_same_model(results[True], reference)
    with pytest.raises(AssertionError):  # the x′ at w for both forwards is another step
        assert_same_model(results[False], reference)


def test_weights_only_moves_conv_and_linear_weights_by_rho():
    model, _, x_adv, y = problem()
    loss_fn = lambda m: F.cross_entropy(m(x_adv), y, reduction="none")  # noqa: E731
    before = copy.deepcopy(model.state_dict())
    for params, expected in (("weights", {"conv.weight", "fc.weight"}),
                             ("all", {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias"})):
        result = SAM(rho=0.3, params=params).compute(model, loss_fn)
        assert set(result.v) == expected
        norm = torch.linalg.vector_norm(torch.cat([t.flatten() for t in result.v.values()]))
        assert norm.item() == pytest.approx(0.3, rel=1e-5)  # an absolute radius
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # compute hands the model back


def test_asam_scales_by_name_and_measures_rho_in_scaled_coordinates():
    model, _, x_adv, y = problem()
    loss_fn = lambda m: F.cross_entropy(m(x_adv), y, reduction="none")  # noqa: E731
    v = ASAM(rho=0.7, eta=0.01).compute(model, loss_fn).v
    params = dict(model.named_parameters())
    scaled = [v[n] / (params[n].detach().abs() + 0.01) if "weight" in n else v[n] for n in v]
    assert torch.linalg.vector_norm(torch.cat([t.flatten() for t in scaled])).item() == pytest.approx(0.7, rel=1e-5)
    assert "bn.weight" in v and "bn.bias" in v  # BN γ is scaled (its name holds "weight"), β is not


@pytest.mark.parametrize("options, message", [
    ({"rho": -0.1}, "rho"), ({"rho": float("inf")}, "rho"), ({"params": "biases"}, "params"),
    ({"recraft": "yes"}, "recraft"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(WpatError, match=message):
        PERTURBATIONS.build("sam", **options)


def test_continuing_a_search_is_refused():
    model, _, x_adv, y = problem()
    loss_fn = lambda m: F.cross_entropy(m(x_adv), y, reduction="none")  # noqa: E731
    result = SAM().compute(model, loss_fn)
    with pytest.raises(WpatError, match="one ascent step"):
        SAM().compute(model, loss_fn, start=result)


# ---------------------------------------------------------------------- through wpat train

TINY = ["data.train_subset=128", "data.test_subset=32", "data.batch_size=32", "eval.n_train=32",
        "eval.steps=1", "eval.every=1", "attack.steps=2", "schedule.epochs=1", "run.progress=false",
        "run.tensorboard=false", f"run.seed={SEED}"]


def train(tmp_path, *overrides: str) -> int:
    return main(["train", *overrides, *TINY, f"run.out_dir={tmp_path}", "run.name=r"])


@needs_fmnist
@pytest.mark.parametrize("overrides", [
    ("fmnist-mlp-linf-overfit-sam",),
    ("fmnist-mlp-linf-overfit-asam",),
    ("fmnist-mlp-linf-overfit-sam", "objective.name=trades", "perturb.sam.recraft=true"),
    ("fmnist-mlp-linf-overfit", "objective.name=mart", "perturb.name=asam"),
])
def test_trains_through_wpat_train(tmp_path, overrides):
    assert train(tmp_path, *overrides) == 0
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["perturb_active"] and record["v_over_w"] > 0 and record["sam_grad_norm"] > 0


@needs_fmnist
@pytest.mark.parametrize("overrides, key", [
    (("perturb.alternations=2",), "perturb.alternations"),
    (("perturb.sam.rho=-1",), "perturb.sam"),
    (("perturb.sam.params=bn",), "perturb.sam"),
])
def test_nonsense_is_refused_in_one_line_before_any_data_is_read(tmp_path, capsys, overrides, key):
    assert train(tmp_path, "fmnist-mlp-linf-overfit-sam", *overrides) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()
