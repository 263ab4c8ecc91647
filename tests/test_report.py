"""`wpat report`: mean ± sample std over seeds, grouping, layout and ablation plots, on run
directories written by hand with known numbers."""

import csv
import json
import math
import re
import statistics

import pytest

from wpat import cli
from wpat.analysis.groups import find_runs, group_runs, run_result
from wpat.analysis.report import group_curves, markdown_report, paired_differences
from wpat.configuration.config import dump_config, load_config
from wpat.helpers.errors import WpatError
from wpat.sweep import RunSpec, write_manifest


def make_run(root, name, overrides=(), seed=0, robust=(0.40, 0.50, 0.45), natural=(0.70, 0.75, 0.80),
             epochs=None):
    """A run directory: config.yaml and metrics.jsonl with the given per-epoch test accuracies."""
    epochs = epochs or len(robust)
    cfg = load_config(None, [*overrides, f"run.seed={seed}", f"run.name={name}", f"run.out_dir={root}",
                             f"schedule.epochs={epochs}"])
    path = root / name
    path.mkdir(parents=True)
    dump_config(cfg, path / "config.yaml")
    records = [{"epoch": e + 1, "train_loss": 1.0, "test_pgd_acc": r, "test_nat_acc": n}
               for e, (r, n) in enumerate(zip(robust, natural))]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# Three seeds of AT and of AT-AWP; best robust = the max of each run's curve, last = its last.
AT = {0: (0.40, 0.50, 0.45), 1: (0.42, 0.52, 0.47), 2: (0.44, 0.57, 0.43)}
AWP = {0: (0.40, 0.55, 0.54), 1: (0.41, 0.56, 0.56), 2: (0.40, 0.58, 0.57)}


@pytest.fixture
def runs(tmp_path):
    paths = [make_run(tmp_path, f"at-{s}", ["perturb.name=none", f"perturb.awp.gamma={0.01 + s}"], s, c)
             for s, c in AT.items()]
    paths += [make_run(tmp_path, f"awp-{s}", ["perturb.name=awp"], s, c) for s, c in AWP.items()]
    return paths


def test_best_and_last_checkpoints_of_one_run(tmp_path):
    r = run_result(make_run(tmp_path, "a", robust=(0.3, 0.6, 0.6, 0.5), natural=(0.7, 0.8, 0.9, 0.85)))
    assert (r.best_epoch, r.best_robust, r.best_natural) == (2, 0.6, 0.8)  # the first best epoch
    assert (r.last_epoch, r.last_robust, r.last_natural) == (4, 0.5, 0.85) and r.finished
    assert not run_result(make_run(tmp_path, "b", robust=(0.3,), natural=(0.7,), epochs=3)).finished


def test_mean_and_sample_std_over_seeds(runs):
    groups = group_runs(run_result(p) for p in runs)
    # AT runs differ in perturb.awp.gamma, an option AT never uses: still one group
    assert [(g.label, len(g.runs)) for g in groups] == [("AT", 3), ("AT-AWP", 3)]
    at = groups[0]
    mean, std = at.stats("best_robust")
    assert mean == pytest.approx((0.50 + 0.52 + 0.57) / 3)
    by_hand = ((0.50 - mean) ** 2 + (0.52 - mean) ** 2 + (0.57 - mean) ** 2) / (3 - 1)
    assert std == pytest.approx(by_hand ** 0.5)
    assert at.stats("last_robust") == pytest.approx((0.45, 0.02))  # 0.45, 0.47, 0.43
    assert at.stats("best_natural") == pytest.approx((0.75, 0.0))  # epoch 2 in every run
    table = markdown_report(groups)
    # best − last per run: 0.01, 0.00, 0.01
    assert "| AT-AWP | 56.33 ± 1.53 | 55.67 ± 1.53 | 0.67 ± 0.58 | 75.00 ± 0.00 | 80.00 ± 0.00 |" in table
    assert at.stats("robust_drop") == pytest.approx((0.08, statistics.stdev([0.05, 0.05, 0.14])))
    assert "over 3 seed(s)" in table and "Fashion-MNIST L∞ ε=0.1" in table


def test_paired_differences_follow_the_seeds(tmp_path, runs):
    runs.append(make_run(tmp_path, "awp-lone", ["perturb.name=awp", "optim.lr=0.05"], 7))  # no shared seed
    groups = group_runs(run_result(p) for p in runs)
    (row,) = paired_differences(groups)
    assert (row["difference"], row["n"], row["seeds"]) == ("AT (lr=0.1) − AT-AWP (lr=0.1)", 3, "0 1 2")
    by_seed = [0.50 - 0.55, 0.52 - 0.56, 0.57 - 0.58]  # AT best − AT-AWP best, seed by seed
    assert row["best_robust_mean"] == pytest.approx(statistics.fmean(by_seed))
    assert row["best_robust_std"] == pytest.approx(statistics.stdev(by_seed))
    assert row["last_robust_mean"] == pytest.approx(statistics.fmean([0.45 - 0.54, 0.47 - 0.56, 0.43 - 0.57]))


def test_runs_that_differ_in_more_than_the_seed_are_never_averaged(tmp_path, runs):
    runs.append(make_run(tmp_path, "awp-lr", ["perturb.name=awp", "optim.lr=0.05"], 0, (0.1, 0.2, 0.3)))
    runs.append(make_run(tmp_path, "awp-same-seed", ["perturb.name=awp", "run.device=cpu"], 0, (0, 0, 0)))
    groups = group_runs(run_result(p) for p in runs)
    labels = {g.label: g for g in groups}
    assert set(labels) == {"AT (lr=0.1)", "AT-AWP (lr=0.1)", "AT-AWP (lr=0.05)"}
    assert [r.path.name for r in labels["AT-AWP (lr=0.05)"].runs] == ["awp-lr"]
    # the same setting and seed again (run.device does not change what is computed): not counted
    assert [r.path.name for r in labels["AT-AWP (lr=0.1)"].repeats] == ["awp-same-seed"]
    assert len(labels["AT-AWP (lr=0.1)"].runs) == 3


def test_columns_are_grouped_by_dataset_and_threat_model(tmp_path, runs):
    runs += [make_run(tmp_path, f"c10-{s}", ["data.name=cifar10", "attack.eps=8/255", "perturb.name=awp"], s)
             for s in (0, 1)]
    table = markdown_report(group_runs(run_result(p) for p in runs))
    header = table.splitlines()[2]
    assert "Fashion-MNIST L∞ ε=0.1 robust best" in header and "CIFAR-10 L∞ ε=8/255 natural last" in header
    at_row = next(line for line in table.splitlines() if line.startswith("| AT "))
    assert at_row.rstrip(" |").endswith("-")  # AT has no CIFAR-10 runs


def test_cli_writes_markdown_csv_and_prints(tmp_path, runs, capsys):
    out = tmp_path / "out"
    assert cli.main(["report", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| AT-AWP | 56.33 ± 1.53 |" in printed and (out / "report.md").read_text() in printed + "\n"
    rows = {r["method"]: r for r in read_csv(out / "report.csv")}
    assert rows["AT"]["n"] == "3" and rows["AT"]["seeds"] == "0 1 2"
    assert float(rows["AT"]["last_robust_mean"]) == pytest.approx(0.45)
    assert float(rows["AT"]["last_robust_std"]) == pytest.approx(statistics.stdev([0.45, 0.47, 0.43]))
    assert not list(out.glob("ablation-*"))  # nothing varies but the method
    assert re.search(r"\| AT − AT-AWP +\| 3 +\| -3\.33 ± 2\.08 +\|", printed)  # per-seed best: -5, -4, -1 points
    assert read_csv(out / "differences.csv")[0]["n"] == "3"
    assert (out / "curves.png").stat().st_size > 1000
    curves = read_csv(out / "curves.csv")
    assert [(r["method"], r["epoch"]) for r in curves][:4] == [("AT", "1"), ("AT", "2"), ("AT", "3"), ("AT-AWP", "1")]
    assert float(curves[1]["test_pgd_acc_mean"]) == pytest.approx((0.50 + 0.52 + 0.57) / 3)


def test_learning_curves_average_the_seeds_epoch_by_epoch(tmp_path):
    def run(name, seed, records):
        path = make_run(tmp_path, name, ["perturb.name=rwp"], seed, epochs=3)
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    a = run("a", 0, [{"epoch": 1, "lsc_frac_below": 0.2},
                     {"epoch": 2, "lsc_frac_below": 0.4, "test_pgd_acc": 0.5, "test_nat_acc": 0.7},
                     {"epoch": 3, "lsc_frac_below": 0.5, "test_pgd_acc": 0.6, "test_nat_acc": 0.8}])
    b = run("b", 1, [{"epoch": 1, "lsc_frac_below": 0.4},
                     {"epoch": 2, "lsc_frac_below": 0.8, "test_pgd_acc": 0.7, "test_nat_acc": 0.9}])
    (group,) = group_runs(run_result(p) for p in (a, b))
    rows = group_curves(group)
    assert [r["epoch"] for r in rows] == [1, 2]  # epoch 3: not every run reached it
    assert rows[0]["lsc_frac_below_mean"] == pytest.approx(0.3)
    assert rows[0]["lsc_frac_below_std"] == pytest.approx(statistics.stdev([0.2, 0.4]))
    assert math.isnan(rows[0]["test_pgd_acc_mean"])  # not evaluated that epoch
    assert rows[1]["test_pgd_acc_mean"] == pytest.approx(0.6) and rows[1]["n"] == 2
    assert math.isnan(rows[1]["train_pgd_acc_mean"])  # neither run logged it


def test_a_sweep_directory_reports_its_runs_and_ablation_plots(tmp_path):
    sweep = tmp_path / "sweep"
    specs, curves = [], {0.001: 0.50, 0.01: 0.55, 0.1: 0.40}
    for gamma, top in curves.items():
        for seed in (0, 1):
            name = f"gamma-{gamma}__seed-{seed}"
            overrides = ["perturb.name=awp", f"perturb.awp.gamma={gamma}"]
            make_run(sweep, name, overrides, seed, (top - 0.1, top + 0.01 * seed, top - 0.05))
            specs.append(RunSpec(name, overrides, str(sweep / name), {}))
    make_run(sweep, "unfinished", ["perturb.name=awp"], 0, (0.9,), epochs=3)
    specs.append(RunSpec("unfinished", [], str(sweep / "unfinished"), {}))
    specs.append(RunSpec("never-started", [], str(sweep / "never-started"), {}))
    write_manifest(sweep, None, [], {"perturb.awp.gamma": list(map(str, curves))}, [0, 1], specs)
    (sweep / "stray-directory").mkdir()

    assert len(find_runs([sweep])) == 7  # the manifest's runs that finished an epoch
    assert cli.main(["report", str(sweep)]) == 0  # written into the sweep directory
    rows = read_csv(sweep / "ablation-perturb.awp.gamma.csv")
    assert [(float(r["perturb.awp.gamma"]), r["n"]) for r in rows] == [(0.001, "2"), (0.01, "2"), (0.1, "2")]
    assert float(rows[1]["best_robust_mean"]) == pytest.approx(0.555)
    assert float(rows[1]["best_robust_std"]) == pytest.approx(statistics.stdev([0.55, 0.56]))
    assert float(rows[2]["last_robust_mean"]) == pytest.approx(0.35)
    assert (sweep / "ablation-perturb.awp.gamma.png").stat().st_size > 1000
    assert len(read_csv(sweep / "report.csv")) == 3 and (sweep / "report.md").is_file()
    # a directory of sweeps and runs: every run in it
    make_run(tmp_path, "plain", ["perturb.name=awp", "perturb.awp.gamma=0.5"], 0)
    assert len(find_runs([tmp_path])) == 8


def test_unfinished_runs_are_left_out_and_said_so(tmp_path, capsys):
    done = make_run(tmp_path, "done", seed=0)
    partial = make_run(tmp_path, "partial", seed=1, robust=(0.3,), natural=(0.6,), epochs=3)
    assert cli.main(["report", str(done), str(partial)]) == 0
    out = capsys.readouterr().out
    assert f"left out (unfinished, epoch 1 of 3): {partial}" in out
    assert read_csv(done / "report.csv")[0]["n"] == "1"
    assert cli.main(["report", str(done), str(partial), "--unfinished"]) == 0
    assert read_csv(done / "report.csv")[0]["n"] == "2"
    assert cli.main(["report", str(partial)]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_a_directory_without_runs_is_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    with pytest.raises(WpatError, match="not found"):
        find_runs([tmp_path / "nowhere"])
