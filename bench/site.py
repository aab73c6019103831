"""Where the benchmarks run: a scratch directory on XFS (reflinks) when root, else on /tmp; the
SSH simulator; and the vmfleet objects pointing at them."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh

from vmfleet.api.types import CloneStore, KvmHost, SecretRef, VmFleet, VmTemplate
from vmfleet.engine import Runtime
from vmfleet.sim import objects
from vmfleet.sim import server as sim
from vmfleet.sim.objects import MOUNT


@contextlib.contextmanager
def scratch() -> Iterator[tuple[Path, str]]:
    """(directory, file system name): XFS with reflink=1 on a loop device when root, else a tmp dir."""
    base = Path(tempfile.mkdtemp(prefix="vmfleet-bench-"))
    mnt = base / "mnt"
    mnt.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mkfs.xfs"):
        with open(base / "xfs.img", "wb") as f:
            f.truncate(64 << 30)
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(base / "xfs.img")], check=True)
        mounted = subprocess.run(["mount", "-o", "loop", str(base / "xfs.img"), str(mnt)]).returncode == 0
    try:
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(mnt)], capture_output=True, text=True).stdout.strip()
        yield mnt, fs
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(base, ignore_errors=True)


SERVED_TEST_DRIVER = "test+unix:///default"


@contextlib.contextmanager
def test_driver_out_of_process() -> Iterator[str]:
    """libvirt's test driver served by libvirtd (started for the run if it is not running), so that the process
    measured holds only its client, as with a real remote host: its URI. libvirtd keeps the driver's state while a
    connection holds it, and starts afresh after the last one closes. Without libvirtd (not root, not installed),
    the in-process test:///default."""
    started = None
    if os.geteuid() == 0 and shutil.which("libvirtd") and not _answers(SERVED_TEST_DRIVER):
        started = subprocess.Popen(["libvirtd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not _answers(SERVED_TEST_DRIVER) and time.monotonic() < deadline:
            time.sleep(0.2)
    if not _answers(SERVED_TEST_DRIVER):
        yield "test:///default"
        return
    try:
        yield SERVED_TEST_DRIVER
    finally:
        if started is not None:
            started.terminate()
            started.wait(30)


def _answers(uri: str) -> bool:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # a refusal is an answer here, not a message
    try:
        libvirt.open(uri).close()
    except libvirt.libvirtError:
        return False
    return True


@contextlib.asynccontextmanager
async def simulator(
    directory: Path, personality: str = "gpfs", latency: float = 0.0
) -> AsyncIterator[tuple[sim.Simulator, Runtime]]:
    client = asyncssh.generate_private_key("ssh-ed25519")
    server = await sim.start(
        str(directory), MOUNT, personality, client.export_public_key().decode(), faults=sim.Faults(latency=latency)
    )
    runtime = Runtime(
        lambda ref: {"ssh-privatekey": client.export_private_key().decode(), "known_hosts": server.known_hosts}
    )
    try:
        yield server, runtime
    finally:
        await runtime.close()
        await server.stop()


def store(server: sim.Simulator, concurrency: int) -> CloneStore:
    return objects.store(
        "bench", "gpfs", server.port, "bench", f"{MOUNT}/bench", SecretRef("ssh", "bench"), concurrency=concurrency
    )


def host(name: str = "t") -> KvmHost:
    return objects.host(1 << 16, 1 << 30, name)


def template(memory_mib: int = 64) -> VmTemplate:
    return objects.template("t", "bench", "bench", "images/t.img", memory_mib=memory_mib)


def fleet(n: int, name: str, **spec: Any) -> VmFleet:
    return objects.fleet(n, name, "bench", "t", **spec)


async def side_by_side(
    directory: Path,
    repeats: int,
    engine: Callable[[sim.Simulator, Runtime, int], Awaitable[dict[str, Any]]],
    floor: Callable[[sim.Simulator, Runtime, int], Awaitable[float]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each repeat runs the engine and its floor, each with a fresh simulator and a fresh test driver, which goes
    first alternating: (the medians, their ratio and the run's circumstances; the engine's results)."""
    load = os.getloadavg()[0]
    runs: list[dict[str, Any]] = []
    floors: list[float] = []
    for r in range(repeats):
        for engine_first in (True, False) if r % 2 == 0 else (False, True):
            async with simulator(directory) as (server, runtime):
                if engine_first:
                    runs.append(await engine(server, runtime, r))
                else:
                    floors.append(await floor(server, runtime, r))
    e, f = statistics.median(x["seconds"] for x in runs), statistics.median(floors)
    summary = {
        "repeats": repeats,
        "seconds": round(e, 3),
        "floor_seconds": round(f, 3),
        "overhead_ratio": round(e / f, 3),
        "engine_runs_s": [round(x["seconds"], 3) for x in runs],
        "floor_runs_s": [round(x, 3) for x in floors],
        "verified": True,  # each run checks what it left, or raises
        "load_before": round(load, 2),
        "cpus": os.cpu_count(),
        "date": dt.date.today().isoformat(),
    }
    return summary, runs


def waves_main(prog: str, measure: Callable[..., Awaitable[dict[str, Any]]], section: Any, repeats: int) -> None:
    """`python -m bench.X [--vms N] [--max-unavailable K] [--repeats R]` for a benchmark of VMs taken down in
    waves (bench/rollout.py, bench/drain.py)."""
    from .report import run_alone

    async def run(args: argparse.Namespace) -> dict[str, Any]:
        with scratch() as (directory, _fs):
            return await measure(directory, args.vms, args.max_unavailable, args.repeats)

    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--vms", type=int, default=100)
    p.add_argument("--max-unavailable", type=int, default=10)
    p.add_argument("--repeats", type=int, default=repeats)
    run_alone(p, run, section)
