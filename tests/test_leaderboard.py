"""`wpat report`'s leaderboard: per method mean ± std over seeds of robust accuracy at best and
last (PGD and AutoAttack), best − last, natural accuracy, training cost, and the paired
difference from a baseline row, on run directories written by hand with numbers computed by
hand below."""

import csv
import json
import math
import statistics

import pytest

from wpat import cli
from wpat.analysis.cost import FORWARD, ObjectiveCost, step_passes
from wpat.analysis.groups import group_runs, run_result
from wpat.analysis.leaderboard import leaderboard
from wpat.analysis.leaderboard_markdown import markdown_leaderboard
from wpat.configuration.config import dump_config, load_config
from wpat.helpers.errors import WpatError
from wpat.sweep import setting_of

PGD = (0.70, 0.75, 0.80)  # natural accuracy of every run, epochs 1-3


def make_run(root, name, overrides, seed, robust, seconds=(10.0, 10.0, 10.0), perturb_steps=None):
    """config.yaml and metrics.jsonl of a finished 3-epoch run with these per-epoch numbers."""
    cfg = load_config(None, [*overrides, f"run.seed={seed}", f"run.name={name}", f"run.out_dir={root}",
                             "schedule.epochs=3", "data.test_subset=2000"])
    path = root / name
    path.mkdir(parents=True)
    dump_config(cfg, path / "config.yaml")
    records = []
    for epoch in range(3):
        record = {"epoch": epoch + 1, "seconds": seconds[epoch], "train_loss": 1.0,
                  "perturb_active": perturb_steps is not None,
                  "test_pgd_acc": robust[epoch], "test_nat_acc": PGD[epoch]}
        if perturb_steps is not None:
            record["perturb_steps"] = perturb_steps[epoch]
        records.append(record)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_eval(path, best, last, n_examples=1000, best_epoch=2, version="standard", column="aa"):
    """An eval.json as `wpat eval --attacks aa` writes it: AutoAttack on best.pt and last.pt."""
    def entry(kind, epoch, accuracy):
        return {"path": str(path / f"{kind}.pt"), "kind": kind, "epoch": epoch, "weights": f"sha256:{kind}",
                "accuracy": {column: accuracy}, "seconds": {column: 1.0},
                "settings": {column: {"dataset": "fashion_mnist", "n_examples": n_examples, "norm": "linf",
                                      "eps": 0.1, "step": 0.01, "seed": 0, "batch_size": 500,
                                      "autoattack": version, "pyautoattack": "0.2.0"}},
                "measured": {column: {"device": "cpu"}}}
    report = {"format": "wpat-eval-v2", "target": str(path), "attacks": [column], "labels": {column: "AA"},
              "checkpoints": {"best": entry("best", best_epoch, best), "last": entry("last", 3, last)}}
    (path / "eval.json").write_text(json.dumps(report))


AT = {0: (0.40, 0.50, 0.45), 1: (0.42, 0.52, 0.47), 2: (0.44, 0.57, 0.43)}
AWP = {0: (0.40, 0.55, 0.54), 1: (0.41, 0.56, 0.56), 2: (0.40, 0.58, 0.57)}
RWP = {0: (0.30, 0.50, 0.49), 1: (0.35, 0.53, 0.52)}
TRADES = {0: (0.30, 0.48, 0.46)}


@pytest.fixture
def runs(tmp_path):
    paths = []
    for seed, robust in AT.items():  # 30, 36, 42 s of training
        paths.append(make_run(tmp_path, f"at-{seed}", ["perturb.name=none"], seed, robust, (10 + 2 * seed,) * 3))
    for seed, robust in AWP.items():
        paths.append(make_run(tmp_path, f"awp-{seed}", ["perturb.name=awp"], seed, robust, perturb_steps=(1, 1, 1)))
    for seed, robust in RWP.items():
        paths.append(make_run(tmp_path, f"rwp-{seed}", ["perturb.name=rwp"], seed, robust, perturb_steps=(2, 4, 0)))
    for seed, robust in TRADES.items():
        paths.append(make_run(tmp_path, f"trades-{seed}", ["perturb.name=none", "objective.name=trades"], seed, robust))
    # AutoAttack: AT seeds 0-2 (seed 2's best.pt was evaluated at another epoch), AT-AWP seeds
    # 0-1 on 1000 images and seed 2 on 500 (another setting: left out of the AA cells)
    write_eval(tmp_path / "at-0", 0.40, 0.38)
    write_eval(tmp_path / "at-1", 0.42, 0.37)
    write_eval(tmp_path / "at-2", 0.50, 0.36, best_epoch=1)
    write_eval(tmp_path / "awp-0", 0.45, 0.44)
    write_eval(tmp_path / "awp-1", 0.46, 0.45)
    write_eval(tmp_path / "awp-2", 0.47, 0.46, n_examples=500)
    return paths


def board_of(paths, **options):
    return leaderboard(group_runs(run_result(p) for p in paths), **options)


def test_each_row_is_the_mean_and_std_over_its_seeds(runs):
    board = board_of(runs)
    rows = {r["method"]: r for r in board.rows}
    at, awp = rows["AT"], rows["AT-AWP"]
    assert (at["n"], at["seeds"], rows["AT-RWP"]["n"], rows["TRADES"]["n"]) == (3, "0 1 2", 2, 1)
    assert at["pgd_best_mean"] == pytest.approx((0.50 + 0.52 + 0.57) / 3)
    assert at["pgd_best_std"] == pytest.approx(statistics.stdev([0.50, 0.52, 0.57]))
    assert (at["pgd_last_mean"], at["pgd_last_std"]) == pytest.approx((0.45, 0.02))
    assert at["pgd_drop_mean"] == pytest.approx((0.05 + 0.05 + 0.14) / 3)
    assert (at["nat_best_mean"], at["nat_last_mean"]) == pytest.approx((0.75, 0.80))
    assert awp["pgd_last_mean"] == pytest.approx((0.54 + 0.56 + 0.57) / 3)
    # training wall time: the epochs' seconds, 30, 36 and 42 s
    assert (at["minutes_mean"], at["minutes_std"]) == pytest.approx((0.6, 0.1))
    assert math.isnan(rows["TRADES"]["pgd_best_std"])  # one seed: no std


def test_autoattack_counts_only_results_of_the_runs_best_and_last_epochs_under_one_setting(runs):
    board = board_of(runs)
    rows = {r["method"]: r for r in board.rows}
    at, awp = rows["AT"], rows["AT-AWP"]
    # AT: best.pt of seed 2 was measured at epoch 1, its best is epoch 2 now: left out
    assert (at["aa_best_n"], at["aa_best_mean"]) == (2, pytest.approx(0.41))
    assert (at["aa_last_n"], at["aa_last_mean"], at["aa_last_std"]) == (3, pytest.approx(0.37), pytest.approx(0.01))
    assert (at["aa_version"], at["aa_images"]) == ("standard", 1000)
    # AT-AWP: seed 2 was measured on 500 images, the others on 1000
    assert (awp["aa_last_n"], awp["aa_last_mean"]) == (2, pytest.approx(0.445))
    assert any("awp-2" in n and "500 images" in n for n in board.notes)
    assert any("at-2" in n and "epoch 1" in n for n in board.notes)
    assert rows["AT-RWP"]["aa_last_n"] == 0 and rows["AT-RWP"]["aa_version"] == ""
    # a run measured with another AutoAttack column: said which --aa shows it
    write_eval(runs[-1], 0.30, 0.29, column="aa-apgd", version="apgd-ce+apgd-t")
    assert "eval.json holds aa-apgd, not aa: --aa aa-apgd shows it" in board_of(runs).notes
    rows = {r["method"]: r for r in board_of(runs, aa_column="aa-apgd").rows}
    assert (rows["TRADES"]["aa_last_mean"], rows["TRADES"]["aa_version"]) == (pytest.approx(0.29), "apgd-ce+apgd-t")


def test_the_paired_difference_from_the_baseline_counts_the_seeds_of_its_sign(runs):
    rows = {r["method"]: r for r in board_of(runs).rows}
    awp, rwp = rows["AT-AWP"], rows["AT-RWP"]
    by_seed = [0.54 - 0.45, 0.56 - 0.47, 0.57 - 0.43]
    assert awp["baseline"] == "AT" and awp["delta_pgd_last_n"] == 3 and awp["delta_pgd_last_agree"] == 3
    assert awp["delta_pgd_last_mean"] == pytest.approx(statistics.fmean(by_seed))
    assert awp["delta_pgd_last_std"] == pytest.approx(statistics.stdev(by_seed))
    # RWP − AT best: 0.00 (seed 0), +0.01 (seed 1): one seed of the mean's sign out of two
    assert (rwp["delta_pgd_best_mean"], rwp["delta_pgd_best_n"], rwp["delta_pgd_best_agree"]) == \
        (pytest.approx(0.005), 2, 1)
    # AA: over the seeds both have it for (AT-AWP 0-1; AT last 0-2)
    assert (awp["delta_aa_last_mean"], awp["delta_aa_last_n"]) == (pytest.approx(0.07), 2)
    assert rows["AT"]["baseline"] == "" and rows["AT"]["delta_pgd_last_n"] == 0
    # another baseline: every difference is taken against it
    rows = {r["method"]: r for r in board_of(runs, baseline="at-awp").rows}
    assert rows["AT"]["delta_pgd_last_mean"] == pytest.approx(-statistics.fmean(by_seed))
    assert rows["AT"]["baseline"] == "AT-AWP"


def test_the_training_cost_is_counted_from_the_config_and_the_logged_steps(runs):
    rows = {r["method"]: r for r in board_of(runs).rows}
    # PGD-10: AT 10 + 1; AWP one ascent step: + 1; RWP steps 2, 4, 0 in its three epochs: + 2
    # on average; TRADES: 10 + 1/3 (the clean forward of its KL attack) + 2 + 1/3 (a third,
    # statistics-only forward)
    assert rows["AT"]["passes_mean"] == pytest.approx(11) and rows["AT"]["cost_mean"] == pytest.approx(1)
    assert rows["AT-AWP"]["passes_mean"] == pytest.approx(12) and rows["AT-AWP"]["cost_mean"] == pytest.approx(12 / 11)
    assert rows["AT-RWP"]["passes_mean"] == pytest.approx(13)
    assert rows["TRADES"]["passes_mean"] == pytest.approx(12 + 2 / 3)


def test_the_rule_counts_warmup_alternations_and_an_objectives_own_cost():
    setting = setting_of(load_config(None, ["perturb.name=awp", "perturb.awp.steps=2", "perturb.alternations=2",
                                            "attack.steps=5", "objective.name=trades",
                                            "objective.trades.clean_forwards=1"]).to_dict())
    history = [{"perturb_active": False}, {"perturb_active": True, "perturb_steps": 4.0}]
    loss = 2.0  # TRADES with one clean forward
    attack = 5 + FORWARD
    warmup_epoch = attack + loss
    searched_epoch = 2 * attack + 4 * loss + loss  # A = 2 attacks, 4 ascent steps in all, the update
    assert step_passes(setting, history) == pytest.approx((warmup_epoch + searched_epoch) / 2)
    assert ObjectiveCost(2, forwards=1).loss == pytest.approx(2 + FORWARD)
    unknown = {**setting, "objective.name": "not-registered"}
    assert step_passes(unknown, history) is None


def test_rows_are_sorted_by_the_chosen_column_better_first(runs):
    def order(sort):
        return [r["method"] for r in board_of(runs, sort=sort).rows]

    assert order("pgd_last") == ["AT-AWP", "AT-RWP", "TRADES", "AT"]  # 55.67, 50.50, 46, 45
    assert order("pgd-drop") == ["AT-AWP", "AT-RWP", "TRADES", "AT"]  # 0.67, 1, 2, 8: smaller first
    assert order("minutes") == ["AT-AWP", "AT-RWP", "TRADES", "AT"]  # 0.5 min each (ties keep their order), 0.6
    assert order("aa-last") == ["AT-AWP", "AT", "AT-RWP", "TRADES"]  # rows without AA last, in order
    assert order("passes") == ["AT", "AT-AWP", "TRADES", "AT-RWP"]
    assert order("method") == ["AT", "AT-AWP", "AT-RWP", "TRADES"]
    with pytest.raises(WpatError, match="--sort speed: choose one of method, pgd-best"):
        board_of(runs, sort="speed")
    with pytest.raises(WpatError, match="--baseline MADRY: no such row; rows: AT, AT-AWP"):
        board_of(runs, baseline="MADRY")


def test_the_markdown_states_the_numbers_their_protocol_and_noise(runs):
    board = board_of(runs)
    text = markdown_leaderboard(board, {board.rows[0]["column"]: 2000})
    awp = next(line for line in text.splitlines() if line.startswith("| AT-AWP "))
    cells = [c.strip() for c in awp.strip("|").split("|")]
    assert cells[:7] == ["AT-AWP", "3", "56.33 ± 1.53", "55.67 ± 1.53", "0.67 ± 0.58", "75.00 ± 0.00", "80.00 ± 0.00"]
    assert cells[7:10] == ["45.50 ± 0.71 (n=2)", "44.50 ± 0.71 (n=2)", "standard, 1000 images, 2"]
    assert cells[11:13] == ["12.00 ± 0.00", "1.09 ± 0.00"]
    # Δ PGD-20 best (+5, +4, +1 points), Δ PGD-20 last (+9, +9, +14), Δ AA best, Δ AA last
    assert cells[13:] == ["+3.33 ± 2.08 (3/3)", "+10.67 ± 2.89 (3/3)", "+4.50 ± 0.71 (2/2)", "+7.00 ± 1.41 (2/2)"]
    at = next(line for line in text.splitlines() if line.startswith("| AT "))
    assert at.rstrip(" |").endswith("baseline")
    assert "PGD-20 best" in text and "Sorted by PGD-20 last, highest first" in text
    # sampling std of the mean last PGD accuracy of the rows, (45 + 55.67 + 50.5 + 46) / 4 %, on 2000 images
    p = (0.45 + (0.54 + 0.56 + 0.57) / 3 + 0.505 + 0.46) / 4
    assert f"{100 * math.sqrt(p * (1 - p) / 2000):.2f} points at p = {100 * p:.1f}% on 2000 images (PGD-20)" in text
    assert "Δ: per-seed difference from AT" in text


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_wpat_report_writes_and_prints_the_leaderboard(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["report", *map(str, runs), "--out", str(out), "--sort", "pgd-best"]) == 0
    printed = capsys.readouterr().out
    assert (out / "leaderboard.md").read_text().strip() in printed
    rows = read_csv(out / "leaderboard.csv")
    assert [r["method"] for r in rows] == ["AT-AWP", "AT", "AT-RWP", "TRADES"]  # best 56.33, 53, 51.5, 48
    assert float(rows[0]["delta_pgd_last_mean"]) == pytest.approx((0.09 + 0.09 + 0.14) / 3)
    for figure in ("leaderboard-curves", "leaderboard-cost"):
        assert (out / f"{figure}.png").stat().st_size > 1000
    curves = read_csv(out / "leaderboard-curves.csv")
    assert [(r["method"], r["epoch"]) for r in curves][:3] == [("AT", "1"), ("AT", "2"), ("AT", "3")]
    assert float(curves[1]["test_pgd_acc_mean"]) == pytest.approx((0.50 + 0.52 + 0.57) / 3)
    cost = {r["method"]: r for r in read_csv(out / "leaderboard-cost.csv")}
    assert float(cost["AT-RWP"]["cost_mean"]) == pytest.approx(13 / 11)


@pytest.mark.parametrize("option, says", [
    (["--sort", "speed"], "--sort speed: choose one of"),
    (["--baseline", "madry"], "--baseline madry: no such row"),
    (["--aa", "aa-fast"], "unknown evaluation attack 'aa-fast'"),
])
def test_a_bad_option_is_one_line_and_writes_nothing(runs, tmp_path, capsys, option, says):
    out = tmp_path / "out"
    assert cli.main(["report", *map(str, runs), "--out", str(out), *option]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err
    assert not out.exists()


def test_every_shipped_objective_and_perturbation_states_its_cost():
    from wpat.objectives import OBJECTIVES
    from wpat.perturb import PERTURBATIONS

    assert [n for n in OBJECTIVES.names() if "cost" not in OBJECTIVES.info(n)] == []
    assert [n for n in PERTURBATIONS.names() if "cost" not in PERTURBATIONS.info(n)] == []


@pytest.mark.parametrize("overrides, passes", [
    (["perturb.name=sam"], 10 + 1 + 1),  # the attack, one ascent evaluation, the update
    (["perturb.name=sam", "perturb.sam.recraft=true"], 2 * 10 + 1 + 1),  # crafted again at w + v
    (["perturb.name=asam"], 10 + 1 + 1),
    (["perturb.name=sam-at"], 10 + 1 + 1),
    (["objective.name=kd"], 10 + 1 + 2 * FORWARD),  # the two teachers' forwards of x'
    (["objective.name=rebat"], 10 + 1 + FORWARD),  # the average's forward of x'
    (["objective.name=consistency"], 2 * 10 + 2),  # AT on both views
    (["objective.name=consistency", "objective.consistency.base=trades", "objective.trades.clean_forwards=1"],
     2 * (10 + FORWARD) + 2 * 2),
    (["objective.name=mlcat-ls"], 10 + 1),
    (["objective.name=dkl", "attack.steps=5"], 5 + FORWARD + 2),
    (["perturb.name=mlcat-wp"], 10 + 3 + 1),  # its logged steps
])
def test_the_new_methods_cost_what_their_steps_run(overrides, passes):
    setting = setting_of(load_config(None, ["attack.steps=10", *overrides]).to_dict())
    history = [{"perturb_active": True, "perturb_steps": 3.0}]
    assert step_passes(setting, history) == pytest.approx(passes)


def test_a_run_that_keeps_a_weight_average_adds_the_averages_row(tmp_path):
    """KD+SWA, ReBAT and DKL report their averaged model: its accuracies, logged beside the
    model's at each evaluated epoch (ema_*), make a row of their own, paired with AT by seed, with
    AutoAttack from ema_best.pt and ema_last.pt."""
    paths = [make_run(tmp_path, f"at-{s}", ["perturb.name=none"], s, AT[s]) for s in (0, 1)]
    average = {0: (0.41, 0.53, 0.52), 1: (0.43, 0.51, 0.55)}  # seed 1: best at the last epoch
    for seed in (0, 1):
        path = make_run(tmp_path, f"swa-{seed}", ["perturb.name=none", "run.average=swa", "run.swa_start=1"],
                        seed, AT[seed])
        records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        for record, robust in zip(records, average[seed]):
            record.update(ema_test_pgd_acc=robust, ema_test_nat_acc=0.6)
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        write_eval(path, 0.30, 0.30)  # AutoAttack of best.pt/last.pt: the model's, not the average's
        report = json.loads((path / "eval.json").read_text())
        for kind, epoch, accuracy in (("ema_best", 2 if seed == 0 else 3, 0.50 + seed / 100), ("ema_last", 3, 0.49)):
            entry = json.loads(json.dumps(report["checkpoints"]["best"]))
            entry.update(kind=kind, epoch=epoch, accuracy={"aa": accuracy})
            report["checkpoints"][kind] = entry
        (path / "eval.json").write_text(json.dumps(report))
        paths.append(path)
    baseline = "AT (average=ema, swa_start=0)"  # without a sweep manifest, rows are named by their settings
    rows = {r["method"]: r for r in board_of(paths, baseline=baseline).rows}
    plain, averaged = rows["AT (average=swa, swa_start=1)"], rows["AT (average=swa, swa_start=1) (average)"]
    assert len(rows) == 3
    assert plain["pgd_last_mean"] == pytest.approx(rows[baseline]["pgd_last_mean"])  # the model trains as AT
    assert averaged["pgd_best_mean"] == pytest.approx((0.53 + 0.55) / 2)
    assert averaged["pgd_last_mean"] == pytest.approx((0.52 + 0.55) / 2)
    assert averaged["pgd_drop_mean"] == pytest.approx((0.01 + 0.0) / 2)
    assert averaged["delta_pgd_last_mean"] == pytest.approx(((0.52 - 0.45) + (0.55 - 0.47)) / 2)
    assert plain["aa_last_mean"] == pytest.approx(0.30)  # the model's best.pt and last.pt
    assert (averaged["aa_best_mean"], averaged["aa_last_mean"]) == pytest.approx((0.505, 0.49))  # ema_*.pt
