"""`python -m bench.scale [--vms N] [--no-kube] [--json] [--report]`: one fleet of 10,000 VMs, standalone and through
Kubernetes.

All three on the same store driver (reflink on XFS as root, else qcow2) and libvirt's test driver, in one run:
- the floor: the same store and libvirt calls in a bare loop at the store's concurrency (clone, define, start), in a
  process of its own (`python -m bench.scale --floor`);
- standalone: `vmfleet apply -f` of the fleet's manifests, a process of its own;
- through Kubernetes: the real kube-apiserver, `vmfleet run` as deploy/'s ServiceAccount, `kubectl apply` to Ready.
Each process's wall time and peak RSS; the VmFleet object's bytes as the apiserver serves it; and how long
`kubectl get vmf` and `vmfleet status` take on it. Every run is checked: N VMs ready, N domains running.

Prints a table, or with --json one JSON object on the last line; --report puts its section in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import site
from .kube import _reflinks, manifests, operator_on_cluster, peak_rss_mib
from .report import run_alone, scale_section

VMFLEET = str(Path(sys.executable).parent / "vmfleet")


def _child(argv: list[str], scratch: Path) -> tuple[float, float, str]:
    """Run a process to its end: (wall seconds, its own peak RSS in MiB, its stdout)."""
    out, err = scratch / "stdout", scratch / "stderr"
    with out.open("w") as o, err.open("w") as e:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=o, stderr=e)
        _, code, usage = os.wait4(proc.pid, 0)  # this child's rusage alone, not every child's so far
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(code)
    assert proc.returncode == 0, err.read_text()[-3000:]
    return seconds, usage.ru_maxrss / 1024, out.read_text()


async def _floor(docs_path: Path) -> None:
    """The bare loop (run with --floor in a process of its own): what the engine's calls cost with nothing around."""
    from vmfleet.api import parse
    from vmfleet.api.types import CloneStore, KvmHost, VmFleet, VmTemplate
    from vmfleet.engine import Runtime
    from vmfleet.engine.fleet import desire
    from vmfleet.hypervisor import LibvirtHost, domain_xml

    objs = [parse(doc) for doc in yaml.safe_load_all(docs_path.read_text())]
    store = next(o for o in objs if isinstance(o, CloneStore))
    host = next(o for o in objs if isinstance(o, KvmHost))
    template = next(o for o in objs if isinstance(o, VmTemplate))
    fleet = next(o for o in objs if isinstance(o, VmFleet))
    runtime = Runtime(lambda ref: {})
    desired = desire(runtime, fleet, template, store, [host])
    driver = runtime.store_driver(store)
    endpoint = LibvirtHost(host.meta.name, host.uri)
    limit = asyncio.Semaphore(store.concurrency)  # the store's, as the engine runs it
    await driver.prepare_parent(template.image_path, template.image_format, desired.parent)

    async def one(o: int) -> None:
        async with limit:
            clone = desired.clone(o, {})
            await driver.create_clone(desired.parent, template.image_format, clone)
            spec = desired.domain_spec(o, host.meta.name, clone)
            await endpoint.define(domain_xml(spec, desired.owner(o, host.meta.name, clone, spec), desired.vm_uuid(o)))
            await endpoint.start(spec.name)

    await asyncio.gather(*(one(o) for o in range(fleet.replicas)))
    names = {desired.domain_name(o) for o in range(fleet.replicas)}
    running = sum(1 for d in await endpoint.list_domains() if d.active and d.name in names)
    assert running == fleet.replicas, running
    print(json.dumps({"running": running}))
    await endpoint.close()
    await runtime.close()


def _standalone_and_floor(directory: Path, driver: str, n: int, uri: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for what in ("floor", "standalone"):
        root = directory / what
        from vmfleet.images import make_template_image

        make_template_image(str(root / "images" / "t.img"), 64 << 20, 4 << 20)
        docs = root / "fleet.yaml"
        docs.write_text(yaml.safe_dump_all(manifests(root, driver, n, "bench", uri)))
        if what == "floor":
            seconds, rss, _ = _child([sys.executable, "-m", "bench.scale", "--floor", str(docs)], root)
        else:
            seconds, rss, printed = _child([VMFLEET, "apply", "-q", "-o", "json", "-f", str(docs)], root)
            (fleet,) = [o for o in json.loads(printed) if o["kind"] == "VmFleet"]
            assert fleet["status"]["readyReplicas"] == n, fleet["status"]["conditions"]
            out["standalone_status_bytes"] = len(json.dumps(fleet["status"], separators=(",", ":")))
        out[f"{what}_seconds"], out[f"{what}_peak_rss_mib"] = round(seconds, 2), round(rss, 1)
    return out


def _through_kubernetes(directory: Path, driver: str, n: int, uri: str) -> dict[str, Any]:
    import libvirt

    from vmfleet.images import make_template_image

    root = directory / "kube"
    make_template_image(str(root / "images" / "t.img"), 64 << 20, 4 << 20)
    # A connection of the bench's own holds libvirtd's test driver state for the run, whatever the operator's does.
    pin = libvirt.open(uri) if uri != "test:///default" else None
    with (
        contextlib.closing(pin) if pin is not None else contextlib.nullcontext(),
        operator_on_cluster() as (
            cluster,
            operator,
        ),
    ):
        cluster.kubectl("create", "namespace", "bench")
        t0 = time.perf_counter()
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(manifests(root, driver, n, "bench", uri)))
        cluster.kubectl("wait", "--for=condition=Ready", "vmfleet/f", "-n", "bench", "--timeout=1800s", timeout=1830)
        seconds = time.perf_counter() - t0
        obj = json.loads(cluster.kubectl("get", "vmfleets", "f", "-n", "bench", "-o", "json").stdout)
        assert obj["status"]["readyReplicas"] == n
        t0 = time.perf_counter()
        listed = cluster.kubectl("get", "vmf", "-n", "bench").stdout
        get_seconds = time.perf_counter() - t0
        assert str(n) in listed, listed
        t0 = time.perf_counter()
        shown = subprocess.run(
            [VMFLEET, "status", "f", "-n", "bench"], env=cluster.env(), capture_output=True, text=True, check=True
        ).stdout
        status_seconds = time.perf_counter() - t0
        assert f"{n}/{n} ready" in shown, shown[:500]
        assert operator.proc is not None
        return {
            "kube_seconds": round(seconds, 2),
            "operator_peak_rss_mib": round(peak_rss_mib(operator.proc.pid), 1),
            "object_bytes": len(json.dumps(obj, separators=(",", ":"))),
            "listed_vms": len(obj["status"]["clones"]),
            "clones_omitted": obj["status"].get("clonesOmitted", 0),
            "compacted_fields": obj["status"].get("compactedFields", []),
            "kubectl_get_seconds": round(get_seconds, 2),
            "vmfleet_status_seconds": round(status_seconds, 2),
        }


def measure(directory: Path, n: int, kube: bool = True) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    driver = "reflink" if _reflinks(directory) else "qcow2"
    load = os.getloadavg()[0]
    with site.test_driver_out_of_process() as uri:
        result: dict[str, Any] = {
            "n": n,
            "driver": driver,
            "uri": uri,
            **_standalone_and_floor(directory, driver, n, uri),
        }
        if kube and os.geteuid() == 0:
            result.update(_through_kubernetes(directory, driver, n, uri))
        result["kube_over_standalone"] = round(result["kube_seconds"] / result["standalone_seconds"], 3)
    result["standalone_over_floor"] = round(result["standalone_seconds"] / result["floor_seconds"], 3)
    result.update(load_before=round(load, 2), cpus=os.cpu_count(), date=dt.date.today().isoformat())
    return result


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    with site.scratch() as (directory, _fs):
        return measure(directory, args.vms, not args.no_kube)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--floor":
        asyncio.run(_floor(Path(sys.argv[2])))
        return
    p = argparse.ArgumentParser(prog="python -m bench.scale")
    p.add_argument("--vms", type=int, default=10000)
    p.add_argument("--no-kube", action="store_true", help="standalone and the floor only")
    run_alone(p, _run, scale_section)


if __name__ == "__main__":
    main()
