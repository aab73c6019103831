"""`python -m bench.many [--fleets N] [--vms K] [--json] [--report]`: N fleets of K VMs on one store, through
Kubernetes.

The real kube-apiserver and `vmfleet run` as deploy/'s ServiceAccount (resync 30 s), one CloneStore (reflink on XFS
as root, else qcow2), one KvmHost on libvirt's test driver. One fleet, then N/10, then all N fleets applied at once,
each batch in a namespace of its own; the time until every one of a batch is Ready (seen through a watch), the CPU
the operator and the apiserver took meanwhile and the writes the apiserver served; then the operator's CPU over a
resync round with nothing to do, after the first round (from /proc: user + system time). Two references, in the
same run: one K-VM fleet's work standalone (reconcile_fleet in process, the same driver), the median of 10 fleets
made one after another, times N; and the seconds each fleet adds in the N/10 batch (is the time linear?).

Prints a table, or with --json one JSON object on the last line; --report puts its section in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import statistics
import subprocess
import threading
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


async def _one_fleet_work(root: Path, driver: str, vms: int, samples: int = 10) -> tuple[float, float]:
    """The median seconds of one fleet's first pass standalone, and of the CPU it took in this process (the test
    driver's included): what each of the N fleets asks of the engine."""
    from vmfleet.api import parse
    from vmfleet.api.types import CloneStore, KvmHost, VmFleet, VmTemplate
    from vmfleet.engine import Runtime, reconcile_fleet

    docs = [parse(d) for d in manifests(root, driver, vms, "ref")]
    store = next(o for o in docs if isinstance(o, CloneStore))
    host = next(o for o in docs if isinstance(o, KvmHost))
    template = next(o for o in docs if isinstance(o, VmTemplate))
    fleet = next(o for o in docs if isinstance(o, VmFleet))
    runtime = Runtime(lambda ref: {})
    seconds, cpu = [], []
    try:
        for i in range(samples):
            f = _renamed(fleet, f"r{i}")
            t0, c0 = time.perf_counter(), time.process_time()
            result = await reconcile_fleet(runtime, f, template, store, [host])
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            assert result.status["readyReplicas"] == vms, result.status["conditions"]
    finally:
        await runtime.close()
    return statistics.median(seconds[1:]), statistics.median(cpu[1:])  # the first prepares the parent


def _renamed(fleet: Any, name: str) -> Any:
    import dataclasses
    import uuid

    meta = dataclasses.replace(fleet.meta, name=name, uid=str(uuid.uuid4()))
    return dataclasses.replace(fleet, meta=meta)


class ReadyWatch:
    """Which fleets of a namespace are Ready, from a `kubectl get -w` stream. Listing all of them every 2 s (as
    this bench did: 1,000 objects read, encoded and decoded each time) took the CPU of the very machine it
    measured; a watch costs one event per write the operator makes. The apiserver closes a watcher that falls
    behind (kubectl then ends with 0): it is started again, and its first listing brings the set up to date."""

    JSONPATH = '{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}'
    RESTARTS = 10

    def __init__(self, cluster: Any, namespace: str) -> None:
        self._argv = [str(cluster.bin / "kubectl"), "get", "vmfleets", "-n", namespace, "-w", "--request-timeout=0",
                      "-o", f"jsonpath={self.JSONPATH}"]  # fmt: skip
        self._env = cluster.env()
        self._ready: set[str] = set()
        self._ended: int | None = None  # kubectl's exit status, once it ended for good
        self._closed = False
        self.restarts = 0
        self._changed = threading.Condition()
        self._proc = self._start()
        threading.Thread(target=self._read, name="ready-watch", daemon=True).start()

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self._argv, stdout=subprocess.PIPE, text=True, env=self._env)

    def _read(self) -> None:
        while True:
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                name, _, ready = line.strip().partition(" ")
                with self._changed:
                    (self._ready.add if ready == "True" else self._ready.discard)(name)
                    self._changed.notify_all()
            status = self._proc.wait()
            with self._changed:
                if status == 0 and not self._closed and self.restarts < self.RESTARTS:
                    self.restarts += 1
                    self._proc = self._start()
                    continue
                self._ended = status  # nothing more will be seen
                self._changed.notify_all()
                return

    def wait(self, count: int, seconds: float) -> int:
        """Until `count` fleets are Ready or `seconds` have passed: how many are."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._ready) >= count or self._ended is not None, seconds)
            if len(self._ready) < count and self._ended is not None:
                ended = f"the watch ended ({self._ended}, {self.restarts} restarts)"
                raise RuntimeError(f"{ended} with {len(self._ready)} of {count} Ready")
            return len(self._ready)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            proc = self._proc
        proc.kill()
        proc.wait()


def _cluster_requests(cluster: Any) -> dict[str, int]:
    """The apiserver's requests so far that wrote (create, patch, update, delete), by resource."""
    metrics = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    out: dict[str, int] = {}
    for line in metrics.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("verb") in ("POST", "PATCH", "PUT", "DELETE"):
                key = labels.get("resource", "") + ("/" + labels["subresource"] if labels.get("subresource") else "")
                out[key] = out.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def measure(directory: Path, fleets: int, vms: int, budget_seconds: float = 3600) -> dict[str, Any]:
    from vmfleet.images import make_template_image

    root = directory / "many"
    make_template_image(str(root / "images" / "t.img"), 64 << 20, 4 << 20)
    driver = "reflink" if _reflinks(root) else "qcow2"
    load = os.getloadavg()[0]
    reference = directory / "many-ref"  # a store of its own: the operator's never sees these fleets
    make_template_image(str(reference / "images" / "t.img"), 64 << 20, 4 << 20)
    per_fleet, ref_cpu = asyncio.run(_one_fleet_work(reference, driver, vms))
    with operator_on_cluster(RESYNC_SECONDS) as (cluster, operator):
        assert operator.proc is not None
        pids = (operator.proc.pid, cluster.apiserver_pid())
        # Is the time linear in the fleets? One fleet, then a tenth of them, then all, each batch in a namespace
        # of its own with its template, through the same operator: a cost that grows with the fleets already
        # there shows as a slope at N steeper than at N/10.
        small = max(2, fleets // 10)
        one = _batch(cluster, root, driver, vms, "one", 1, pids, budget_seconds)
        tenth = _batch(cluster, root, driver, vms, "tenth", small, pids, budget_seconds)
        batch = _batch(cluster, root, driver, vms, "bench", fleets, pids, budget_seconds)
        seconds = batch["seconds"]
        # A resync round: every fleet once, at most resync_rate passes a second (operator/pacing.py). The first
        # after Ready writes each fleet's first space figures and meets each object as kopf last annotated it;
        # the next ones are what an idle operator costs for good.
        round_seconds = max(RESYNC_SECONDS, (1 + small + fleets) / Settings().resync_rate)
        first = _cores(operator.proc.pid, round_seconds + 5)
        idle = _cores(operator.proc.pid, round_seconds)
        rss = peak_rss_mib(operator.proc.pid)
    slope = (seconds - one["seconds"]) / (fleets - 1)
    slope_small = (tenth["seconds"] - one["seconds"]) / (small - 1)
    return {
        "fleets": fleets,
        "vms_per_fleet": vms,
        "driver": driver,
        "ready_seconds": round(seconds, 1),
        "one_fleet_work_seconds": round(per_fleet, 4),
        "reference_seconds": round(per_fleet * fleets, 1),
        "over_reference": round(seconds / (per_fleet * fleets), 3),
        "one_fleet_ready_seconds": round(one["seconds"], 2),
        "small_batch_fleets": small,
        "small_batch_ready_seconds": round(tenth["seconds"], 1),
        "seconds_per_fleet_small_batch": round(slope_small, 4),
        "seconds_per_fleet": round(slope, 4),
        "over_small_batch_slope": round(slope / slope_small, 3),
        "operator_cpu_seconds_to_ready": round(batch["operator_cpu"], 1),
        "apiserver_cpu_seconds_to_ready": round(batch["apiserver_cpu"], 1),
        "reference_cpu_seconds": round(ref_cpu * fleets, 1),
        "api_writes_to_ready": batch["writes"],
        "api_writes_per_fleet": round(sum(batch["writes"].values()) / fleets, 1),
        "watch_restarts": batch["watch_restarts"],
        "first_round_cores": round(first, 3),
        "idle_cores": round(idle, 3),
        "round_seconds": round(round_seconds, 1),
        "operator_peak_rss_mib": round(rss, 1),
        "resync_seconds": RESYNC_SECONDS,
        "load_before": round(load, 2),
        "cpus": os.cpu_count(),
        "date": dt.date.today().isoformat(),
    }


def _batch(
    cluster: Any, root: Path, driver: str, vms: int, namespace: str, fleets: int, pids: tuple[int, int], budget: float
) -> dict[str, Any]:
    """`fleets` fleets and their template applied at once in a new namespace: the seconds until every one is
    Ready, the CPU the operator and the apiserver took meanwhile, and the writes the apiserver served."""
    cluster.kubectl("create", "namespace", namespace)
    store, host, template, fleet = manifests(root, driver, vms, "bench")  # one store and one host for all
    template, fleet = ({**o, "metadata": {**o["metadata"], "namespace": namespace}} for o in (template, fleet))
    docs = [
        store,
        host,
        template,
        *({**fleet, "metadata": {**fleet["metadata"], "name": f"f{i}"}} for i in range(fleets)),
    ]
    operator, apiserver = pids
    watch = ReadyWatch(cluster, namespace)
    try:
        writes0, api_cpu0, cpu0 = _cluster_requests(cluster), _cpu_seconds(apiserver), _cpu_seconds(operator)
        t0 = time.perf_counter()
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs), timeout=600)
        ready = watch.wait(fleets, budget)
        seconds = time.perf_counter() - t0
        api_cpu, cpu = _cpu_seconds(apiserver) - api_cpu0, _cpu_seconds(operator) - cpu0
        writes1 = _cluster_requests(cluster)
    finally:
        watch.close()
    assert ready == fleets, f"{namespace}: {ready} of {fleets} fleets Ready after {seconds:.0f} s"
    return {
        "seconds": seconds,
        "operator_cpu": cpu,
        "apiserver_cpu": api_cpu,
        "writes": {k: n - writes0.get(k, 0) for k, n in sorted(writes1.items()) if n > writes0.get(k, 0)},
        "watch_restarts": watch.restarts,
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    with site.scratch() as (directory, _fs):
        return await asyncio.to_thread(measure, directory, args.fleets, args.vms)


def _at_least_3(text: str) -> int:
    n = int(text)
    if n < 3:
        raise argparse.ArgumentTypeError(f"{n}: at least 3 (one fleet, then a tenth of them but at least 2, then all)")
    return n


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.many")
    p.add_argument("--fleets", type=_at_least_3, default=1000, help="at least 3: one, a tenth and all are applied")
    p.add_argument("--vms", type=int, default=10)
    run_alone(p, _run, many_section)


if __name__ == "__main__":
    main()
