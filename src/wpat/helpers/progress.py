"""Progress of long loops: a bar on a terminal, plain lines in a log.

When stderr is a terminal, :class:`Progress` draws a tqdm bar. When it is not (a cluster job,
``nohup``, output redirected to a file), a bar would print nothing useful, so it writes a plain
line instead, at a steady pace: whenever ``interval`` seconds have passed (default 30) or another
tenth of the total is done, whichever comes first::

    epoch 1/3: 120/421 steps (28%), 1534 img/s, ETA 0:02:41, run ETA 0:09:13

The first ETA is the loop's own (this epoch's); a loop that is part of a longer run is told what
comes after it (:class:`After`: more units at the same pace, other work of known length) and
adds the whole run's remaining time, ``run ETA ≥ ...`` while part of it cannot be estimated
yet. A loop may also report a status after each advance (AutoAttack's running robust accuracy).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

INTERVAL_S = 30.0


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass(frozen=True)
class After:
    """What a run still does once the loop in progress ends.

    Args:
        units: more units of the loop's kind (the later epochs' steps), at the loop's pace.
        seconds: other work of known length (evaluations as long as the last one measured).
        lower_bound: some of the remaining work could not be estimated yet (no evaluation
            measured so far, later epochs slower than this one), so the run ETA is a minimum.
    """

    units: int = 0
    seconds: float = 0.0
    lower_bound: bool = False


class Progress:
    """Report ``done`` of ``total`` units under ``desc``.

    Args:
        desc: what is progressing ("epoch 1/3", "best PGD-20").
        total: units in all (steps, images).
        unit: the unit's name in the lines ("steps", "img").
        initial: units already done (a resumed epoch).
        images_per_unit: images one unit stands for, to report images/s (1 for images).
        enabled: False reports nothing; None (default) and True report.
        stream: where lines go (default stderr); a terminal gets a bar.
        interval: seconds between plain lines at most (0: a line at every advance).
        after: what the run does after this loop, for the run's ETA (None: no run ETA).
    """

    def __init__(self, desc: str, total: int, *, unit: str = "steps", initial: int = 0,
                 images_per_unit: int = 1, enabled: bool | None = True,
                 stream: TextIO | None = None, interval: float = INTERVAL_S,
                 after: After | None = None) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.after = after
        self.status: str | None = None
        self.done = self.start_done = initial
        self.images_per_unit = images_per_unit
        self.enabled = enabled is not False
        self.stream = stream or sys.stderr
        self.interval = interval
        self.started = self.last_line = time.perf_counter()
        self.last_tenth = self._tenth(initial)
        self.bar = None
        if self.enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False,
                            dynamic_ncols=True, file=self.stream)

    def _tenth(self, done: int) -> int:
        return 10 * done // self.total if self.total else 0

    def advance(self, n: int = 1, status: str | None = None) -> None:
        """``n`` more units done; ``status`` (if given) is shown from now on after the ETAs."""
        self.done += n
        if status is not None:
            self.status = status
        if not self.enabled:
            return
        if self.bar is not None:
            extra = self._extra(time.perf_counter())
            if extra:
                self.bar.set_postfix_str(extra, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        tenth = self._tenth(self.done)
        if now - self.last_line >= self.interval or tenth > self.last_tenth:
            self.last_line, self.last_tenth = now, tenth
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def _rate(self, now: float) -> float:
        return (self.done - self.start_done) / max(now - self.started, 1e-9)

    def run_left(self, now: float | None = None) -> float:
        """Seconds the whole run still needs: this loop's rest and :attr:`after`'s units at the
        measured pace, plus its known seconds (NaN before any unit is done)."""
        after = self.after or After()
        rate = self._rate(now or time.perf_counter())
        units = self.total - self.done + after.units
        return units / rate + after.seconds if rate > 0 else float("nan")

    def _extra(self, now: float) -> str:
        """The run ETA and the status, as they follow the loop's own ETA."""
        parts = []
        if self.after is not None:
            left = self.run_left(now)
            bound = "≥ " if self.after.lower_bound else ""
            parts.append(f"run ETA {bound}{_clock(left) if left == left else '?'}")
        if self.status:
            parts.append(self.status)
        return ", ".join(parts)

    def line(self, now: float | None = None) -> str:
        """The plain progress line: done/total, percent, images/s, the ETA, the run's ETA
        (with :attr:`after`) and the status."""
        now = now or time.perf_counter()
        rate = self._rate(now)
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _clock(left) if left == left else "?"
        percent = 100 * self.done // self.total if self.total else 100
        extra = self._extra(now)
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({percent}%), "
                f"{rate * self.images_per_unit:.0f} img/s, ETA {eta}" + (f", {extra}" if extra else ""))

    def write(self, text: str) -> None:
        """A line that does not break the bar (per-epoch summaries)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
