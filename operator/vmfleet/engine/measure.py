"""Space use of every fleet of one store, measured together: a resync costs the store one batched measurement
(one `stat` over SSH for a GPFS store), not one per fleet.

Each fleet asks for its own files only, as found by its own observation in this pass, and gets figures for those
only: never a file of another fleet, never a file its observation did not find. A figure is served from the last
batch while it is younger than a resync; the first fleet to find its figures older measures the files of every
fleet in one batch, and the passes of the other fleets in that resync use it. A pass that is about to act
forgets its files first: what it makes, replaces or writes is measured again, on its own (also when the pass
stops half way and the next one finds it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from ..storage import Space, StoreDriver

# A file no fleet has asked about for this many resyncs belongs to a fleet deleted or moved: no longer measured.
FORGET_AFTER = 3


class StoreMeasurer:
    def __init__(self, driver: StoreDriver, resync_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.driver, self.resync, self.clock = driver, resync_seconds, clock
        self._asked: dict[str, float] = {}  # path -> when a fleet last asked for it
        self._found: dict[str, tuple[float, Space]] = {}  # path -> when it was measured, and its figures
        self._lock = asyncio.Lock()  # one measurement at a time: the fleets behind it wait and share it

    async def measure(self, paths: Sequence[str]) -> dict[str, Space]:
        """The figures of those of `paths` that exist, less than a resync old."""
        asked = self.clock()
        for p in paths:
            self._asked[p] = asked
        async with self._lock:
            t = self.clock()
            unknown = [p for p in paths if p not in self._found]
            expired = any(t - self._found[p][0] >= self.resync for p in paths if p in self._found)
            if expired:
                self._forget(t)
                batch = sorted(set(self._asked) | set(unknown))
            else:
                batch = unknown
            if batch:
                got = await self.driver.measure(batch)
                for p in batch:
                    if p in got:
                        self._found[p] = (t, got[p])
                    else:  # gone: nobody is told its old figures
                        self._found.pop(p, None)
            return {p: self._found[p][1] for p in paths if p in self._found}

    async def forget(self, paths: Sequence[str]) -> None:
        """These files are about to change. After a batch in flight: it may have read them as they were."""
        async with self._lock:
            for p in paths:
                self._found.pop(p, None)

    def _forget(self, t: float) -> None:
        for p in [p for p, when in self._asked.items() if t - when > FORGET_AFTER * self.resync]:
            del self._asked[p]
            self._found.pop(p, None)
