"""DKL adversarial training (``objective.name=dkl``, Cui et al., NeurIPS 2024).

The renditions below follow jiequancui/DKL ``DKLv2/Adv-training-dkl/`` literally, for one
training step: ``train_dkl_cifar10.py`` (``dkl_loss``, ``perturb_input`` with l_inf, the body of
``train`` with ``--aug basic --train_budget high``, ``adjust_learning_rate_cosine``) and
``utils_awp.py`` (``TradesAWP``: a plain-SGD proxy step on −(CE + dkl_loss), ``diff_in_weights``
rescaled per layer, added and later subtracted). They share no code with wpat.
"""

import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SEED, crashing_at_call, fashion_mnist_available
from wpat.training import experiment
from wpat.checkpoints.files import load_checkpoint
from wpat.cli import main
from wpat.configuration.config import load_config
from wpat.helpers.errors import WpatError
from wpat.objectives import Batch, Phase
from wpat.objectives.dkl import DKL, dkl_divergence
from wpat.perturb import AWP
from wpat.training.step import schedule_time, train_step

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

EPS, C, ALPHA_DKL, BETA_DKL, T, AWP_GAMMA = 8 / 255, 10, 4.0, 20.0, 4.0, 0.005
TINY = ["fmnist-mlp-linf-overfit-dkl", "model.mlp.hidden=16", "data.train_subset=96", "data.test_subset=32",
        "data.batch_size=16", "eval.n_train=16", "eval.steps=1", "eval.every=1", "attack.steps=2",
        "perturb.warmup=1", "schedule.epochs=3", "run.progress=false", "run.tensorboard=false", f"run.seed={SEED}"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.linear = nn.Linear(6, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


# ---------------------------------------------------------------------- the authors' code


def their_dkl_loss(logits_student, logits_teacher, temperature=1.0, alpha=1.0, beta=1.0, gamma=1.0, CLASS_PRIOR=None):
    NUM_CLASSES = logits_teacher.size(1)
    delta_n = logits_teacher.view(-1, NUM_CLASSES, 1) - logits_teacher.view(-1, 1, NUM_CLASSES)
    delta_a = logits_student.view(-1, NUM_CLASSES, 1) - logits_student.view(-1, 1, NUM_CLASSES)
    with torch.no_grad():
        CLASS_PRIOR = torch.pow(CLASS_PRIOR, gamma)
        p_n = CLASS_PRIOR.view(-1, NUM_CLASSES, 1) @ CLASS_PRIOR.view(-1, 1, NUM_CLASSES)
    loss_mse = 0.25 * (torch.pow(delta_n - delta_a, 2) * p_n).sum() / p_n.sum()
    loss_sce = -(F.softmax(logits_teacher / temperature, dim=1).detach()
                 * F.log_softmax(logits_student / temperature, dim=-1)).sum(1).mean()
    return beta * loss_mse + alpha * loss_sce


def their_perturb_input(model, x_natural, step_size, epsilon, perturb_steps, CLASS_PRIOR):
    model.eval()
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = their_dkl_loss(model(x_adv), model(x_natural), CLASS_PRIOR=CLASS_PRIOR, alpha=1.0, beta=0.0,
                                     gamma=1.0)
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


def their_diff_in_weights(model, proxy):
    diff_dict = OrderedDict()
    for (old_k, old_w), (new_k, new_w) in zip(model.state_dict().items(), proxy.state_dict().items()):
        if len(old_w.size()) <= 1:
            continue
        if "weight" in old_k:
            diff_w = new_w - old_w
            diff_dict[old_k] = old_w.norm() / (diff_w.norm() + 1e-20) * diff_w
    return diff_dict


def their_add_into_weights(model, diff, coeff):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in diff:
                param.add_(coeff * diff[name])


def their_calc_awp(model, proxy, proxy_optim, inputs_adv, inputs_clean, targets, alpha, beta, gamma, CLASS_PRIOR):
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    logits_nat = proxy(inputs_clean)
    logits_adv = proxy(inputs_adv)
    loss_natural = F.cross_entropy(logits_nat, targets)
    loss_robust = their_dkl_loss(logits_adv, logits_nat, CLASS_PRIOR=CLASS_PRIOR, alpha=alpha, beta=beta, gamma=gamma)
    loss = -1.0 * (loss_natural + loss_robust)
    proxy_optim.zero_grad()
    loss.backward()
    proxy_optim.step()
    return their_diff_in_weights(model, proxy)


def their_step(model, optimizer, x_natural, target, weight, WEIGHT, epoch, epochs, gamma, awp_warmup):
    """One batch of ``train`` (epoch counted from 1), with ``weight`` the previous epoch's prior."""
    proxy = copy.deepcopy(model)
    proxy_optim = torch.optim.SGD(proxy.parameters(), lr=0.2)
    varepsilon = EPS * (epoch / epochs)
    step_size, iters_attack = varepsilon / 2, 5  # --train_budget high (the last `if` wins)
    with torch.no_grad():
        onehot = F.one_hot(target, C).float()
        sample_weight = onehot @ weight
    x_adv = their_perturb_input(model, x_natural, step_size, varepsilon, iters_attack, sample_weight)
    model.train()
    awp = None
    if epoch >= awp_warmup:
        awp = their_calc_awp(model, proxy, proxy_optim, x_adv, x_natural, target, ALPHA_DKL, BETA_DKL, gamma,
                             sample_weight)
        their_add_into_weights(model, awp, AWP_GAMMA)
    optimizer.zero_grad()
    logits_adv, logits_nat = model(x_adv), model(x_natural)
    with torch.no_grad():
        WEIGHT = WEIGHT + (onehot.t() @ F.softmax(logits_nat.clone().detach() / T, dim=-1))
    loss_robust = their_dkl_loss(logits_adv, logits_nat, CLASS_PRIOR=sample_weight, alpha=ALPHA_DKL, beta=BETA_DKL,
                                 gamma=gamma)
    loss = F.cross_entropy(logits_nat, target) + loss_robust
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if awp is not None:
        their_add_into_weights(model, awp, -AWP_GAMMA)
    return WEIGHT, x_adv


# ---------------------------------------------------------------------- wpat against them


def dkl_parts(gamma: float = 1.0):
    cfg = load_config("cifar10-wrn34-10-dkl", [f"objective.dkl.gamma={gamma}", "model.name=preact_resnet18"])
    objective = experiment.objective_from_config(cfg)
    return objective, experiment.train_attack(cfg, objective), experiment.perturbation_from_config(cfg)


class Given:
    """An attack that returns the code's x' for the batch it was crafted from (``eps`` and
    ``alpha`` for the ramp, which this x' already has)."""

    eps = alpha = 1.0

    def __init__(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        self.x, self.x_adv = x, x_adv

    def __call__(self, model, x, y):
        assert torch.equal(x, self.x)
        return self.x_adv


def prior(generator):
    rows = torch.rand(C, C, generator=generator) + 0.2
    return rows / rows.sum(1, keepdim=True)


def batch_and_prior():
    generator = torch.Generator().manual_seed(SEED + 1)
    # inside (0.1, 0.9): wpat clamps the random start to the box, the code does not
    x = 0.1 + 0.8 * torch.rand(16, 3, 8, 8, generator=generator)
    y = torch.randint(0, C, (16,), generator=generator)
    return x, y, prior(generator), torch.rand(C, C, generator=generator)  # the prior, this epoch's sums so far


EPOCH, EPOCHS = 140, 200  # 1-based; the ramp's eps 0.7 * 8/255, well above the start's 0.001 * N(0, 1)


def test_the_ramped_attack_is_the_codes_perturb_input():
    """The same start, steps and projections. The code ascends the batch mean of a soft
    cross-entropy on x' itself, wpat the summed KL on x + δ: the same gradient sign up to
    rounding, which may decide a coordinate whose gradient is nearly 0 (1 coordinate of 3,072 in
    1 of 40 seeds tried), so a few coordinates may differ."""
    torch.manual_seed(SEED)
    model = Net()
    x, y, weight, _ = batch_and_prior()
    objective, attack, _ = dkl_parts()
    torch.manual_seed(SEED + 2)
    theirs = their_perturb_input(model, x, EPS * EPOCH / EPOCHS / 2, EPS * EPOCH / EPOCHS, 5,
                                 F.one_hot(y, C).float() @ weight)
    torch.manual_seed(SEED + 2)
    ours = objective.attack_at(attack, Phase(epoch=EPOCH - 1, epochs=EPOCHS))(model, x, y)
    assert float(((ours - theirs).abs() > 1e-6).float().mean()) < 0.005
    assert float((ours - x).abs().max()) <= EPS * EPOCH / EPOCHS + 1e-6


@pytest.mark.parametrize("gamma, awp", [(1.0, True), (0.5, False)])
def test_one_step_matches_the_authors_code(gamma, awp):
    """The code's step from its own x' (crafted as the test above compares), in wpat's step."""
    torch.manual_seed(SEED)
    ours = Net()
    theirs = copy.deepcopy(ours)
    x, y, weight, sums = batch_and_prior()
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(SEED + 2)
    their_sums, x_adv = their_step(theirs, opt_theirs, x, y, weight, sums.clone(), EPOCH, EPOCHS, gamma,
                                   awp_warmup=10 if awp else 10**6)

    objective, _, perturbation = dkl_parts(gamma)
    objective.load_state({"prior": weight.clone(), "sums": sums.clone(), "epoch": EPOCH - 1})
    train_step(ours, Batch(x, y, phase=Phase(epoch=EPOCH - 1, epochs=EPOCHS)), Given(x, x_adv), objective,
               perturbation if awp else None, opt_ours)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    # adversarial then clean forward at w + v: the same BatchNorm statistics
    torch.testing.assert_close(ours.bn.running_mean, theirs.bn.running_mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.bn.running_var, theirs.bn.running_var, rtol=1e-4, atol=1e-6)
    assert int(ours.bn.num_batches_tracked) == int(theirs.bn.num_batches_tracked) == 2
    # the clean predictions of the training forward join the epoch's sums
    torch.testing.assert_close(objective.state()["sums"], their_sums, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 0.5, 2.0])
def test_the_per_example_loss_averages_to_the_authors_batch_loss(gamma):
    generator = torch.Generator().manual_seed(SEED)
    z, z_adv = 3 * torch.randn(12, C, generator=generator), 3 * torch.randn(12, C, generator=generator)
    y = torch.randint(0, C, (12,), generator=generator)
    w = prior(generator)[y]
    ours = dkl_divergence(z_adv, z, w, ALPHA_DKL, BETA_DKL, gamma)
    assert ours.shape == (12,)
    torch.testing.assert_close(ours.mean(), their_dkl_loss(z_adv, z, alpha=ALPHA_DKL, beta=BETA_DKL, gamma=gamma,
                                                           CLASS_PRIOR=w), rtol=1e-5, atol=1e-6)
    # gradients reach both logits through the MSE (the code detaches neither), the clean
    # ones only through it (the soft-label target is detached)
    z.requires_grad_(True)
    z_adv.requires_grad_(True)
    g_clean, g_adv = torch.autograd.grad(dkl_divergence(z_adv, z, w, 0.0, 1.0, gamma).sum(), [z, z_adv])
    assert float(g_clean.abs().sum()) > 0 and float(g_adv.abs().sum()) > 0
    (g_sce,) = torch.autograd.grad(dkl_divergence(z_adv, z, w, 1.0, 0.0, gamma).sum(), [z], allow_unused=True)
    assert g_sce is None or float(g_sce.abs().sum()) == 0


def test_the_class_prior_is_last_epochs_mean_softened_prediction_per_class():
    """Two epochs through the hooks, against the code's WEIGHT accumulation and normalization;
    epoch 1 trains with the uniform prior, epoch 2 with epoch 1's."""
    objective = DKL()
    model = nn.Identity()  # x and x_adv *are* the clean and adversarial logits
    generator = torch.Generator().manual_seed(SEED)
    batches = [(torch.randn(8, C, generator=generator), torch.randint(0, C, (8,), generator=generator))
               for _ in range(4)]
    WEIGHT = torch.zeros(C, C)
    used = []
    for i, (z, y) in enumerate(batches):
        batch = objective.prepare(Batch(z, y, x_adv=z + 0.1, phase=Phase(epoch=i // 2, epochs=2)))
        used.append(None if objective.prior is None else objective.prior.clone())
        objective.descent_losses(objective.per_example(model, batch))
        if i < 2:
            WEIGHT = WEIGHT + F.one_hot(y, C).float().t() @ F.softmax(z / T, dim=-1)
    assert used[0] is None and used[1] is None  # uniform in the first epoch
    expected = WEIGHT / WEIGHT.sum(dim=1, keepdim=True)
    present = WEIGHT.sum(dim=1) > 0
    torch.testing.assert_close(used[2][present], expected[present])
    # a class with no example keeps its row (uniform here), where the code would divide by zero
    assert torch.allclose(used[2][~present], torch.full_like(used[2][~present], 1 / C))
    torch.testing.assert_close(used[2].sum(1), torch.ones(C))


def test_the_ramped_attack_and_the_learning_rate_are_the_codes_every_epoch():
    cfg = load_config("cifar10-wrn34-10-dkl")
    objective = experiment.objective_from_config(cfg)
    attack = experiment.train_attack(cfg, objective)
    schedule = experiment.schedule_from_config(cfg)
    for epoch in range(1, 201):  # the code's epochs
        ramped = objective.attack_at(attack, Phase(epoch=epoch - 1, epochs=200))
        assert (ramped.eps, ramped.alpha, ramped.steps) == pytest.approx((EPS * epoch / 200, EPS * epoch / 400, 5))
        lr = schedule(schedule_time(epoch - 1, 0, 391, cfg.schedule), cfg.optim.lr)
        assert lr == pytest.approx(0.2 * 0.5 * (1.0 + math.cos(math.pi * epoch / 201)), rel=1e-12)
    assert (attack.eps, attack.alpha) == pytest.approx((EPS, EPS / 2))  # the run's attack is untouched
    assert attack.bn_mode == "eval" and attack.loss.__name__ == "kl_from_clean"
    assert attack.start.__name__ == "_normal_start"
    assert DKL(eps_ramp=False).attack_at(attack, Phase(epoch=0, epochs=200)) is attack
    perturbation = experiment.perturbation_from_config(cfg)
    assert isinstance(perturbation, AWP) and perturbation.gamma == AWP_GAMMA and cfg.perturb.warmup == 9


# ---------------------------------------------------------------------- through wpat train


@needs_fmnist
@pytest.mark.parametrize("overrides", [[], ["perturb.name=rwp"], ["perturb.name=none", "objective.dkl.gamma=0.5"]])
def test_trains_through_wpat_train_and_carries_the_prior(tmp_path, overrides):
    assert main(["train", *TINY, *overrides, f"run.out_dir={tmp_path}", "run.name=r"]) == 0
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    assert len(ckpt["history"]) == 3 and ckpt["history"][-1]["perturb_active"] == ("perturb.name=none" not in overrides)
    state = ckpt["objective"]
    assert state["epoch"] == 2 and state["prior"].shape == (10, 10) and state["sums"].shape == (10, 10)
    torch.testing.assert_close(state["prior"].sum(1), torch.ones(10))
    assert float(state["sums"].sum()) == pytest.approx(96, rel=1e-4)  # one row of softmax per example of epoch 3


@pytest.mark.parametrize("overrides, key", [
    (["data.mix=mixup"], "data.mix"),
    (["objective.dkl.gamma=0"], "DKL gamma"),
    (["objective.dkl.temperature=-1"], "DKL temperature"),
    (["objective.dkl.beta=nan"], "DKL beta"),
    (["objective.dkl.eps_ramp=3"], "DKL eps_ramp"),
    (["schedule.name=cosine", "schedule.cosine.period=0"], "Cosine period"),
])
def test_nonsense_is_refused_in_one_line_before_any_data_is_read(tmp_path, capsys, overrides, key):
    assert main(["train", *TINY, *overrides, "data.root=/nonexistent", f"run.out_dir={tmp_path}", "run.name=r"]) == 2
    err = capsys.readouterr().err
    assert key in err and err.count("\n") == 1 and not (tmp_path / "r").exists()
    with pytest.raises(WpatError, match=key):
        experiment.build_components(load_config(TINY[0], overrides))


@needs_fmnist
def test_a_killed_run_resumes_bitwise_class_prior_included(tmp_path, monkeypatch):
    import wpat.training.loop as training

    common = [*TINY[1:], "run.checkpoint_every=2", "run.deterministic=true", f"run.out_dir={tmp_path}"]
    training.train(load_config(TINY[0], [*common, "run.name=whole"]))
    real = training.train_step
    monkeypatch.setattr(training, "train_step", crashing_at_call(real, 6 + 3))  # epoch 2, step 3
    with pytest.raises(KeyboardInterrupt):
        training.train(load_config(TINY[0], [*common, "run.name=cut"]))
    monkeypatch.setattr(training, "train_step", real)
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (cut["epoch"], cut["step"], cut["objective"]["epoch"]) == (1, 2, 1)  # epoch 2's prior and partial sums
    training.resume(tmp_path / "cut")
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["objective"][k], b["objective"][k]) for k in ("prior", "sums"))
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
