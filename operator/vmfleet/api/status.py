"""Reading the status the operator writes (its shape is part of the API): used by the operator, the CLI and metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def condition_of(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any]:
    """The condition of that type, or {} when there is none yet."""
    return next((c for c in (status or {}).get("conditions", []) or [] if c.get("type") == type_), {})


def is_ready(status: Mapping[str, Any] | None) -> bool:
    return condition_of(status, "Ready").get("status") == "True"


def clones_by_parent(status: Mapping[str, Any] | None) -> dict[str, int]:
    """Clones a fleet's status says it has, per clone parent: what each parent must outlive."""
    out: dict[str, int] = {}
    for entry in (status or {}).get("clonesByParent", []) or []:
        out[entry["parent"]] = out.get(entry["parent"], 0) + int(entry["clones"])
    return out


def clones_by_store_and_parent(status: Mapping[str, Any] | None) -> dict[tuple[str, str], int]:
    """The same per (store, parent): parent paths repeat across stores. Store "" when the status does not say
    (such clones count for every store)."""
    store = (status or {}).get("store") or ""
    return {(store, parent): n for parent, n in clones_by_parent(status).items()}


def clone_count(status: Mapping[str, Any] | None) -> int:
    """Clones a fleet's status says exist: what its store must outlive. Counted by parent (status.clones of the
    biggest fleets lists some VMs only) and by entry (a status an older operator wrote, whose counts by parent a
    merge left behind): the higher of the two, a count too high keeping a store longer, never too short."""
    s = status or {}
    listed = sum(1 for c in s.get("clones", []) or [] if "file" in c)
    return max(listed, sum(clones_by_parent(s).values()))


def vms_by_host(status: Mapping[str, Any] | None) -> dict[str, int]:
    """The fleet's VMs per KvmHost: what keeps a host from being deleted. From status.vmsByHost (every VM) and from
    the entries, host by host the higher (as clone_count)."""
    s = status or {}
    hosts: dict[str, int] = {}
    for entry in s.get("clones", []) or []:
        if entry.get("host"):
            hosts[entry["host"]] = hosts.get(entry["host"], 0) + 1
    for e in s.get("vmsByHost", []) or []:
        hosts[e["host"]] = max(hosts.get(e["host"], 0), int(e["vms"]))
    return hosts


def parent_in_use(status: Mapping[str, Any] | None) -> tuple[str, str, bool]:
    """(store, parent its last pass cloned from, whether the status counts its clones per parent yet): a fleet
    that never wrote counts may be making clones now, of any parent of its store."""
    s = status or {}
    return s.get("store") or "", s.get("parent") or "", "clonesByParent" in s
