"""Progress of every long loop, on stderr: a tqdm bar on a terminal; elsewhere (a log file, a pipe, a scheduler's
output) a bar's redraws would fill the log, so a plain timestamped line every so many steps instead."""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable

from tqdm import tqdm

LINES_PER_RUN = 10  # without `every`, a line at each tenth of the total


def progress_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", enabled: bool = True,
             every: int | None = None, initial: int = 0, **bar_options):
    """A tqdm bar over `iterable` (or counted by `update`) where stderr is a terminal, else `Lines` printing one
    line every `every` steps (default a tenth of `total`); nothing when not `enabled` or TQDM_DISABLE is set."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    shown = enabled and os.environ.get("TQDM_DISABLE", "") in ("", "0")
    if not shown or sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, initial=initial, disable=not shown, dynamic_ncols=True,
                    file=sys.stderr, **bar_options)
    return Lines(iterable, total, desc, every or max(1, -(-(total or 1000) // LINES_PER_RUN)), initial)


class Lines:
    """The part of tqdm's interface the loops use (iterate, update, set_postfix, write, close), as one line on
    stderr each `every` steps and one at the end: `2026-01-01 12:00:00 INFO eval: 20/200 (10%), 4.1 s, loss=0.3`."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, every: int, initial: int = 0):
        self.iterable, self.total, self.desc, self.every = iterable, total, desc, every
        self.count = self.shown = initial
        self.postfix: dict[str, object] = {}
        self.started = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count `n` steps; a line when a multiple of `every` was passed."""
        before, self.count = self.count, self.count + n
        if self.count // self.every > before // self.every:
            self._line()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        """Values shown at the end of the next line (the loss, the learning rate)."""
        self.postfix = values

    def write(self, text: str, file=None) -> None:
        print(text, file=file or sys.stderr, flush=True)

    def close(self) -> None:
        """The last line, unless the last step already printed one."""
        if self.count != self.shown:
            self._line()

    def _line(self) -> None:
        self.shown = self.count
        of = f"/{self.total} ({100 * self.count // self.total}%)" if self.total else ""
        extra = "".join(f", {key}={value}" for key, value in self.postfix.items())
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.write(f"{stamp} INFO {self.desc}: {self.count}{of}, {time.monotonic() - self.started:.1f} s{extra}")
