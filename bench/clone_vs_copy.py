"""A clone against a full copy of the same template: seconds and bytes, side by side."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from vmfleet.extents import ficlone, own_bytes
from vmfleet.images import make_template_image
from vmfleet.sim.server import Simulator
from vmfleet.storage import commands as cmd
from vmfleet.storage.qcow2 import Qcow2Store

from .site import MOUNT

HEADLINE = "mmclone copy over SSH (simulator)"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _drop_caches() -> None:
    os.sync()
    if os.geteuid() == 0:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


async def measure(directory: Path, fs: str, server: Simulator, runner_run, size: int, data: int, repeats: int) -> dict:
    images = directory / "bench" / "images"
    images.mkdir(parents=True, exist_ok=True)
    template = images / "big.img"
    make_template_image(str(template), size, data)
    subprocess.run(["sync"], check=True)
    work = directory / "bench" / "cvc"
    work.mkdir(exist_ok=True)
    rows: dict[str, dict] = {}

    def record(name: str, seconds: list[float], path: Path) -> None:
        rows[name] = {"seconds": statistics.median(seconds), "bytes": own_bytes(str(path))}

    times = []
    for r in range(repeats):
        _drop_caches()
        times.append(
            _timed(
                lambda: subprocess.run(
                    ["cp", "--reflink=never", "--sparse=always", str(template), str(work / f"copy{r}.img")], check=True
                )
            )
        )
        subprocess.run(["sync"], check=True)
    record("full sparse copy", times, work / "copy0.img")

    if fs in ("xfs", "btrfs"):
        times = []
        for r in range(repeats):
            _drop_caches()
            times.append(_timed(lambda: ficlone(str(template), str(work / f"reflink{r}.img"))))
        record("reflink clone (FICLONE)", times, work / "reflink0.img")

    times = []
    for r in range(repeats):
        _drop_caches()
        t0 = time.perf_counter()
        await Qcow2Store(str(directory / "bench")).create_clone("images/big.img", "raw", f"cvc/ov{r}.qcow2")
        times.append(time.perf_counter() - t0)
    record("qcow2 overlay (qemu-img)", times, work / "ov0.qcow2")

    parent = f"{MOUNT}/bench/cvc/parent.img"
    server.fs.snap(f"{MOUNT}/bench/images/big.img", parent)  # the clone parent, made once per template
    times = []
    for r in range(repeats):
        _drop_caches()
        t0 = time.perf_counter()
        reply = await runner_run(cmd.mmclone_copy(parent, f"{MOUNT}/bench/cvc/mm{r}.img"))
        assert reply.exit_status == 0, reply.stderr
        times.append(time.perf_counter() - t0)
    rows[HEADLINE] = {
        "seconds": statistics.median(times),
        "bytes": server.fs.charged_blocks(f"{MOUNT}/bench/cvc/mm0.img") * 512,
    }
    if fs in ("xfs", "btrfs"):
        # The same data in one run instead of 1024: a reflink's cost follows the extents, a copy's the bytes.
        dense = images / "contiguous.img"
        make_template_image(str(dense), size, data, contiguous=True)
        _drop_caches()
        copy_s = _timed(
            lambda: subprocess.run(
                ["cp", "--reflink=never", "--sparse=always", str(dense), str(work / "dcopy.img")], check=True
            )
        )
        clone_s = []
        for r in range(repeats):
            _drop_caches()
            clone_s.append(_timed(lambda: ficlone(str(dense), str(work / f"dref{r}.img"))))
        contiguous = {
            "copy_seconds": copy_s,
            "clone_seconds": statistics.median(clone_s),
            "speedup": round(copy_s / statistics.median(clone_s), 1),
        }
        dense.unlink()
    else:
        contiguous = {}
    shutil.rmtree(work, ignore_errors=True)
    copy = rows["full sparse copy"]
    for r in rows.values():
        r["speedup"] = round(copy["seconds"] / r["seconds"], 1) if r["seconds"] else 0.0
        r["bytes_ratio"] = round(r["bytes"] / copy["bytes"], 6) if copy["bytes"] else 0.0
    # The headline is the seed's clone: the storage's own command over SSH.
    headline = rows[HEADLINE]
    return {
        "template": {"size": size, "data": data, "fs": fs},
        "rows": rows,
        "headline": HEADLINE,
        "contiguous": contiguous,
        "speedup": headline["speedup"],
        "bytes_ratio": headline["bytes_ratio"],
    }
