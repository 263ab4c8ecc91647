"""benchmarks/gpu.py, the one command that checks and measures wpat on a GPU, run on the CPU at
toy sizes (``--smoke``) so that it cannot rot before a GPU runs it: every row of every table is
produced, the page says plainly that no GPU figure was measured, a failing row is recorded while
the others go on, and a spent time budget skips rows instead of running past it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"

METHODS = ["clean", "AT (PGD-10)", "AT-AWP", "AT-RWP, all below c_min", "AT-RWP, none below c_min",
           "TRADES (β = 6)"]
EAGER = ["fp32", "bf16", "bf16 + channels_last"]
COMPILED = "bf16 + channels_last + compile"
SYNC_FREE = "AT-RWP, all below, early_exit=false"
CHECKS = ["AT", "AT-AWP", "AT-RWP, all below c_min", "TRADES-AWP"]


def run(tmp_path, *args):
    page = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(page), "--set", "run.threads=1",
                           *args], capture_output=True, text=True, timeout=600)
    return done, page.read_text() if page.exists() else ""


def table(page, title):
    """The rows (lists of stripped cells) of the table under the heading ``## title``."""
    section = page.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def number(cell):
    return float(cell.replace(",", ""))


def test_the_smoke_run_produces_every_row_and_says_no_gpu_figure_was_measured(tmp_path):
    done, page = run(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert page.strip() in done.stdout  # it prints the table it writes
    assert "No GPU figure was measured" in page
    assert "benchmarks/gpu.py --budget" in page  # and how to measure one

    checks = table(page, "Correctness: the device against the CPU")
    assert [(r[0], r[1]) for r in checks] == [(c, p) for c in CHECKS for p in ("fp32", "bf16")] + [
        ("PGD-10 attack, no random start", "fp32")]
    assert all(r[-1] == "pass" for r in checks), checks

    for model in ("PreAct ResNet-18", "WRN-34-10"):
        rows = {(r[0], r[1]): r[2:] for r in table(page, f"{model}: throughput")}
        expected = [(m, mode) for mode in [*EAGER, COMPILED] for m in METHODS] + [(SYNC_FREE, "bf16 + channels_last")]
        assert sorted(rows) == sorted(expected)
        for (method, mode), cells in rows.items():
            if mode == COMPILED:  # the CPU does not compile; the row says so
                assert cells[0].startswith("skipped: --smoke does not compile"), cells
            else:
                images_per_s, ms, vs_at, epoch, gflop = cells[:5]
                assert number(images_per_s) > 0 and number(ms) > 0 and number(epoch) > 0, cells
                assert re.fullmatch(r"\d+\.\d\d×", vs_at) and gflop != "-", cells
        times = {r[0]: r[1:] for r in table(page, f"{model}: where the time goes (bf16 + channels_last)")}
        assert sorted(times) == sorted([*METHODS, SYNC_FREE])
        assert all(cells[0] == "n/a (CPU)" and cells[-1].startswith("CPU ops: ") for cells in times.values())

    (stream,) = table(page, "Extra data: the stream feeding the device")
    assert all(number(cell.rstrip("×")) > 0 for cell in stream[1:]), stream
    (group,) = table(page, "One-process NCCL group")
    assert group[0] == "gloo" and group[4] == "equal"
    goals = table(page, "Goals")
    assert len(goals) == 4 and all(r[2] in ("not a GPU", "-") for r in goals)


def test_a_failing_row_is_recorded_and_the_other_rows_are_measured(tmp_path):
    done, page = run(tmp_path, "--sections", "throughput,nccl", "--models", "preact_resnet18", "--modes", "fp32",
                     "--set", "perturb.awp.gamma=-1")  # AWP refuses a negative γ when it is built
    assert done.returncode == 1
    rows = {r[0]: r[2:] for r in table(page, "PreAct ResNet-18: throughput")}
    assert rows["AT-AWP"][0].startswith("error: WpatError: ") and "gamma" in rows["AT-AWP"][0]
    assert all(number(cells[0]) > 0 for method, cells in rows.items() if method != "AT-AWP")
    assert table(page, "One-process NCCL group")[0][4] == "equal"


def test_a_spent_budget_skips_every_row_and_still_writes_the_page(tmp_path):
    done, page = run(tmp_path, "--budget", "0.001")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for title in ("Correctness: the device against the CPU", "PreAct ResNet-18: throughput",
                            "One-process NCCL group") for r in table(page, title)]
    skipped = [r for r in rows if COMPILED not in r]  # the smoke run never compiles
    assert skipped and all("budget" in " ".join(r) for r in skipped), skipped


def test_bad_arguments_are_one_line_and_exit_status_2(tmp_path):
    done, page = run(tmp_path, "--set", "nosuch.key=1")
    assert done.returncode == 2 and not page
    assert done.stderr.strip().count("\n") == 0 and "unknown config key 'nosuch.key'" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_full_run_points_to_the_smoke_run():
    done = subprocess.run([sys.executable, str(SCRIPT), "--budget", "5"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--smoke" in done.stderr
