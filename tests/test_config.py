import math

import pytest

from wpat.training import experiment
from wpat.attacks import ATTACK_LOSSES, ATTACKS
from wpat.cli import main
from wpat.configuration.config import PRESET_DIR, Config, config_from_dict, list_presets, load_config
from wpat.configuration.values import parse_number
from wpat.helpers.errors import WpatError
from wpat.models import MODELS
from wpat.objectives import OBJECTIVES
from wpat.perturb import PERTURBATIONS
from wpat.helpers.registry import Registry
from wpat.optim.schedules import SCHEDULES
from wpat.helpers.threat import BNMode, ThreatModel


def learning_rate(t, lr, s):
    return SCHEDULES.build(s.name, epochs=s.epochs, **s.options.get(s.name, {}))(t, lr)


def options(section):
    return section.options[section.name]


def test_fractions_and_units_parse():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    cfg = load_config(None, ["attack.eps=8/255", "attack.alpha=2/255", "perturb.rwp.c_min=inf",
                             "perturb.rwp.gamma=1/200", "perturb.rwp.steps=3"])
    assert cfg.attack.eps == pytest.approx(8 / 255)
    assert cfg.perturb.options["rwp"] == {"c_min": math.inf, "gamma": 0.005, "steps": 3}


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.run.name == name


def test_presets_carry_the_papers_hyperparameters():
    c10 = load_config("cifar10-preactresnet18-linf")
    assert (c10.attack.eps, c10.attack.alpha, c10.attack.steps) == pytest.approx((8 / 255, 2 / 255, 10))
    assert c10.perturb.name == "rwp"
    assert c10.perturb.options["rwp"] == {"gamma": 0.01, "c_min": 1.7, "steps": 10}
    assert c10.perturb.options["awp"] == {"gamma": 0.01, "steps": 1}
    assert (c10.optim.lr, c10.optim.momentum, c10.optim.weight_decay) == (0.1, 0.9, 5e-4)
    assert c10.schedule.epochs == 200 and c10.eval.steps == 20
    assert load_config("cifar100-preactresnet18-linf").perturb.options["rwp"]["c_min"] == 4.0
    l2 = load_config("cifar100-preactresnet18-l2")
    assert (l2.data.name, l2.attack.norm) == ("cifar100", "l2")
    assert (l2.attack.eps, l2.attack.alpha) == pytest.approx((128 / 255, 15 / 255))
    svhn = load_config("svhn-preactresnet18-linf")
    assert svhn.attack.alpha == pytest.approx(1 / 255) and svhn.perturb.warmup == 5
    trades = load_config("cifar10-wrn34-10-trades")
    assert (trades.model.name, trades.objective.name, trades.perturb.warmup) == ("wrn34_10", "trades", 9)  # 9 plain epochs: the script gates `epoch >= 10` from 1
    assert options(trades.perturb)["gamma"] == 0.005 and trades.perturb.options["awp"]["gamma"] == 0.005


@pytest.mark.parametrize("override, fragment", [
    ("attack.eps=0", "attack.eps"),
    ("attack.eps=-0.1", "attack.eps"),
    ("perturb.rwp.gamma=-1", "perturb.rwp: RWP gamma"),
    ("perturb.rwp.c_min=-0.5", "perturb.rwp: RWP c_min"),
    ("perturb.rwp.steps=0", "perturb.rwp: RWP steps"),
    ("perturb.rwp.low=1", "perturb.rwp: weight perturbation 'rwp' has no option 'low'; its options: gamma"),
    ("perturb.rpw.c_min=1", "perturb.rpw: there is no weight perturbation 'rpw'"),
    ("attack.steps=0", "attack.steps"),
    ("model.name=resnet9000", "model.name: .resnet9000. is invalid; expected one of mlp, preact_resnet18"),
    ("data.name=imagenet", "data.name"),
    ("objective.name=foo", "objective.name"),
    ("schedule.name=foo", "schedule.name"),
    ("attack.norm=l1", "attack.norm"),
    ("data.batch_size=abc", "data.batch_size"),
    ("nosuch.key=1", "sections"),
    ("data.nosuch=1", "valid keys in data"),
    ("model.small_cnn.depth=3", "model.small_cnn: "),
    ("schedule.piecewise.milestones=[0.8,0.5]", "schedule.piecewise: Piecewise milestones"),
    ("novalue", "section.key=value"),
    ("run.select=val", "run.select"),
])
def test_bad_values_name_the_key_and_what_is_allowed(override, fragment):
    """Each on one line, when the config is loaded or (names and component options) when its
    components are built, before any data is read."""
    with pytest.raises(WpatError, match=fragment) as err:
        experiment.build_components(load_config(None, ["perturb.name=rwp", override]))
    assert "\n" not in str(err.value)


def test_an_unknown_preset_is_one_short_line_that_points_to_the_list(tmp_path):
    with pytest.raises(WpatError) as err:
        load_config("fmnist-smallcnn-linf-rs")
    message = str(err.value)
    assert "`wpat presets` lists the" in message and "did you mean fmnist-smallcnn-linf-rst" in message
    assert "\n" not in message and len(message) < 250 and "cifar10" not in message
    with pytest.raises(WpatError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed")
    with pytest.raises(WpatError, match="broken.yaml"):
        load_config(str(broken))


def test_presets_lists_whole_descriptions_in_one_column(capsys, monkeypatch):
    """Each preset's first comment line is a whole description (the next line does not go on
    with its sentence) and is shown whole, wrapped in one column, however long the names."""
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["presets"]) == 0
    shown, column = {}, set()
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith(" "):
            name, text = line.split(" ", 1)
            column.add(len(line) - len(text.lstrip()))
            shown[name] = text.strip()
        else:
            column.add(len(line) - len(line.lstrip()))
            shown[name] += " " + line.strip()
        assert len(line) <= 100
    assert len(column) == 1 and sorted(shown) == list_presets()
    for name in list_presets():
        comments = [line.lstrip("#").strip() for line in (PRESET_DIR / f"{name}.yaml").read_text().splitlines()
                    if line.startswith("#")][:2]
        assert shown[name] == comments[0], name
        assert len(comments) < 2 or not comments[1][:1].islower(), name  # no sentence going on
    assert shown["fmnist-smallcnn-linf-rst"].endswith("give data.extra=PATH")
    assert shown["fmnist-mlp-linf-overfit"].endswith("AT, AT-AWP and AT-RWP over seeds")


def test_yaml_base_and_overrides_compose(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text("base: cifar10-preactresnet18-linf\nperturb:\n  name: awp\n  rwp:\n    c_min: 2.5\n")
    cfg = load_config(str(child), ["schedule.epochs=3"])
    assert (cfg.data.name, cfg.perturb.name, cfg.schedule.epochs, cfg.run.name) == ("cifar10", "awp", 3, "mine")
    # a subsection merges option by option with its base
    assert cfg.perturb.options["rwp"] == {"gamma": 0.01, "c_min": 2.5, "steps": 10}


def test_resolved_dump_round_trips():
    cfg = load_config("cifar10-wrn34-10-trades", ["run.seed=3"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again, Config)


def test_registry_lists_choices_and_rejects_unknown_options():
    reg = Registry("thing")

    @reg.register("a", label="A")
    def make_a(x: int, y: int = 2):
        return x, y

    assert reg.build("a", x=1) == (1, 2) and reg.info("a") == {"label": "A"}
    with pytest.raises(WpatError, match="thing 'a' has no option 'z'; its options: x, y"):
        reg.build("a", x=1, z=9)
    with pytest.raises(WpatError, match="unknown thing 'b'; valid choices: a"):
        reg.get("b")


def test_schedules():
    s = load_config(None, ["schedule.epochs=200"]).schedule
    s.options["piecewise"] = {"milestones": [0.5, 0.75]}
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


# ---------------------------------------------------------------------- one build path, one format


@pytest.mark.parametrize("build, key", [
    (lambda: load_config(None, ["attack.eps=0"]), "attack.eps"),
    (lambda: load_config(None, ["schedule.update=weekly"]), "schedule.update"),
    (lambda: experiment.build_components(load_config(None, ["perturb.name=rwp", "perturb.rwp.c_min=-1"])),
     "perturb.rwp: RWP c_min"),
    (lambda: experiment.build_components(load_config(None, ["objective.name=trades", "objective.trades.beta=-1"])),
     "objective.trades: TRADES beta"),
    (lambda: experiment.build_components(load_config(None, ["schedule.name=cyclic", "schedule.cyclic.peak=2"])),
     "schedule.cyclic: Cyclic peak"),
    (lambda: experiment.build_components(load_config(None, ["model.name=resnet"])), "model.name"),
    (lambda: experiment.build_components(load_config(None, ["data.mix=blend"])), "data.mix"),
    (lambda: experiment.build_components(load_config(None, ["data.augment=jitter"])), "data.augment"),
    (lambda: ATTACKS.build("pgd", eps=0.1, alpha=-1.0, steps=1), "PGD alpha"),
    (lambda: ATTACKS.build("spsa", eps=0.1, samples=3), "SPSA samples"),
    (lambda: ThreatModel("linf", float("nan"), 0.01), "threat model eps"),
])
def test_every_bad_value_is_reported_in_one_format(build, key):
    """Config keys, component options, attacks and the threat model: ``KEY: VALUE is invalid;
    expected WHAT``, one line, whichever layer checks it."""
    with pytest.raises(WpatError) as err:
        build()
    message = str(err.value)
    assert message.startswith(key + ": ") and " is invalid; expected " in message and "\n" not in message


def test_component_names_come_from_the_registries():
    """Every registered name is accepted and listed; the config layer keeps no list of its own."""
    from wpat.data import AUGMENTATIONS, MIXES

    for section, registry in (("model", MODELS), ("objective", OBJECTIVES), ("perturb", PERTURBATIONS),
                              ("schedule", SCHEDULES)):
        with pytest.raises(WpatError) as err:
            experiment.build_components(load_config(None, [f"{section}.name=nothing"]))
        assert str(err.value).endswith("expected one of " + ", ".join(registry.choices()))
    assert PERTURBATIONS.choices()[0] == "none" and "none" not in PERTURBATIONS
    assert experiment.build_components(load_config(None, ["perturb.name=none"])).perturbation is None
    for key, registry in (("data.mix", MIXES), ("data.augment", AUGMENTATIONS)):
        for name in registry.names():
            experiment.build_components(load_config(None, [f"{key}={name}"]))


def test_registry_reads_options_and_defaults_of_an_entry():
    assert PERTURBATIONS.options("rwp") == ["gamma", "c_min", "steps", "subset", "norm", "early_exit"]
    assert PERTURBATIONS.defaults("rwp")["c_min"] == 1.7 and PERTURBATIONS.defaults("awp")["steps"] == 1
    assert MODELS.defaults("wide_resnet") == {"in_channels": 3, "depth": 34, "widen": 10}


def test_the_training_attack_and_the_test_attack_are_built_by_the_attack_registry():
    parts = experiment.build_components(load_config("cifar10-wrn34-10-trades", ["eval.alpha=0.01"]))
    attack, test = parts.attack, parts.test_attack
    assert isinstance(attack, ATTACKS.get("pgd")) and isinstance(test, ATTACKS.get("pgd"))
    assert (attack.steps, attack.eps, attack.alpha) == (10, pytest.approx(8 / 255), pytest.approx(2 / 255))
    assert attack.loss is ATTACK_LOSSES.get("kl") and attack.bn_mode is BNMode.EVAL  # TRADES' attack
    assert (test.steps, test.alpha, test.bn_mode) == (20, 0.01, BNMode.EVAL)
    assert test.loss is ATTACK_LOSSES.get("ce")


# ---------------------------------------------------------------------- the logged loss threshold


@pytest.mark.parametrize("source, overrides, threshold", [
    (None, ["perturb.name=rwp"], 1.7),  # RWP's own default c_min
    (None, ["perturb.name=rwp", "perturb.rwp.c_min=2.5"], 2.5),  # RWP's c_min where RWP trains
    (None, ["perturb.name=awp", "perturb.rwp.c_min=2.5"], 1.7),  # ... and only there
    (None, ["perturb.name=awp", "run.lsc_threshold=0.5"], 0.5),
    (None, ["perturb.name=rwp", "perturb.rwp.c_min=2.5", "run.lsc_threshold=0.5"], 0.5),
    ("cifar100-preactresnet18-linf", ["perturb.name=none"], 4.0),  # the preset states it
    ("cifar10-preactresnet18-linf", ["perturb.name=awp"], 1.7),
])
def test_the_logged_loss_threshold_has_its_own_setting(source, overrides, threshold):
    assert experiment.lsc_threshold(load_config(source, overrides)) == threshold


def test_the_logged_loss_threshold_is_checked():
    with pytest.raises(WpatError, match="run.lsc_threshold: -1.0 is invalid"):
        load_config(None, ["run.lsc_threshold=-1"])


# ---------------------------------------------------------------------- values that would change nothing


@pytest.mark.parametrize("overrides, key, fix", [
    (["data.extra=extra.npz"], "data.extra", "expected data.extra_fraction > 0"),
    (["data.extra_weight=0.5"], "data.extra_weight", "expected 1 while data.extra_fraction is 0"),
    (["optim.l2=5e-3"], "optim.weight_decay", "expected 0 with optim.l2=0.005"),
    (["optim.lr_groups=first"], "optim.lr_groups", "expected all unless optim.l2 > 0"),
    (["perturb.warmup=3"], "perturb.warmup", "expected fewer plain epochs than schedule.epochs=3"),
    (["run.keep_every=4"], "run.keep_every", "expected at most schedule.epochs=3"),
    (["attack.later_from=3", "attack.later_steps=20"], "attack.later_from", "expected an epoch before schedule.epochs=3"),
    (["run.average=swa", "run.swa_start=3"], "run.swa_start", "expected an epoch before schedule.epochs=3"),
    (["data.val_size=100", "run.select=val", "run.patience=2"], "run.patience", "expected at most 1, or 0 for off"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov", "optim.momentum > 0"),
])
def test_a_value_that_would_change_nothing_is_refused_naming_the_value_to_set(overrides, key, fix):
    """The main job's preset (3 epochs, RWP, no extra data, weight decay 5e-4) with one value
    that something else switches off."""
    with pytest.raises(WpatError) as err:
        load_config("fmnist-smallcnn-linf", overrides)
    message = str(err.value)
    assert message.startswith(f"{key}: ") and " is invalid; " in message and fix in message and "\n" not in message


def test_the_command_refuses_it_in_one_line_and_writes_nothing(tmp_path, capsys):
    tiny = ["model.small_cnn.width=4", "data.train_subset=128", "data.test_subset=32", "data.batch_size=64",
            "eval.n_train=32", "attack.steps=1", "eval.steps=1", "perturb.rwp.steps=2", "schedule.epochs=1",
            "run.progress=false", "run.tensorboard=false", f"run.out_dir={tmp_path}"]
    assert main(["train", "fmnist-smallcnn-linf", *tiny, f"data.extra={tmp_path / 'extra.npz'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wpat: error: data.extra: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_extra_data_named_on_a_preset_without_an_extra_share_is_never_silently_ignored(tmp_path):
    truncated = tmp_path / "extra.npz"
    truncated.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(WpatError, match="data.extra: .* is invalid; expected data.extra_fraction > 0"):
        load_config("fmnist-smallcnn-linf", [f"data.extra={truncated}"])
    cfg = load_config("fmnist-smallcnn-linf", [f"data.extra={truncated}", "data.extra_fraction=0.5"])
    assert cfg.data.extra == str(truncated)  # with a share, the file is used (and checked when opened)


def test_settings_of_a_behaviour_that_is_not_selected_stay_allowed():
    """As a component's options are: a preset states them for the variants it may switch to."""
    cfg = load_config("svhn-preactresnet18-linf", ["perturb.name=none", "data.mix_alpha=1.4",
                                                   "perturb.alternations=2", "schedule.name=constant"])
    assert (cfg.perturb.warmup, cfg.data.padding, cfg.data.mix) == (5, "reflect", "none")


def test_a_stored_config_is_not_refused_for_values_without_effect():
    """Runs trained before a check existed stay evaluable and resumable."""
    tree = load_config("fmnist-smallcnn-linf").to_dict()
    tree["data"]["extra"] = "extra.npz"
    tree["run"]["keep_every"] = 10
    cfg = config_from_dict(tree)
    assert cfg.data.extra == "extra.npz" and cfg.run.keep_every == 10
