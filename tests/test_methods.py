"""`wpat sweep --methods`: methods (bundles, groups, files, inline definitions, presets) as one
axis of a sweep, checked before any run; `wpat report` groups and labels their runs; `wpat eval
SWEEP_DIR` evaluates them and resumes."""

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import fashion_mnist_available
from wpat import cli
from wpat.analysis.groups import group_runs, run_methods, run_result
from wpat.configuration.config import dump_config, load_config
from wpat.helpers.errors import WpatError
from wpat.sweep import Method, RunSpec, parse_grid, parse_methods, plan, read_manifest, write_manifest

needs_data = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

TINY = {
    "data": {"name": "fashion_mnist", "train_subset": 64, "test_subset": 32, "batch_size": 32},
    "model": {"name": "small_cnn", "small_cnn": {"width": 2}},
    "attack": {"steps": 1}, "eval": {"steps": 1, "n_train": 16},
    "perturb": {"name": "rwp", "rwp": {"gamma": 0.02}},  # the base's method: every bundle replaces it
    "schedule": {"epochs": 1},
    "run": {"device": "cpu", "tensorboard": False, "progress": False},
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


def names(methods):
    return [m.name for m in methods]


# ---------------------------------------------------------------------- naming methods


def test_the_leaderboard_group_is_every_objective_with_every_perturbation():
    methods = parse_methods(["leaderboard"])
    assert names(methods) == ["at", "at-awp", "at-rwp", "trades", "trades-awp", "trades-rwp",
                              "mart", "mart-awp", "mart-rwp"]
    by_name = {m.name: m for m in methods}
    assert by_name["at"].settings == ("objective.name=at", "perturb.name=none")
    # the papers' perturbation sizes: 0.01 with AT, 0.005 with TRADES and MART
    assert "perturb.awp.gamma=0.01" in by_name["at-awp"].settings
    assert by_name["trades-rwp"].settings == ("objective.name=trades", "perturb.name=rwp", "perturb.rwp.gamma=0.005")


def test_methods_are_named_by_bundle_file_inline_definition_preset_or_components(tmp_path):
    file = tmp_path / "mine.yaml"
    file.write_text(yaml.safe_dump({
        "awp-big": {"extends": "at-awp", "perturb": {"awp": {"gamma": 0.02}}},
        "trades-b3": {"objective": {"name": "trades", "trades": {"beta": 3}}, "perturb": "none"},
    }, sort_keys=False))
    methods = parse_methods([str(file), "at;awp2=at-awp,perturb.awp.steps=2", "mart-awp-lsc,cifar10-wrn34-10-at"])
    assert names(methods) == ["awp-big", "trades-b3", "at", "awp2", "mart-awp-lsc", "cifar10-wrn34-10-at"]
    by_name = {m.name: m for m in methods}
    assert by_name["awp-big"].settings[-1] == "perturb.awp.gamma=0.02"  # after at-awp's 0.01
    assert by_name["trades-b3"].settings == ("objective.name=trades", "objective.trades.beta=3", "perturb.name=none")
    assert by_name["awp2"].settings == ("objective.name=at", "perturb.name=awp", "perturb.awp.gamma=0.01",
                                        "perturb.awp.steps=2")
    # OBJECTIVE-PERTURBATION of registered components needs no bundle (awp-lsc has a dash itself)
    assert by_name["mart-awp-lsc"].settings == ("objective.name=mart", "perturb.name=awp-lsc")
    assert by_name["cifar10-wrn34-10-at"] == Method("cifar10-wrn34-10-at", "cifar10-wrn34-10-at")
    # a user's file may redefine one of wpat's methods
    file.write_text(yaml.safe_dump({"at": {"objective": "at", "perturb": "random"}}))
    assert parse_methods([str(file), "at"])[0].settings == ("objective.name=at", "perturb.name=random")


@pytest.mark.parametrize("items, says", [
    (["madry"], "--methods 'madry': no such method, group or preset"),
    (["a__b=at"], "method name 'a__b' must be"),
    (["x=at,run.seed=1"], "run.seed is set by the sweep"),
    (["x=at,gamma"], "'gamma' is not a KEY=VALUE setting"),
    (["x=at", "x=at-awp"], "--methods x: named twice with different settings"),
    (["x="], "expected NAME=SETTING"),
])
def test_a_bad_method_name_or_definition_is_one_line(items, says):
    with pytest.raises(WpatError, match=re.escape(says)) as err:
        parse_methods(items)
    assert "\n" not in str(err.value)


def test_a_method_file_with_a_cycle_or_a_stray_key_is_refused(tmp_path):
    file = tmp_path / "m.yaml"
    file.write_text(yaml.safe_dump({"a": {"extends": "b"}, "b": {"extends": "a"}}))
    with pytest.raises(WpatError, match="'extends' forms a cycle"):
        parse_methods([str(file)])
    file.write_text(yaml.safe_dump({"a": {"objectiv": "at"}}))
    with pytest.raises(WpatError, match="'objectiv' is neither a config section"):
        parse_methods([str(file)])


# ---------------------------------------------------------------------- planning


def test_methods_are_one_axis_of_the_sweep(tmp_path, tiny_config):
    methods = parse_methods(["at,trades-awp"])
    specs = plan(tiny_config, ["optim.lr=0.05"], parse_grid(["optim.momentum=0.8,0.9"]), [0, 1], tmp_path / "s",
                 methods=methods)
    assert [s.name for s in specs][:4] == ["at__momentum-0.8__seed-0", "at__momentum-0.8__seed-1",
                                           "at__momentum-0.9__seed-0", "at__momentum-0.9__seed-1"]
    assert len(specs) == 8 and specs[-1].name == "trades-awp__momentum-0.9__seed-1"
    assert specs[-1].settings == ["method=trades-awp", "optim.momentum=0.9", "run.seed=1"]
    at, trades = specs[0].config, specs[-1].config
    assert (at["objective"]["name"], at["perturb"]["name"]) == ("at", "none")  # the base's RWP replaced
    assert (trades["objective"]["name"], trades["perturb"]["name"]) == ("trades", "awp")
    assert trades["perturb"]["awp"]["gamma"] == 0.005 and trades["optim"]["lr"] == 0.05
    assert trades["optim"]["momentum"] == 0.9 and trades["run"]["seed"] == 1
    # the grid may vary a method's own setting: its value wins and names the run
    specs = plan(tiny_config, [], parse_grid(["perturb.awp.gamma=0.02,0.04"]), [0], tmp_path / "s",
                 methods=parse_methods(["at-awp"]))
    assert [(s.name, s.config["perturb"]["awp"]["gamma"]) for s in specs] == [
        ("at-awp__gamma-0.02__seed-0", 0.02), ("at-awp__gamma-0.04__seed-0", 0.04)]
    # a preset as a method: its runs start from the preset, with the sweep's shared settings
    (spec,) = plan(tiny_config, ["schedule.epochs=2"], {}, [0], tmp_path / "s",
                   methods=parse_methods(["fmnist-mlp-linf-overfit"]))
    assert spec.config["model"]["name"] == "mlp" and spec.config["schedule"]["epochs"] == 2


@pytest.mark.parametrize("methods, shared, grid, says", [
    (["x=at,perturb.name=awq"], [], [], "--methods x (objective.name=at perturb.name=none perturb.name=awq): "
                                        "perturb.name: 'awq' is invalid; expected one of none"),
    (["x=objective.name=madry"], [], [], "--methods x (objective.name=madry): objective.name: 'madry' is invalid"),
    (["x=at-awp,perturb.awp.gama=1"], [], [], "weight perturbation 'awp' has no option 'gama'"),
    (["trades-awp"], ["perturb.awp.gamma=0.01"], [], "--methods trades-awp sets perturb.awp.gamma, which the "
                                                     "sweep's shared settings set too"),
    (["at", "plain=objective.name=at,perturb.name=none"], [], [], "--methods at and plain compute the same runs"),
])
def test_a_bad_method_fails_before_any_run_with_one_line(methods, shared, grid, says, tmp_path, tiny_config, capsys):
    args = ["sweep", tiny_config, *shared, "--methods", *methods, *(["--grid", *grid] if grid else []),
            "--out", str(tmp_path), "--local"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wpat: error:") and "\n" not in err
    assert says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # no sweep directory, no run


def test_the_manifest_records_the_methods_and_refuses_a_redefinition(tmp_path, tiny_config):
    sweep = tmp_path / "s"
    methods = parse_methods(["at", "x=at-awp,perturb.awp.steps=2"])
    specs = plan(tiny_config, [], {}, [0], sweep, methods=methods)
    write_manifest(sweep, tiny_config, [], {}, [0], specs, methods=methods)
    manifest = read_manifest(sweep)
    assert manifest["methods"]["x"] == {"base": None, "settings": ["objective.name=at", "perturb.name=awp",
                                                                   "perturb.awp.gamma=0.01", "perturb.awp.steps=2"]}
    assert [r["settings"] for r in manifest["runs"]] == [["method=at", "run.seed=0"], ["method=x", "run.seed=0"]]
    # the sweep grows by a method; a method of the same name with other settings is refused
    more = parse_methods(["mart"])
    write_manifest(sweep, tiny_config, [], {}, [0], plan(tiny_config, [], {}, [0], sweep, methods=more), methods=more)
    assert list(read_manifest(sweep)["methods"]) == ["at", "x", "mart"]
    other = parse_methods(["x=at-awp,perturb.awp.steps=3"])
    with pytest.raises(WpatError, match="holds runs of another method named x"):
        write_manifest(sweep, tiny_config, [], {}, [0], plan(tiny_config, [], {}, [0], sweep, methods=other),
                       methods=other)


def test_dry_run_lists_the_methods_and_their_runs(tmp_path, tiny_config, capsys):
    assert cli.main(["sweep", tiny_config, "--methods", "leaderboard", "--seeds", "0-1", "--out", str(tmp_path),
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "18 run(s) = 9 method(s) x 1 setting(s) x 2 seed(s)" in out
    assert "method mart-rwp: objective.name=mart perturb.name=rwp perturb.rwp.gamma=0.005" in out
    assert "mart-rwp__seed-1: method=mart-rwp run.seed=1" in out
    assert cli.main(["sweep", "--list-methods"]) == 0
    listed = capsys.readouterr().out
    assert "trades-awp [leaderboard, leaderboard-cnn]: TRADES with AWP" in listed and "leaderboard: at, at-awp" in listed


# ---------------------------------------------------------------------- reporting


def make_run(root, name, method, overrides, gamma, seed, robust):
    """A finished 2-epoch run of a sweep with methods, and its entry in the manifest."""
    cfg = load_config(None, [*overrides, f"perturb.awp.gamma={gamma}", f"run.seed={seed}", f"run.name={name}",
                             f"run.out_dir={root}", "schedule.epochs=2"])
    (root / name).mkdir(parents=True)
    dump_config(cfg, root / name / "config.yaml")
    records = [{"epoch": e + 1, "seconds": 1.0, "test_pgd_acc": r, "test_nat_acc": 0.8} for e, r in enumerate(robust)]
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    settings = [f"method={method}", f"perturb.awp.gamma={gamma}", f"run.seed={seed}"]
    return RunSpec(name, settings, str(root / name), cfg.to_dict())


def test_report_rows_are_the_sweeps_methods_and_only_seeds_are_averaged(tmp_path):
    """Runs of a sweep with methods: a row per method and grid point, named after the method,
    with the grid values in which that method's rows differ; seeds alone are averaged."""
    sweep = tmp_path / "s"
    settings = {"awp-a": ["objective.name=at", "perturb.name=awp"],
                "awp-t": ["objective.name=trades", "perturb.name=awp"]}
    specs = []
    for method, base in settings.items():
        for gamma in ("0.005", "0.01"):
            for seed in (0, 1):
                name = f"{method}__gamma-{gamma}__seed-{seed}"
                specs.append(make_run(sweep, name, method, base, gamma, seed, (0.4, 0.5 + seed / 10)))
    write_manifest(sweep, None, [], {"perturb.awp.gamma": ["0.005", "0.01"]}, [0, 1], specs,
                   methods=[Method(m, None, tuple(s)) for m, s in settings.items()])
    results = [run_result(sweep / s.name) for s in specs]
    groups = group_runs(results, run_methods(r.path for r in results))
    assert [(g.label, len(g.runs)) for g in groups] == [("awp-a (gamma=0.005)", 2), ("awp-a (gamma=0.01)", 2),
                                                        ("awp-t (gamma=0.005)", 2), ("awp-t (gamma=0.01)", 2)]
    assert groups[0].stats("last_robust")[0] == pytest.approx(0.55)
    # a directory of runs without a manifest: the rows are named by their components
    assert [g.label for g in group_runs(results)][:1] == ["AT-AWP (gamma=0.005)"]


# ---------------------------------------------------------------------- end to end


@needs_data
def test_every_method_times_seeds_is_one_command_then_eval_and_report(tmp_path, tiny_config, capsys):
    sweep = tmp_path / "lb"
    assert cli.main(["sweep", tiny_config, "--methods", "at;awp=at-awp", "--seeds", "0", "--out", str(tmp_path),
                     "--name", "lb", "--local"]) == 0
    assert "2 trained, 0 resumed, 0 skipped, 0 failed of 2" in capsys.readouterr().out
    evaluate = ["eval", str(sweep), "--attacks", "natural,pgd20", "--n-examples", "16", "--no-checks",
                "--no-progress", "--device", "cpu"]
    assert cli.main(evaluate) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[1/2\] at__seed-0: best Natural [\d.]+%, PGD-20 [\d.]+%", out)
    assert "2 evaluated, 0 already measured, 0 failed of 2 finished run(s)" in out
    report = json.loads((sweep / "awp__seed-0" / "eval.json").read_text())
    assert report["checkpoints"]["last"]["settings"]["pgd20"]["n_examples"] == 16
    assert cli.main(evaluate) == 0  # started again: nothing left to measure
    assert "0 evaluated, 2 already measured" in capsys.readouterr().out
    assert cli.main([*evaluate[:5], "32", *evaluate[6:], "--seeds", "0"]) == 0  # other settings: measured again
    assert "2 evaluated, 0 already measured" in capsys.readouterr().out
    assert cli.main(["eval", str(sweep), "--seeds", "3"]) == 2
    assert "no run of seed(s) 3" in capsys.readouterr().err
    assert cli.main(["eval", str(sweep), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "evaluated into their own directories" in capsys.readouterr().err
    assert cli.main(["report", str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^\| awp +\| 1 +\|", printed, re.M) and re.search(r"^\| at +\| 1 +\|.*baseline", printed, re.M)


def test_the_remedies_on_the_cpu_setting_differ_from_at_only_by_their_method(tmp_path):
    """Each fmnist-remedies bundle swept on fmnist-mlp-linf-overfit trains the setting's model on
    its data under its attack; at-crop-flip is the `at` bundle plus the augmentation (a bundle
    that named no perturbation once inherited the setting's RWP)."""
    from wpat.sweep.arguments import parse_methods
    from wpat.sweep.grid import plan

    methods = [m for m in parse_methods(["at", "fmnist-remedies"]) if m.name != "kd-swa"]  # no teachers here
    specs = plan("fmnist-mlp-linf-overfit", [], {}, seeds=[0], sweep_dir=tmp_path, methods=methods)
    found = {s.name.split("__")[0]: s.config for s in specs}
    at, crop_flip = found["at"], found["at-crop-flip"]
    assert crop_flip["perturb"]["name"] == "none" and crop_flip["objective"]["name"] == "at"
    assert crop_flip["data"]["augment"] == "crop_flip"
    assert {k: v for k, v in crop_flip.items() if k not in ("data", "run")} == \
           {k: v for k, v in at.items() if k not in ("data", "run")}
    for name, cfg in found.items():
        assert (cfg["model"]["name"], cfg["data"]["train_subset"], cfg["attack"]["eps"]) == ("mlp", 500, 0.1), name


def test_the_convolutional_leaderboard_keeps_its_setting_and_starts_swa_after_the_first_decay(tmp_path):
    """`leaderboard-cnn` on fmnist-smallcnn-linf-overfit trains the width-8 CNN on 100 images
    for every method, and KD+SWA's average starts 5 epochs after that setting's first decay
    (docs/leaderboard.md, Part 2), not at the MLP setting's epoch."""
    methods = {m.name: m for m in parse_methods(["leaderboard-cnn"])}
    assert set(methods) == {"at", "at-awp", "at-rwp", "trades-awp", "kd-swa-cnn"}
    kd_swa = methods.pop("kd-swa-cnn")  # its teachers are trained first (planning checks they exist)
    specs = plan("fmnist-smallcnn-linf-overfit", [], {}, seeds=[0], sweep_dir=tmp_path, methods=list(methods.values()))
    for spec in specs:
        cfg = spec.config
        assert (cfg["model"]["name"], cfg["model"]["small_cnn"]["width"]) == ("small_cnn", 8), spec.name
        assert (cfg["data"]["train_subset"], cfg["data"]["batch_size"], cfg["attack"]["eps"]) == (100, 10, 0.1)
    kd = load_config("fmnist-smallcnn-linf-overfit", list(kd_swa.settings))
    first_decay = kd.schedule.options["piecewise"]["milestones"][0] * kd.schedule.epochs
    assert (kd.objective.name, kd.run.average, kd.run.swa_start) == ("kd", "swa", first_decay + 5)


def teacher_commands(text: str) -> list[list[str]]:
    """The `wpat train` commands of a text (comment marks and line continuations removed) that
    write into a `*-teachers` directory, as argument lists after `wpat train`."""
    lines = [line.lstrip("# ").rstrip() for line in text.splitlines()]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    commands = [line.split("wpat train", 1)[1].split("#")[0].split() for line in joined.splitlines()
                if "wpat train" in line and "-teachers" in line]
    return [[word for word in command if not word.startswith("--")] for command in commands]


def test_the_leaderboard_teachers_are_plain_at_as_the_authors_teachers():
    """KD+SWA's robust teacher is plain AT and its standard teacher natural training (the
    authors' main_adv.py and main_std.py). The commands that train them for the leaderboard,
    in the method files and docs/leaderboard.md, once trained the setting's AT-RWP instead."""
    root = Path(__file__).resolve().parent.parent
    sources = [root / "docs" / "leaderboard.md", *sorted((root / "src" / "wpat" / "configs" / "methods").glob("*.yaml"))]
    commands = [command for source in sources for command in teacher_commands(source.read_text())]
    assert len(commands) >= 6, commands  # two per setting, in the docs and in the method files
    for config, *overrides in commands:
        cfg = load_config(config, [o for o in overrides if not o.startswith("run.")])
        assert (cfg.objective.name, cfg.perturb.name) == ("at", "none"), (config, overrides)
        robust = "run.name=robust" in overrides
        assert (cfg.attack.eps >= 0.1) == robust, (config, overrides)
