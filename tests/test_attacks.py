"""Behaviour users rely on from wpat.attacks: the threat model is respected, attacks hurt a trained
model, weights and BN statistics are left as documented, and bad arguments fail clearly."""

import copy

import pyautoattack
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wpat.training import experiment
from wpat.attacks import ATTACK_LOSSES, ATTACKS, BALLS, CW, FGSM, PGD, SPSA, AutoAttack, ball
from wpat.attacks.base import L2Ball, LinfBall, crafting_mode
from wpat.attacks.pgd import STARTS
from wpat.helpers.errors import WpatError
from wpat.helpers.threat import BNMode, Norm, ThreatModel

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
    assert {"autoattack", "cw", "fgsm", "pgd", "spsa"} <= set(ATTACKS.names())
    assert isinstance(ATTACKS.build("pgd", eps=EPS, alpha=0.01, steps=2, norm="l2"), PGD)
    assert isinstance(ATTACKS.build("fgsm", eps=EPS), FGSM)
    assert isinstance(ATTACKS.build("cw", eps=EPS, alpha=0.01, steps=2), CW)
    assert isinstance(ATTACKS.build("spsa", eps=EPS, steps=2), SPSA)
    assert isinstance(ATTACKS.build("autoattack", eps=EPS, attacks=["apgd-ce"]), AutoAttack)


def own_doc(component) -> str:
    """The docstring ``component`` defines itself (a class's own, not one it inherits)."""
    doc = component.__dict__.get("__doc__") if isinstance(component, type) else component.__doc__
    return (doc or "").strip()


@pytest.mark.parametrize("registry", [ATTACKS, ATTACK_LOSSES, STARTS],
                         ids=["attacks", "attack-losses", "starts"])
def test_every_registered_component_documents_itself(registry):
    for name in registry.names():
        assert own_doc(registry.get(name)), f"{registry.kind} {name!r} has no docstring of its own"


def test_attack_classes_carry_their_papers():
    for cls, cites in ((PGD, "Madry"), (FGSM, "Goodfellow"), (CW, "Carlini"), (SPSA, "Uesato"),
                       (AutoAttack, "Croce")):
        assert cites in own_doc(cls) and "Args" in own_doc(cls), cls.__name__


@pytest.mark.parametrize("name", ["pgd", "fgsm", "cw", "spsa", "autoattack"])
def test_unknown_option_is_one_line_naming_the_valid_ones(name):
    with pytest.raises(WpatError) as e:
        ATTACKS.build(name, eps=EPS, foo=1)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"attack {name!r} has no option 'foo'; its options: ")
    assert "eps" in message.split("its options: ")[1]


def test_cw_rejects_a_loss_it_fixes():
    with pytest.raises(WpatError, match="has no option 'loss'"):
        ATTACKS.build("cw", eps=EPS, alpha=0.01, steps=1, loss="ce")


def test_norms_and_bn_modes_are_closed_sets_accepting_their_strings():
    assert isinstance(ball("linf"), LinfBall) and ball(Norm.L2) is BALLS[Norm.L2]
    assert set(BALLS) == set(Norm)
    attack = PGD(EPS, 0.01, 1, norm="l2", bn_mode="train")
    assert attack.norm is Norm.L2 and attack.bn_mode is BNMode.TRAIN
    assert isinstance(attack.ball, L2Ball)
    assert PGD(EPS, 0.01, 1).bn_mode is None  # None: leave the caller's mode
    assert SPSA(EPS).bn_mode is BNMode.EVAL and AutoAttack(EPS).bn_mode is BNMode.EVAL


@pytest.mark.parametrize("make, mentions", [
    (lambda: ball("l1"), "norm: 'l1' is invalid; expected one of linf, l2"),
    (lambda: Norm.parse("L-inf", "attack.norm"), "attack.norm: 'L-inf' is invalid"),
    (lambda: BNMode.parse("test", "attack.bn_mode"), "expected one of train, eval"),
    (lambda: PGD(EPS, 0.01, 1, norm="l1"), "PGD norm: 'l1' is invalid"),
    (lambda: FGSM(EPS, bn_mode="test"), "FGSM bn_mode: 'test' is invalid"),
    (lambda: CW(EPS, 0.01, 1, norm=None), "CW norm: None is invalid"),
    (lambda: SPSA(EPS, norm="l1"), "SPSA norm"),
    (lambda: SPSA(EPS, bn_mode="training"), "SPSA bn_mode"),
    (lambda: AutoAttack(EPS, norm="Linf"), "AutoAttack norm"),
    (lambda: crafting_mode(nn.Identity(), "test").__enter__(), "bn_mode"),
])
def test_bad_norm_or_bn_mode_is_one_clear_line(make, mentions):
    with pytest.raises(WpatError) as e:
        make()
    assert mentions in str(e.value) and "\n" not in str(e.value)


def test_pgd_from_threat_uses_the_threat_models_ball_and_step():
    attack = experiment.pgd(ThreatModel("l2", 0.5, 0.1), 7, "attack")
    assert (attack.eps, attack.alpha, attack.steps, attack.norm) == (0.5, 0.1, 7, Norm.L2)
    assert attack.bn_mode is BNMode.EVAL


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
        ATTACKS.build("pgd", **kwargs)


def test_bad_fgsm_eps_names_fgsm():
    with pytest.raises(WpatError, match="FGSM eps"):
        FGSM(0)


def test_unknown_attack_lists_choices():
    with pytest.raises(WpatError, match="fgsm, pgd"):
        ATTACKS.build("deepfool")


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


# ---------------------------------------------------------------------- AutoAttack


def test_autoattack_predictions_are_pyautoattacks_own(model, data):
    x, y = data[0][:12], data[1][:12]
    eps = EPS  # breaks some examples (3 of 12), not all
    adversary = pyautoattack.AutoAttack(model, attacks=["apgd-ce"], version="custom", eps=eps,
                                        norm="Linf", seed=0, device="cpu")
    x_ref, y_ref = adversary.run_standard_evaluation(x, y, batch_size=12)
    attack = AutoAttack(eps, attacks=["apgd-ce"], seed=0, batch_size=12)
    predictions = attack.predictions(model, x, y)
    assert predictions.dtype == y.dtype and predictions.shape == y.shape
    assert torch.equal(predictions, y_ref)
    assert 0 < (predictions != y).sum() < len(y)
    x_adv = attack(model, x, y)
    torch.testing.assert_close(x_adv, x_ref, rtol=0, atol=1e-6)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    # Where AutoAttack gave up, x_adv is x and the verdict is the clean prediction.
    with torch.no_grad():
        assert torch.equal(predictions[predictions == y], model(x).argmax(1)[predictions == y])


def test_autoattack_resumes_adversarials_and_predictions(model, data, tmp_path, monkeypatch):
    x, y = data[0][:8], data[1][:8]
    attack = AutoAttack(0.15, attacks=["apgd-ce"], batch_size=8, state_dir=tmp_path)
    x_adv, predictions = attack.run(model, x, y)
    assert len(list(tmp_path.glob("autoattack-*.pt"))) == 1

    def no_attack(*args, **kwargs):
        raise AssertionError("a finished call must not be attacked again")

    monkeypatch.setattr(pyautoattack, "AutoAttack", no_attack)
    resumed = AutoAttack(0.15, attacks=["apgd-ce"], batch_size=8, state_dir=tmp_path)
    assert torch.equal(resumed.predictions(model, x, y), predictions)
    assert torch.equal(resumed(model, x, y), x_adv)
    with pytest.raises(AssertionError, match="must not be attacked"):
        resumed(model, x[:4], y[:4])  # another call: not the stored result


def test_autoattack_reruns_a_state_file_without_predictions(model, data, tmp_path):
    x, y = data[0][:8], data[1][:8]
    attack = AutoAttack(0.15, attacks=["apgd-ce"], batch_size=8, state_dir=tmp_path)
    x_adv, predictions = attack.run(model, x, y)
    (path,) = tmp_path.glob("autoattack-*.pt")
    stored = torch.load(path, weights_only=True)
    del stored["y_adv"]  # as an older version kept it
    torch.save(stored, path)
    assert torch.equal(attack.predictions(model, x, y), predictions)
    assert "y_adv" in torch.load(path, weights_only=True)
