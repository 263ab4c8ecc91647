"""BatchNorm running statistics as the authors' AT scripts leave them (``attack.script_forwards``).

The renditions below follow AT_AWP_RWP/train_cifar10.py and its utils_awp.py / utils_rwp.py (RWP
repository) literally, for one training step: ``attack_pgd`` (uniform start, K sign steps with
their clamps, then one more forward scoring the final example; with mixup every step computes
the logits twice), ``model.train()``, the weight perturbation on proxy copies, the forward at
w + v, the SGD step, the restore. They share no code with wpat. The scripts normalize outside the
model; the model here has no normalization, so both see the same inputs.
"""

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SEED, fashion_mnist_available
from wpat.training import experiment
from wpat.attacks import PGD
from wpat.helpers.batchnorm import count_as, save_running_stats
from wpat.checkpoints.files import load_checkpoint
from wpat.configuration.config import load_config
from wpat.objectives import OBJECTIVES, Batch
from wpat.perturb import AWP, RWP
from wpat.training.step import train_step
from wpat.training.loop import train

EPS, ALPHA, STEPS, GAMMA = 8 / 255, 2 / 255, 3, 0.01
EPS20 = 1e-20
C_MIN = {"rwp": 2.3, "rwp-none": 0.0}  # some examples below c_min (v moves), none (v = 0)


class Net(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU-pool-linear, with the scripts' module names ('bn' in BN names)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.linear = nn.Linear(8, 10)
        with torch.no_grad():
            self.linear.weight.mul_(4)  # spread the per-example losses so that c_min splits the batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(x.mean(dim=(2, 3)))


def batches(n: int, soft: bool = False):
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(n):
        x = torch.rand(16, 3, 8, 8, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        if not soft:
            yield x, y, None
            continue
        lam = 0.3 + 0.4 * torch.rand((), generator=generator).item()
        index = torch.randperm(16, generator=generator)
        yield lam * x + (1 - lam) * x[index], y, (y[index], lam)


# ---------------------------------------------------------------------- the scripts


def clamp(X, lower_limit, upper_limit):
    return torch.max(torch.min(X, upper_limit), lower_limit)


def their_attack_pgd(model, X, y, epsilon, alpha, attack_iters, mixup=None):
    """attack_pgd with restarts=1, norm l_inf, no early stop; ``mixup`` = (y_b, lam), y = y_a."""
    criterion = lambda pred, reduction: (F.cross_entropy(pred, y, reduction=reduction) if mixup is None else  # noqa: E731
                                         mixup[1] * F.cross_entropy(pred, y, reduction=reduction)
                                         + (1 - mixup[1]) * F.cross_entropy(pred, mixup[0], reduction=reduction))
    max_loss = torch.zeros(y.shape[0])
    max_delta = torch.zeros_like(X)
    delta = torch.zeros_like(X)
    delta.uniform_(-epsilon, epsilon)
    delta = clamp(delta, 0 - X, 1 - X)
    delta.requires_grad = True
    for _ in range(attack_iters):
        output = model(X + delta)
        if mixup is not None:
            loss = criterion(model(X + delta), "mean")  # the logits again, for the mixed loss
        else:
            loss = F.cross_entropy(output, y)
        loss.backward()
        grad = delta.grad.detach()
        d = torch.clamp(delta + alpha * torch.sign(grad), min=-epsilon, max=epsilon)
        d = clamp(d, 0 - X, 1 - X)
        delta.data = d
        delta.grad.zero_()
    all_loss = criterion(model(X + delta), "none")  # scores the final example, in train mode
    max_delta[all_loss >= max_loss] = delta.detach()[all_loss >= max_loss]
    return max_delta


def diff_in_weights(old_model, new_model, rescale):
    diff = OrderedDict()
    for (old_k, old_w), (_, new_w) in zip(old_model.state_dict().items(), new_model.state_dict().items()):
        if len(old_w.size()) <= 1 or "weight" not in old_k:
            continue
        diff_w = new_w - old_w
        diff[old_k] = old_w.norm() / (diff_w.norm() + EPS20) * diff_w if rescale else diff_w
    return diff


def add_into_weights(model, diff, coeff):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in diff:
                param.add_(coeff * diff[name])


def their_awp(model, X_adv, y):
    """AdvWeightPerturb.calc_awp: one plain-SGD proxy step on −CE, rescaled per layer."""
    proxy = copy.deepcopy(model)
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    proxy_opt = torch.optim.SGD(proxy.parameters(), lr=0.01)
    loss = -F.cross_entropy(proxy(X_adv), y)
    proxy_opt.zero_grad()
    loss.backward()
    proxy_opt.step()
    return diff_in_weights(model, proxy, rescale=True)


def their_rwp(model, X_adv, y, lsc_loss):
    """RobustWeightPerturb.calc_awp: 10 proxy steps on −mean(CE · [CE < c_min]), summed and
    rescaled over all layers."""
    proxy_1, proxy_2 = copy.deepcopy(model), copy.deepcopy(model)
    proxy_2_optim = torch.optim.SGD(proxy_2.parameters(), lr=0.01)
    diff, diff_scale = OrderedDict(), OrderedDict()
    for _ in range(10):
        proxy_1.load_state_dict(model.state_dict())
        proxy_2.load_state_dict(model.state_dict())
        add_into_weights(proxy_1, diff_scale, GAMMA)
        add_into_weights(proxy_2, diff_scale, GAMMA)
        proxy_2.train()
        loss = F.cross_entropy(proxy_2(X_adv), y, reduction="none")
        loss = -(loss * (loss < lsc_loss).float()).mean()
        proxy_2_optim.zero_grad()
        loss.backward()
        proxy_2_optim.step()
        step = diff_in_weights(proxy_1, proxy_2, rescale=False)
        diff = step if not diff else OrderedDict((k, diff[k] + step[k]) for k in step)
        w = torch.cat([p.view(-1) for n, p in model.named_parameters() if n in diff])
        scale = w.norm() / (torch.cat([d.view(-1) for d in diff.values()]).norm() + EPS20)
        diff_scale = OrderedDict((k, scale * d) for k, d in diff.items())
    return diff_scale


def their_step(model, opt, X, y, method, mixup=None):
    """One batch of the script's training loop (epoch past the warm-up)."""
    delta = their_attack_pgd(model, X, y, EPS, ALPHA, STEPS, mixup).detach()
    X_adv = torch.clamp(X + delta[:X.size(0)], min=0, max=1)
    model.train()
    coeff, v = GAMMA, None
    if method == "awp":
        v, coeff = their_awp(model, X_adv, y), GAMMA
    elif method.startswith("rwp"):
        v = their_rwp(model, X_adv, y, C_MIN[method])
    if v is not None:
        add_into_weights(model, v, coeff)
    robust_output = model(X_adv)
    if mixup is None:
        robust_loss = F.cross_entropy(robust_output, y)
    else:
        robust_loss = mixup[1] * F.cross_entropy(robust_output, y) + (1 - mixup[1]) * F.cross_entropy(robust_output, mixup[0])
    opt.zero_grad()
    robust_loss.backward()
    opt.step()
    if v is not None:
        add_into_weights(model, v, -coeff)


# ---------------------------------------------------------------------- wpat


def wpat_step(model, opt, x, y, method, mixup=None, script=True):
    make = {"at": lambda: None, "awp": lambda: AWP(gamma=GAMMA),
            "rwp": lambda: RWP(gamma=GAMMA, c_min=C_MIN["rwp"]), "rwp-none": lambda: RWP(gamma=GAMMA, c_min=0.0)}[method]
    attack = PGD(EPS, ALPHA, STEPS, bn_mode="train", mixup_forwards=2 if script else 1)
    if mixup is not None:  # the mixed targets as wpat's loader gives them
        y = mixup[1] * F.one_hot(y, 10).float() + (1 - mixup[1]) * F.one_hot(mixup[0], 10).float()
    _, stats = train_step(model, Batch(x, y), attack, OBJECTIVES.build("at"), make(), opt, score_forward=script)
    return int(stats.get("perturb_steps", 0))


def run_both(method, soft=False, script=True, n=4):
    torch.manual_seed(SEED)
    theirs = Net()
    ours = copy.deepcopy(theirs)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    searched = []
    for i, (x, y, mixup) in enumerate(batches(n, soft)):
        torch.manual_seed(1000 + i)  # the same random start for both attacks
        their_step(theirs, opt_theirs, x, y, method, mixup)
        torch.manual_seed(1000 + i)
        searched.append(wpat_step(ours, opt_ours, x, y, method, mixup, script))
    if method == "rwp":  # the search moved off w in every step ...
        assert min(searched) > 0
    if method == "rwp-none":  # ... or never: the forward at w also trains
        assert max(searched) == 0
    return theirs, ours


def assert_same_statistics(theirs, ours):
    for name, a in theirs.state_dict().items():
        b = ours.state_dict()[name]
        if name.endswith("num_batches_tracked"):
            assert int(a) == int(b), name
        else:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("method", ["at", "awp", "rwp", "rwp-none"])
def test_running_statistics_are_the_scripts_after_several_steps(method):
    theirs, ours = run_both(method)
    assert int(theirs.bn1.num_batches_tracked) == 4 * (STEPS + 2)  # K attack forwards, score, train
    assert_same_statistics(theirs, ours)


def test_running_statistics_with_mixup_are_the_scripts():
    theirs, ours = run_both("at", soft=True)
    assert int(theirs.bn1.num_batches_tracked) == 4 * (2 * STEPS + 2)
    assert_same_statistics(theirs, ours)


@pytest.mark.parametrize("method, soft", [("at", False), ("rwp", False), ("at", True)])
def test_without_script_forwards_the_statistics_differ(method, soft):
    """What the option changes is visible: the weights agree, the running statistics do not."""
    theirs, ours = run_both(method, soft, script=False)
    torch.testing.assert_close(ours.conv1.weight, theirs.conv1.weight, rtol=1e-4, atol=1e-5)
    assert int(ours.bn1.num_batches_tracked) < int(theirs.bn1.num_batches_tracked)
    assert not torch.allclose(ours.bn2.running_var, theirs.bn2.running_var, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("times", [2, 3])
def test_counting_one_forward_as_several_equals_running_them(momentum, times):
    torch.manual_seed(SEED)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.Flatten(),
                        nn.Linear(4 * 36, 3), nn.BatchNorm1d(3, momentum=momentum))
    for _ in range(3):  # running statistics (and a cumulative count) that are not the initial ones
        net(torch.rand(8, 3, 8, 8))
    run, counted = copy.deepcopy(net), net
    x = torch.rand(8, 3, 8, 8)
    for _ in range(times):
        run(x)
    saved = save_running_stats(counted)
    counted(x)
    count_as(saved, times)
    for (name, a), b in zip(run.state_dict().items(), counted.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_an_objective_with_other_forwards_pays_one_forward_for_the_score():
    """TRADES forwards x_adv, x, x: none of them alone is the script's score, so the step runs it."""
    torch.manual_seed(SEED)
    model = Net()
    reference = copy.deepcopy(model)
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    x_adv = (x + 0.01).clamp(0, 1)
    trades = OBJECTIVES.build("trades")
    train_step(model, Batch(x, y), lambda m, a, b: x_adv, trades, None, torch.optim.SGD(model.parameters(), lr=0.1),
               score_forward=True)
    reference.train()
    with torch.no_grad():
        reference(x_adv)  # the score, then the step as without it
    train_step(reference, Batch(x, y), lambda m, a, b: x_adv, trades, None,
               torch.optim.SGD(reference.parameters(), lr=0.1))
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_the_at_presets_count_the_scripts_forwards_and_the_trades_presets_do_not():
    at = load_config("cifar10-preactresnet18-linf-mixup")
    assert at.attack.script_forwards and experiment.train_attack(at, OBJECTIVES.build("at")).mixup_forwards == 2
    for preset in ("cifar10-wrn34-10-trades", "cifar10-wrn34-10-mart", "cifar10-wrn28-10-rst"):
        assert not load_config(preset).attack.script_forwards


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
@pytest.mark.parametrize("mix, per_step", [("none", 2 + 2), ("mixup", 2 * 2 + 2)])
def test_the_training_loop_passes_the_option_on(tmp_path, mix, per_step):
    """K = 2 attack forwards (twice with mixup), the score, the training forward: per step."""
    cfg = load_config("fmnist-smallcnn-linf", [
        "model.small_cnn.width=4", "data.train_subset=256", "data.test_subset=32", "data.batch_size=64",
        "eval.n_train=32", "attack.steps=2", "eval.steps=1", "schedule.epochs=1", "perturb.name=none",
        "attack.script_forwards=true", f"data.mix={mix}", "run.progress=false", "run.threads=1",
        f"run.seed={SEED}", f"run.out_dir={tmp_path}"])
    train(cfg)
    state = load_checkpoint(tmp_path / cfg.run.name / "last.pt")["model"]
    counts = {int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    assert counts == {4 * per_step}
