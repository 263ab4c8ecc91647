"""The leaderboard (:mod:`wpat.analysis.leaderboard`) as Markdown: per table (dataset and threat
model) a caption saying what each number is, the table in percent with each row's paired
difference from the baseline, and the sampling noise the differences are read against.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

from wpat.analysis.leaderboard import BY_KEY, SHOWN_DIFFERENCES, Leaderboard, describe_aa
from wpat.helpers.tables import markdown_table


def _cell(row: Mapping[str, Any], key: str) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if math.isnan(mean):
        return "-"
    scale, digits = (100, 2) if BY_KEY[key].accuracy else (1, 2)
    text = f"{scale * mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {scale * std:.{digits}f}")
    return text + (f" (n={row[f'{key}_n']})" if BY_KEY[key].accuracy and 0 < row[f"{key}_n"] < row["n"] else "")


def _delta(row: Mapping[str, Any], key: str) -> str:
    n = row[f"delta_{key}_n"]
    if not n:
        return "baseline" if not row["baseline"] else "-"
    mean, std = 100 * row[f"delta_{key}_mean"], 100 * row[f"delta_{key}_std"]
    spread = "" if math.isnan(std) else f" ± {std:.2f}"
    return f"{mean:+.2f}{spread} ({row[f'delta_{key}_agree']}/{n})"


def _sampling_std(rows: Sequence[Mapping[str, Any]], key: str, n: int) -> str:
    """The binomial std of an accuracy at the rows' mean value of ``key`` on ``n`` images."""
    values = [r[f"{key}_mean"] for r in rows if not math.isnan(r[f"{key}_mean"])]
    p = statistics.fmean(values) if values else 0.5
    return f"{100 * math.sqrt(p * (1 - p) / n):.2f} points at p = {100 * p:.1f}% on {n} images"


def markdown_leaderboard(board: Leaderboard, test_images: Mapping[str, int] | None = None) -> str:
    """The leaderboard as Markdown: per table a caption, the table, the noise it is read
    against. ``test_images``: per table (column), the number of test images the per-epoch PGD
    accuracy is measured on, for the sampling std (omitted where unknown)."""
    test_images = test_images or {}
    parts = []
    columns = list(dict.fromkeys(r["column"] for r in board.rows))
    for column in columns:
        rows = [r for r in board.rows if r["column"] == column]
        aa = any(r["aa_best_n"] or r["aa_last_n"] for r in rows)
        base = next((r["baseline"] for r in rows if r["baseline"]), None)
        keys = ["pgd_best", "pgd_last", "pgd_drop", "nat_best", "nat_last",
                *(["aa_best", "aa_last"] if aa else []), "minutes", "passes", "cost"]
        deltas = [k for k in SHOWN_DIFFERENCES if base and (aa or not k.startswith("aa"))]
        headers = ["method", "seeds", *(BY_KEY[k].header.format(pgd=board.pgd) for k in keys[:5]),
                   *(["AA best", "AA last", "AA (version, images, seeds)"] if aa else []),
                   "train min", "passes/step", "× AT",
                   *(f"Δ {BY_KEY[k].header.format(pgd=board.pgd)}" for k in deltas)]
        body = []
        for r in rows:
            aa_cells = [_cell(r, "aa_best"), _cell(r, "aa_last"),
                        f"{describe_aa((r['aa_version'], r['aa_images']))}, {max(r['aa_best_n'], r['aa_last_n'])}"
                        if r["aa_version"] else "-"]
            body.append([r["method"], str(r["n"]), *(_cell(r, k) for k in keys[:5]), *(aa_cells if aa else []),
                         _cell(r, "minutes"), _cell(r, "passes"), _cell(r, "cost"), *(_delta(r, k) for k in deltas)])
        metric = BY_KEY.get(board.sort)
        order = ("by method name" if metric is None else
                 f"by {metric.header.format(pgd=board.pgd)}, {'highest' if metric.higher_is_better else 'lowest'} first")
        images = test_images.get(column)
        noise = (f"Noise: a test accuracy p measured on N images has sampling std √(p(1−p)/N), "
                 + (f"{_sampling_std(rows, 'pgd_last', images)} ({board.pgd})" if images else f"({board.pgd} on the whole test set)"))
        aa_images = {r["aa_images"] for r in rows if r["aa_images"]}
        if aa and len(aa_images) == 1:
            noise += f", {_sampling_std(rows, 'aa_last', aa_images.pop())} (AA)"
        noise += "; the ± of each cell is the seed-to-seed sample std."
        parts.append("\n".join([
            f"Leaderboard, {column}: test accuracy (%), mean ± sample std over each row's seeds; best = the "
            f"epoch of highest test {board.pgd} (as training picks best.pt), last = the final epoch; "
            f"{board.pgd} is the per-epoch accuracy training logs"
            + (", AA is AutoAttack on best.pt and last.pt (wpat eval)" if aa else "")
            + f". Cost: training wall time in minutes (evaluation excluded) and forward-backward passes per "
              f"step, also relative to AT with the same attack (counting rule: docs/leaderboard.md)."
            + (f" Δ: per-seed difference from {base} in points, mean ± sample std (seeds whose difference "
               f"has the sign of the mean / seeds paired)." if base else "")
            + f" Sorted {order}.", "",
            markdown_table(headers, body), "", noise]))
    return "\n\n".join(parts + ([("\n".join(f"- {n}" for n in board.notes))] if board.notes else []))
