"""An event loop whose clock moves only when nothing else can: no callback ready, no thread of its executor or of
the stores it is told of busy, nothing a test holds that it would let go (`on_idle`). Then it jumps to the next
timer.

A timeout in a test (a hung store call given up) then fires once everything else the code could do is done, on
a fast machine or a loaded one alike, and a test that replays a sequence (hypothesis) sees the same world each
time. Real time plays no part: a call that runs long on a loaded machine is waited for.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from typing import Any


class SteppedLoop(asyncio.SelectorEventLoop):
    def __init__(self, busy: Callable[[], int], on_idle: Callable[[], bool] = lambda: False) -> None:
        """`busy()`: how many calls are running or queued in threads this loop does not start itself. `on_idle()`:
        called when nothing else can happen, before the clock moves; whether it let something go on."""
        self._now = 0.0
        self._busy, self._on_idle = busy, on_idle
        self._in_executor = 0
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self._now

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        future = super().run_in_executor(executor, func, *args)
        self._in_executor += 1
        # Counted off once the result reached this loop (a callback of its own), not when the thread ends: in
        # between, the loop would look idle.
        future.add_done_callback(self._executor_done)
        return future

    def _executor_done(self, _: asyncio.Future[Any]) -> None:
        self._in_executor -= 1

    def nudge(self) -> None:
        """From any thread: look again whether the loop is idle (a thread stopped counting as busy without sending
        it anything)."""
        self.call_soon_threadsafe(lambda: None)

    def idle(self) -> bool:
        return self._in_executor == 0 and self._busy() == 0

    def advance(self) -> None:
        """To the next timer, unless `on_idle` lets something go on: nothing else can happen before it."""
        if self._on_idle():
            return
        due = [h.when() for h in self._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        if not due:
            raise RuntimeError("nothing runs and nothing is due: the code waits for what never comes")
        self._now = max(self._now, min(due))


class _Selector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, loop: SteppedLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # A thread's result arrives through the loop's self-pipe; while a call runs, wait for it as ever. A thread
        # posts its result before it counts itself off, so idle here means no result is on its way.
        if timeout != 0 and self._loop.idle():
            events: list[tuple[selectors.SelectorKey, int]] = super().select(0)
            if not events:
                self._loop.advance()
            return events
        return super().select(timeout)  # type: ignore[no-any-return]
