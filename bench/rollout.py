"""`python -m bench.rollout [--vms N] [--max-unavailable K] [--repeats R] [--json] [--report]`: a rolling update.

A running fleet of N VMs on libvirt's test driver (clones on the gpfs simulator over SSH) has its template's
memoryMiB changed; one reconcile_fleet pass rolls it in waves of at most maxUnavailable VMs, observing the store
and the host again after each wave. Against the floor: the same libvirt calls made directly through LibvirtHost on
an identical running fleet (shutdown, define, start per VM, as the engine orders them), in ceil(N/K) sequential
waves of K VMs at once. Side by side in one run, the two alternating which goes first, medians over the repeats.
Both are checked afterwards: every VM runs the new memory (dom.info()), and the fleet's status says so.

Prints a table, or with --json one JSON object on the last line; --report puts its section in docs/benchmarks.md
in place of the one there (as `python -m bench --report` writes it) without running the other benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt

import vmfleet.engine.fleet as engine_fleet
from vmfleet.api.types import VmFleet
from vmfleet.engine import Runtime, reconcile_fleet
from vmfleet.engine.fleet import desire
from vmfleet.hypervisor import LibvirtHost, domain_xml
from vmfleet.planner import Op
from vmfleet.sim.server import Simulator

from . import site
from .report import rollout_section

OLD_MIB, NEW_MIB = 64, 96
CONCURRENCY = 16  # the store's: above maxUnavailable, so a wave is never cut by it


def _fleet(n: int, name: str, budget: int) -> VmFleet:
    # spec.shutdown left at its default (60 s): the test driver powers a domain off at once on the ACPI button
    return site.fleet(n, name, updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": budget}})


async def _running(runtime: Runtime, server: Simulator, n: int, name: str, budget: int) -> tuple[VmFleet, dict]:
    """A fleet of n VMs, all running the old template (not timed)."""
    fleet = _fleet(n, name, budget)
    result = await reconcile_fleet(
        runtime, fleet, site.template(OLD_MIB), site.store(server, CONCURRENCY), [site.host()]
    )
    assert result.status["readyReplicas"] == n, result.status["conditions"]
    return fleet, result.status


def _check(fleet: VmFleet, n: int, status: dict) -> None:
    """Every VM runs the new memory, and the status says all n are updated and ready."""
    assert status["updatedReplicas"] == n and status["readyReplicas"] == n, status["conditions"]
    conn = libvirt.open("test:///default")
    try:
        for o in range(n):
            dom = conn.lookupByName(f"{fleet.meta.namespace}.{fleet.vm_name(o)}")
            assert dom.isActive() and dom.info()[1] == NEW_MIB * 1024, (o, dom.info())
    finally:
        conn.close()


class _Watch:
    """What the passes run meanwhile do: each wave as the number of VMs it stops (engine/fleet.py's execute), and
    the seconds spent observing the store and the host (FleetDrivers.observe, before the first wave and after each)."""

    def __init__(self) -> None:
        self.waves: list[int] = []
        self.observing = 0.0

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        execute, observe = engine_fleet.execute, engine_fleet.FleetDrivers.observe

        async def counted(plan: Any, *args: Any, **kwargs: Any) -> Any:
            self.waves.append(sum(1 for a in plan.actions if a.op == Op.STOP))
            return await execute(plan, *args, **kwargs)

        async def timed(drivers: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await observe(drivers)
            finally:
                self.observing += time.perf_counter() - t0

        engine_fleet.execute = counted  # type: ignore[assignment]
        engine_fleet.FleetDrivers.observe = timed  # type: ignore[method-assign]
        try:
            yield
        finally:
            engine_fleet.execute, engine_fleet.FleetDrivers.observe = execute, observe  # type: ignore[method-assign]


async def through_engine(runtime: Runtime, server: Simulator, n: int, name: str, budget: int) -> dict:
    fleet, status = await _running(runtime, server, n, name, budget)
    bigger, store = site.template(NEW_MIB), site.store(server, CONCURRENCY)
    passes, watch = 0, _Watch()
    with watch.on():
        t0 = time.perf_counter()
        while passes == 0 or (passes < 5 and status["updatedReplicas"] != n):  # one pass is what is expected
            status = (await reconcile_fleet(runtime, fleet, bigger, store, [site.host()], status)).status
            passes += 1
        seconds = time.perf_counter() - t0
    _check(fleet, n, status)
    return {
        "seconds": seconds,
        "observing": watch.observing,
        "passes": passes,
        "waves": len(watch.waves),
        "most_stopped_in_a_wave": max(watch.waves),
    }


async def floor(runtime: Runtime, server: Simulator, n: int, name: str, budget: int) -> float:
    """The same libvirt calls on the same kind of fleet, made directly: ceil(n/budget) sequential waves of `budget`
    VMs at once, from the highest ordinal as the engine goes; no observe, plan, record or status."""
    fleet, status = await _running(runtime, server, n, name, budget)
    bigger, store = site.template(NEW_MIB), site.store(server, CONCURRENCY)
    desired = desire(runtime, fleet, bigger, store, [site.host()])
    endpoint = LibvirtHost("t", "test:///default")

    async def one(o: int) -> None:
        clone = desired.clone(o, {})
        spec = desired.domain_spec(o, "t", clone)
        await endpoint.shutdown(spec.name, fleet.grace_seconds)
        await endpoint.define(domain_xml(spec, desired.owner(o, "t", clone, spec), desired.vm_uuid(o)))
        await endpoint.start(spec.name)

    order = list(reversed(range(n)))
    try:
        t0 = time.perf_counter()
        for w in range(0, n, budget):
            await asyncio.gather(*(one(o) for o in order[w : w + budget]))
        seconds = time.perf_counter() - t0
    finally:
        await endpoint.close()
    # The floor left what the engine would have: a pass after it has nothing to do and counts every VM updated.
    after = await reconcile_fleet(runtime, fleet, bigger, store, [site.host()], status)
    assert not after.plan.actions, after.plan.actions
    _check(fleet, n, after.status)
    return seconds


async def measure(directory: Path, n: int = 100, budget: int = 10, repeats: int = 7) -> dict:
    from vmfleet.images import make_template_image

    make_template_image(str(directory / "bench" / "images" / "t.img"), 64 << 20, 4 << 20)
    summary, runs = await site.side_by_side(
        directory,
        repeats,
        lambda server, runtime, r: through_engine(runtime, server, n, f"r{r}", budget),
        lambda server, runtime, r: floor(runtime, server, n, f"f{r}", budget),
    )
    return {
        **summary,
        "n": n,
        "max_unavailable": budget,
        "memory_mib": [OLD_MIB, NEW_MIB],
        "observing_seconds": round(statistics.median(x["observing"] for x in runs), 3),
        "passes": max(x["passes"] for x in runs),
        "waves": max(x["waves"] for x in runs),
        "floor_waves": -(-n // budget),
        "most_stopped_in_a_wave": max(x["most_stopped_in_a_wave"] for x in runs),
    }


def main() -> None:
    site.waves_main("python -m bench.rollout", measure, rollout_section, 7)


if __name__ == "__main__":
    main()
