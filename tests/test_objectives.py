"""wpat.objectives against hand computations on fixed logits.

The "model" is the identity, so ``x`` and ``x_adv`` *are* the clean and adversarial logits and
each formula can be checked term by term in float64.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wpat.helpers.errors import WpatError
from wpat.objectives import AT, MART, OBJECTIVES, TRADES, Batch
from wpat.helpers.threat import BNMode

IDENTITY = nn.Identity()
CLEAN = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0], [-2.0, 4.0, 0.0]])
ADV = torch.tensor([[0.5, 1.5, -0.5], [0.0, 2.5, 1.0], [2.0, 0.0, 1.0], [-1.0, 3.0, 0.5]])
Y = torch.tensor([0, 2, 1, 1])


def softmax_rows(logits):
    return [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]


def hand_ce(logits, y):
    return [-math.log(p[t]) for p, t in zip(softmax_rows(logits), y.tolist())]


def hand_kl(clean, adv, tiny=0.0):
    return [sum(pc * (math.log(pc) - math.log(pa + tiny)) for pc, pa in zip(p, q))
            for p, q in zip(softmax_rows(clean), softmax_rows(adv))]


def close(actual, expected):
    expected = torch.tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_at_is_cross_entropy_on_the_adversarial_logits():
    loss = AT().per_example(IDENTITY, Batch(CLEAN, Y, x_adv=ADV))
    assert loss.shape == (4,)
    close(loss, hand_ce(ADV, Y))


def test_trades_is_clean_ce_plus_beta_kl():
    loss = TRADES(beta=2.5).per_example(IDENTITY, Batch(CLEAN, Y, x_adv=ADV))
    assert loss.shape == (4,)
    close(loss, [c + 2.5 * k for c, k in zip(hand_ce(CLEAN, Y), hand_kl(CLEAN, ADV))])


def test_trades_with_beta_zero_is_clean_ce():
    close(TRADES(beta=0.0).per_example(IDENTITY, Batch(CLEAN, Y, x_adv=ADV)), hand_ce(CLEAN, Y))


def test_trades_kl_is_non_negative_and_zero_without_perturbation():
    clean, adv = 5 * torch.randn(1000, 10), 5 * torch.randn(1000, 10)
    y = torch.randint(0, 10, (1000,))
    natural = TRADES(beta=0.0).per_example(IDENTITY, Batch(clean, y, x_adv=adv))
    kl = TRADES(beta=1.0).per_example(IDENTITY, Batch(clean, y, x_adv=adv)) - natural
    assert kl.min() >= -1e-5
    torch.testing.assert_close(TRADES(beta=1.0).per_example(IDENTITY, Batch(clean, y, x_adv=clean)), natural)


def test_mart_matches_its_formula():
    lam = 3.0
    loss = MART(lam=lam).per_example(IDENTITY, Batch(CLEAN, Y, x_adv=ADV))
    assert loss.shape == (4,)
    expected = []
    for i, t in enumerate(Y.tolist()):
        p_adv, p_clean = softmax_rows(ADV)[i], softmax_rows(CLEAN)[i]
        wrong = max(p for k, p in enumerate(p_adv) if k != t)
        bce = -math.log(p_adv[t]) - math.log(1.0001 - wrong + 1e-12)
        kl = hand_kl(CLEAN[i:i + 1], ADV[i:i + 1], tiny=1e-12)[0]
        expected.append(bce + lam * kl * (1.0000001 - p_clean[t]))
    close(loss, expected)


def test_mart_with_lam_zero_is_its_bce():
    loss = MART(lam=0.0).per_example(IDENTITY, Batch(CLEAN, Y, x_adv=ADV))
    p_adv = softmax_rows(ADV)
    wrong = [max(p for k, p in enumerate(row) if k != t) for row, t in zip(p_adv, Y.tolist())]
    close(loss, [c - math.log(1.0001 - w + 1e-12) for c, w in zip(hand_ce(ADV, Y), wrong)])


@pytest.mark.parametrize("objective", [AT(), TRADES(), MART()], ids=["at", "trades", "mart"])
def test_gradients_reach_the_inputs_the_formula_uses(objective):
    clean, adv = CLEAN.clone().requires_grad_(True), ADV.clone().requires_grad_(True)
    objective.per_example(IDENTITY, Batch(clean, Y, x_adv=adv)).sum().backward()
    assert adv.grad.abs().sum() > 0
    # AT ignores the clean batch; TRADES and MART differentiate through both forwards.
    assert (clean.grad is None) == isinstance(objective, AT)


@pytest.mark.parametrize("objective", [AT(), TRADES(), MART()], ids=["at", "trades", "mart"])
def test_per_example_leaves_the_model_mode_alone(objective):
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    for training in (True, False):
        model.train(training)
        objective.per_example(model, Batch(CLEAN, Y, x_adv=ADV))
        assert model.training is training and model[1].training is training


def test_attack_recipes_follow_the_authors_code():
    def recipe(cls):
        return cls.attack_loss, cls.attack_init, cls.attack_bn_mode

    assert recipe(AT) == ("ce", "uniform", "train")  # AWP's AT code (Rice et al.)
    assert recipe(TRADES) == ("kl", "normal", "eval")  # TRADES' and AWP's TRADES code
    assert recipe(MART) == ("ce", "normal", "eval")  # MART's mart.py


def test_recipes_name_registered_attack_options():
    from wpat.attacks import ATTACK_LOSSES
    from wpat.attacks.pgd import STARTS

    for name in OBJECTIVES.names():
        cls = OBJECTIVES.get(name)
        assert cls.attack_loss in ATTACK_LOSSES and cls.attack_init in STARTS
        assert isinstance(cls.attack_bn_mode, BNMode)


def test_build_by_name_with_options():
    assert {"at", "trades", "mart"} <= set(OBJECTIVES.names())
    assert OBJECTIVES.build("trades", beta=1.5).beta == 1.5
    assert OBJECTIVES.build("mart", lam=2.0).lam == 2.0
    assert isinstance(OBJECTIVES.build("at"), AT)


@pytest.mark.parametrize("name, key, value", [
    ("trades", "beta", -1.0), ("trades", "beta", float("nan")), ("mart", "lam", -0.5),
    ("mart", "lam", float("inf")),
])
def test_negative_weights_raise_a_clear_error(name, key, value):
    with pytest.raises(WpatError, match=key):
        OBJECTIVES.build(name, **{key: value})


def test_unknown_objective_lists_choices():
    with pytest.raises(WpatError, match="at, mart, trades"):
        OBJECTIVES.build("alp")


@pytest.mark.parametrize("name, options", [("at", "none"), ("trades", "beta, clean_forwards"), ("mart", "lam")])
def test_unknown_option_is_one_line_naming_the_valid_ones(name, options):
    with pytest.raises(WpatError) as e:
        OBJECTIVES.build(name, foo=1)
    assert str(e.value) == f"objective {name!r} has no option 'foo'; its options: {options}"


def test_an_option_of_another_objective_is_rejected():
    with pytest.raises(WpatError, match="'trades' has no option 'lam'; its options: beta, clean_forwards"):
        OBJECTIVES.build("trades", lam=6.0)


def test_every_objective_documents_itself():
    for name in OBJECTIVES.names():
        doc = (OBJECTIVES.get(name).__dict__.get("__doc__") or "").strip()
        assert doc, f"objective {name!r} has no docstring of its own"
    for cls, cites in ((AT, "Madry"), (TRADES, "Zhang"), (MART, "Wang")):
        assert cites in cls.__doc__ and "eq." in cls.__doc__
    assert "beta" in TRADES.__doc__ and "lam" in MART.__doc__


def authors_trades_step(model, x, x_adv, y, beta):
    """A rendition of the training step of the AWP/RWP TRADES scripts (train_trades_cifar.py),
    written from reading them: three train-mode forwards, adversarial, clean, clean."""
    model.train()
    logits_adv = model(x_adv)
    target = F.softmax(model(x), dim=1)  # not detached
    logits = model(x)
    loss_robust = F.kl_div(F.log_softmax(logits_adv, dim=1), target, reduction="batchmean")
    loss = F.cross_entropy(logits, y) + beta * loss_robust
    loss.backward()


@pytest.mark.parametrize("clean_forwards", [2, 1])
def test_trades_step_matches_the_authors_forwards_and_bn_statistics(clean_forwards):
    """Same gradients and, with clean_forwards=2, the same BN running statistics and batch
    count as the authors' adversarial-clean-clean step (1: the RST script's two forwards)."""
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5))
    theirs = copy.deepcopy(ours)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 5, (16,))
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    authors_trades_step(theirs, x, x_adv, y, beta=6.0)
    ours.train()
    trades = OBJECTIVES.build("trades", beta=6.0, clean_forwards=clean_forwards)
    trades.per_example(ours, Batch(x, y, x_adv=x_adv)).mean().backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    bn_ours, bn_theirs = ours[1], theirs[1]
    if clean_forwards == 2:
        torch.testing.assert_close(bn_ours.running_mean, bn_theirs.running_mean)
        torch.testing.assert_close(bn_ours.running_var, bn_theirs.running_var)
        assert int(bn_ours.num_batches_tracked) == int(bn_theirs.num_batches_tracked) == 3
    else:
        assert int(bn_ours.num_batches_tracked) == 2
        assert not torch.allclose(bn_ours.running_mean, bn_theirs.running_mean)
