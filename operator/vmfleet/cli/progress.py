"""Progress of a long apply on stderr: rewritten in place on a terminal, one line per tenth in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..engine.execute import Outcome
from ..planner import ParentAction


class ProgressReport:
    """'web: 40/120 actions (33%) · last: create-clone web-39' for a plan of at least `at_least` actions."""

    def __init__(self, fleet: str, stream: TextIO = sys.stderr, at_least: int = 10, interval: float = 0.1):
        self.fleet, self.stream, self.at_least, self.interval = fleet, stream, at_least, interval
        self.tty = stream.isatty()
        self.failed = 0
        self._tenth = 0
        self._shown = 0.0

    def __call__(self, outcome: Outcome, ended: int, total: int) -> None:
        self.failed += not outcome.ok
        if total < self.at_least:
            return
        last = ended == total
        if self.tty:
            if not last and time.monotonic() - self._shown < self.interval:
                return
            self._shown = time.monotonic()
            self.stream.write("\r\033[K" + self._line(outcome, ended, total) + ("\n" if last else ""))
        else:
            tenth = ended * 10 // total
            if tenth == self._tenth:
                return
            self._tenth = tenth
            self.stream.write(self._line(outcome, ended, total) + "\n")
        self.stream.flush()

    def _line(self, outcome: Outcome, ended: int, total: int) -> str:
        a = outcome.action
        who = "the parent" if isinstance(a, ParentAction) else f"{self.fleet}-{a.ordinal}"
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.fleet}: {ended}/{total} actions ({ended * 100 // total}%){failed} · last: {a.op.value} {who}"
