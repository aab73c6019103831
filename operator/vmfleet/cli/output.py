"""Printing objects: a table for people, JSON and YAML for programs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

from ..api import reasons
from ..api.reasons import HINTS
from ..api.status import clone_count, condition_of


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _ready_reason(status: dict[str, Any]) -> str:
    return str(condition_of(status, "Ready").get("reason", reasons.NOT_OBSERVED))


def fleets_table(objects: list[dict[str, Any]]) -> str:
    """One row per fleet and a total: what `vmfleet status` lists and `vmfleet apply` ends with."""
    rows = [("NAMESPACE", "NAME", "READY", "CLONES", "LOGICAL", "ALLOCATED", "SAVED", "STATUS")]
    totals = [0, 0, 0, 0, 0]
    for obj in objects:
        status = obj.get("status", {})
        clones = clone_count(status)
        numbers = [
            status.get("readyReplicas", 0),
            obj["spec"]["replicas"],
            clones,
            status.get("logicalBytes", 0),
            status.get("allocatedBytes", 0),
        ]
        totals = [t + n for t, n in zip(totals, numbers, strict=True)]
        rows.append(
            (
                obj["metadata"].get("namespace", "default"),
                obj["metadata"]["name"],
                f"{numbers[0]}/{numbers[1]}",
                str(clones),
                human_bytes(numbers[3]),
                human_bytes(numbers[4]),
                _saved(numbers[3], numbers[4]),
                _ready_reason(status),
            )
        )
    if len(objects) > 1:
        rows.append(
            (
                "",
                "TOTAL",
                f"{totals[0]}/{totals[1]}",
                str(totals[2]),
                human_bytes(totals[3]),
                human_bytes(totals[4]),
                _saved(totals[3], totals[4]),
                "",
            )
        )
    return table(rows)


def _saved(logical: int, allocated: int) -> str:
    return f"{human_bytes(logical - allocated)} ({(logical - allocated) * 100 / logical:.2f}%)" if logical else "-"


def fleet_table(obj: dict[str, Any]) -> str:
    status = obj.get("status", {})
    meta = obj["metadata"]
    logical, allocated = status.get("logicalBytes", 0), status.get("allocatedBytes", 0)
    head = (
        f"VmFleet {meta.get('namespace', 'default')}/{meta['name']}: "
        f"{status.get('readyReplicas', 0)}/{obj['spec']['replicas']} ready ({_ready_reason(status)}) · "
        f"logical {human_bytes(logical)} · allocated {human_bytes(allocated)} · "
        f"saved {human_bytes(status.get('savedBytes', 0))} ({status.get('savingsRatio', 0) * 100:.2f}%)"
    )
    clones = status.get("clones", [])
    networked = any("mac" in c for c in clones)  # where to ssh: shown when the VMs have a NIC
    rows: list[tuple[str, ...]] = [
        ("NAME", "HOST", "STATE", "LOGICAL", "ALLOCATED", "CLONE", *(("MAC", "IP") if networked else ()))
    ]
    for c in clones:
        row = (
            c.get("name") or f"{meta['name']}-{c['ordinal']}",
            c.get("host", "-"),
            c.get("state", "-"),
            human_bytes(c.get("logicalBytes")),
            human_bytes(c.get("allocatedBytes")),
            c.get("file", "-"),
        )
        rows.append(row + ((c.get("mac", "-"), ",".join(c.get("addresses", [])) or "-") if networked else ()))
    where = [f"clones in {status['cloneDirectory']}/"] if status.get("cloneDirectory") else []
    if status.get("compactedFields"):  # the biggest fleets: kept out of the object for etcd's size limit
        where.append(f"per-VM {', '.join(status['compactedFields'])} left out of the status (size)")
    if status.get("clonesOmitted"):
        where.append(f"{status['clonesOmitted']} VMs not listed (size; the VMs that need a look are listed first)")
    return "\n".join([head, table(rows), *where, *problems(status)])


def problems(status: dict[str, Any]) -> list[str]:
    """The conditions that say something is wrong, each with what to do about it."""
    lines = []
    for c in status.get("conditions", []):
        if c["status"] != "True" or c["type"] not in ("Stalled", "Degraded", "Reconciling", "RestartRequired"):
            continue
        if c["type"] == "Reconciling" and c.get("reason") in (reasons.PROGRESSING, reasons.CONVERGED):
            continue
        lines.append(f"  {c['type']} ({c.get('reason', '')}): {c.get('message', '')}")
        if c.get("reason") in HINTS:
            lines.append(f"    hint: {HINTS[c['reason']]}")
    return lines


def render(objects: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(objects, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump_all(objects, sort_keys=False).rstrip()
    fleets = [o for o in objects if o["kind"] == "VmFleet"]
    return "\n\n".join([*(fleet_table(o) for o in fleets), fleets_table(fleets)] if fleets else [])
