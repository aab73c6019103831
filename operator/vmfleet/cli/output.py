"""Printing objects: a table for people, JSON and YAML for programs."""

from __future__ import annotations

import json
from typing import Any, Sequence

import yaml


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
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def fleet_table(obj: dict[str, Any]) -> str:
    status = obj.get("status", {})
    meta = obj["metadata"]
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    logical, allocated = status.get("logicalBytes", 0), status.get("allocatedBytes", 0)
    head = (
        f"VmFleet {meta.get('namespace', 'default')}/{meta['name']}: "
        f"{status.get('readyReplicas', 0)}/{obj['spec']['replicas']} ready ({ready.get('reason', '?')}) · "
        f"logical {human_bytes(logical)} · allocated {human_bytes(allocated)} · "
        f"saved {human_bytes(status.get('savedBytes', 0))} ({status.get('savingsRatio', 0) * 100:.2f}%)"
    )
    rows = [("NAME", "HOST", "STATE", "LOGICAL", "ALLOCATED", "CLONE")]
    for c in status.get("clones", []):
        rows.append((c["name"], c.get("host", "-"), c.get("state", "-"), human_bytes(c.get("logicalBytes")),
                     human_bytes(c.get("allocatedBytes")), c.get("path", "-")))
    problems = [f"  {c['type']}: {c['message']}" for c in status.get("conditions", [])
                if c["type"] in ("Stalled", "Degraded") and c["status"] == "True"]
    return "\n".join([head, table(rows), *problems])


def render(objects: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(objects, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump_all(objects, sort_keys=False).rstrip()
    return "\n\n".join(fleet_table(o) for o in objects if o["kind"] == "VmFleet")
