"""Behaviour users rely on from wpat.attacks: the threat model is respected, attacks hurt a trained
model, weights and BN statistics are left as documented, and bad arguments fail clearly."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wpat.attacks import ATTACK_LOSSES, ATTACKS, CW, FGSM, PGD, build_attack
from wpat.attacks.base import L2Ball
from wpat.errors import WpatError

EPS = 0.1
L2_EPS = 0.5
NUM_CLASSES = 4


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, NUM_CLASSES),
    )


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained for a few steps on 8x8 class templates plus noise.

    Clamping the noisy images makes many pixels exactly 0 or 1, so the [0, 1] box is exercised.
    """
    gen = torch.Generator().manual_seed(1234)
    templates = torch.rand(NUM_CLASSES, 1, 8, 8, generator=gen)
    y = torch.arange(64) % NUM_CLASSES
    x = (templates[y] + 0.3 * torch.randn(64, 1, 8, 8, generator=gen)).clamp(0, 1)
    torch.manual_seed(1234)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model.state_dict(), x, y


@pytest.fixture
def model(trained):
    """A fresh eval-mode copy of the trained model with no ``.grad`` anywhere."""
    net = tiny_cnn()
    net.load_state_dict(copy.deepcopy(trained[0]))
    return net.eval()


@pytest.fixture
def data(trained):
    return trained[1], trained[2]


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


ALL_ATTACKS = {
    "pgd-linf": lambda: PGD(EPS, EPS / 4, 10),
    "pgd-l2": lambda: PGD(L2_EPS, L2_EPS / 4, 10, norm="l2"),
    "pgd-l2-normal": lambda: PGD(L2_EPS, L2_EPS / 4, 3, norm="l2", init="normal", loss="kl"),
    "pgd-restarts": lambda: PGD(EPS, EPS / 4, 3, restarts=2, loss="cw"),
    "fgsm": lambda: FGSM(EPS),
    "cw": lambda: CW(EPS, EPS / 4, 10),
}


def test_model_is_trained(model, data):
    assert accuracy(model, *data) == 1.0


@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_result_is_detached_in_unit_box_and_in_ball(name, model, data):
    x, y = data
    attack = ALL_ATTACKS[name]()
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    if isinstance(attack.ball, L2Ball):
        assert delta.norm(dim=1).max() <= attack.eps + 1e-5
    else:
        assert delta.abs().max() <= attack.eps + 1e-6


@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_weights_and_their_grad_untouched(name, model, data):
    before = copy.deepcopy(model.state_dict())
    ALL_ATTACKS[name]()(model, *data)
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_l2_attack_uses_its_budget_not_an_linf_box(model, data):
    x, y = data
    x_adv = PGD(L2_EPS, L2_EPS / 4, 10, norm="l2")(model, x, y)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert norms.max() <= L2_EPS + 1e-5
    assert norms.median() > 0.8 * L2_EPS
    # An L2 step concentrates on the pixels that matter: some move by more than an L∞ eps would.
    assert (x_adv - x).abs().max() > EPS


def test_pgd_raises_loss_and_lowers_accuracy(model, data):
    x, y = data
    x_adv = PGD(EPS, EPS / 4, 10)(model, x, y)
    assert (ce(model, x_adv, y) > ce(model, x, y)).all()
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)


def test_cw_raises_the_margin(model, data):
    x, y = data
    margin = ATTACK_LOSSES.get("cw")
    with torch.no_grad():
        clean, adv = margin(model(x), y), margin(model(CW(EPS, EPS / 4, 10)(model, x, y)), y)
    assert (adv > clean).all()


def test_fgsm_no_better_than_natural_and_is_one_sign_step(model, data):
    x, y = data
    x_adv = FGSM(EPS)(model, x, y)
    assert accuracy(model, x_adv, y) <= accuracy(model, x, y)
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    expected = (x + EPS * grad.sign()).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected)


def test_pgd_on_kl_moves_away_from_clean_prediction(model, data):
    """TRADES' attack: the KL is 0 at x, so only the 0.001-normal start gets it going."""
    x, y = data
    x_adv = PGD(EPS, EPS / 4, 5, init="normal", loss="kl")(model, x, y)
    x_noise = (x + EPS * torch.randn_like(x).sign()).clamp(0, 1)  # a random corner of the ball
    kl = ATTACK_LOSSES.get("kl")
    with torch.no_grad():
        attacked, noisy = kl(model(x_adv), y, model(x)), kl(model(x_noise), y, model(x))
    # Ascent is local: a lucky random corner may beat it on an odd example, not on average.
    assert (attacked > noisy).float().mean() >= 0.9
    assert attacked.mean() > 10 * noisy.mean()


def test_cw_is_pgd_on_the_margin_loss(model, data):
    x, y = data
    torch.manual_seed(7)
    a = CW(EPS, EPS / 4, 5)(model, x, y)
    torch.manual_seed(7)
    b = PGD(EPS, EPS / 4, 5, loss="cw")(model, x, y)
    assert torch.equal(a, b)


def test_restarts_never_worse_than_one_run(model, data):
    x, y = data
    small = 0.03  # leaves most examples correctly classified, so losses get compared too
    torch.manual_seed(3)
    one = PGD(small, small / 4, 3)(model, x, y)
    torch.manual_seed(3)
    many = PGD(small, small / 4, 3, restarts=4)(model, x, y)
    with torch.no_grad():
        wrong_one, wrong_many = model(one).argmax(1) != y, model(many).argmax(1) != y
    assert (wrong_many | ~wrong_one).all()
    both_right = ~wrong_one & ~wrong_many
    assert both_right.any()
    assert (ce(model, many, y)[both_right] >= ce(model, one, y)[both_right]).all()
    assert not torch.equal(one, many)


def test_each_example_is_attacked_independently_of_the_batch(model, data):
    x, y = data
    for norm, eps in (("linf", EPS), ("l2", L2_EPS)):
        attack = PGD(eps, eps / 4, 5, norm=norm, random_start=False)
        batch = attack(model, x, y)
        alone = attack(model, x[:3], y[:3])
        torch.testing.assert_close(batch[:3], alone, atol=1e-6, rtol=0)


def bn_stats(model):
    bn = model[1]
    return bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()


def test_bn_eval_crafting_leaves_running_stats_and_restores_train_mode(model, data):
    model.train()
    before = bn_stats(model)
    PGD(EPS, EPS / 4, 3, bn_mode="eval")(model, *data)
    assert all(torch.equal(a, b) for a, b in zip(before, bn_stats(model)))
    assert all(m.training for m in model.modules())


def test_bn_train_crafting_updates_running_stats_and_restores_eval_mode(model, data):
    before = bn_stats(model)
    PGD(EPS, EPS / 4, 3, bn_mode="train")(model, *data)
    assert not torch.equal(before[0], bn_stats(model)[0])
    assert bn_stats(model)[2] == before[2] + 3
    assert not any(m.training for m in model.modules())


def test_mixed_module_modes_are_restored(model, data):
    model[1].train()  # e.g. a caller that keeps one BN layer in train mode on purpose
    modes = [m.training for m in model.modules()]
    PGD(EPS, EPS / 4, 2, bn_mode="eval")(model, *data)
    assert [m.training for m in model.modules()] == modes


def test_bn_mode_none_uses_the_callers_mode(model, data):
    model.train()
    before = bn_stats(model)
    FGSM(EPS)(model, *data)
    assert not torch.equal(before[0], bn_stats(model)[0])


class CountingForwards(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("kwargs, forwards", [
    (dict(), 7),
    (dict(loss="kl"), 7 + 1),  # the clean logits, once
    (dict(restarts=3), 3 * (7 + 1)),  # each run is scored once to pick the best
])
def test_one_forward_per_step(kwargs, forwards, model, data):
    counted = CountingForwards(model)
    PGD(EPS, EPS / 4, 7, **kwargs)(counted, *data)
    assert counted.calls == forwards


def test_works_inside_no_grad(model, data):
    x, y = data
    with torch.no_grad():
        x_adv = PGD(EPS, EPS / 4, 3)(model, x, y)
    assert (ce(model, x_adv, y) > ce(model, x, y)).all()


def test_registry_builds_by_name():
    assert {"fgsm", "pgd", "cw"} <= set(ATTACKS.names())
    assert isinstance(build_attack("pgd", eps=EPS, alpha=0.01, steps=2, norm="l2"), PGD)
    assert isinstance(build_attack("fgsm", eps=EPS), FGSM)
    assert isinstance(build_attack("cw", eps=EPS, alpha=0.01, steps=2), CW)


@pytest.mark.parametrize("kwargs, mentions", [
    (dict(eps=0.0, alpha=0.01, steps=1), "eps"),
    (dict(eps=-0.1, alpha=0.01, steps=1), "eps"),
    (dict(eps=float("nan"), alpha=0.01, steps=1), "eps"),
    (dict(eps=0.1, alpha=0.0, steps=1), "alpha"),
    (dict(eps=0.1, alpha=0.01, steps=0), "steps"),
    (dict(eps=0.1, alpha=0.01, steps=2.5), "steps"),
    (dict(eps=0.1, alpha=0.01, steps=1, restarts=0), "restarts"),
    (dict(eps=0.1, alpha=0.01, steps=1, restarts=2, random_start=False), "random_start"),
    (dict(eps=0.1, alpha=0.01, steps=1, norm="l1"), "l1"),
    (dict(eps=0.1, alpha=0.01, steps=1, init="gaussian"), "gaussian"),
    (dict(eps=0.1, alpha=0.01, steps=1, loss="hinge"), "hinge"),
    (dict(eps=0.1, alpha=0.01, steps=1, bn_mode="test"), "bn_mode"),
])
def test_bad_arguments_raise_a_clear_error(kwargs, mentions):
    with pytest.raises(WpatError, match=mentions):
        build_attack("pgd", **kwargs)


def test_bad_fgsm_eps_names_fgsm():
    with pytest.raises(WpatError, match="FGSM: eps"):
        FGSM(0)


def test_unknown_attack_lists_choices():
    with pytest.raises(WpatError, match="fgsm, pgd"):
        build_attack("deepfool")


def test_attack_losses_on_fixed_logits():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 0.5]])
    clean = torch.tensor([[1.0, 1.0, 1.0], [0.0, 3.0, 0.5]])
    y = torch.tensor([0, 2])
    get = ATTACK_LOSSES.get
    torch.testing.assert_close(get("ce")(logits, y, None),
                               -torch.log_softmax(logits, 1)[[0, 1], [0, 2]])
    torch.testing.assert_close(get("cw")(logits, y, None), torch.tensor([1.0 - 2.0, 3.0 - 0.5]))
    p, q = torch.softmax(clean, 1), torch.softmax(logits, 1)
    torch.testing.assert_close(get("kl")(logits, y, clean), (p * (p.log() - q.log())).sum(1))
    assert get("kl")(logits, y, clean)[1] == pytest.approx(0, abs=1e-6)
    assert [get(n).needs_clean for n in ("ce", "cw", "kl")] == [False, False, True]
