"""Thread pools for calls that may never return: a file system call on a hung mount, a libvirt call to a daemon
that accepts and never answers. Such a call holds its thread for good, so each store and each host has a pool of
its own (a hung one never takes the threads the others use), its threads are daemons (a stuck one holds up
neither `close` nor the process's exit), and every call is waited for at most its timeout.

A call given up on before it started never runs. One given up on after it started goes on in its thread: its
pool's Guard decides what that means for the calls after it (a store refuses them until it returns).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
IDLE_SECONDS = 30.0  # an idle thread ends: a pool nobody closes leaves none behind
_Job = tuple[concurrent.futures.Future[Any], Callable[[], Any], str]  # (its future, the work, what it is)


class Guard(Protocol):
    def refusal(self, what: str) -> Exception | None:
        """Why `what` may not run now (calls given up on are still running), or None."""

    def add(self, job: concurrent.futures.Future[Any], what: str, why: str) -> None:
        """`job` was given up on after it started (`why`: it did not answer in time, or its caller stopped
        waiting): it is running still."""


class Unguarded:
    """Calls given up on hold up nothing: a late one is as a person acting meanwhile (libvirt hosts)."""

    def refusal(self, what: str) -> Exception | None:
        return None

    def add(self, job: concurrent.futures.Future[Any], what: str, why: str) -> None:
        pass


class CallPool:
    """At most `size` daemon threads, started as calls come and ended after a while idle. `timed_out(what,
    seconds)` and `closed(what)` make the errors a caller is given: the pool's owner's (a StoreTimeout, a
    HostError)."""

    def __init__(
        self,
        name: str,
        size: int,
        timed_out: Callable[[str, float], Exception],
        closed: Callable[[str], Exception],
        guard: Guard | None = None,
    ) -> None:
        self._name, self._size = name, size
        self._timed_out, self._closed_error = timed_out, closed
        self._guard: Guard = guard if guard is not None else Unguarded()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._changed = threading.Condition()
        self._threads = self._busy = 0
        self._closed = False

    async def run(self, work: Callable[[], T], timeout: float, what: str) -> T:  # noqa: ASYNC109 - a thread pool
        """`work()` in one of the threads; the timed_out error naming `what` unless it is done within `timeout`
        seconds of now (0: no limit), queueing included."""
        job: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._changed:
            if self._closed:
                raise self._closed_error(what)
            refused = self._guard.refusal(what)
            if refused is not None:
                raise refused
            while self._jobs and self._jobs[0][0].cancelled():
                self._jobs.popleft()  # given up on while stuck threads held the pool
            self._jobs.append((job, work, what))
            if len(self._jobs) > self._threads - self._busy and self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._serve, name=f"{self._name} {self._threads}", daemon=True).start()
            self._changed.notify()
        waiting = asyncio.wrap_future(job)
        asked = time.monotonic()
        try:
            done, _ = await asyncio.wait({waiting}, timeout=timeout or None)
        except BaseException:  # the caller itself was cancelled
            self._give_up(job, waiting, what, f"its caller stopped waiting after {time.monotonic() - asked:.1f} s")
            raise
        if not done:
            error = self._timed_out(what, timeout)
            self._give_up(job, waiting, what, f"it did not answer within {timeout:g} s")
            raise error
        if waiting.cancelled():
            raise self._closed_error(what)  # while the call queued
        return waiting.result()

    def _give_up(self, job: concurrent.futures.Future[Any], waiting: asyncio.Future[Any], what: str, why: str) -> None:
        # `job` now, in this thread: through `waiting` alone the cancellation would reach it at the loop's next
        # turn, when a thread may have taken it already. `waiting` too: its late outcome is nobody's.
        if not job.cancel() and not job.done():
            self._guard.add(job, what, why)
        waiting.cancel()

    def _serve(self) -> None:
        with self._changed:
            while True:
                if not self._jobs:
                    if self._closed or (not self._changed.wait(IDLE_SECONDS) and not self._jobs):
                        self._threads -= 1  # closed, or idle for a while
                        return
                    continue
                job, work, what = self._jobs.popleft()
                if not job.set_running_or_notify_cancel():
                    continue  # its caller gave up while it queued
                refused = self._guard.refusal(what)
                if refused is not None:  # queued before an earlier call was given up on: not run beside it
                    job.set_exception(refused)
                    continue
                self._busy += 1
                self._changed.release()
                try:
                    job.set_result(work())
                except BaseException as e:
                    job.set_exception(e)
                finally:
                    # Not kept while idle: an error's traceback holds the call's frames, and a libvirt
                    # connection in them stays open (concurrent.futures' workers drop theirs too).
                    del job, work
                    self._changed.acquire()
                    self._busy -= 1

    def in_flight(self) -> int:
        """The calls running or queued, a thread stuck in a call included."""
        with self._changed:
            return self._busy + sum(1 for job, _, _ in self._jobs if not job.cancelled())

    def close(self) -> None:
        """Queued calls are cancelled; a thread stuck in a call is not waited for: it ends once the call returns."""
        with self._changed:
            self._closed = True
            for job, _, _ in self._jobs:
                job.cancel()
            self._jobs.clear()
            self._changed.notify_all()
