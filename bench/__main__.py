"""`python -m bench [--quick] [--json] [--report]`: how fast and how cheap vmfleet is, side by side in one run.
`python -m bench soak`: the safety state machine, long (bench/soak.py).
`python -m bench.rollout [--report]`: the rolling update alone (bench/rollout.py), its section spliced in the report.
`python -m bench.resync [--report]`: a resync round of 100, 500 and 1,000 fleets on one store, before and after
(bench/resync.py), likewise.
`python -m bench.drain [--report]`: a host of 100 VMs drained, against the floor of its libvirt calls
(bench/drain.py), likewise.

Prints a table, or with --json one JSON object on the last line; --report writes docs/benchmarks.md
and its plot. Run as root for XFS reflinks and the real kube-apiserver (as `sudo make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from . import clone_vs_copy, fleet, rollout, site

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30


async def _local(args: argparse.Namespace) -> dict:
    quick = args.quick
    with site.scratch() as (directory, fs):
        async with site.simulator(directory) as (server, runtime):
            store = runtime.store_driver(site.store(server, 8))
            cvc = await clone_vs_copy.measure(
                directory,
                fs,
                server,
                store.runner.run,  # type: ignore[attr-defined]
                (1 if quick else 10) * GIB,
                (GIB // 8) if quick else GIB,
                1 if quick else 3,
            )
        sizes = [10, 100] if quick else [10, 100, 1000]
        fleets = await fleet.measure(directory, sizes, 1 if quick else 3)
        big = 500 if quick else 10000
        fleets["status_bytes"][str(big)] = await fleet.status_size(directory, big)
        rolling = await rollout.measure(directory, 100, 10, 1 if quick else 7)
        guest: dict = {}
        if shutil.which("qemu-system-x86_64") and not args.no_guest:
            from . import guest as guest_bench

            guest = guest_bench.measure(1 if quick else 3, 3)
        kube: dict = {}
        skipped = ""
        if shutil.which("go") and os.geteuid() == 0 and not args.no_kube:
            from . import kube as kube_bench

            kube = kube_bench.measure(directory, [20] if quick else [100, 1000])
        else:
            skipped = "needs root and go (--no-kube given)" if args.no_kube else "needs root and go"
    return {"cvc": cvc, "fleet": fleets, "rollout": rolling, "kube": kube, "kube_skipped": skipped, "guest": guest}


def main() -> None:
    if sys.argv[1:2] == ["soak"]:
        from . import soak

        soak.main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--quick", action="store_true", help="small N and one repeat: under two minutes")
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")
    p.add_argument("--report", action="store_true", help="write docs/benchmarks.md and docs/benchmarks.png")
    p.add_argument("--no-kube", action="store_true", help="skip the kube-apiserver part")
    p.add_argument("--no-guest", action="store_true", help="skip booting the Linux guest under QEMU")
    args = p.parse_args()
    raw = asyncio.run(_local(args))
    rows = raw["fleet"]["rows"]
    top, refresh = rows[-1], raw["fleet"]["refresh"][-1]
    kube_rows = raw["kube"].get("rows", []) if raw["kube"] else []
    rss = max((r["operator_peak_rss_mib"] for r in kube_rows), default=None)
    sizes = raw["fleet"]["status_bytes"]
    result = {
        "clone_vs_copy": {"speedup": raw["cvc"]["speedup"], "bytes_ratio": raw["cvc"]["bytes_ratio"]},
        "fleet": {
            "n": top["n"],
            "seconds": top["seconds"],
            "floor_seconds": top["floor_seconds"],
            "overhead_ratio": top["overhead_ratio"],
            "rows": rows,
            "refresh": raw["fleet"]["refresh"],
        },
        "refresh": refresh,
        "rollout": raw["rollout"],
        "memory": {"rss_mib": rss, "n": kube_rows[-1]["n"] if kube_rows else None},
        "status_bytes": sizes,
        "kube": raw["kube"],
        "kube_skipped": raw["kube_skipped"],
        "guest": raw["guest"],
        "clone_vs_copy_detail": raw["cvc"],
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "date": dt.date.today().isoformat(),
        "command": "python -m bench" + (" --quick" if args.quick else ""),
    }
    biggest = max(sizes, key=int)
    result["targets"] = [
        *(
            (f"{name} ≥ 1000× faster than the full copy", f"{r['speedup']:,}×", r["speedup"] >= 1000)
            for name, r in raw["cvc"]["rows"].items()
            if name != "full sparse copy"
        ),
        *(
            (f"{name} ≤ 1 % of the copy's bytes", f"{r['bytes_ratio']:.4%}", r["bytes_ratio"] <= 0.01)
            for name, r in raw["cvc"]["rows"].items()
            if name != "full sparse copy"
        ),
        (f"N={top['n']}: vmfleet/floor ≤ 1.5", str(top["overhead_ratio"]), top["overhead_ratio"] <= 1.5),
        (f"N={top['n']}: whole fleet ready ≤ 60 s", f"{top['seconds']} s", top["seconds"] <= 60),
        (f"refresh of {refresh['clones']} clones ≤ 1 s", f"{refresh['seconds']} s", refresh["seconds"] <= 1),
        (
            "refresh SSH commands constant in N",
            str([r["ssh_commands"] for r in raw["fleet"]["refresh"]]),
            len({r["ssh_commands"] for r in raw["fleet"]["refresh"]}) == 1,
        ),
        ("operator peak RSS ≤ 200 MiB", f"{rss} MiB" if rss is not None else "not run", rss is not None and rss <= 200),
        (f"VmFleet object with {biggest} clones ≤ 1 MiB", f"{sizes[biggest]:,} B", sizes[biggest] <= 1 << 20),
    ]
    if args.report:
        from .report import markdown, plot

        plot(result, REPO / "docs" / "benchmarks.png")
        (REPO / "docs" / "benchmarks.md").write_text(markdown(result, "benchmarks.png"))
    if args.json:
        print(json.dumps(result))
        return
    print(f"clone vs copy: {result['clone_vs_copy']}")
    print(f"{'N':>6} {'vmfleet s':>10} {'floor s':>9} {'ratio':>6} {'ms/VM':>7}")
    for r in rows:
        print(f"{r['n']:>6} {r['seconds']:>10} {r['floor_seconds']:>9} {r['overhead_ratio']:>6} {r['per_vm_ms']:>7}")
    roll = result["rollout"]
    print(
        f"rolling update of {roll['n']} (maxUnavailable {roll['max_unavailable']}): {roll['seconds']} s, floor "
        f"{roll['floor_seconds']} s, ratio {roll['overhead_ratio']}, {roll['passes']} pass(es), {roll['waves']} waves"
    )
    print(f"refresh: {refresh}; memory: {result['memory']}; object bytes: {sizes}")
    for name, measured, met in result["targets"]:
        print(f"  {'ok ' if met else 'MISS'} {name}: {measured}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
