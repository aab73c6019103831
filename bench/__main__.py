"""Fleet provisioning through the engine against the floor: the same driver calls in a bare loop.

Both run here, now, on a qcow2 store in a temporary directory and libvirt's test driver, so their
ratio holds on a noisy machine even when the seconds do not. Prints a table, or one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time

from vmfleet.api import parse
from vmfleet.engine import Runtime, reconcile_fleet
from vmfleet.hypervisor import LibvirtHost, domain_xml
from vmfleet.images import make_template_image


def objects(root: str, n: int, name: str):
    store = parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "CloneStore", "metadata": {"name": "b"},
                   "spec": {"driver": "qcow2", "root": root, "concurrency": 8}})
    host = parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "KvmHost", "metadata": {"name": "t"},
                  "spec": {"uri": "test:///default", "domainType": "qemu",
                           "capacity": {"vcpus": 65536, "memoryMiB": 1 << 30}}})
    template = parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "VmTemplate", "metadata": {"name": "t"},
                      "spec": {"storeRef": {"name": "b"}, "image": {"path": "images/t.img"}, "memoryMiB": 64}})
    fleet = parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "VmFleet",
                   "metadata": {"name": name, "namespace": "bench"},
                   "spec": {"templateRef": {"name": "t"}, "replicas": n}})
    return store, host, template, fleet


async def through_engine(root: str, n: int, name: str) -> float:
    store, host, template, fleet = objects(root, n, name)
    runtime = Runtime()
    try:
        t0 = time.perf_counter()
        result = await reconcile_fleet(runtime, fleet, template, store, [host])
        elapsed = time.perf_counter() - t0
        assert result.status["readyReplicas"] == n, result.status["conditions"]
        return elapsed
    finally:
        await runtime.close()


async def floor(root: str, n: int, name: str) -> float:
    """The same clone/define/start calls with no observation, planning or status."""
    from vmfleet.engine.fleet import FleetScope

    store, host, template, fleet = objects(root, n, name)
    runtime = Runtime()
    scope = FleetScope(runtime, fleet, template, store, [host])
    endpoint = LibvirtHost("t", "test:///default")
    limit = asyncio.Semaphore(store.concurrency)
    await scope.driver.prepare_parent(template.image_path, template.image_format, scope.parent)

    async def one(o: int) -> None:
        async with limit:
            await scope.driver.create_clone(scope.parent, template.image_format, scope.clone(o))
            spec = scope.domain_spec(o, "t")
            await endpoint.define(domain_xml(spec, scope.owner(o, "t", spec)))
            await endpoint.start(spec.name)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(o) for o in range(n)))
        return time.perf_counter() - t0
    finally:
        await endpoint.close()
        await runtime.close()


async def measure(sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for n in sizes:
        engine_s, floor_s = [], []
        for r in range(repeats):
            with tempfile.TemporaryDirectory() as root:
                make_template_image(f"{root}/images/t.img", 64 << 20, 4 << 20)
                engine_s.append(await through_engine(root, n, f"e{r}"))
                floor_s.append(await floor(root, n, f"f{r}"))
        e, f = statistics.median(engine_s), statistics.median(floor_s)
        rows.append({"n": n, "seconds": round(e, 4), "floor_seconds": round(f, 4),
                     "overhead_ratio": round(e / f, 3), "per_vm_ms": round(1000 * e / n, 3)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--quick", action="store_true", help="small N, one repeat")
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = p.parse_args()
    sizes, repeats = ([10, 50], 1) if args.quick else ([10, 100, 1000], 3)
    rows = asyncio.run(measure(sizes, repeats))
    report = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": __import__("os").cpu_count()},
              "fleet": rows[-1], "fleet_sizes": rows}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{'N':>6} {'engine s':>10} {'floor s':>10} {'ratio':>7} {'ms/VM':>8}")
    for r in rows:
        print(f"{r['n']:>6} {r['seconds']:>10} {r['floor_seconds']:>10} {r['overhead_ratio']:>7} {r['per_vm_ms']:>8}")


if __name__ == "__main__":
    main()
