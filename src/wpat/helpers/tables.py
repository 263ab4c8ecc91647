"""Plain-text tables shaped like the papers' (markdown, readable in a terminal too), and CSV."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Mapping, Sequence


def percent(value: Any) -> str:
    """0.7312 -> '73.12'; missing or NaN -> '-'."""
    if value is None or value != value:
        return "-"
    return f"{100 * value:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def training_table(summary: dict[str, Any], attack_name: str = "PGD-20") -> str:
    """Best and last checkpoints of a run: natural and robust test accuracy (%)."""
    rows = []
    kinds = ["best", "last"] + [k for k in ("ema_best", "ema_last") if k in summary]
    for kind in kinds:
        r = summary.get(kind) or {}
        rows.append([kind, r.get("epoch", "-"), percent(r.get("test_nat_acc")), percent(r.get("test_pgd_acc")),
                     percent(r.get("train_pgd_acc")), percent(r.get("robust_gap"))])
    return markdown_table(["checkpoint", "epoch", "natural", attack_name, f"train {attack_name}", "gap"], rows)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Rows to CSV (columns: the union of the rows' keys, in order of appearance); the data a
    figure or a report shows, written beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
