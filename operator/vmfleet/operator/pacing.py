"""Resync passes started at a bounded rate, all objects together.

Each object is reconciled again every VMFLEET_RESYNC_SECONDS, changed or not. With thousands of fleets that is a
pass every few milliseconds, and an idle operator would burn a core on passes that find nothing to do. The Pacer
lets at most VMFLEET_RESYNC_RATE resync passes start per second: with more objects than resync_seconds x rate, each
is resynced less often, and the idle operator's CPU stays bounded whatever their number. A change (a watch event, a
rolling update's next wave) is never paced: only the timers' resyncs wait here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class Pacer:
    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate, self._clock, self._sleep = rate, clock, sleep
        self._next = 0.0  # when the next turn may start

    async def turn(self) -> None:
        """Wait for this pass's turn: 1/rate after the turn before it; at once without a rate."""
        if self.rate <= 0:
            return
        now = self._clock()
        at = max(now, self._next)
        self._next = at + 1 / self.rate
        if at > now:
            await self._sleep(at - now)
