import math

import pytest

from wpat.config import Config, config_from_dict, list_presets, load_config, parse_number
from wpat.errors import WpatError
from wpat.registry import Registry
from wpat.schedules import learning_rate


def test_fractions_and_units_parse():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    cfg = load_config(None, ["attack.eps=8/255", "attack.alpha=2/255", "perturb.c_min=inf"])
    assert cfg.attack.eps == pytest.approx(8 / 255)
    assert cfg.perturb.c_min == math.inf


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.run.name == name


def test_presets_carry_the_papers_hyperparameters():
    c10 = load_config("cifar10-preactresnet18-linf")
    assert (c10.attack.eps, c10.attack.alpha, c10.attack.steps) == pytest.approx((8 / 255, 2 / 255, 10))
    assert (c10.perturb.name, c10.perturb.gamma, c10.perturb.c_min, c10.perturb.steps) == ("rwp", 0.01, 1.7, 10)
    assert (c10.optim.lr, c10.optim.momentum, c10.optim.weight_decay) == (0.1, 0.9, 5e-4)
    assert c10.schedule.epochs == 200 and c10.eval.steps == 20
    assert load_config("cifar100-preactresnet18-linf").perturb.c_min == 4.0
    l2 = load_config("cifar100-preactresnet18-l2")
    assert (l2.data.name, l2.attack.norm) == ("cifar100", "l2")
    assert (l2.attack.eps, l2.attack.alpha) == pytest.approx((128 / 255, 15 / 255))
    svhn = load_config("svhn-preactresnet18-linf")
    assert svhn.attack.alpha == pytest.approx(1 / 255) and svhn.perturb.warmup == 5
    trades = load_config("cifar10-wrn34-10-trades")
    assert (trades.model.name, trades.objective.name, trades.perturb.gamma, trades.perturb.warmup) == (
        "wrn34_10", "trades", 0.005, 10)


@pytest.mark.parametrize("override, fragment", [
    ("attack.eps=0", "attack.eps"),
    ("attack.eps=-0.1", "attack.eps"),
    ("perturb.gamma=-1", "perturb.gamma"),
    ("perturb.c_min=-0.5", "perturb.c_min"),
    ("perturb.steps=0", "perturb.steps"),
    ("attack.steps=0", "attack.steps"),
    ("model.name=resnet9000", "model.name: .resnet9000. is invalid; expected one of preact_resnet18"),
    ("data.name=imagenet", "data.name"),
    ("objective.name=foo", "objective.name"),
    ("schedule.name=foo", "schedule.name"),
    ("attack.norm=l1", "attack.norm"),
    ("data.batch_size=abc", "data.batch_size"),
    ("nosuch.key=1", "sections"),
    ("data.nosuch=1", "valid keys in data"),
    ("novalue", "section.key=value"),
    ("run.select=val", "run.select"),
])
def test_bad_values_name_the_key_and_what_is_allowed(override, fragment):
    with pytest.raises(WpatError, match=fragment):
        load_config(None, [override])


def test_unknown_preset_lists_presets(tmp_path):
    with pytest.raises(WpatError, match="cifar10-preactresnet18-linf"):
        load_config("no-such-preset")
    with pytest.raises(WpatError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed")
    with pytest.raises(WpatError, match="broken.yaml"):
        load_config(str(broken))


def test_yaml_base_and_overrides_compose(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text("base: cifar10-preactresnet18-linf\nperturb:\n  name: awp\n")
    cfg = load_config(str(child), ["schedule.epochs=3"])
    assert (cfg.data.name, cfg.perturb.name, cfg.schedule.epochs, cfg.run.name) == ("cifar10", "awp", 3, "mine")


def test_resolved_dump_round_trips():
    cfg = load_config("cifar10-wrn34-10-trades", ["run.seed=3"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again, Config)


def test_registry_lists_choices_and_filters_options():
    reg = Registry("thing")

    @reg.register("a")
    def make_a(x: int, y: int = 2):
        return x, y

    assert reg.build_from("a", {"x": 1, "z": 9, "y": None}) == (1, 2)
    with pytest.raises(WpatError, match="unknown thing 'b'; valid choices: a"):
        reg.get("b")


def test_schedules():
    s = load_config(None, ["schedule.epochs=200"]).schedule
    assert learning_rate(0, 0.1, s) == pytest.approx(0.1)
    assert learning_rate(99.9, 0.1, s) == pytest.approx(0.1)
    assert learning_rate(100, 0.1, s) == pytest.approx(0.01)
    assert learning_rate(150, 0.1, s) == pytest.approx(0.001)
    s.name = "cosine"
    assert learning_rate(100, 0.1, s) == pytest.approx(0.05) and learning_rate(200, 0.1, s) == pytest.approx(0)
    s.name = "cyclic"  # AWP appendix C.1: 0 -> 0.2 at epoch 80 -> 0 at 200
    assert learning_rate(80, 0.2, s) == pytest.approx(0.2)
    assert learning_rate(40, 0.2, s) == pytest.approx(0.1) and learning_rate(200, 0.2, s) == pytest.approx(0)
    s.name = "linear"
    assert learning_rate(50, 0.1, s) == pytest.approx(0.075)
