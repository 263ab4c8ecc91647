"""wpat.analysis and ``wpat landscape | lsc | plot``: weight loss landscapes (AWP Algorithm 1),
LSC groups (RWP Fig. 1c), learning curves and weight histograms.

The run directory used by the CLI tests is fabricated in the format ``wpat train`` writes
(config.yaml, metrics.jsonl via train.write_metrics, checkpoints via save_atomic), with a tiny
model, so no training is needed.
"""

from __future__ import annotations

import copy
import csv
import json
import math

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn

from conftest import fashion_mnist_available
from wpat import cli
from wpat.training import experiment
from wpat.analysis import (LSCTable, adversarial_losses, filter_normalized_direction,
                           landscape_1d, landscape_2d, list_checkpoints, lsc_table, plot_curves,
                           plot_landscape_1d, plot_landscape_2d, plot_lsc, plot_weight_histograms)
from wpat.attacks import PGD
from wpat.checkpoints.files import FORMAT, save_atomic
from wpat.configuration.config import dump_config, load_config
from wpat.helpers.errors import WpatError
from wpat.measurements.metrics import LSC_EDGES, lsc_histogram
from wpat.perturb import add_perturbation
from wpat.training.run_log import write_metrics

WEIGHTS = ["conv.weight", "fc.weight"]


class TinyNet(nn.Module):
    """conv(bias)-BN-ReLU-pool-linear(bias): has filters, BN parameters and biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def make_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        for _ in range(2):  # non-trivial BN running statistics
            model(torch.rand(8, 1, 8, 8))
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
    return model, x, y, PGD(0.1, 0.05, 2, bn_mode="eval")


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def history_records(epochs: int) -> list[dict]:
    """metrics.jsonl records as train.py writes them, evaluated every epoch."""
    return [{"epoch": e, "lr": 0.1, "perturb_active": False, "seconds": 1.0, "images_per_s": 10.0,
             "train_loss": 2.0 - 0.1 * e, "lsc_frac_below": 0.1 * e,
             "lsc_hist": [float(e), 5.0, 7.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
             "rwp_frac_below": math.nan, "perturb_steps": math.nan, "v_over_w": math.nan,
             "test_nat_acc": 0.5 + 0.05 * e, "test_pgd_acc": 0.2 + 0.05 * e,
             "train_nat_acc": 0.55 + 0.05 * e, "train_pgd_acc": 0.25 + 0.06 * e,
             "robust_gap": 0.05 + 0.01 * e} for e in range(1, epochs + 1)]


# ---------------------------------------------------------------------- directions


def test_filter_normalized_direction_has_the_weights_filter_norms():
    model, *_ = make_problem()
    d = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    # BN weights/biases and biases have a zero direction (absent), as Li et al.'s filter norm.
    assert sorted(d) == sorted(WEIGHTS)
    for name, d_l in d.items():
        w = params[name].detach()
        assert d_l.shape == w.shape
        torch.testing.assert_close(d_l.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1))


def test_same_seed_gives_the_same_direction_and_another_seed_another():
    model, *_ = make_problem()
    a = filter_normalized_direction(model, torch.Generator().manual_seed(3))
    b = filter_normalized_direction(model, torch.Generator().manual_seed(3))
    c = filter_normalized_direction(model, torch.Generator().manual_seed(4))
    assert all(torch.equal(a[n], b[n]) for n in WEIGHTS)
    assert not torch.equal(a["conv.weight"], c["conv.weight"])


def test_checkpoints_share_the_direction_but_normalize_by_their_own_weights():
    first, *_ = make_problem(0)
    second, *_ = make_problem(1)  # same shapes, other weights
    d1 = filter_normalized_direction(first, torch.Generator().manual_seed(0))
    d2 = filter_normalized_direction(second, torch.Generator().manual_seed(0))
    unit = lambda t: t.flatten(1) / t.flatten(1).norm(dim=1, keepdim=True)  # noqa: E731
    for name in WEIGHTS:
        torch.testing.assert_close(unit(d1[name]), unit(d2[name]))
        w2 = dict(second.named_parameters())[name].detach()
        torch.testing.assert_close(d2[name].flatten(1).norm(dim=1), w2.flatten(1).norm(dim=1))


# ---------------------------------------------------------------------- landscapes


def test_landscape_at_zero_is_the_adversarial_loss_with_the_same_pgd_seed():
    model, x, y, attack = make_problem()
    d = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    loss, acc = landscape_1d(model, x, y, attack, d, [-0.5, 0.0, 0.5], seed=7)
    losses, correct = adversarial_losses(model, x, y, attack, seed=7)
    assert loss[1] == losses.mean().item()
    assert acc[1] == correct.float().mean().item()
    assert loss[0] != loss[1] != loss[2]  # the weights did move


def test_landscape_crafts_the_examples_against_the_perturbed_model():
    model, x, y, attack = make_problem()
    d = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    loss, _ = landscape_1d(model, x, y, attack, d, [0.8], seed=1)
    moved = copy.deepcopy(model)
    add_perturbation(moved, d, 0.8)
    expected = adversarial_losses(moved, x, y, attack, seed=1)[0].mean().item()
    assert loss[0] == pytest.approx(expected, rel=1e-6)


def test_landscapes_restore_weights_buffers_and_mode_bitwise():
    model, x, y, attack = make_problem()
    model.train()
    saved = snapshot(model)
    gen = torch.Generator().manual_seed(0)
    d, e = filter_normalized_direction(model, gen), filter_normalized_direction(model, gen)
    landscape_1d(model, x, y, attack, d, [-1.0, 0.3, 1.0])
    assert_bitwise_equal(model, saved)
    assert model.training and model.bn.training
    loss, acc = landscape_2d(model, x, y, attack, d, e, [-1.0, 0.0, 1.0], [-0.5, 0.5])
    assert loss.shape == acc.shape == (3, 2)
    assert_bitwise_equal(model, saved)


def test_landscape_restores_the_weights_when_the_attack_fails():
    model, x, y, attack = make_problem()
    saved = snapshot(model)
    d = filter_normalized_direction(model, torch.Generator().manual_seed(0))

    def broken(m, xb, yb):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        landscape_1d(model, x, y, broken, d, [0.7])
    assert_bitwise_equal(model, saved)


# ---------------------------------------------------------------------- LSC


def test_lsc_counts_use_the_training_logs_bins():
    losses = torch.tensor([0.0, 0.49, 0.5, 1.7, 4.99, 5.0, 40.0])
    counts = lsc_histogram(losses)
    assert len(counts) == len(LSC_EDGES) - 1 == 11
    assert counts[0] == 2 and counts[1] == 1 and counts[3] == 1  # 0.5 goes up; 1.7 in [1.5, 2)
    assert counts[9] == 1 and counts[10] == 2  # 5.0 and above in [5, inf)


def test_lsc_table_reads_the_epochs_that_logged_a_histogram():
    history = [{"epoch": 1, "train_loss": 2.0},
               {"epoch": 2, "lsc_hist": [1.0] * 11, "lsc_frac_below": 0.25}]
    table = lsc_table(history, c_min=1.7)
    assert table.epochs == [2] and table.frac_below == [0.25] and table.counts.shape == (1, 11)
    assert table.rows()[0]["[5,inf)"] == 1
    with pytest.raises(WpatError, match="--recompute"):
        lsc_table(history[:1], c_min=1.7)


# ---------------------------------------------------------------------- plots


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_picture_with_data(png, n_rows: int):
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not blank
    assert len(read_csv(png.with_suffix(".csv"))) == n_rows


ALPHAS = [-1.0, 0.0, 1.0]


def test_landscape_1d_plot_overlays_checkpoints_and_directions(tmp_path):
    curves = {"epoch 1": np.array([[2.5, 2.0, 2.4], [2.6, 2.0, 2.3]]),  # two directions
              "epoch 2 (best)": np.array([3.0, 1.5, 2.9])}
    assert_picture_with_data(plot_landscape_1d(curves, ALPHAS, tmp_path / "l1.png"), 9)


def test_landscape_2d_plot(tmp_path):
    surfaces = {"epoch 1": np.random.rand(3, 3), "epoch 2": 2 * np.random.rand(3, 3)}
    assert_picture_with_data(plot_landscape_2d(surfaces, ALPHAS, ALPHAS, tmp_path / "l2.png"), 18)


def test_lsc_plot(tmp_path):
    table = LSCTable(epochs=[1, 2, 3], counts=np.random.randint(0, 50, (3, 11)).astype(float),
                     frac_below=[0.1, 0.3, 0.6], c_min=1.7)
    assert_picture_with_data(plot_lsc(table, tmp_path / "lsc.png"), 3)


def test_curves_plot_keeps_the_evaluated_epochs_of_each_run(tmp_path):
    history = history_records(3) + [{"epoch": 4, "train_loss": 1.0}]  # 4: not evaluated
    png = plot_curves({"AT": history, "AT-AWP": history[:2]}, tmp_path / "curves.png")
    assert_picture_with_data(png, 3 + 2)


def test_a_one_epoch_run_is_drawn_as_points_on_whole_epoch_ticks(tmp_path, monkeypatch):
    from wpat.analysis import plots

    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, rows: (figures.append(fig), save(fig, path, rows))[1])
    plot_curves({"AT": history_records(1)}, tmp_path / "curves.png")
    plot_lsc(LSCTable(epochs=[1], counts=np.ones((1, 11)), frac_below=[0.3], c_min=1.7), tmp_path / "lsc.png")
    stats = {f"{split}_{kind}_acc_{s}": 0.5 for split in ("test", "train") for kind in ("pgd", "nat")
             for s in ("mean", "std")}
    plots.plot_group_curves([{"method": "AT", "column": "best", "n": 3, "epoch": 1, "lsc_frac_below_mean": 0.3,
                              "lsc_frac_below_std": 0.1, **stats}], tmp_path / "group.png")
    axes = [ax for fig in figures for ax in fig.axes if ax.get_xlabel() == "epoch"]
    assert len(axes) == 3 + 1 + 3
    for ax in axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        single = [line for line in ax.get_lines() if len(line.get_xdata()) == 1]
        assert single and all(line.get_marker() not in ("None", "", None) for line in single)


def test_weight_histograms_plot_share_bins_across_runs(tmp_path):
    model, *_ = make_problem()
    at = {name: p.detach() for name, p in model.named_parameters() if name in WEIGHTS}
    awp = {name: 0.5 * w for name, w in at.items()}
    png = plot_weight_histograms({"AT": at, "AT-AWP": awp}, tmp_path / "weights.png", bins=10)
    assert_picture_with_data(png, 2 * 2 * 10)  # layers x runs x bins
    rows = read_csv(png.with_suffix(".csv"))
    bins = lambda run: [(r["layer"], r["bin_low"]) for r in rows if r["run"] == run]  # noqa: E731
    assert bins("AT") == bins("AT-AWP")


def test_weight_histograms_cap_the_panels_and_keep_the_last_layer(tmp_path):
    layers = {f"layer{i}.weight": torch.randn(8, 3) for i in range(30)}
    png = plot_weight_histograms({"run": layers}, tmp_path / "w.png", bins=5, max_panels=6)
    shown = {r["layer"] for r in read_csv(png.with_suffix(".csv"))}
    assert len(shown) == 6 and {"layer0.weight", "layer29.weight"} <= shown


# ---------------------------------------------------------------------- run directories and CLI


def fabricate_run(root, name: str, perturb: str = "none"):
    """A 2-epoch run directory as `wpat train` with run.keep_every=1 leaves it."""
    cfg = load_config(None, ["model.small_cnn.width=2", "data.train_subset=64",
                             "data.test_subset=32", "data.batch_size=32", "schedule.epochs=2",
                             "run.device=cpu", f"perturb.name={perturb}", f"run.out_dir={root}",
                             f"run.name={name}"])
    run_dir = root / name
    run_dir.mkdir(parents=True)
    dump_config(cfg, run_dir / "config.yaml")
    history = history_records(2)
    write_metrics(run_dir, history)
    model = experiment.model_from_config(cfg)
    for epoch in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1)
        state = {"format": FORMAT, "kind": "epoch", "config": cfg.to_dict(),
                 "model": model.state_dict(), "epoch": epoch, "history": history[:epoch]}
        save_atomic(state, run_dir / f"epoch-{epoch:03d}.pt")
        save_atomic({**state, "kind": "best" if epoch == 1 else "last"},
                    run_dir / ("best.pt" if epoch == 1 else "last.pt"))
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return fabricate_run(root, "at"), fabricate_run(root, "awp", perturb="awp")


def test_list_checkpoints_names_best_and_last_once_per_epoch(runs):
    refs = list_checkpoints([runs[0]])
    assert [(r.epoch, r.label) for r in refs] == [(1, "epoch 1 (best)"), (2, "epoch 2 (last)")]
    assert [r.label for r in list_checkpoints([runs[0] / "last.pt", runs[1] / "best.pt"])] == \
        ["awp epoch 1 (best)", "at epoch 2 (last)"]
    with pytest.raises(WpatError, match="no checkpoint for epoch.*7.*available: 1, 2"):
        list_checkpoints([runs[0]], epochs=[2, 7])


@pytest.mark.parametrize("command", ["landscape", "lsc", "plot"])
def test_cli_reports_a_missing_run_directory_in_one_line(command, tmp_path, capsys):
    assert cli.main([command, str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wpat: error:") and "nowhere" in err and "\n" not in err


def test_cli_plot_overlays_runs_and_weight_histograms(runs, tmp_path):
    assert cli.main(["plot", *map(str, runs), "--weights", "--out", str(tmp_path)]) == 0
    curves = read_csv(tmp_path / "curves.csv")
    assert {r["run"] for r in curves} == {"AT", "AT-AWP"} and len(curves) == 4
    assert_picture_with_data(tmp_path / "curves.png", 4)
    assert {r["run"] for r in read_csv(tmp_path / "weights.csv")} == {"AT", "AT-AWP"}
    assert cli.main(["plot", *map(str, runs), "--labels", "only-one"]) == 2


def test_cli_plot_writes_into_the_run_directory_and_says_so(tmp_path, capsys, monkeypatch):
    run = fabricate_run(tmp_path / "runs", "solo")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["plot", str(run)]) == 0
    assert_picture_with_data(run / "curves.png", 2)
    assert not list(elsewhere.iterdir())  # nothing in the current directory
    assert str(run / "curves.png") in capsys.readouterr().out


def test_cli_lsc_plots_the_logged_histograms(runs, tmp_path):
    assert cli.main(["lsc", str(runs[0]), "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "lsc.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[1]["[0,0.5)"] == "2"
    assert_picture_with_data(tmp_path / "lsc.png", 2)


needs_data = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")


@needs_data
def test_cli_landscape_overlays_the_epochs_of_a_run(runs, tmp_path, capsys):
    args = ["landscape", str(runs[0]), "--n-examples", "8", "--pgd-steps", "1", "--alphas=-1:1:3",
            "--directions", "2", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    meta = json.loads((tmp_path / "landscape.json").read_text())
    assert [c["label"] for c in meta["checkpoints"]] == ["epoch 1 (best)", "epoch 2 (last)"]
    assert np.array(meta["checkpoints"][0]["loss"]).shape == (2, 3)
    last = meta["checkpoints"][1]
    assert last["loss"][0][1] == last["center_loss"]  # α = 0: the checkpoint's own ρ(w)
    assert_picture_with_data(tmp_path / "landscape.png", 2 * 2 * 3)
    assert cli.main(["landscape", str(runs[0]), "--epochs", "9"]) == 2
    assert "available: 1, 2" in capsys.readouterr().err


@needs_data
def test_cli_landscape_2d_writes_the_relative_landscape(runs, tmp_path):
    args = ["landscape", str(runs[0] / "last.pt"), "--dim", "2", "--n-examples", "4",
            "--pgd-steps", "1", "--alphas=-1:1:3", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    rows = read_csv(tmp_path / "landscape-2d.csv")
    center = [r for r in rows if float(r["alpha"]) == 0 and float(r["beta"]) == 0]
    assert len(rows) == 9 and float(center[0]["relative_loss"]) == pytest.approx(0, abs=1e-6)
    assert_picture_with_data(tmp_path / "landscape-2d.png", 9)


@needs_data
def test_cli_lsc_recomputes_from_checkpoints(runs, tmp_path):
    args = ["lsc", str(runs[0]), "--recompute", "--n-examples", "8", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    rows = read_csv(tmp_path / "lsc.csv")
    assert [r["source"] for r in rows] == ["recomputed"] * 2
    assert all(sum(int(v) for k, v in r.items() if k.startswith("[")) == 8 for r in rows)
