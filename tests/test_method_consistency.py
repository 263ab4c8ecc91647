"""Consistency regularization (``objective.name=consistency``, Tack et al., AAAI 2022).

The renditions below follow alinlab/consistency-adversarial literally, for one training step:
``training/adv_train/adv_train_consistency.py`` (AT) and ``adv_trades_consistency.py`` (TRADES),
``training/__init__.py`` (``_jensen_shannon_div``), ``adv_lib/attack.py`` (advertorch's
``PGDAttack`` inside ``EvalBN``: crafted in eval mode), ``adv_lib/trades.py``
(``generate_trades``), and advertorch's ``rand_init_delta`` / ``perturb_iterative``. They share
no code with wpat.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import BNNet, SEED, crashing_at_call, fashion_mnist_available
from wpat.training import experiment
from wpat.checkpoints.files import load_checkpoint
from wpat.cli import main
from wpat.configuration.config import load_config
from wpat.helpers.errors import WpatError
from wpat.objectives import Batch
from wpat.objectives.consistency import js_divergence
from wpat.training.step import train_step

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

EPS, ALPHA, STEPS, LAM, T, BETA = 8 / 255, 2 / 255, 3, 1.0, 0.5, 6.0
TINY = ["fmnist-mlp-linf-overfit-consistency", "model.mlp.hidden=16", "data.train_subset=96", "data.test_subset=32",
        "data.batch_size=16", "eval.n_train=16", "eval.steps=1", "eval.every=1", "attack.steps=1",
        "schedule.epochs=2", "run.progress=false", "run.tensorboard=false", f"run.seed={SEED}"]


def Net() -> BNNet:
    return BNNet()


# ---------------------------------------------------------------------- the authors' code


def their_js(logit1, logit2, T):
    prob1 = F.softmax(logit1 / T, dim=1)
    prob2 = F.softmax(logit2 / T, dim=1)
    mean_prob = 0.5 * (prob1 + prob2)
    logsoftmax = torch.log(mean_prob.clamp(min=1e-8))
    jsd = F.kl_div(logsoftmax, prob1, reduction="batchmean")
    jsd += F.kl_div(logsoftmax, prob2, reduction="batchmean")
    return jsd * 0.5


def their_pgd(model, x, y, eps, eps_iter, nb_iter):
    """advertorch PGDAttack(loss_fn=CrossEntropyLoss(), rand_init=True, ord=inf, clip 0..1)
    inside EvalBN."""
    mode = model.training
    model.eval()
    delta = torch.zeros_like(x)
    delta.uniform_(-1, 1)  # rand_init_delta
    delta = eps * delta
    delta = torch.clamp(x + delta, 0, 1) - x
    delta.requires_grad_()
    for _ in range(nb_iter):  # perturb_iterative
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()
        delta.data = delta.data + eps_iter * delta.grad.data.sign()
        delta.data = torch.clamp(delta.data, -eps, eps)
        delta.data = torch.clamp(x.data + delta.data, 0, 1) - x.data
        delta.grad.data.zero_()
    x_adv = torch.clamp(x + delta, 0, 1).detach()
    model.train(mode)
    return x_adv


def their_generate_trades(model, x_natural, eps, eps_iter, nb_iter):
    is_training = model.training
    model.eval()
    x_adv = x_natural + 0.001 * torch.randn_like(x_natural)
    x_adv = x_adv.detach()
    outputs_natural = model(x_natural).detach()
    for _ in range(nb_iter):
        x_adv.requires_grad_()
        loss_kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(outputs_natural, dim=1), reduction="sum")
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + eps_iter * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - eps), x_natural + eps)
        x_adv = torch.clamp(x_adv, 0, 1)
    model.train(is_training)
    return x_adv.detach()


def their_step(model, optimizer, x1, x2, y, mode):
    model.train()
    labels = y.repeat(2)
    images_pair = torch.cat([x1, x2], dim=0)
    if mode == "at":
        images_adv = their_pgd(model, images_pair, labels, EPS, ALPHA, STEPS)
        outputs_adv = model(images_adv)
        loss = F.cross_entropy(outputs_adv, labels)
    else:
        images_adv = their_generate_trades(model, images_pair, EPS, ALPHA, STEPS)
        outputs = model(images_pair)
        outputs_adv = model(images_adv)
        loss = F.cross_entropy(outputs, labels) + BETA * F.kl_div(
            F.log_softmax(outputs_adv, dim=1), F.softmax(outputs, dim=1), reduction="batchmean")
    outputs_adv1, outputs_adv2 = outputs_adv.chunk(2)
    loss = loss + LAM * their_js(outputs_adv1, outputs_adv2, T)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return images_adv


# ---------------------------------------------------------------------- wpat against them


def wpat_parts(base: str):
    cfg = load_config(None, ["objective.name=consistency", f"objective.consistency.base={base}",
                             f"objective.consistency.lam={LAM}", f"objective.consistency.temperature={T}",
                             f"objective.trades.beta={BETA}", "objective.trades.clean_forwards=1",
                             "objective.trades.clean_first=true",
                             f"attack.eps={EPS}", f"attack.alpha={ALPHA}", f"attack.steps={STEPS}"])
    objective = experiment.objective_from_config(cfg)
    return objective, experiment.train_attack(cfg, objective)


def views():
    generator = torch.Generator().manual_seed(SEED + 1)
    # inside (0.1, 0.9): wpat clamps TRADES' random start to the box, the code does not
    x1 = 0.1 + 0.8 * torch.rand(8, 3, 8, 8, generator=generator)
    x2 = 0.1 + 0.8 * torch.rand(8, 3, 8, 8, generator=generator)
    return x1, x2, torch.randint(0, 10, (8,), generator=generator)


@pytest.mark.parametrize("base", ["at", "trades"])
def test_the_attack_on_both_views_is_the_codes(base):
    """One call on the 2B views, eval mode, the same starts and steps. Sign steps may let
    rounding decide a coordinate whose gradient is nearly 0, so a few coordinates may differ
    (none did in 40 seeds tried)."""
    torch.manual_seed(SEED)
    model = Net()
    x1, x2, y = views()
    pair, labels = torch.cat([x1, x2]), y.repeat(2)
    torch.manual_seed(SEED + 2)
    theirs = (their_pgd(model, pair, labels, EPS, ALPHA, STEPS) if base == "at"
              else their_generate_trades(model, pair, EPS, ALPHA, STEPS))
    _, attack = wpat_parts(base)
    torch.manual_seed(SEED + 2)
    ours = attack(model, pair, labels)
    assert float(((ours - theirs).abs() > 1e-6).float().mean()) < 0.005
    assert model.training and int(model.bn.num_batches_tracked) == 0  # crafted in eval mode


class Given:
    """An attack that returns the code's x' for the views it was crafted from."""

    def __init__(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        self.x, self.x_adv = x, x_adv

    def __call__(self, model, x, y):
        assert torch.equal(x, self.x)  # both views, in one call
        return self.x_adv


@pytest.mark.parametrize("base", ["at", "trades"])
def test_one_step_matches_the_authors_code(base):
    """The code's step from its own x' (crafted as the test above compares), in wpat's step."""
    torch.manual_seed(SEED)
    ours = Net()
    theirs = copy.deepcopy(ours)
    x1, x2, y = views()
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(SEED + 2)
    x_adv = their_step(theirs, opt_theirs, x1, x2, y, base)
    objective, _ = wpat_parts(base)
    train_step(ours, Batch(x1, y, views=(x2,)), Given(torch.cat([x1, x2]), x_adv), objective, None, opt_ours)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    # the same train-mode forwards in the same order: AT one of both views' examples, TRADES
    # clean then adversarial (the next step's eval-mode attack reads these statistics)
    assert int(ours.bn.num_batches_tracked) == int(theirs.bn.num_batches_tracked) == {"at": 1, "trades": 2}[base]
    torch.testing.assert_close(ours.bn.running_mean, theirs.bn.running_mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.bn.running_var, theirs.bn.running_var, rtol=1e-4, atol=1e-6)


def test_js_divergence_is_the_authors_batch_mean_and_vanishes_for_equal_predictions():
    a, b = torch.randn(6, 10), torch.randn(6, 10)
    torch.testing.assert_close(js_divergence(a, b, T).mean(), their_js(a, b, T))
    assert float(js_divergence(a, a.clone(), T).abs().max()) < 1e-6
    assert bool((js_divergence(a, b, T) > 0).all())


def test_per_example_loss_is_the_mean_of_the_views_plus_lam_js():
    """One batch of 2B through the base (AT: the two views' cross-entropies), then λ·JS."""
    objective, _ = wpat_parts("at")
    model = nn.Identity()  # x_adv *is* the logits
    x, x2 = torch.randn(4, 10), torch.randn(4, 10)
    a, b = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([0, 3, 5, 9])
    losses = objective.per_example(model, Batch(x, y, x_adv=a, views=(x2,), views_adv=(b,)))
    expected = 0.5 * (F.cross_entropy(a, y, reduction="none") + F.cross_entropy(b, y, reduction="none")) \
        + LAM * js_divergence(a, b, T)
    torch.testing.assert_close(losses, expected)


def test_the_attack_is_the_bases_crafted_in_eval_mode():
    for base, loss, start in (("at", "cross_entropy", "_uniform_start"), ("trades", "kl_from_clean", "_normal_start"),
                              ("mart", "cross_entropy", "_normal_start")):
        objective, attack = wpat_parts(base)
        assert attack.bn_mode == "eval" and attack.loss.__name__ == loss and attack.start.__name__ == start
        assert objective.requirements() == ("objectives", "views")


# ---------------------------------------------------------------------- through wpat train


@needs_fmnist
@pytest.mark.parametrize("overrides", [[], ["perturb.name=awp"], ["perturb.name=rwp"],
                                       ["objective.consistency.base=trades", "perturb.name=awp"],
                                       ["objective.consistency.base=mart", "perturb.name=rwp"]])
def test_trains_through_wpat_train_with_each_base_and_perturbation(tmp_path, overrides):
    assert main(["train", *TINY, *overrides, f"run.out_dir={tmp_path}", "run.name=r"]) == 0
    history = load_checkpoint(tmp_path / "r" / "last.pt")["history"]
    assert len(history) == 2 and all(r["train_loss"] > 0 for r in history)
    assert history[-1]["perturb_active"] == ("perturb.name=awp" in overrides or "perturb.name=rwp" in overrides)


@pytest.mark.parametrize("overrides, key", [
    (["objective.consistency.base=dkl"], "Consistency base"),
    (["objective.consistency.base=consistency"], "Consistency base"),
    (["objective.consistency.temperature=0"], "Consistency temperature"),
    (["objective.consistency.lam=-1"], "Consistency lam"),
    (["data.mix=mixup"], "data.mix"),
    (["data.extra_fraction=0.5", "data.extra=somewhere.npz"], "data.extra_fraction"),
])
def test_nonsense_is_refused_in_one_line_before_any_data_is_read(tmp_path, capsys, overrides, key):
    assert main(["train", *TINY, *overrides, "data.root=/nonexistent", f"run.out_dir={tmp_path}", "run.name=r"]) == 2
    err = capsys.readouterr().err
    assert key in err and err.count("\n") == 1 and not (tmp_path / "r").exists()
    with pytest.raises(WpatError, match=key):
        experiment.build_components(load_config(TINY[0], overrides))


@needs_fmnist
def test_a_killed_run_resumes_bitwise_second_views_included(tmp_path, monkeypatch):
    import wpat.training.loop as training

    common = [*TINY[1:], "perturb.name=rwp", "run.checkpoint_every=2", "run.deterministic=true",
              f"run.out_dir={tmp_path}"]
    training.train(load_config(TINY[0], [*common, "run.name=whole"]))
    real = training.train_step
    monkeypatch.setattr(training, "train_step", crashing_at_call(real, 6 + 3))  # epoch 2, step 3
    with pytest.raises(KeyboardInterrupt):
        training.train(load_config(TINY[0], [*common, "run.name=cut"]))
    monkeypatch.setattr(training, "train_step", real)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 2
    training.resume(tmp_path / "cut")
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
