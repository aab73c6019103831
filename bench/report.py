"""docs/benchmarks.md and its plot, from one run's results."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
from collections.abc import Awaitable, Callable
from pathlib import Path


def emit(result: dict, as_json: bool) -> None:
    """A single benchmark's result: one JSON object on one line, or a key and its value a line."""
    if as_json:
        print(json.dumps(result))
        return
    width = max(map(len, result)) + 2
    for key, value in result.items():
        print(f"{key:{width}} {value}")


def run_alone(
    p: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Awaitable[dict]],
    section: Callable[[dict], list[str]],
) -> None:
    """A benchmark run on its own (`python -m bench.X`): its result printed, its section spliced in the report."""
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")
    p.add_argument("--report", action="store_true", help="put this section in docs/benchmarks.md in place of its own")
    args = p.parse_args()
    result = asyncio.run(run(args))
    result["machine"] = platform.platform()
    if args.report:
        path = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
        path.write_text(splice(path.read_text(), section(result)))
    emit(result, args.json)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["fleet"]["rows"]
    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ns, [r["per_vm_ms"] for r in rows], "o-", label="vmfleet apply (engine)")
    ax.plot(ns, [r["floor_per_vm_ms"] for r in rows], "s--", label="floor: the same calls in a bare loop")
    ax.set_xscale("log")
    ax.set_xlabel("VMs in the fleet (N)")
    ax.set_ylabel("ms per VM (clone over SSH + define + start)")
    ax.set_title("Fleet provisioning cost per VM")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict, png: str) -> str:
    m = result["machine"]
    cvc = result["clone_vs_copy_detail"]
    lines = [
        "# Benchmarks",
        "",
        f"Run `{result['command']}` on {result['date']}: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, "
        f"scratch file system {cvc['template']['fs']}. Ratios are measured side by side in the same run; "
        "seconds are medians over the repeats. Regenerate with `sudo make bench`.",
        "",
        f"## Clone against copy ({_mib(cvc['template']['size'])} template, {_mib(cvc['template']['data'])} of data)",
        "",
        "| method | seconds | bytes it owns | copy/clone time | clone/copy bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in cvc["rows"].items():
        lines.append(
            f"| {name} | {r['seconds']:.4f} | {r['bytes']:,} | {r['speedup']:,.0f}× | {r['bytes_ratio']:.4%} |"
        )
    lines += [
        "",
        f"Headline ({cvc['headline']}): **{result['clone_vs_copy']['speedup']:,}×** faster than the copy, "
        f"**{result['clone_vs_copy']['bytes_ratio']:.4%}** of its bytes. Caches are dropped before every "
        "copy and every clone.",
    ]
    if cvc.get("contiguous"):
        c = cvc["contiguous"]
        lines += [
            "",
            "A reflink's cost follows the extents, a copy's the bytes. The template above holds its "
            "1 GiB in 1024 chunks of 1 MiB spread over 10 GiB (a real image has holes); the same 1 GiB "
            f"written in one run copies in {c['copy_seconds']:.3f} s and reflinks in "
            f"{c['clone_seconds'] * 1000:.3f} ms: **{c['speedup']:,}×**.",
        ]
    lines += [
        "",
        "## Fleet provisioning (gpfs simulator over SSH, libvirt test driver)",
        "",
        "| N | vmfleet s | floor s | vmfleet/floor | ms per VM | floor ms per VM |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["fleet"]["rows"]:
        lines.append(
            f"| {r['n']} | {r['seconds']} | {r['floor_seconds']} | {r['overhead_ratio']} | "
            f"{r['per_vm_ms']} | {r['floor_per_vm_ms']} |"
        )
    lines += [
        "",
        f"![per-VM cost against N]({png})",
        "",
        "## Status refresh",
        "",
        "| clones | seconds | SSH commands |",
        "|---:|---:|---:|",
    ]
    for r in result["fleet"]["refresh"]:
        lines.append(f"| {r['clones']} | {r['seconds']} | {r['ssh_commands']} |")
    if result.get("rollout"):
        lines += ["", *rollout_section(result["rollout"])]
    lines += ["", "## Through Kubernetes (real kube-apiserver, operator as deploy/'s ServiceAccount)", ""]
    if result.get("kube"):
        lines += [
            f"Store driver: {result['kube']['driver']}.",
            "",
            "| N | kubectl apply to Ready, s | VmFleet object bytes | operator peak RSS |",
            "|---:|---:|---:|---:|",
        ]
        for r in result["kube"]["rows"]:
            lines.append(
                f"| {r['n']} | {r['apply_to_ready_seconds']} | {r['object_bytes']:,} | "
                f"{r['operator_peak_rss_mib']} MiB |"
            )
    else:
        lines.append(f"Not run: {result.get('kube_skipped', 'no kube-apiserver')}.")
    guest = result.get("guest") or {}
    lines += ["", "## A Linux guest under QEMU (TCG: no KVM here)", ""]
    if guest:
        lines += [
            "The tiny Linux golden image of `vmfleet image --linux` (Debian's kernel and busybox), from QEMU's start",
            "to the line it prints on its serial console once it has read its cloud-init seed and taken a DHCP",
            "address (`python -m bench.guest`):",
            "",
            "| | seconds |",
            "|---|---:|",
            f"| one guest (median) | {guest['boot_one_s']} |",
            f"| {guest['boot_parallel']} guests at once (median, slowest) | {guest['boot_parallel_median_s']}, "
            f"{guest['boot_parallel_slowest_s']} |",
            f"| building the image, packages downloaded | {guest['build_cold_s']} |",
            f"| building it again, packages cached | {guest['build_warm_s']} |",
            "",
            f"The image is {guest['image_bytes'] >> 20} MiB; {guest['cpus']} CPUs.",
        ]
    else:
        lines.append("Not run: no qemu-system-x86_64 (or --no-guest).")
    lines += ["", "## VmFleet object size", "", "| clones | bytes |", "|---:|---:|"]
    for n, size in result["status_bytes"].items():
        lines.append(f"| {n} | {size:,} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met in result["targets"]:
        lines.append(f"| {name} | {measured} | {'yes' if met else '**no**'} |")
    return "\n".join(lines) + "\n"


ROLLOUT_HEADING = "## Rolling update (libvirt test driver)"


def rollout_section(r: dict) -> list[str]:
    """bench/rollout.py's section, from its heading to its last line."""
    return [
        ROLLOUT_HEADING,
        "",
        f"A running fleet of {r['n']} VMs, its template's memoryMiB changed ({r['memory_mib'][0]} to "
        f"{r['memory_mib'][1]}) under maxUnavailable {r['max_unavailable']}: the reconcile_fleet pass that rolls "
        "it (each wave shutdown, define and start, then the store and the host observed again) against the floor "
        f"of the same libvirt calls made directly through LibvirtHost on an identical fleet, {r['floor_waves']} "
        f"sequential waves of {r['max_unavailable']} at once. Medians over {r['repeats']} run(s) of each, "
        f"alternating (bench/rollout.py, {r['date']}, load {r['load_before']} at the start); after every run all "
        f"{r['n']} domains run the new memory (dom.info()) and the status says updatedReplicas {r['n']}.",
        "",
        "| VMs | maxUnavailable | vmfleet s | of it observing, s | floor s | vmfleet/floor | passes | waves "
        "| most stopped at once |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['n']} | {r['max_unavailable']} | {r['seconds']} | {r['observing_seconds']} | {r['floor_seconds']} | "
        f"{r['overhead_ratio']} | {r['passes']} | {r['waves']} | {r['most_stopped_in_a_wave']} |",
    ]


DRAIN_HEADING = "## A host drained (libvirt test driver)"


def drain_section(r: dict) -> list[str]:
    """bench/drain.py's section, from its heading to its last line."""
    return [
        DRAIN_HEADING,
        "",
        f"A running fleet of {r['n']} VMs on one KvmHost, the host annotated vmfleet.io/drain=true beside an empty "
        f"one, under maxUnavailable {r['max_unavailable']}: reconcile_fleet passes back to back until no domain of "
        "the fleet is left on it. The test driver has no migration, so each VM moves cold, as a refused live "
        "migration does (shutdown, define there, undefine here, start there). Against the floor of the same libvirt "
        f"calls made directly through the same endpoints on an identical fleet, {r['floor_waves']} sequential waves "
        f"of {r['max_unavailable']} at once. Medians over {r['repeats']} run(s) of each, alternating (bench/drain.py, "
        f"{r['date']}, load {r['load_before']} at the start); after every run all {r['n']} domains run on the other "
        "host with the UUIDs they had, and none is left on the drained one. Where the difference goes: between "
        "waves the engine observes the store again and plans the next wave from what it sees, and since a move takes "
        f"a domain away it lists both hosts afresh first (hypervisor/view.py); {r['ssh_commands']} store commands over "
        "SSH in all (records announced and settled, the clone directory listed). The floor does none of that.",
        "",
        "| VMs | maxUnavailable | vmfleet s | floor s | vmfleet/floor | passes | waves | most moved at once |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['n']} | {r['max_unavailable']} | {r['seconds']} | {r['floor_seconds']} | {r['overhead_ratio']} | "
        f"{r['passes']} | {r['waves']} | {r['most_moved_at_once']} |",
    ]


SCALE_HEADING = "## One fleet of 10,000 VMs"


def scale_section(r: dict) -> list[str]:
    """bench/scale.py's section, from its heading to its last line."""
    lines = [
        SCALE_HEADING,
        "",
        f"One fleet of {r['n']:,} VMs on libvirt's test driver ({_where_test_driver(r)}), clones on the {r['driver']} "
        "store driver, the same for all three in one run (bench/scale.py, "
        f"{r['date']}, {r['cpus']} CPUs, load {r['load_before']} at the start): the floor is the same store and "
        "libvirt calls in a bare loop at the store's concurrency (clone, define, start); standalone is `vmfleet "
        "apply -f`; through Kubernetes is the real kube-apiserver and `vmfleet run` as deploy/'s ServiceAccount, "
        "from `kubectl apply` to Ready. Each a process of its own: its wall time and peak RSS. Every run is "
        "checked: all VMs ready, all domains running.",
        "",
        "| | seconds | peak RSS | ratio |",
        "|---|---:|---:|---:|",
        f"| floor | {r['floor_seconds']} | {r['floor_peak_rss_mib']} MiB | 1 |",
        f"| standalone | {r['standalone_seconds']} | {r['standalone_peak_rss_mib']} MiB | "
        f"{r['standalone_over_floor']} of the floor |",
    ]
    if "kube_seconds" in r:
        lines += [
            f"| through Kubernetes | {r['kube_seconds']} | {r['operator_peak_rss_mib']} MiB (the operator) | "
            f"{r['kube_over_standalone']} of standalone |",
            "",
            f"The VmFleet object: {r['object_bytes']:,} bytes (etcd takes up to 1,572,864), {r['listed_vms']:,} VMs "
            f"listed in status.clones, {r['clones_omitted']} left out; per-VM fields left out: "
            f"{', '.join(r['compacted_fields']) or 'none'}. Each VM's entry keeps its ordinal, host, state and space "
            f"(logicalBytes, allocatedBytes). `kubectl get vmf` took {r['kubectl_get_seconds']} s and `vmfleet "
            f"status f` (all {r['listed_vms']:,} rows) {r['vmfleet_status_seconds']} s.",
        ]
    else:
        lines += ["", "Through Kubernetes: not part of this run (`--no-kube`)."]
    return lines


def _where_test_driver(r: dict) -> str:
    if r.get("uri", "test:///default") == "test:///default":
        return f"test:///default, inside each measured process: its RSS holds the driver's {r['n']:,} domains too"
    return (
        f"{r['uri']}: served by libvirtd, so that each measured process holds only its client, as an operator "
        "talking to its KvmHosts does"
    )


MANY_HEADING = "## Many fleets through Kubernetes"


def many_section(r: dict) -> list[str]:
    """bench/many.py's section, from its heading to its last line."""
    return [
        MANY_HEADING,
        "",
        f"{r['fleets']:,} fleets of {r['vms_per_fleet']} VMs applied at once on one CloneStore ({r['driver']}) and one "
        "KvmHost (libvirt's test driver), through the real kube-apiserver and `vmfleet run` as deploy/'s "
        f"ServiceAccount, resync {r['resync_seconds']} s; Ready as a watch sees it (bench/many.py, {r['date']}, "
        f"{r['cpus']} CPUs, load "
        f"{r['load_before']} at the start). The reference is one {r['vms_per_fleet']}-VM fleet's first pass "
        "standalone (reconcile_fleet in process, the same driver; the median of 9) times the number of fleets. The "
        "operator's user and system CPU over a resync round (every fleet once, at most VMFLEET_RESYNC_RATE passes a "
        f"second: {r['round_seconds']} s) once every fleet is Ready: the first round, which writes each fleet's first "
        "space figures, and the next one, an idle operator's for good.",
        "",
        "| fleets | VMs | kubectl apply to all Ready, s | reference, s | ratio | first round, cores "
        "| idle operator, cores | operator peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['fleets']:,} | {r['fleets'] * r['vms_per_fleet']:,} | {r['ready_seconds']} | {r['reference_seconds']} | "
        f"{r['over_reference']} | {r['first_round_cores']} | {r['idle_cores']} | {r['operator_peak_rss_mib']} MiB |",
        "",
        "Is the time linear in the fleets? Before the batch above, through the same operator and apiserver, one fleet "
        f"and then {r['small_batch_fleets']} were applied, each batch with its own template in a namespace of its "
        "own; the seconds each further fleet adds (a batch's time less the one fleet's, over the fleets past the "
        "first), in the small batch and in the big one:",
        "",
        "| one fleet, s | small batch | its s | s per fleet | big batch | its s | s per fleet | big over small |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['one_fleet_ready_seconds']} | {r['small_batch_fleets']:,} | {r['small_batch_ready_seconds']} | "
        f"{r['seconds_per_fleet_small_batch']} | {r['fleets']:,} | {r['ready_seconds']} | {r['seconds_per_fleet']} | "
        f"{r['over_small_batch_slope']} |",
        "",
        "Against the time a fleet takes through the same operator and apiserver "
        f"({r['seconds_per_fleet_small_batch']} s each in the small batch), {r['fleets']:,} fleets would take "
        f"{r['fleets'] * r['seconds_per_fleet_small_batch']:.1f} s; they took {r['ready_seconds']} s: "
        f"**{r['ready_seconds'] / (r['fleets'] * r['seconds_per_fleet_small_batch']):.3f}×** (target: within 1.2×). "
        f"Against the reference above, the engine's work in process with no apiserver (whose CPU shares the same "
        f"{r['cpus']} cores), {r['over_reference']}×.",
        "",
        "Where the CPU went until every fleet was Ready (user and system time of each process), against the "
        "reference's CPU (one fleet's first pass in process, test driver included, times the number of fleets), and "
        "the writes the apiserver served (its apiserver_request_total, POST/PATCH/PUT/DELETE):",
        "",
        "| operator CPU, s | kube-apiserver CPU, s | reference CPU, s | API writes per fleet | writes by resource |",
        "|---:|---:|---:|---:|---|",
        f"| {r['operator_cpu_seconds_to_ready']} | {r['apiserver_cpu_seconds_to_ready']} | "
        f"{r['reference_cpu_seconds']} | {r['api_writes_per_fleet']} | "
        + ", ".join(f"{k} {n:,}" for k, n in r["api_writes_to_ready"].items())
        + " |",
    ]


RESYNC_HEADING = "## A resync of many fleets on one store"


def resync_section(r: dict) -> list[str]:
    """bench/resync.py's section, from its heading to its last line."""
    lines = [
        RESYNC_HEADING,
        "",
        f"Fleets of {r['vms_per_fleet']} VMs on one GPFS store (the simulator over SSH), each on its own libvirt "
        "test-driver host; a round is every fleet's resync pass once, spread over a resync period, with nothing to "
        "do. *Before*: each pass measured its own files with a command of its own, and its status changed at every "
        "pass (measuredAt), so the handler patched it whole and the apiserver stored it. *After*: one measurement "
        "per store serves every fleet's pass of the period (engine/measure.py) and only status fields that changed "
        "are sent. The same fleets, a round of each in turn, in one run per size (bench/resync.py, "
        f"{r['date']}, {r['cpus']} CPUs, load {r['load_before']} at the start, {r['rounds']} round(s) of each: "
        "counts of the last, all alike; seconds their median). The SSH commands left after are each "
        "fleet's own observation (its parent looked at, its directory listed, its record read: 5 a pass), "
        "unchanged here. Round seconds are the engine's in-process cost (no network), noisy on this shared machine.",
        "",
        "| fleets | VMs | SSH commands before | after | measuring commands before | after "
        "| status patches before | after | status writes before | after | bytes patched before | after "
        "| round s before | after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        b, a = row["before"], row["after"]
        cells = [row["fleets"], row["vms"]]
        for key in ("ssh_commands", "measuring_commands", "status_patches", "status_writes", "patch_bytes"):
            cells += [f"{b[key]:,}", f"{a[key]:,}"]
        cells += [b["seconds"], a["seconds"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def splice(text: str, section: list[str]) -> str:
    """docs/benchmarks.md with `section` in place of the one under its heading, or before the Kubernetes one."""
    lines = text.split("\n")
    heading = section[0]
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        while end > start and lines[end - 1] == "":
            end -= 1
    else:
        start = end = next(i for i, line in enumerate(lines) if line.startswith("## Through Kubernetes"))
        section = [*section, ""]
    return "\n".join([*lines[:start], *section, *lines[end:]])
