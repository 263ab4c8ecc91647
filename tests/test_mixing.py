"""Cutout, mixup and CutMix in the DeviceLoader, and soft targets in the losses and objectives.

References are written from the authors' code: Rice et al.'s ``utils.Cutout`` (from
davidcpage/cifar10-fast) and ``mixup_data`` / ``mixup_criterion`` (locuslab/robust_overfitting
``train_cifar.py``), and Yun et al.'s ``rand_bbox`` (clovaai/CutMix-PyTorch).
"""

from __future__ import annotations

import itertools
import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from wpat.attacks import ATTACK_LOSSES, CW, PGD
from wpat.attacks.losses import cross_entropy_per_example
from wpat.data import MIXES, DeviceLoader
from wpat.data.mixing import sample_beta
from wpat.helpers.errors import WpatError
from wpat.objectives import AT, MART, OBJECTIVES, TRADES, Batch
from wpat.perturb import AWP, RWP


def _images(n: int, shape=(3, 12, 12), low: int = 0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, 256, (n, *shape), dtype=torch.uint8, generator=g)


def _epoch(loader: DeviceLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


SETTINGS = {
    "cutout": dict(cutout=5),
    "mixup": dict(mix="mixup", mix_alpha=1.4, num_classes=10),
    "cutmix": dict(mix="cutmix", num_classes=10),
    "crop_flip+cutout+mixup": dict(augment="crop_flip", padding="reflect", cutout=7, mix="mixup",
                                   mix_alpha=1.4, num_classes=10),
    "rotation+cutout+cutmix": dict(augment="crop_flip", rotation=15, cutout=3, mix="cutmix",
                                   mix_alpha=0.5, num_classes=10),
}


def _loader(setting: str, seed: int = 0, n: int = 48, batch: int = 16) -> DeviceLoader:
    x = _images(n)
    y = torch.arange(n) % 10
    return DeviceLoader(x, y, batch, shuffle=True, drop_last=False, seed=seed, **SETTINGS[setting])


# ---------------------------------------------------------------- the loader


@pytest.mark.parametrize("setting", SETTINGS)
def test_each_augmentation_stays_in_the_unit_range_with_the_promised_targets(setting):
    for x, y in _loader(setting):
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
        if "mix" in SETTINGS[setting]:
            assert y.dtype == torch.float32 and y.shape == (x.shape[0], 10)
            assert y.min() >= 0
            torch.testing.assert_close(y.sum(1), torch.ones(len(y)), rtol=0, atol=1e-6)
        else:
            assert y.dtype == torch.int64 and y.shape == (x.shape[0],)


@pytest.mark.parametrize("setting", SETTINGS)
def test_batches_replay_bitwise_from_seed_and_epoch(setting):
    loader = _loader(setting, seed=3)
    first, second = _epoch(loader), _epoch(loader)  # iterating advances the epoch
    assert not _same(first, second)
    loader.set_epoch(1)
    assert _same(_epoch(loader), second)

    resumed = _loader(setting, seed=3)  # a fresh loader, as a resumed run builds it
    resumed.set_epoch(1)
    assert _same(_epoch(resumed), second)
    resumed.set_epoch(0)  # mid-epoch resume: skip the batches already done, as fit() does
    rest = [(x.clone(), y.clone()) for x, y in itertools.islice(resumed, 1, None)]
    assert _same(rest, first[1:])

    assert not _same(_epoch(_loader(setting, seed=4)), first)


def test_options_off_leave_the_batches_bit_identical():
    x, y = _images(40), torch.arange(40) % 10
    common = dict(shuffle=True, drop_last=True, augment="crop_flip", rotation=10, seed=7)
    plain = _epoch(DeviceLoader(x, y, 16, **common))
    off = _epoch(DeviceLoader(x, y, 16, cutout=0, mix="none", mix_alpha=1.4, num_classes=10, **common))
    assert _same(plain, off)


# ---------------------------------------------------------------- cutout


def _rice_cutout(image: torch.Tensor, x0: int, y0: int, length: int) -> torch.Tensor:
    """Rice et al.'s ``Cutout(h, w).__call__`` on one CHW image: ``x[:, y0:y0+h, x0:x0+w] = 0``."""
    out = image.clone()
    out[:, y0:y0 + length, x0:x0 + length] = 0.0
    return out


@pytest.mark.parametrize("length", [1, 5, 11, 12])
def test_cutout_zeroes_one_whole_square_per_example_like_rices_code(length):
    n, size = 600, 12
    x = _images(n, (3, size, size), low=1)  # no pixel is 0 before the cutout
    out, _ = next(iter(DeviceLoader(x, torch.zeros(n, dtype=torch.long), n, shuffle=False,
                                    drop_last=True, cutout=length)))
    source = x.float() / 255
    corners = []
    for image, src in zip(out, source):
        zero = image == 0
        assert torch.equal(zero, zero[:1].expand_as(zero))  # every channel
        rows, cols = zero[0].nonzero().unbind(1)
        y0, x0 = int(rows.min()), int(cols.min())
        # Exactly length² pixels: one square inside the image, never clipped at the border.
        assert int(zero[0].sum()) == length * length
        assert torch.equal(image, _rice_cutout(src, x0, y0, length))
        corners.append((y0, x0))
    tops, lefts = zip(*corners)
    # Rice's options: x0 in range(W + 1 - w), y0 in range(H + 1 - h), each drawn per example.
    assert set(tops) == set(range(size - length + 1)) == set(lefts)
    assert len(set(corners)) > min(30, (size - length + 1) ** 2 // 2)


def test_cutout_comes_after_crop_and_flip():
    # With reflect padding a crop never brings zeros in, so the only zeros are the cutout's: a
    # whole square, which it would not be if the crop had shifted it afterwards.
    n, length = 200, 6
    x = _images(n, (3, 12, 12), low=1)
    out, _ = next(iter(DeviceLoader(x, torch.zeros(n, dtype=torch.long), n, shuffle=False,
                                    drop_last=True, augment="crop_flip", padding="reflect",
                                    cutout=length)))
    for image in out:
        zero = image[0] == 0
        rows, cols = zero.nonzero().unbind(1)
        y0, x0 = int(rows.min()), int(cols.min())
        expected = torch.zeros_like(zero)
        expected[y0:y0 + length, x0:x0 + length] = True
        assert torch.equal(zero, expected)


# ---------------------------------------------------------------- mixup and CutMix


def _recover_pairs(y_soft: torch.Tensor, y_a: torch.Tensor) -> tuple[float, torch.Tensor]:
    """λ and the permutation from soft targets whose labels are all distinct."""
    b = len(y_soft)
    rows = torch.arange(b)
    own = y_soft[rows, y_a]
    others = y_soft.clone()
    others[rows, y_a] = 0
    partner_label = others.argmax(1)
    fixed = others.max(1).values == 0  # paired with itself
    partner_label[fixed] = y_a[fixed]
    lams = own[~fixed]
    assert len(lams) > 0 and torch.all(lams == lams[0])  # one λ per batch
    position = {int(label): i for i, label in enumerate(y_a)}
    perm = torch.tensor([position[int(label)] for label in partner_label])
    return float(lams[0]), perm


def test_mixup_is_a_convex_pair_of_examples_and_labels_with_one_lambda_per_batch():
    n = 64
    x = _images(n)
    loader = DeviceLoader(x, torch.arange(n), 32, shuffle=True, drop_last=True, mix="mixup",
                          mix_alpha=1.4, num_classes=n, seed=1)
    order_loader = DeviceLoader(x, torch.arange(n), 32, shuffle=True, drop_last=True, seed=1)
    lams = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        order_loader.set_epoch(epoch)
        for (xm, ym), (xa, ya) in zip(loader, order_loader):
            lam, perm = _recover_pairs(ym, ya)
            assert sorted(perm.tolist()) == list(range(32))
            onehot = F.one_hot(ya, n).float()
            torch.testing.assert_close(ym, lam * onehot + (1 - lam) * onehot[perm], rtol=0, atol=1e-6)
            torch.testing.assert_close(ym.sum(1), torch.ones(32), rtol=0, atol=1e-6)
            # Rice's mixup_data: mixed_x = lam * x + (1 - lam) * x[index]
            torch.testing.assert_close(xm, lam * xa + (1 - lam) * xa[perm], rtol=0, atol=1e-6)
            lams.append(lam)
    assert len(set(lams)) == len(lams)  # a new λ every batch


def test_beta_draws_follow_beta_alpha_alpha():
    g = torch.Generator().manual_seed(0)
    for alpha in (0.2, 1.0, 1.4):
        draws = torch.stack([sample_beta(alpha, g, torch.device("cpu")) for _ in range(3000)])
        assert draws.dtype == torch.float64 and draws.min() >= 0 and draws.max() <= 1
        assert scipy.stats.kstest(draws.numpy(), scipy.stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def _rand_bbox_reference(h: int, w: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """Yun et al.'s rand_bbox for a given λ and centre (rows first, as their size[2])."""
    cut_rat = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut_rat), int(w * cut_rat)
    clip = lambda v, hi: min(max(v, 0), hi)  # noqa: E731
    return (clip(cy - cut_h // 2, h), clip(cy + cut_h // 2, h),
            clip(cx - cut_w // 2, w), clip(cx + cut_w // 2, w))


def test_cutmix_pastes_one_box_and_weighs_labels_by_its_area():
    n, size = 64, 16
    x = _images(n, (3, size, size))
    loader = DeviceLoader(x, torch.arange(n), 32, shuffle=True, drop_last=True, mix="cutmix",
                          num_classes=n, seed=2)
    order_loader = DeviceLoader(x, torch.arange(n), 32, shuffle=True, drop_last=True, seed=2)
    areas = []
    for epoch in range(6):
        loader.set_epoch(epoch)
        order_loader.set_epoch(epoch)
        for (xm, ym), (xa, ya) in zip(loader, order_loader):
            onehot = F.one_hot(ya, n).float()
            rows = torch.arange(32)
            kept = ym[rows, ya]
            fixed = kept > 1 - 1e-6
            if bool(fixed.all()):  # an empty box (λ near 1): nothing pasted
                assert torch.equal(xm, xa)
                areas.append(0.0)
                continue
            lam, perm = _recover_pairs(ym, ya)
            xb = xa[perm]
            taken = ((xm == xb) & (xm != xa)).any(0).any(0)  # pixels that came from the partner
            box = (xm == xb).all(0).all(0)
            area = int(box.sum())
            r, c = box.nonzero().unbind(1)
            top, bottom, left, right = int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1
            assert area == (bottom - top) * (right - left)  # a rectangle, the same for every example
            assert taken.sum() <= area
            torch.testing.assert_close(torch.tensor(1 - lam), torch.tensor(area / size**2))
            expected = xa.clone()
            expected[:, :, top:bottom, left:right] = xb[:, :, top:bottom, left:right]
            assert torch.equal(xm, expected)
            torch.testing.assert_close(ym, lam * onehot + (1 - lam) * onehot[perm], rtol=0, atol=1e-6)
            areas.append(area / size**2)
    assert len(set(areas)) > 5


def test_cutmix_box_matches_yuns_rand_bbox():
    # Replay the draws cutmix makes from the generator and build the box as rand_bbox does.
    n, h, w = 8, 10, 14
    x = torch.rand(n, 3, h, w)
    y = torch.arange(n)
    cutmix = MIXES.get("cutmix")
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        state = g.get_state()
        xm, ym = cutmix(x, y, g, n, 1.0)
        g.set_state(state)
        lam = float(sample_beta(1.0, g, x.device))
        perm = torch.randperm(n, generator=g)
        cy = int(torch.randint(0, h, (), generator=g))
        cx = int(torch.randint(0, w, (), generator=g))
        top, bottom, left, right = _rand_bbox_reference(h, w, lam, cy, cx)
        expected = x.clone()
        expected[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
        assert torch.equal(xm, expected)
        kept = 1 - (bottom - top) * (right - left) / (h * w)
        onehot = F.one_hot(y, n).float()
        torch.testing.assert_close(ym, kept * onehot + (1 - kept) * onehot[perm], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- soft targets in the losses


def _mixed_targets(b: int = 6, c: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g) * 3
    y_a = torch.randint(0, c, (b,), generator=g)
    y_b = torch.randint(0, c, (b,), generator=g)
    lam = 0.37
    soft = lam * F.one_hot(y_a, c).float() + (1 - lam) * F.one_hot(y_b, c).float()
    return logits, y_a, y_b, lam, soft


def test_soft_cross_entropy_is_rices_mixup_criterion():
    logits, y_a, y_b, lam, soft = _mixed_targets()
    expected = lam * F.cross_entropy(logits, y_a, reduction="none") + (1 - lam) * F.cross_entropy(
        logits, y_b, reduction="none")
    torch.testing.assert_close(cross_entropy_per_example(logits, soft), expected)
    torch.testing.assert_close(ATTACK_LOSSES.get("ce")(logits, soft, None), expected)
    torch.testing.assert_close(AT().per_example(nn.Identity(), Batch(logits, soft, x_adv=logits)), expected)
    # TRADES' natural term (β = 0 leaves only it); its KL reads no labels.
    torch.testing.assert_close(TRADES(beta=0.0).per_example(nn.Identity(), Batch(logits, soft, x_adv=logits * 0.5)),
                               expected)
    kl = TRADES(beta=1.0).per_example(nn.Identity(), Batch(logits, soft, x_adv=logits * 0.5)) - expected
    torch.testing.assert_close(kl, TRADES(beta=1.0).per_example(nn.Identity(), Batch(logits, y_a, x_adv=logits * 0.5))
                               - F.cross_entropy(logits, y_a, reduction="none"))
    # Hard labels are untouched: bitwise the plain cross-entropy.
    assert torch.equal(cross_entropy_per_example(logits, y_a), F.cross_entropy(logits, y_a, reduction="none"))
    torch.testing.assert_close(ATTACK_LOSSES.get("kl")(logits, soft, logits * 0.5),
                               ATTACK_LOSSES.get("kl")(logits, y_a, logits * 0.5))


def test_soft_targets_of_the_wrong_shape_are_one_line():
    logits, *_ = _mixed_targets()
    with pytest.raises(WpatError, match=r"soft targets must be \[B, C\]") as info:
        cross_entropy_per_example(logits, torch.rand(6))
    assert "\n" not in str(info.value)


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 10))


def test_pgd_with_ce_ascends_the_mixed_loss():
    x = _images(32, (3, 8, 8))
    loader = DeviceLoader(x, torch.arange(32) % 10, 32, shuffle=True, drop_last=True, mix="mixup",
                          mix_alpha=1.4, num_classes=10)
    xb, soft = next(iter(loader))
    model = _tiny_model()
    eps = 8 / 255
    x_adv = PGD(eps, 2 / 255, 10, loss="ce")(model, xb, soft)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - xb).abs().max() <= eps + 1e-6
    with torch.no_grad():
        before = cross_entropy_per_example(model(xb), soft)
        after = cross_entropy_per_example(model(x_adv), soft)
    assert after.mean() > before.mean()


@pytest.mark.parametrize("name", ["awp", "rwp"])
def test_weight_perturbations_run_on_soft_per_example_losses(name):
    x = _images(16, (3, 8, 8))
    loader = DeviceLoader(x, torch.arange(16) % 10, 16, shuffle=False, drop_last=True, mix="cutmix",
                          num_classes=10)
    xb, soft = next(iter(loader))
    model = _tiny_model()
    objective = AT()

    def loss_fn(m, index=None):
        if index is None:
            return objective.per_example(m, Batch(xb, soft, x_adv=xb))
        return objective.per_example(m, Batch(xb[index], soft[index], x_adv=xb[index]))

    losses = loss_fn(model).detach()
    c_min = float(losses.median())
    perturbation = AWP(gamma=0.01) if name == "awp" else RWP(gamma=0.01, c_min=c_min, steps=2)
    result = perturbation.compute(model, loss_fn)
    assert result.moved and all(torch.isfinite(v).all() for v in result.v.values())
    if name == "rwp":
        assert float(result.stats["rwp_frac_below"]) == float((losses < c_min).float().mean())


# ---------------------------------------------------------------- refusals and bad values


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mart_refuses_soft_targets_with_one_line():
    logits, y_a, _, _, soft = _mixed_targets()
    assert MART.soft_targets is False and AT.soft_targets and TRADES.soft_targets
    assert all(OBJECTIVES.get(name).soft_targets == (name != "mart") for name in OBJECTIVES.names())
    with pytest.raises(WpatError) as info:
        MART().per_example(nn.Identity(), Batch(logits, soft, x_adv=logits))
    assert "mixup/CutMix" in _one_line(info) and "MART" in str(info.value)
    MART().per_example(nn.Identity(), Batch(logits, y_a, x_adv=logits))  # labels still work


def test_cw_refuses_soft_targets_with_one_line():
    logits, y_a, _, _, soft = _mixed_targets()
    cw = ATTACK_LOSSES.get("cw")
    assert cw.soft_targets is False and ATTACK_LOSSES.get("ce").soft_targets
    assert ATTACK_LOSSES.get("kl").soft_targets
    with pytest.raises(WpatError) as info:
        cw(logits, soft)
    assert "'cw'" in _one_line(info) and "soft targets" in str(info.value)
    with pytest.raises(WpatError) as info:
        CW(8 / 255, 2 / 255, 2)(_tiny_model(), torch.rand(6, 3, 8, 8), torch.rand(6, 10).softmax(1))
    _one_line(info)
    cw(logits, y_a)


@pytest.mark.parametrize("options, pattern", [
    (dict(cutout=-1), r"cutout must be a whole number of pixels in \[0, 12\]"),
    (dict(cutout=13), r"cutout must be .* must fit in the 12x12 image\), got 13"),
    (dict(cutout=2.5), r"cutout must be a whole number"),
    (dict(cutout=True), r"cutout must be a whole number"),
    (dict(mix="mixpu", num_classes=10), r"unknown mix 'mixpu'; valid choices: cutmix, mixup, none"),
    (dict(mix="mixup"), r"mix='mixup' needs num_classes"),
    (dict(mix="cutmix", mix_alpha=0, num_classes=10), r"mix_alpha must be a finite number > 0"),
    (dict(mix="mixup", mix_alpha=-1.4, num_classes=10), r"mix_alpha must be a finite number > 0"),
    (dict(mix="mixup", mix_alpha=float("nan"), num_classes=10), r"mix_alpha must be"),
    (dict(mix="mixup", mix_alpha=float("inf"), num_classes=10), r"mix_alpha must be"),
    (dict(mix="mixup", num_classes=5), r"labels must lie in \[0, 5\)"),
    (dict(mix="mixup", num_classes=0), r"num_classes must be an integer >= 1"),
])
def test_bad_values_end_with_one_line(options, pattern):
    with pytest.raises(WpatError, match=pattern) as info:
        DeviceLoader(_images(8), torch.arange(8), 4, shuffle=True, drop_last=True, **options)
    _one_line(info)
