"""`wpat sweep`: grid expansion and naming, validation before any run, skip/resume, Ray."""

import importlib.util
import json

import pytest
import yaml

from conftest import fashion_mnist_available
from wpat import cli
from wpat.training import experiment
from wpat.checkpoints.files import load_checkpoint
from wpat.configuration.config import load_config
from wpat.helpers.errors import WpatError
from wpat.training.experiment import model_from_config
from wpat.sweep import (RunSpec, execute, expand, parse_grid, parse_seeds, plan, replicas,
                        run_names, setting_of, split_values)
from wpat.sweep.runner import _check_resources

needs_data = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

# A run of a few seconds: 128 training images, a width-2 CNN, one-step attacks.
TINY = {
    "data": {"name": "fashion_mnist", "train_subset": 128, "test_subset": 64, "batch_size": 64},
    "model": {"name": "small_cnn", "small_cnn": {"width": 2}},
    "attack": {"steps": 1}, "eval": {"steps": 1, "n_train": 32},
    "perturb": {"name": "none", "awp": {"gamma": 0.01}},
    "schedule": {"epochs": 2},
    "run": {"device": "cpu", "tensorboard": False, "progress": False},
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


# ---------------------------------------------------------------------- expansion and names


def test_grid_values_split_on_commas_outside_brackets():
    assert split_values("0.005, 0.01") == ["0.005", "0.01"]
    assert split_values("[0.5,0.75],[0.3,0.6]") == ["[0.5,0.75]", "[0.3,0.6]"]
    grid = parse_grid(["perturb.name=awp,rwp", "perturb.awp.gamma=0.005,0.01"])
    assert grid == {"perturb.name": ["awp", "rwp"], "perturb.awp.gamma": ["0.005", "0.01"]}


@pytest.mark.parametrize("items, match", [
    (["perturb.awp.gamma"], "expected KEY=V1,V2"),
    (["perturb.awp.gamma=0.1,"], "expected KEY=V1,V2"),
    (["run.seed=0,1"], "use --seeds"),
    (["run.name=a,b"], "not a grid key"),
    (["perturb.name=awp", "perturb.name=rwp"], "given twice"),
    (["perturb.name=awp,awp"], "repeated"),
])
def test_bad_grid_syntax_is_one_line(items, match):
    with pytest.raises(WpatError, match=match) as err:
        parse_grid(items)
    assert "\n" not in str(err.value)


def test_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5]
    for bad in ("", "a", "1,1", "-1", "2-1"):
        with pytest.raises(WpatError, match="--seeds"):
            parse_seeds(bad)


def test_expansion_is_the_product_with_seeds_innermost():
    runs = expand({"perturb.name": ["awp", "rwp"], "perturb.awp.gamma": ["0.005", "0.01"]}, [0, 1])
    assert len(runs) == 8
    assert runs[0] == {"perturb.name": "awp", "perturb.awp.gamma": "0.005", "run.seed": "0"}
    assert [r["run.seed"] for r in runs[:2]] == ["0", "1"] and runs[-1]["perturb.name"] == "rwp"


def test_names_are_readable_deterministic_and_unique():
    runs = expand({"perturb.name": ["awp"], "perturb.awp.gamma": ["0.005"]}, [1])
    assert run_names(runs) == ["awp__gamma-0.005__seed-1"]
    # two keys ending in `gamma`: each is named by the shortest suffix that tells them apart
    runs = expand({"perturb.awp.gamma": ["0.01"], "perturb.rwp.gamma": ["0.02"]}, [0])
    assert run_names(runs) == ["awp.gamma-0.01__rwp.gamma-0.02__seed-0"]
    # unsafe characters become `_`; values that then collide (or differ only in case) get a hash
    runs = expand({"attack.eps": ["8/255", "8_255"], "data.name": ["A", "a"]}, [0])
    names = run_names(runs)
    assert len(set(n.lower() for n in names)) == 4 and names == run_names(runs)
    assert all(n.startswith("eps-8_255__") and "/" not in n for n in names)
    runs = expand({"schedule.piecewise.milestones": ["[0.5,0.75]"]}, [0])
    assert run_names(runs) == ["milestones-0.5_0.75__seed-0"]
    long = run_names(expand({"run.init_from": ["x" * 300]}, [0]))[0]
    assert len(long) < 140 and "-h" in long


def test_unselected_options_are_not_part_of_a_setting():
    at = load_config(None, ["perturb.name=none", "perturb.awp.gamma=0.005"]).to_dict()
    at2 = load_config(None, ["perturb.name=none", "perturb.awp.gamma=0.01", "run.name=x"]).to_dict()
    awp = load_config(None, ["perturb.name=awp", "perturb.awp.gamma=0.01"]).to_dict()
    assert setting_of(at) == setting_of(at2)
    assert setting_of(awp)["perturb.awp.gamma"] == 0.01 and "run.seed" not in setting_of(awp)
    specs = [RunSpec("a", [], "a", at), RunSpec("b", [], "b", at2), RunSpec("c", [], "c", awp)]
    assert replicas(specs) == [("b", "a")]


# ---------------------------------------------------------------------- validation


def test_plan_builds_every_run_config(tmp_path, tiny_config):
    grid = parse_grid(["perturb.name=none,awp", "perturb.awp.gamma=0.005,0.01"])
    specs = plan(tiny_config, ["optim.lr=0.05"], grid, [0, 1], tmp_path / "s", ["run.threads=1"])
    assert [s.name for s in specs][:2] == ["none__gamma-0.005__seed-0", "none__gamma-0.005__seed-1"]
    spec = specs[-1]
    assert spec.run_dir == str((tmp_path / "s" / spec.name).resolve())
    assert spec.config["perturb"]["awp"]["gamma"] == 0.01 and spec.config["run"]["seed"] == 1
    assert spec.config["optim"]["lr"] == 0.05 and spec.config["run"]["threads"] == 1
    assert not (tmp_path / "s").exists()  # planning writes nothing


def test_a_config_written_before_a_setting_existed_has_the_same_setting(tiny_config):
    """A run or manifest of an earlier wpat lacks the settings added since; it still matches the
    same run described today (so a sweep re-invoked after an upgrade skips or resumes it)."""
    from wpat.sweep.runs import resolved

    today = load_config(tiny_config).to_dict()
    earlier = {section: dict(values) for section, values in today.items()}
    del earlier["run"]["lsc_threshold"]
    assert setting_of(earlier) != setting_of(today)
    assert setting_of(resolved(earlier)) == setting_of(today)


def test_plan_checks_every_run_without_allocating_weights(tmp_path, tiny_config, monkeypatch):
    built = []

    def spy(cfg):
        built.append(model_from_config(cfg))
        return built[-1]

    monkeypatch.setattr(experiment, "model_from_config", spy)
    grid = parse_grid(["model.name=small_cnn,wrn34_10"])
    assert len(plan(tiny_config, [], grid, [0, 1], tmp_path / "s")) == 4
    assert len(built) == 5 and all(p.is_meta for m in built for p in m.parameters())  # the base, each run
    assert sum(p.numel() for p in built[-1].parameters()) > 40_000_000  # WRN-34-10's shapes, no memory
    with pytest.raises(WpatError, match="--grid model.wide_resnet.depth=11: model.wide_resnet: "):
        plan(tiny_config, ["model.name=wide_resnet"], parse_grid(["model.wide_resnet.depth=16,11"]), [0],
             tmp_path / "s")


@pytest.mark.parametrize("grid, match", [
    ("perturb.awp.gama=0.01", "--grid perturb.awp.gama=0.01: .*no option 'gama'"),
    ("atack.steps=1", "--grid atack.steps=1: unknown config key"),
    ("attack.steps=1.5", "--grid attack.steps=1.5: attack.steps"),
    ("perturb.awp.gamma=0.01,-1", "--grid perturb.awp.gamma=-1: .*gamma"),
    ("perturb.rwp.c_min=1,2", "--grid perturb.rwp.c_min: no run selects perturb.name=rwp"),
    ("perturb.name=awp,nope", "--grid perturb.name=nope"),
])
def test_a_bad_grid_fails_before_any_run_with_one_line(grid, match, tmp_path, tiny_config, capsys):
    args = ["sweep", tiny_config, "perturb.name=awp", "--grid", grid, "--out", str(tmp_path), "--local"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("wpat: error:")
    assert __import__("re").search(match, err), err
    assert list(tmp_path.iterdir()) == [tmp_path / "tiny.yaml"]  # no sweep directory, no run


def test_a_bad_combination_names_the_run(tmp_path, tiny_config):
    # each value is fine alone; alternations=2 needs a searched perturbation, which random is not
    grid = parse_grid(["perturb.name=awp,random", "perturb.alternations=1,2"])
    with pytest.raises(WpatError, match="^run random__alternations-2__seed-0 .*: perturb.alternations"):
        plan(tiny_config, ["perturb.name=awp"], grid, [0], tmp_path)


def test_a_bad_value_of_a_method_in_the_grid_names_its_runs(tmp_path, tiny_config):
    grid = parse_grid(["perturb.name=awp,rwp", "perturb.rwp.c_min=1,abc"])
    with pytest.raises(WpatError, match=r"^run rwp__c_min-abc__seed-0 \(perturb.name=rwp, "
                                        r"perturb.rwp.c_min=abc, run.seed=0\): perturb.rwp: .*c_min"):
        plan(tiny_config, [], grid, [0], tmp_path)


def test_without_ray_the_command_says_how_to_get_it(tmp_path, tiny_config, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    assert cli.main(["sweep", tiny_config, "--grid", "perturb.name=none,awp", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'wpat[sweep]'" in err and "--local" in err and "\n" not in err


def test_dry_run_lists_the_runs(tmp_path, tiny_config, capsys):
    args = ["sweep", tiny_config, "--grid", "perturb.name=none,awp", "--seeds", "0,1", "--out",
            str(tmp_path), "--name", "s", "--dry-run"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "4 run(s) = 2 setting(s) x 2 seed(s)" in out and "awp__seed-1: perturb.name=awp run.seed=1" in out
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------- running


def last_epoch(run_dir) -> int:
    return int(load_checkpoint(run_dir / "last.pt")["epoch"])


@needs_data
def test_a_killed_run_is_resumed_a_finished_one_skipped(tmp_path, tiny_config, capsys, monkeypatch):
    import wpat.training.loop

    save = wpat.training.loop.save_epoch

    def killed_after_epoch_1(parts, state, run_dir):  # the awp run dies once its epoch 1 is saved
        save(parts, state, run_dir)
        if parts.cfg.perturb.name == "awp" and state.epoch == 1:
            raise RuntimeError("simulated kill")

    args = ["sweep", tiny_config, "--grid", "perturb.name=none,awp", "--out", str(tmp_path),
            "--name", "s", "--local"]
    monkeypatch.setattr(wpat.training.loop, "save_epoch", killed_after_epoch_1)
    assert cli.main(args) == 1  # a run failed: non-zero, but the other run went on
    out = capsys.readouterr().out
    sweep = tmp_path / "s"
    assert "awp__seed-0: FAILED after" in out and "RuntimeError: simulated kill" in out
    assert "none__seed-0: trained" in out and "1 trained, 0 resumed, 0 skipped, 1 failed of 2" in out
    assert out.rstrip().endswith("; failed: awp__seed-0")
    assert last_epoch(sweep / "awp__seed-0") == 1 and last_epoch(sweep / "none__seed-0") == 2
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert manifest["grid"] == {"perturb.name": ["none", "awp"]} and manifest["seeds"] == [0]
    assert [(r["dir"], r["settings"], r["result"]["status"]) for r in manifest["runs"]] == [
        ("none__seed-0", ["perturb.name=none", "run.seed=0"], "trained"),
        ("awp__seed-0", ["perturb.name=awp", "run.seed=0"], "failed")]
    assert manifest["base"]["data"]["train_subset"] == 128

    monkeypatch.setattr(wpat.training.loop, "save_epoch", save)
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "none__seed-0: skipped" in out and "awp__seed-0: resumed" in out
    assert "0 trained, 1 resumed, 1 skipped, 0 failed of 2" in out
    assert last_epoch(sweep / "awp__seed-0") == 2
    history = [json.loads(line) for line in (sweep / "awp__seed-0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]

    # the same directory with another base config is refused before anything runs ...
    assert cli.main([*args[:2], "optim.lr=0.05", *args[2:]]) == 2
    assert "another base config (it differs in optim.lr)" in capsys.readouterr().err
    # ... and a run directory holding another setting is never resumed or overwritten
    other = load_config(tiny_config, ["optim.lr=0.05", f"run.out_dir={sweep}", "run.name=awp__seed-0"])
    result = execute(RunSpec("awp__seed-0", [], str(sweep / "awp__seed-0"), other.to_dict()))
    assert result["status"] == "failed" and "holds a run with another config" in result["error"]
    assert last_epoch(sweep / "awp__seed-0") == 2


def test_a_run_that_cannot_be_placed_fails_at_once():
    with pytest.raises(WpatError, match="--gpus-per-run 0.5: the Ray cluster has 0 GPUs"):
        _check_resources({"CPU": 2.0}, 1, 0.5)
    with pytest.raises(WpatError, match="--cpus-per-run 4: the Ray cluster has 2 CPUs"):
        _check_resources({"CPU": 2.0, "GPU": 1.0}, 4, 0)
    _check_resources({"CPU": 2.0, "GPU": 1.0}, 2, 0.25)


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed")


@needs_data
@needs_ray
def test_a_two_run_sweep_with_ray_on_this_machine_computes_what_local_computes(tmp_path, tiny_config, capsys):
    args = ["sweep", tiny_config, "schedule.epochs=1", "--grid", "perturb.name=none,awp",
            "--out", str(tmp_path), "--name", "ray", "--cpus-per-run", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "2 trained, 0 resumed, 0 skipped, 0 failed of 2" in out
    for name in ("none__seed-0", "awp__seed-0"):
        run_dir = tmp_path / "ray" / name
        assert last_epoch(run_dir) == 1 and (run_dir / "metrics.jsonl").is_file()
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert cfg["run"]["threads"] == 1 and cfg["run"]["name"] == name
    # One grid point again, in this process: the thread count the runner uses is in the run's
    # config, the same by default, and so are the numbers.
    assert cli.main(["sweep", tiny_config, "schedule.epochs=1", "--grid", "perturb.name=awp", "--out", str(tmp_path),
                     "--name", "local", "--local"]) == 0
    runs = {runner: tmp_path / runner / "awp__seed-0" for runner in ("ray", "local")}
    configs = {r: yaml.safe_load((d / "config.yaml").read_text()) for r, d in runs.items()}
    assert configs["local"]["run"].pop("out_dir") != configs["ray"]["run"].pop("out_dir")
    assert configs["local"] == configs["ray"] and configs["local"]["run"]["threads"] == 1

    def numbers(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]

    assert numbers(runs["local"]) == numbers(runs["ray"])


def test_a_thread_count_given_to_a_sweep_points_to_threads_per_run(tmp_path, tiny_config, capsys):
    assert cli.main(["sweep", tiny_config, "run.threads=4", "--grid", "perturb.name=none,awp",
                     "--out", str(tmp_path), "--local"]) == 2
    assert "run.threads: a sweep sets each run's thread count with --threads-per-run" in capsys.readouterr().err


def test_a_wrapped_objectives_own_options_are_part_of_the_runs_setting():
    from wpat.configuration.config import load_config
    from wpat.sweep.runs import setting_of

    def setting(clean_forwards):
        return setting_of(load_config(None, ["objective.name=consistency", "objective.consistency.base=trades",
                                             f"objective.trades.clean_forwards={clean_forwards}"]).to_dict())

    assert setting(1)["objective.trades.clean_forwards"] == 1
    assert setting(1) != setting(2)  # not replicas of each other
    plain = setting_of(load_config(None, ["objective.name=at", "objective.trades.clean_forwards=1"]).to_dict())
    assert not any(key.startswith("objective.trades.") for key in plain)
