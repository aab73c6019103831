"""`python -m bench.many [--fleets N] [--vms K] [--json] [--report]`: N fleets of K VMs on one store, through
Kubernetes.

The real kube-apiserver and `vmfleet run` as deploy/'s ServiceAccount (resync 30 s), one CloneStore (reflink on XFS
as root, else qcow2), one KvmHost on libvirt's test driver. All N fleets applied at once; the time until every one
is Ready; then the operator's CPU over a resync round with nothing to do, after the first round (from /proc: user +
system time). The
reference, in the same run: one K-VM fleet's work standalone (reconcile_fleet in process, the same driver), the
median of 10 fleets made one after another, times N.

Prints a table, or with --json one JSON object on the last line; --report puts its section in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from vmfleet.settings import Settings

from . import site
from .kube import _reflinks, manifests, operator_on_cluster, peak_rss_mib
from .report import many_section, run_alone

RESYNC_SECONDS = 30
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _cores(pid: int, seconds: float) -> float:
    """The process's user and system CPU over the next `seconds`, in cores."""
    cpu0, w0 = _cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (_cpu_seconds(pid) - cpu0) / (time.perf_counter() - w0)


async def _one_fleet_work(root: Path, driver: str, vms: int, samples: int = 10) -> float:
    """The median seconds of one fleet's first pass, standalone: what each of the N fleets asks of the engine."""
    from vmfleet.api import parse
    from vmfleet.api.types import CloneStore, KvmHost, VmFleet, VmTemplate
    from vmfleet.engine import Runtime, reconcile_fleet

    docs = [parse(d) for d in manifests(root, driver, vms, "ref")]
    store = next(o for o in docs if isinstance(o, CloneStore))
    host = next(o for o in docs if isinstance(o, KvmHost))
    template = next(o for o in docs if isinstance(o, VmTemplate))
    fleet = next(o for o in docs if isinstance(o, VmFleet))
    runtime = Runtime(lambda ref: {})
    seconds = []
    try:
        for i in range(samples):
            f = _renamed(fleet, f"r{i}")
            t0 = time.perf_counter()
            result = await reconcile_fleet(runtime, f, template, store, [host])
            seconds.append(time.perf_counter() - t0)
            assert result.status["readyReplicas"] == vms, result.status["conditions"]
    finally:
        await runtime.close()
    return statistics.median(seconds[1:])  # the first prepares the parent


def _renamed(fleet: Any, name: str) -> Any:
    import dataclasses
    import uuid

    meta = dataclasses.replace(fleet.meta, name=name, uid=str(uuid.uuid4()))
    return dataclasses.replace(fleet, meta=meta)


def _ready(cluster: Any) -> int:
    listed = json.loads(cluster.kubectl("get", "vmfleets", "-n", "bench", "-o", "json", timeout=120).stdout)
    return sum(
        1
        for f in listed["items"]
        if any(c["type"] == "Ready" and c["status"] == "True" for c in f.get("status", {}).get("conditions", []))
    )


def measure(directory: Path, fleets: int, vms: int, budget_seconds: float = 3600) -> dict[str, Any]:
    from vmfleet.images import make_template_image

    root = directory / "many"
    make_template_image(str(root / "images" / "t.img"), 64 << 20, 4 << 20)
    driver = "reflink" if _reflinks(root) else "qcow2"
    load = os.getloadavg()[0]
    reference = directory / "many-ref"  # a store of its own: the operator's never sees these fleets
    make_template_image(str(reference / "images" / "t.img"), 64 << 20, 4 << 20)
    per_fleet = asyncio.run(_one_fleet_work(reference, driver, vms))
    with operator_on_cluster(RESYNC_SECONDS) as (cluster, operator):
        assert operator.proc is not None
        cluster.kubectl("create", "namespace", "bench")
        shared = manifests(root, driver, vms, "bench")[:3]  # the store, the host, the template
        fleet = manifests(root, driver, vms, "bench")[3]
        docs = [*shared, *({**fleet, "metadata": {**fleet["metadata"], "name": f"f{i}"}} for i in range(fleets))]
        t0 = time.perf_counter()
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs), timeout=600)
        ready = 0
        while ready < fleets and time.perf_counter() - t0 < budget_seconds:
            time.sleep(2)
            ready = _ready(cluster)
        seconds = time.perf_counter() - t0
        assert ready == fleets, f"{ready} of {fleets} fleets Ready after {seconds:.0f} s"
        # A resync round: every fleet once, at most resync_rate passes a second (operator/pacing.py). The first
        # after Ready writes each fleet's first space figures and meets each object as kopf last annotated it;
        # the next ones are what an idle operator costs for good.
        round_seconds = max(RESYNC_SECONDS, fleets / Settings().resync_rate)
        first = _cores(operator.proc.pid, round_seconds + 5)
        idle = _cores(operator.proc.pid, round_seconds)
        rss = peak_rss_mib(operator.proc.pid)
    return {
        "fleets": fleets,
        "vms_per_fleet": vms,
        "driver": driver,
        "ready_seconds": round(seconds, 1),
        "one_fleet_work_seconds": round(per_fleet, 4),
        "reference_seconds": round(per_fleet * fleets, 1),
        "over_reference": round(seconds / (per_fleet * fleets), 3),
        "first_round_cores": round(first, 3),
        "idle_cores": round(idle, 3),
        "round_seconds": round(round_seconds, 1),
        "operator_peak_rss_mib": round(rss, 1),
        "resync_seconds": RESYNC_SECONDS,
        "load_before": round(load, 2),
        "cpus": os.cpu_count(),
        "date": dt.date.today().isoformat(),
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    with site.scratch() as (directory, _fs):
        return await asyncio.to_thread(measure, directory, args.fleets, args.vms)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.many")
    p.add_argument("--fleets", type=int, default=1000)
    p.add_argument("--vms", type=int, default=10)
    run_alone(p, _run, many_section)


if __name__ == "__main__":
    main()
