"""`python -m bench.drain [--vms N] [--max-unavailable K] [--repeats R] [--json] [--report]`: a host drained.

A running fleet of N VMs on one KvmHost (a private instance of libvirt's test driver; clones on the gpfs simulator
over SSH) has the host annotated vmfleet.io/drain=true with a second, empty host beside it. reconcile_fleet passes
run back to back until no domain of the fleet is left on the drained host. The test driver has no migration, so
every VM moves cold, as Op.MIGRATE falls back when libvirt refuses: shutdown here, define there, undefine here,
start there. Against the floor: the same four libvirt calls made directly through the same LibvirtHost endpoints on
an identical fleet, in ceil(N/K) sequential waves of K VMs at once. Side by side in one run, the two alternating
which goes first, medians over the repeats. Both are checked afterwards: every domain runs on the second host with
the UUID it had, none is left on the first, and a pass has nothing left to do.

Prints a table, or with --json one JSON object on the last line; --report puts its section in docs/benchmarks.md
in place of the one there without running the other benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import vmfleet.engine.fleet as engine_fleet
from vmfleet.api.types import DRAIN_ANNOTATION, KvmHost, VmFleet, parse_as
from vmfleet.engine import Runtime, reconcile_fleet
from vmfleet.engine.fleet import desire
from vmfleet.hypervisor import domain_xml
from vmfleet.planner import Op
from vmfleet.sim.objects import API_VERSION
from vmfleet.sim.server import Simulator

from . import site
from .report import drain_section

CONCURRENCY = 16  # the store's: above maxUnavailable, so a wave is never cut by it
NODE_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>64</cores><threads>1</threads><active>64</active>
       <mhz>2000</mhz><model>vmfleet</model></cpu>
  <memory>1073741824</memory>
</node>
"""


def _host(directory: Path, name: str, drain: bool) -> KvmHost:
    """A KvmHost on a test-driver instance of its own. `test:///<file>` opens a private one per connection, and
    LibvirtHost keeps its connection for the run; the API admits only test:///default, so the URI is put in after."""
    node = directory / f"{name}.xml"
    node.write_text(NODE_XML)
    meta: dict[str, Any] = {"name": name}
    if drain:
        meta["annotations"] = {DRAIN_ANNOTATION: "true"}
    spec = {"uri": "test:///default", "domainType": "qemu", "capacity": {"vcpus": 1 << 16, "memoryMiB": 1 << 30}}
    host = parse_as(KvmHost, {"apiVersion": API_VERSION, "kind": "KvmHost", "metadata": meta, "spec": spec})
    return dataclasses.replace(host, uri=f"test://{node}")


def _fleet(n: int, name: str, budget: int) -> VmFleet:
    # spec.shutdown left at its default (60 s): the test driver powers a domain off at once on the ACPI button
    return site.fleet(n, name, updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": budget}})


async def _on_a(runtime: Runtime, server: Simulator, directory: Path, n: int, name: str, budget: int) -> tuple:
    """A fleet of n VMs running on host a, b empty beside it (not timed); then a is drained."""
    fleet, store = _fleet(n, name, budget), site.store(server, CONCURRENCY)
    a, b = _host(directory, f"{name}-a", False), _host(directory, f"{name}-b", False)
    result = await reconcile_fleet(runtime, fleet, site.template(), store, [a])
    assert result.status["readyReplicas"] == n, result.status["conditions"]
    uuids = {d.name: d.uuid for d in await runtime.host(a).list_domains()}
    return fleet, store, [_host(directory, f"{name}-a", True), b], result.status, uuids


async def _check(runtime: Runtime, hosts: list[KvmHost], n: int, uuids: dict[str, str]) -> None:
    """Every VM runs on b with the UUID it had on a; a holds none."""
    left = await runtime.host(hosts[0]).list_domains()
    moved = {d.name: d for d in await runtime.host(hosts[1]).list_domains()}
    assert not left, [d.name for d in left]
    assert len(moved) == n and all(moved[name].active and moved[name].uuid == u for name, u in uuids.items())


class _Waves:
    """How many VMs each wave of the passes run meanwhile moves (FleetDrivers.run, once per wave)."""

    def __init__(self) -> None:
        self.moved: list[int] = []

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        run = engine_fleet.FleetDrivers.run

        async def counted(drivers: Any, snap: Any, wave: Any, *args: Any) -> Any:
            self.moved.append(sum(1 for a in wave.actions if a.op is Op.MIGRATE))
            return await run(drivers, snap, wave, *args)

        engine_fleet.FleetDrivers.run = counted  # type: ignore[method-assign]
        try:
            yield
        finally:
            engine_fleet.FleetDrivers.run = run  # type: ignore[method-assign]


async def through_engine(runtime: Runtime, server: Simulator, directory: Path, n: int, name: str, budget: int) -> dict:
    fleet, store, hosts, status, uuids = await _on_a(runtime, server, directory, n, name, budget)
    passes, waves, sent = 0, _Waves(), len(server.commands)
    with waves.on():
        t0 = time.perf_counter()
        while passes < 4 * n // budget + 4:
            result = await reconcile_fleet(runtime, fleet, site.template(), store, hosts, status)
            status, passes = {**status, **result.status}, passes + 1
            if not await runtime.host(hosts[0]).list_domains():
                break
        seconds = time.perf_counter() - t0
    await _check(runtime, hosts, n, uuids)
    assert status["readyReplicas"] == n, status["conditions"]
    moving = [m for m in waves.moved if m]
    return {
        "seconds": seconds,
        "passes": passes,
        "waves": len(moving),
        "most_moved_at_once": max(moving),
        "ssh_commands": len(server.commands) - sent,
    }


async def floor(runtime: Runtime, server: Simulator, directory: Path, n: int, name: str, budget: int) -> float:
    """The cold move's libvirt calls on the same kind of fleet, made directly: ceil(n/budget) sequential waves of
    `budget` VMs at once; no observe, plan, record or status."""
    fleet, store, hosts, status, uuids = await _on_a(runtime, server, directory, n, name, budget)
    desired = desire(runtime, fleet, site.template(), store, hosts)
    source, target = runtime.host(hosts[0]), runtime.host(hosts[1])
    to = hosts[1].meta.name

    async def one(o: int) -> None:
        clone = desired.clone(o, {})
        spec = desired.domain_spec(o, to, clone)
        await source.shutdown(spec.name, fleet.grace_seconds)
        await target.define(domain_xml(spec, desired.owner(o, to, clone, spec), desired.vm_uuid(o)))
        await source.undefine(spec.name)
        await target.start(spec.name)

    t0 = time.perf_counter()
    for w in range(0, n, budget):
        await asyncio.gather(*(one(o) for o in range(w, min(n, w + budget))))
    seconds = time.perf_counter() - t0
    await _check(runtime, hosts, n, uuids)
    # The floor left what the engine would have: a pass after it has nothing to do and counts every VM ready.
    after = await reconcile_fleet(runtime, fleet, site.template(), store, hosts, status)
    assert not after.plan.actions and after.status["readyReplicas"] == n, after.plan.actions
    return seconds


async def measure(directory: Path, n: int = 100, budget: int = 10, repeats: int = 5) -> dict:
    from vmfleet.images import make_template_image

    make_template_image(str(directory / "bench" / "images" / "t.img"), 64 << 20, 4 << 20)
    summary, runs = await site.side_by_side(
        directory,
        repeats,
        lambda server, runtime, r: through_engine(runtime, server, directory, n, f"d{r}", budget),
        lambda server, runtime, r: floor(runtime, server, directory, n, f"f{r}", budget),
    )
    return {
        **summary,
        "n": n,
        "max_unavailable": budget,
        "passes": max(x["passes"] for x in runs),
        "waves": max(x["waves"] for x in runs),
        "most_moved_at_once": max(x["most_moved_at_once"] for x in runs),
        "floor_waves": -(-n // budget),
        "ssh_commands": max(x["ssh_commands"] for x in runs),
    }


def main() -> None:
    site.waves_main("python -m bench.drain", measure, drain_section, 5)


if __name__ == "__main__":
    main()
