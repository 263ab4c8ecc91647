"""MLCAT by weight perturbation (``perturb.name=mlcat-wp``) against the authors' training step.

The rendition below was written from reading ``ChaojianYu/Understanding-Robust-Overfitting``:
``utils_wp.py`` (``WeightPerturb.calc_wp``: two proxy models, a plain-SGD proxy step of lr 0.01
on −mean(ℓ·[ℓ < threshold]), ten steps, the summed weight differences rescaled by the global
norm) and ``train_step5_weight_15.py`` (``threshold=1.5``, the SGD step at w + v, v subtracted
after it). It shares no code with wpat.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SEED, fashion_mnist_available
from wpat.cli import main
from wpat.objectives import OBJECTIVES, Batch
from wpat.perturb import PERTURBATIONS, RWP
from wpat.training.step import train_step

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

BATCH = 32


class TinyBNNet(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU-pool-linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def problem(seed: int = 0):
    """A model with running statistics, and an adversarial batch whose losses straddle 1.5."""
    torch.manual_seed(seed)
    model = TinyBNNet()
    x_adv = torch.rand(BATCH, 1, 6, 6)
    y = torch.randint(0, 10, (BATCH,))
    with torch.no_grad():
        model.fc.weight.mul_(12)  # spread the per-example losses
        for _ in range(3):
            model(torch.rand(BATCH, 1, 6, 6))
        y[::2] = copy.deepcopy(model).train()(x_adv).argmax(1)[::2]  # half of them predicted right
    return model, x_adv, y


def losses_at_w(model, x_adv, y) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(copy.deepcopy(model).train()(x_adv), y, reduction="none")


# ---------------------------------------------------------------- rendition of the scripts' step


def perturbed_keys(state: dict) -> list[str]:
    """utils_wp.diff_in_weights keeps the state-dict entries of more than one dimension named weight."""
    return [k for k, t in state.items() if t.dim() > 1 and "weight" in k]


def shift(model: nn.Module, direction: dict, coeff: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in direction:
                p.add_(coeff * direction[name])


def calc_wp(model, proxy_1, proxy_2, proxy_opt, x_adv, y, gamma, threshold):
    """WeightPerturb.calc_wp: ten proxy steps, no break."""
    diff, diff_scale = {}, {}
    for _ in range(10):
        proxy_1.load_state_dict(model.state_dict())
        proxy_2.load_state_dict(model.state_dict())
        shift(proxy_1, diff_scale, gamma)
        shift(proxy_2, diff_scale, gamma)
        proxy_2.train()
        loss = F.cross_entropy(proxy_2(x_adv), y, reduction="none")
        loss = -(loss * (loss < threshold).float()).mean()
        proxy_opt.zero_grad()
        loss.backward()
        proxy_opt.step()
        old, new = proxy_1.state_dict(), proxy_2.state_dict()
        step = {k: new[k] - old[k] for k in perturbed_keys(old)}
        diff = step if not diff else {k: diff[k] + step[k] for k in diff}
        names = [n for n, _ in model.named_parameters() if n in diff]
        params = dict(model.named_parameters())
        w_norm = torch.cat([params[n].detach().reshape(-1) for n in names]).norm()
        d_norm = torch.cat([diff[n].reshape(-1) for n in names]).norm()
        diff_scale = {n: w_norm / (d_norm + 1e-20) * diff[n] for n in names}
    return diff_scale


def script_step(model, opt, proxies, x_adv, y, gamma=0.01, threshold=1.5):
    """train_step5_weight_15.py, after the attack."""
    proxy_1, proxy_2, proxy_opt = proxies
    model.train()
    wp = calc_wp(model, proxy_1, proxy_2, proxy_opt, x_adv, y, gamma, threshold)
    shift(model, wp, gamma)
    loss = F.cross_entropy(model(x_adv), y, reduction="none").mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    shift(model, wp, -gamma)


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def script_run(model, x_adv, y, steps=1, **kw):
    m = copy.deepcopy(model)
    proxy_2 = copy.deepcopy(model)
    proxies = (copy.deepcopy(model), proxy_2, torch.optim.SGD(proxy_2.parameters(), lr=0.01))
    opt = sgd(m)
    for _ in range(steps):
        script_step(m, opt, proxies, x_adv, y, **kw)
    return m


def wpat_run(model, x_adv, y, perturbation, steps=1):
    m = copy.deepcopy(model)
    opt = sgd(m)
    stats = []
    for _ in range(steps):
        _, s = train_step(m, Batch(x_adv, y), lambda a, b, c: x_adv, OBJECTIVES.build("at"), perturbation, opt)
        stats.append(s)
    return m, stats


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Parameters and BN buffers (one update per step, by the forward at w + v) agree."""
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(ta, tb, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("early_exit", [True, False])
def test_the_defaults_step_as_the_script(early_exit):
    model, x_adv, y = problem()
    below = float((losses_at_w(model, x_adv, y) < 1.5).float().mean())
    assert 0.2 < below < 0.8
    ours, stats = wpat_run(model, x_adv, y, PERTURBATIONS.build("mlcat-wp", early_exit=early_exit))
    assert_same_state(ours, script_run(model, x_adv, y))
    assert float(stats[0]["mlcat_frac_below"]) == below
    assert float(stats[0]["v_over_w"]) == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("early_exit", [True, False])
def test_the_search_that_empties_its_selection_steps_as_the_scripts_ten_steps(early_exit):
    """Only the easiest example starts below the threshold and one large step lifts it above:
    the script keeps stepping with a zero gradient, wpat stops (or not), same update. In float64:
    the script's proxy step, 0.01 times the gradient of one example in 32, added to weights of
    norm 0.5·‖W‖ larger and subtracted again, keeps only a few float32 bits of it."""
    model, x_adv, y = problem()
    model, x_adv = model.double(), x_adv.double()
    s = losses_at_w(model, x_adv, y).sort().values
    threshold, gamma = float((s[0] + s[1]) / 2), 0.5
    ours, stats = wpat_run(model, x_adv, y, PERTURBATIONS.build("mlcat-wp", gamma=gamma, threshold=threshold,
                                                                 early_exit=early_exit), steps=1)
    assert (0 < float(stats[0]["perturb_steps"]) < 10) if early_exit else float(stats[0]["perturb_steps"]) == 10
    assert_same_state(ours, script_run(model, x_adv, y, gamma=gamma, threshold=threshold))


def test_nothing_below_the_threshold_trains_at_w_as_the_script():
    model, x_adv, y = problem()
    ours, stats = wpat_run(model, x_adv, y, PERTURBATIONS.build("mlcat-wp", threshold=0.0))
    assert float(stats[0]["perturb_steps"]) == 0 and float(stats[0]["v_over_w"]) == 0
    assert_same_state(ours, script_run(model, x_adv, y, threshold=0.0))


def test_it_is_rwps_search_with_the_threshold_as_c_min():
    model, x_adv, y = problem()
    mlcat, _ = wpat_run(model, x_adv, y, PERTURBATIONS.build("mlcat-wp"))
    rwp, _ = wpat_run(model, x_adv, y, RWP(gamma=0.01, c_min=1.5, steps=10))
    assert all(torch.equal(a, b) for a, b in zip(mlcat.state_dict().values(), rwp.state_dict().values()))


# ---------------------------------------------------------------- through wpat train

TINY = ["fmnist-smallcnn-linf", "model.small_cnn.width=4", "data.train_subset=64", "data.test_subset=32",
        "data.batch_size=32", "eval.n_train=32", "eval.steps=1", "attack.steps=1", "perturb.name=mlcat-wp",
        "perturb.mlcat-wp.steps=2", "perturb.mlcat-wp.threshold=10", "schedule.epochs=1", "run.threads=1", "run.progress=false",
        "run.tensorboard=false", f"run.seed={SEED}"]


def train(tmp_path, *overrides: str) -> int:
    return main(["train", *TINY, *overrides, f"run.out_dir={tmp_path}", "run.name=r"])


@needs_fmnist
@pytest.mark.parametrize("objective", ["at", "trades", "mart"])  # TRADES, MART: never run by the authors
def test_trains_through_wpat_train_with_each_objective(tmp_path, objective):
    assert train(tmp_path, f"objective.name={objective}") == 0
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["mlcat_frac_below"] == 1 and record["perturb_steps"] == 2  # every loss at init is below 10
    assert 0 < record["v_over_w"] <= 0.01 * (1 + 1e-4)


@pytest.mark.parametrize("bad, key", [
    ("perturb.mlcat-wp.threshold=-1", "threshold"),
    ("perturb.mlcat-wp.gamma=-0.1", "gamma"),
    ("perturb.mlcat-wp.steps=0", "steps"),
    ("perturb.mlcat-wp.c_min=1.7", "c_min"),  # RWP's name for it is not an option here
])
def test_nonsense_is_refused_in_one_line_before_any_data_is_read(tmp_path, capsys, bad, key):
    assert train(tmp_path, bad, "data.root=/nonexistent") == 2
    err = capsys.readouterr().err.strip()
    assert key in err and "mlcat-wp" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
