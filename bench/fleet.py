"""Provisioning a fleet through the engine against the floor, and refreshing its status."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

from vmfleet.api.types import to_manifest
from vmfleet.engine import reconcile_fleet
from vmfleet.engine.fleet import desire
from vmfleet.hypervisor import LibvirtHost, domain_xml
from vmfleet.sim.server import Simulator

from . import site


async def through_engine(runtime, server: Simulator, n: int, name: str, concurrency: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    result = await reconcile_fleet(
        runtime, site.fleet(n, name), site.template(), site.store(server, concurrency), [site.host()]
    )
    elapsed = time.perf_counter() - t0
    assert result.status["readyReplicas"] == n, result.status["conditions"]
    return elapsed, result.status


async def floor(runtime, server: Simulator, n: int, name: str, concurrency: int) -> float:
    """The same store and libvirt calls, in a bare loop at the same concurrency: no observe, plan or status."""
    store = site.store(server, concurrency)
    desired = desire(runtime, site.fleet(n, name), site.template(), store, [site.host()])
    driver = runtime.store_driver(store)
    endpoint = LibvirtHost("t", "test:///default")
    limit = asyncio.Semaphore(concurrency)
    await driver.prepare_parent("images/t.img", "raw", desired.parent)

    async def one(o: int) -> None:
        async with limit:
            clone = desired.clone(o, {})
            await driver.create_clone(desired.parent, "raw", clone)
            spec = desired.domain_spec(o, "t", clone)
            await endpoint.define(domain_xml(spec, desired.owner(o, "t", clone, spec), desired.vm_uuid(o)))
            await endpoint.start(spec.name)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(o) for o in range(n)))
        return time.perf_counter() - t0
    finally:
        await endpoint.close()


async def refresh(runtime, server: Simulator, n: int, name: str, status: dict, concurrency: int) -> dict:
    before = len(server.commands)
    t0 = time.perf_counter()
    result = await reconcile_fleet(
        runtime, site.fleet(n, name), site.template(), site.store(server, concurrency), [site.host()], status
    )
    seconds = time.perf_counter() - t0
    assert not result.plan.actions and result.status["readyReplicas"] == n
    return {"clones": n, "seconds": round(seconds, 4), "ssh_commands": len(server.commands) - before}


def object_bytes(n: int, name: str, status: dict) -> int:
    """The VmFleet object as the apiserver stores it (JSON), with this status."""
    f = site.fleet(n, name)
    obj = to_manifest("VmFleet", f.meta, {"templateRef": {"name": "t"}, "replicas": n}, status)
    obj["metadata"].update(
        uid=f.meta.uid,
        resourceVersion="123456",
        generation=1,
        creationTimestamp="2026-11-29T00:00:00Z",
        finalizers=["vmfleet.io/finalizer"],
    )
    return len(json.dumps(obj, separators=(",", ":")))


async def status_size(directory, n: int, concurrency: int = 16) -> int:
    async with site.simulator(directory) as (server, runtime):
        _, status = await through_engine(runtime, server, n, f"s{n}", concurrency)
        return object_bytes(n, f"s{n}", status)


async def measure(directory, sizes: list[int], repeats: int, concurrency: int = 16) -> dict:
    from vmfleet.images import make_template_image

    make_template_image(str(directory / "bench" / "images" / "t.img"), 64 << 20, 4 << 20)
    rows, refreshes, status_bytes = [], [], {}
    for n in sizes:
        engine_s, floor_s = [], []
        for r in range(repeats):
            # Side by side, alternating, each with a fresh simulator connection and a fresh test driver.
            async with site.simulator(directory) as (server, runtime):
                seconds, status = await through_engine(runtime, server, n, f"e{n}-{r}", concurrency)
                engine_s.append(seconds)
                if r == 0:
                    refreshes.append(await refresh(runtime, server, n, f"e{n}-{r}", status, concurrency))
                    status_bytes[str(n)] = object_bytes(n, f"e{n}-{r}", status)
            async with site.simulator(directory) as (server, runtime):
                floor_s.append(await floor(runtime, server, n, f"f{n}-{r}", concurrency))
        e, f = statistics.median(engine_s), statistics.median(floor_s)
        rows.append(
            {
                "n": n,
                "seconds": round(e, 3),
                "floor_seconds": round(f, 3),
                "overhead_ratio": round(e / f, 3),
                "per_vm_ms": round(1000 * e / n, 3),
                "floor_per_vm_ms": round(1000 * f / n, 3),
            }
        )
    return {"rows": rows, "refresh": refreshes, "status_bytes": status_bytes}
