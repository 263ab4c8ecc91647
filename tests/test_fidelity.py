"""Every paper preset builds exactly the authors' setting.

The expected settings are read from the table in docs/reproduction.md, so the document and the
code cannot drift apart. Each fixed difference (schedule and epoch counting, warm-up, padding,
rotation) is also compared with a rendition of the authors' code written from reading it.
"""

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wpat.training import experiment
from wpat.attacks.pgd import STARTS
from wpat.configuration.config import list_presets, load_config
from wpat.configuration.values import flatten
from wpat.data import dataset_spec
from wpat.data.loader import random_crop_flip, rotate
from wpat.perturb import AWP, RWP
from wpat.optim.schedules import Piecewise
from wpat.training.step import perturbation_active, schedule_time

TABLE = Path(__file__).resolve().parent.parent / "docs" / "reproduction.md"


def preset_rows(first_columns: str = "| preset | script |") -> dict[str, dict[str, str]]:
    lines = TABLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_columns))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


ROWS = preset_rows()
VARIANTS = preset_rows("| preset | base | settings |")
PAPER_PRESETS = sorted(ROWS)


def number(text: str) -> float:
    return float(Fraction(text))


def test_the_tables_cover_every_preset():
    assert sorted([*ROWS, *VARIANTS]) == sorted(list_presets())


@pytest.mark.parametrize("preset", sorted(VARIANTS))
def test_setting_presets_are_their_base_plus_the_listed_settings(preset):
    row = VARIANTS[preset]
    cfg = load_config(preset)
    experiment.build_components(cfg)
    if row["base"] == "—":
        return
    base = flatten(load_config(row["base"]).to_dict(), "base")
    differs = {k for k, v in flatten(cfg.to_dict(), preset).items() if base.get(k) != v} - {"run.name"}
    listed = {item.split("=")[0].strip("`") for item in row["settings"].replace(",", " ").split()
              if "=" in item and not item.startswith("`run.init_from")}
    assert differs <= listed | {"perturb.name"}, differs - listed


@pytest.mark.parametrize("preset", PAPER_PRESETS)
@pytest.mark.parametrize("method", ["none", "awp", "rwp"])
def test_preset_builds_the_authors_setting(preset, method):
    row = ROWS[preset]
    cfg = load_config(preset, [f"perturb.name={method}"])
    objective = experiment.objective_from_config(cfg)
    attack = experiment.train_attack(cfg, objective)
    perturbation = experiment.perturbation_from_config(cfg)
    schedule = experiment.schedule_from_config(cfg)

    assert cfg.objective.name == row["objective"]
    assert (attack.eps, attack.alpha, attack.steps) == pytest.approx((number(row["eps"]), number(row["alpha"]), 10))
    assert attack.bn_mode == row["attack BN"] and attack.start is STARTS.get(row["start"])
    assert cfg.attack.script_forwards == {"yes": True, "no": False}[row["script forwards"]]
    assert attack.mixup_forwards == (2 if cfg.attack.script_forwards else 1)
    if method == "none":
        assert perturbation is None
    elif method == "awp":  # one ascent step, whatever the preset says about RWP
        assert type(perturbation) is AWP
        assert (perturbation.gamma, perturbation.steps) == (float(row["AWP gamma"]), int(row["AWP steps"]))
    else:
        assert type(perturbation) is RWP
        assert (perturbation.gamma, perturbation.steps, perturbation.c_min) == (
            float(row["RWP gamma"]), int(row["RWP K2"]), float(row["RWP c_min"]))
    assert cfg.perturb.warmup == int(row["warm-up"])
    assert cfg.optim.lr == float(row["lr"]) and (cfg.optim.momentum, cfg.optim.weight_decay) == (0.9, 5e-4)
    assert isinstance(schedule, Piecewise) and schedule.epochs == 200
    assert list(schedule.milestones) == [0.5, 0.75] and schedule.decay == 0.1
    assert cfg.schedule.first_epoch == int(row["first epoch"]) and cfg.schedule.update == row["lr update"]
    assert (cfg.data.augment or dataset_spec(cfg.data.name).augment) == row["augment"]
    assert (cfg.data.padding, cfg.data.rotation) == (row["padding"], float(row["rotation"]))
    assert cfg.data.batch_size == 128


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_preset_normalization(preset):
    cfg = load_config(preset)
    spec = dataset_spec(cfg.data.name)
    expected = {"dataset": (spec.mean, spec.std), "none": ((0.0,) * 3, (1.0,) * 3),
                "0.5": ((0.5,) * 3, (0.5,) * 3)}[ROWS[preset]["normalization"]]
    with torch.device("meta"):  # the constants are checked on the config; shapes only here
        model = experiment.model_from_config(cfg)
    assert model.normalize.mean.numel() == 3
    mean = cfg.model.mean if cfg.model.mean is not None else spec.mean
    std = cfg.model.std if cfg.model.std is not None else spec.std
    assert tuple(mean) + tuple(std) == pytest.approx(expected[0] + expected[1])


def test_normalization_constants_reach_the_model():
    cfg = load_config("svhn-preactresnet18-linf")
    model = experiment.model_from_config(cfg)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.normalize(x), (x - 0.5) / 0.5)
    trades = load_config("cifar10-wrn34-10-trades", ["model.name=preact_resnet18"])
    torch.testing.assert_close(experiment.model_from_config(trades).normalize(x), x)


# ---------------------------------------------------------------------- schedules and warm-up


def wpat_lrs(preset: str, steps_per_epoch: int) -> list[float]:
    cfg = load_config(preset)
    schedule = experiment.schedule_from_config(cfg)
    return [schedule(schedule_time(e, i, steps_per_epoch, cfg.schedule), cfg.optim.lr)
            for e in range(cfg.schedule.epochs) for i in range(steps_per_epoch)]


def authors_at_lrs(epochs: int, steps_per_epoch: int, lr_max: float) -> list[float]:
    """AT_AWP(_RWP)/train_cifar10.py: lr_schedule(epoch + (i + 1) / N) before every batch,
    epochs from 0, piecewise on t / epochs at 0.5 and 0.75."""
    def lr_schedule(t):
        if t / epochs < 0.5:
            return lr_max
        if t / epochs < 0.75:
            return lr_max / 10.
        return lr_max / 100.
    return [lr_schedule(epoch + (i + 1) / steps_per_epoch)
            for epoch in range(epochs) for i in range(steps_per_epoch)]


def authors_trades_lrs(epochs: int, steps_per_epoch: int, lr: float) -> list[float]:
    """train_trades_cifar.py: adjust_learning_rate(optimizer, epoch) once per epoch, epochs
    from 1; lr x 0.1 from epoch 100, x 0.01 from epoch 150."""
    out = []
    for epoch in range(1, epochs + 1):
        rate = lr
        if epoch >= 100:
            rate = lr * 0.1
        if epoch >= 150:
            rate = lr * 0.01
        out += [rate] * steps_per_epoch
    return out


@pytest.mark.parametrize("preset", ["cifar10-preactresnet18-linf", "svhn-preactresnet18-linf",
                                    "cifar10-wrn34-10-trades"])
def test_learning_rates_match_the_authors_scripts(preset):
    n = 3
    cfg = load_config(preset)
    reference = (authors_trades_lrs if "trades" in preset else authors_at_lrs)(200, n, cfg.optim.lr)
    assert wpat_lrs(preset, n) == pytest.approx(reference, rel=1e-12)


def test_the_at_scripts_last_batch_of_epoch_99_runs_at_the_lower_rate():
    lrs = wpat_lrs("cifar10-preactresnet18-linf", 4)
    assert lrs[99 * 4 + 2] == pytest.approx(0.1) and lrs[99 * 4 + 3] == pytest.approx(0.01)
    trades = wpat_lrs("cifar10-wrn34-10-trades", 4)  # from 1-based epoch 100 = 0-based 99
    assert trades[98 * 4 + 3] == pytest.approx(0.1) and trades[99 * 4] == pytest.approx(0.01)


@pytest.mark.parametrize("preset, gate", [("cifar10-wrn34-10-trades", lambda e1: e1 >= 10),  # 1-based
                                          ("svhn-preactresnet18-linf", lambda e1: e1 - 1 >= 5),  # 0-based
                                          ("cifar10-preactresnet18-linf", lambda e1: True)])
def test_warmup_matches_the_scripts_gate(preset, gate):
    """The training loop's rule, for 0-based epochs, against the script's gate (epoch e1)."""
    cfg = load_config(preset)
    assert [perturbation_active(e, cfg) for e in range(20)] == [gate(e + 1) for e in range(20)]


# ---------------------------------------------------------------------- augmentation


def windows(image: np.ndarray, mode: str) -> list[np.ndarray]:
    """Every 32x32 crop of the 4-px padded image, flipped or not (torchvision RandomCrop +
    RandomHorizontalFlip for zeros; cifar10-fast's np.pad(mode='reflect') for reflect)."""
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)), mode="constant" if mode == "zeros" else "reflect")
    crops = [padded[:, t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
    return crops + [c[:, :, ::-1] for c in crops]


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_crop_flip_padding_is_the_scripts(padding):
    x = torch.rand(16, 3, 32, 32)
    out = random_crop_flip(x, torch.Generator().manual_seed(1), padding)
    other = "reflect" if padding == "zeros" else "zeros"
    found_other = 0
    for image, augmented in zip(x.numpy(), out.numpy()):
        assert any(np.array_equal(augmented, w) for w in windows(image, padding))
        found_other += any(np.array_equal(augmented, w) for w in windows(image, other))
    assert found_other < 16  # the two paddings are told apart (a central crop fits both)


@pytest.mark.parametrize("degrees", [15.0, -15.0, 7.3, 90.0])
def test_rotation_is_pils_nearest_rotation(degrees):
    """torchvision's RandomRotation(15) on CIFAR's PIL images is PIL's Image.rotate(angle,
    NEAREST) with zeros outside."""
    images = (torch.rand(3, 1, 32, 32) * 255).round()
    ours = rotate(images, torch.full((3,), degrees))
    for image, rotated in zip(images, ours):
        pil = Image.fromarray(image[0].numpy().astype(np.uint8)).rotate(degrees, Image.NEAREST, fillcolor=0)
        assert np.mean(rotated[0].numpy() == np.asarray(pil, dtype=np.float32)) > 0.99


def test_rotation_angles_are_uniform_within_the_range():
    from wpat.data.loader import random_rotation

    x = torch.zeros(2000, 1, 9, 9)
    x[:, :, 4, 8] = 1  # a dot on the right edge of the centre row
    out = random_rotation(x, torch.Generator().manual_seed(0), 15)
    rows = out[:, 0].argmax(dim=1).amax(dim=1).float()  # where the dot went
    moved = (out[:, 0, 4, 8] == 0).float().mean()
    assert 0.2 < moved < 0.9 and rows.max() <= 6 and rows.min() >= 2 and not math.isnan(float(moved))


def test_an_option_of_another_method_ends_with_one_clear_line(tmp_path, capsys):
    from wpat.cli import main

    code = main(["train", "cifar10-preactresnet18-linf", "perturb.name=awp", "perturb.awp.c_min=1.7",
                 f"run.out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err == ("wpat: error: perturb.awp: weight perturbation 'awp' has no option 'c_min'; "
                   "its options: gamma, steps, norm\n")
    assert not any(tmp_path.iterdir())  # nothing written


def test_options_of_a_method_not_selected_are_checked_too():
    from wpat.helpers.errors import WpatError

    cfg = load_config("cifar10-preactresnet18-linf", ["perturb.awp.c_min=1"])  # rwp selected
    with pytest.raises(WpatError, match="perturb.awp: weight perturbation 'awp' has no option 'c_min'"):
        experiment.build_components(cfg)
