"""Resyncs paced (operator/pacing.py): an idle operator's CPU bounded whatever the number of objects."""

from __future__ import annotations

import asyncio

from vmfleet.operator.pacing import Pacer
from vmfleet.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_resyncs_due_together_start_one_rate_apart() -> None:
    clock = Clock()
    pacer = Pacer(4.0, clock, clock.sleep)
    started = []

    async def resync() -> None:
        await pacer.turn()
        started.append(clock.now - 100)

    async def due_together() -> None:
        for _ in range(5):  # one after another on this clock: each awaits its turn
            await resync()

    asyncio.run(due_together())
    assert started == [0.0, 0.25, 0.5, 0.75, 1.0]
    clock.now += 10  # an idle spell: the next one goes at once, with no burst saved up
    asyncio.run(due_together())
    assert started[5:] == [11.0, 11.25, 11.5, 11.75, 12.0]


def test_without_a_rate_nothing_waits() -> None:
    clock = Clock()
    pacer = Pacer(0.0, clock, clock.sleep)
    for _ in range(3):
        asyncio.run(pacer.turn())
    assert clock.now == 100.0


def test_the_rate_is_a_setting() -> None:
    assert Settings().resync_rate == 5.0
    assert Settings.from_env({"VMFLEET_RESYNC_RATE": "2.5"}).resync_rate == 2.5


def test_the_resync_timers_wait_their_turn_and_the_rolling_one_does_not() -> None:
    """Each resync timer asks the Pacer before its handler runs; the rolling update's next wave is never held back."""
    import kopf

    from vmfleet.operator import handlers

    class Turned(Exception):
        pass

    class Refusing:
        async def turn(self) -> None:
            raise Turned

    memo = kopf.Memo(pacer=Refusing())
    timers = {h.id: h.fn for h in handlers.registry(Settings())._spawning.get_all_handlers()}
    for name in ("reconcile_vmfleet", "reconcile_vmtemplate", "probe_clonestore", "probe_kvmhost"):
        try:
            asyncio.run(timers[name](memo=memo, body=kopf.Body({})))
        except Turned:
            continue
        raise AssertionError(f"{name}: its resync did not wait for the Pacer")
    rolling = timers["reconcile_vmfleet/rolling"]
    assert rolling is handlers.reconcile_vmfleet
