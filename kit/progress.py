"""Progress bars that suit where the output goes.

    progress_bar(iterable=None, *, desc, total=None, unit="it", enabled=True, leave=True)

On a terminal: a tqdm bar. Anywhere else (a log file, a pipe, a notebook's captured output):
no redraws, one summary line when the bar closes ("train fold 0: 120/120 it in 41.3 s, loss
0.31"), so a fold's log holds its messages, not hundreds of bar states. `enabled=False`
(`--no-progress`) prints nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator


def progress_bar(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
    initial: int = 0,
):
    """A tqdm bar on a terminal, else a `SummaryBar` (see the module docstring); both have
    update(n), set_postfix(**values), refresh(), close() and iterate over `iterable`."""
    if enabled and _terminal():
        from tqdm import tqdm

        return tqdm(
            iterable, desc=desc, total=total, unit=unit, leave=leave, initial=initial,
            dynamic_ncols=True,
        )  # fmt: skip
    return SummaryBar(iterable, desc=desc, total=total, unit=unit, quiet=not (enabled and leave),
                      initial=initial)  # fmt: skip


def _terminal() -> bool:
    return sys.stderr.isatty()


class SummaryBar:
    """tqdm's surface without the drawing: counts, and prints one line when closed (unless
    quiet). Used where the output is not a terminal."""

    def __init__(self, iterable, *, desc: str, total: int | None, unit: str, quiet: bool,
                 initial: int = 0) -> None:  # fmt: skip
        self.iterable, self.desc, self.unit, self.quiet = iterable, desc, unit, quiet
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.initial = total, initial, initial
        self.postfix: dict[str, object] = {}
        self.started = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def refresh(self) -> None:
        """tqdm redraws here (e.g. after `total` changed); there is nothing to draw."""

    def summary(self) -> str:
        """ "<desc>: <n>[/<total>] <unit> in <s> s[, key value ...]"."""
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        line = f"{self.desc}: {count} {self.unit} in {time.monotonic() - self.started:.1f} s"
        extra = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        return f"{line}, {extra}" if extra else line

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.quiet and self.n > self.initial:
            print(self.summary(), file=sys.stderr, flush=True)
