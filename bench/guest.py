"""`python -m bench.guest [--runs N] [--parallel N] [--json]`: the Linux guest image (vmfleet.guest).

How long a cold build takes (an empty package cache: downloads included) and a warm one (the cache reused),
and how long a guest takes under TCG from QEMU's start to its VMFLEET-GUEST line, alone and N at once.
Prints a table, or with --json one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from vmfleet.guest import CONSOLE_LINE, build_linux_image
from vmfleet.seed import nocloud

from .report import emit


def _seed(path: Path, name: str) -> None:
    path.write_bytes(nocloud(name, name, "#cloud-config\n", None, {}, ()).image())


def _timed_build(path: Path, cache: Path) -> float:
    t0 = time.monotonic()
    build_linux_image(str(path), str(cache))
    return time.monotonic() - t0


def boot(image: Path, work: Path, count: int, timeout: float = 180) -> list[float]:
    """Start `count` guests at once (NoCloud seed, SLIRP NIC); seconds from each QEMU's start to its line."""
    procs: list[tuple[subprocess.Popen[bytes], Path, float]] = []
    took: dict[int, float] = {}
    try:
        for i in range(count):
            seed, log = work / f"seed{i}.iso", work / f"console{i}.log"
            _seed(seed, f"bench-{i}")
            log.unlink(missing_ok=True)  # a line left by the run before is no boot of this one
            argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "256", "-nographic",
                    "-serial", f"file:{log}", "-monitor", "none",
                    "-drive", f"file={image},if=virtio,format=raw,snapshot=on",
                    "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
                    "-netdev", "user,id=n0",
                    "-device", f"virtio-net-pci,netdev=n0,mac=52:54:00:00:01:{i:02x}"]  # fmt: skip
            started = time.monotonic()
            procs.append((subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL), log, started))
        deadline = time.monotonic() + timeout
        while len(took) < count and time.monotonic() < deadline:
            for i, (_, log, started) in enumerate(procs):
                if i not in took and log.exists() and CONSOLE_LINE.search(log.read_text(errors="replace")):
                    took[i] = time.monotonic() - started
            time.sleep(0.05)  # polling the console files: a measurement's resolution, not a synchronisation
    finally:
        for proc, _, _ in procs:
            proc.kill()
            proc.wait()
    if len(took) < count:
        raise SystemExit(f"only {len(took)} of {count} guests printed their line within {timeout} s")
    return [took[i] for i in range(count)]


def measure(runs: int, parallel: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="vmfleet-bench-guest-") as tmp:
        work = Path(tmp)
        image = work / "linux.img"
        cold = _timed_build(image, work / "cache")
        warm = [_timed_build(image, work / "cache") for _ in range(runs)]
        alone = [boot(image, work, 1)[0] for _ in range(runs)]
        together = [boot(image, work, parallel) for _ in range(runs)]
        return {
            "image_bytes": image.stat().st_size,
            "build_cold_s": round(cold, 2),
            "build_warm_s": round(statistics.median(warm), 2),
            "boot_one_s": round(statistics.median(alone), 2),
            "boot_one_runs_s": [round(t, 2) for t in alone],
            "boot_parallel": parallel,
            "boot_parallel_median_s": round(statistics.median(t for run in together for t in run), 2),
            "boot_parallel_slowest_s": round(max(max(run) for run in together), 2),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.guest")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--parallel", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    load = os.getloadavg()[0]
    result = measure(args.runs, args.parallel)
    result["load_before"] = load
    emit(result, args.json)


if __name__ == "__main__":
    main()
