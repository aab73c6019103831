"""A fleet's status and Events, from what was observed, planned and done: what a human and kstatus read."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

from ..api import reasons
from ..api.schema import MAX_ADDRESSES, OPTIONAL_CLONE_FIELDS
from ..api.status import condition_of
from ..planner import DomainAction, Op, ParentAction, Plan, Severity, listing, summarise
from ..storage import Space
from .execute import Outcome
from .operations import OPERATIONS
from .snapshot import Snapshot


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str

    def __post_init__(self) -> None:
        assert reasons.known(self.reason), f"reason {self.reason!r} is not in api/reasons.py"


def events_for(
    snap: Snapshot,
    plan: Plan,
    outcomes: list[Outcome],
    previous_status: Mapping[str, Any] | None,
    status: Mapping[str, Any] | None,
) -> list[Event]:
    """One Event per kind of action done (not one per VM), one per failure, one per new problem."""
    desired = snap.desired
    done: dict[Op, list[str]] = defaultdict(list)
    events: list[Event] = []
    for outcome in outcomes:
        a = outcome.action
        who = desired.parent if isinstance(a, ParentAction) else desired.vm_name(a.ordinal)
        if outcome.ok:
            done[a.op].append(who)
            if outcome.note is not None:
                events.append(Event("Warning", reasons.MIGRATED_COLD, f"{who}: {outcome.note}"))
        else:
            where = f" on {a.host}" if isinstance(a, DomainAction) else ""
            events.append(Event("Warning", OPERATIONS[a.op].failed, f"{who}{where}: {outcome.error}"))
    summary = []
    for op, names in done.items():
        how = OPERATIONS[op]
        if op is Op.PREPARE_PARENT:
            assert desired.template is not None
            detail = f"{how.did} {desired.parent} from {desired.template.image_path}"
        else:
            detail = f"{how.did} {len(names)} VM(s): {listing(names)}"
        summary.append(Event("Normal", how.done, detail))
    events = summary + events
    updated = condition_of(status, "Updated")
    if updated.get("reason") == reasons.ROLLOUT_STALLED != condition_of(previous_status, "Updated").get("reason"):
        events.append(Event("Warning", reasons.ROLLOUT_STALLED, str(updated.get("message", ""))))
    before = _condition_messages(previous_status)
    after = _condition_messages(status)
    for kind in ("Stalled", "Degraded"):
        if kind in after and after[kind] != before.get(kind):
            for p, text in summarise(plan.problems):
                if p.severity.value == kind:
                    events.append(Event("Warning", p.reason, text))
    return events


def _condition_messages(status: Mapping[str, Any] | None) -> dict[str, str]:
    return {
        c["type"]: c.get("message", "") for c in (status or {}).get("conditions", []) or [] if c.get("status") == "True"
    }


def condition(
    type_: str, true: bool, reason: str, message: str, generation: int, previous: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    assert reasons.known(reason), f"reason {reason!r} is not in api/reasons.py"
    status = "True" if true else "False"
    old = condition_of(previous, type_)
    since = old["lastTransitionTime"] if old.get("status") == status and old.get("lastTransitionTime") else now
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def _summary(problems: list[str]) -> str:
    return "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")


def fleet_status(
    snap: Snapshot,
    plan: Plan,
    outcomes: list[Outcome],
    space: Mapping[str, Space],
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    desired, seen = snap.desired, snap.seen
    fleet = desired.fleet
    wants = {w.ordinal: w for w in desired.wants}
    problem_state = {p.ordinal: p.vm_state for p in plan.problems if p.ordinal is not None}
    restart = set(plan.restart_required)
    clones: list[dict[str, Any]] = []
    attention: set[int] = set()  # VMs not ready as they are: their entries are the last left out
    existing = ready = 0
    logical = allocated = 0
    for o in sorted(set(wants) | set(seen.clones) | set(seen.domains)):
        domain = seen.domains.get(o)
        entry: dict[str, Any] = {"name": fleet.vm_name(o), "ordinal": o}
        host = domain.host if domain else plan.placement.get(o)
        if host:
            entry["host"] = host
        path = snap.clone(o)
        if o in seen.clones:
            entry["file"] = path.rsplit("/", 1)[1]
        entry["state"] = problem_state.get(o) or (domain.state if domain else "Pending")
        if o in restart:
            entry["restartRequired"] = True
        if domain or o in wants:
            entry["uuid"] = snap.domain_uuid(o)
            if desired.template and desired.template.network:
                entry["mac"] = desired.mac(o)
        if o in snap.addresses:
            entry["addresses"] = list(snap.addresses[o][:MAX_ADDRESSES])  # an IPv4 and an IPv6 at most
        if path in space:
            sizes = [space[f] for f in snap.vm_files(o) if f in space]
            entry["logicalBytes"] = sum(s.logical for s in sizes)
            entry["allocatedBytes"] = sum(s.allocated for s in sizes)
            logical += entry["logicalBytes"]
            allocated += entry["allocatedBytes"]
        if o in plan.updated:
            entry["revision"] = desired.revision
        elif domain and (domain.live_revision if domain.active else domain.revision):
            entry["revision"] = domain.live_revision if domain.active else domain.revision
        fine = False
        if domain and o in seen.clones:
            existing += 1
            if o in plan.ready and o not in problem_state:
                ready += 1
                fine = o in wants and o not in restart
        if not fine:
            attention.add(o)
        clones.append(entry)

    vms_by_host: dict[str, int] = defaultdict(int)
    for c in clones:
        if c.get("host"):
            vms_by_host[c["host"]] += 1
    for d in seen.duplicates:  # a stale definition left on another host keeps that host too
        vms_by_host[d.host] += 1

    stalled = [text for p, text in summarise(plan.problems) if p.severity is Severity.STALLED]
    degraded = [text for p, text in summarise(plan.problems) if p.severity is Severity.DEGRADED]
    failures = [
        f"{o.action.op.value} {'' if isinstance(o.action, ParentAction) else fleet.vm_name(o.action.ordinal)}"
        f": {o.error}"
        for o in outcomes
        if not o.ok
    ]
    degraded += failures
    replicas = fleet.replicas
    gen = fleet.meta.generation
    rollout = _rollout(snap, plan, previous, now)
    if rollout.stalled:
        stalled.append(rollout.message)
    all_ready = ready == replicas and existing == replicas and not stalled and not degraded and not rollout.rolling
    stalled_reason = next((p.reason for p in plan.problems if p.severity is Severity.STALLED), "")
    if rollout.stalled:
        stalled_reason = stalled_reason or reasons.ROLLOUT_STALLED
    degraded_reason = next(
        (p.reason for p in plan.problems if p.severity is Severity.DEGRADED),
        next((OPERATIONS[o.action.op].failed for o in outcomes if not o.ok), ""),
    )
    conditions = [
        condition(
            "Ready",
            all_ready,
            reasons.ALL_REPLICAS_READY
            if all_ready
            else (stalled_reason or (reasons.ROLLING_UPDATE if rollout.rolling else reasons.REPLICAS_NOT_READY)),
            f"{ready}/{replicas} VMs ready" + (f"; {rollout.message}" if rollout.rolling else ""),
            gen,
            previous,
            now,
        ),
        condition(
            "Reconciling",
            not all_ready and not stalled,
            (reasons.ROLLING_UPDATE if rollout.rolling else reasons.PROGRESSING)
            if not all_ready and not stalled
            else reasons.CONVERGED
            if all_ready
            else reasons.STALLED,
            f"{ready}/{replicas} VMs ready; {len(plan.actions)} action(s) planned this pass",
            gen,
            previous,
            now,
        ),
        condition(
            "Stalled", bool(stalled), stalled_reason or reasons.NOT_STALLED, _summary(stalled), gen, previous, now
        ),
        condition(
            "Degraded",
            bool(degraded),
            degraded_reason if degraded else reasons.NOT_DEGRADED,
            _summary(degraded),
            gen,
            previous,
            now,
        ),
    ]
    if restart:  # present only while true, as KubeVirt's VirtualMachine has it
        conditions.append(
            condition(
                "RestartRequired",
                True,
                reasons.DEFINITION_CHANGED,
                f"{listing([fleet.vm_name(o) for o in sorted(restart)])}: running an older definition; it takes "
                "effect when the VM is restarted",
                gen,
                previous,
                now,
            )
        )
    conditions.append(
        condition(
            "Updated", rollout.reason == reasons.ROLLOUT_COMPLETE, rollout.reason, rollout.message, gen, previous, now
        )
    )
    status = {
        "observedGeneration": gen,
        "conditions": conditions,
        "replicas": existing,
        "readyReplicas": ready,
        "updatedReplicas": len(plan.updated),
        "updateRevision": desired.revision,
        "currentRevision": rollout.current,
        "updateProgressedAt": rollout.progressed_at,
        "logicalBytes": logical,
        "allocatedBytes": allocated,
        # A qcow2 overlay written in full is larger than its disk: saved is then 0, never negative.
        "savedBytes": max(0, logical - allocated),
        "savingsRatio": round(max(0, logical - allocated) / logical, 4) if logical else 0.0,
        "measuredAt": now,
        "store": desired.store.meta.name,
        "parent": desired.parent,
        "clonesByParent": [{"parent": k, "clones": v} for k, v in sorted(snap.clones_by_parent().items())],
        "cloneDirectory": desired.directory,
        "vmsByHost": [{"host": h, "vms": n} for h, n in sorted(vms_by_host.items())],
        "compactedFields": list(OPTIONAL_CLONE_FIELDS),
        "clonesOmitted": len(clones),
    }
    rest = len(json.dumps(status, separators=(",", ":")))  # at its longest: what the entries may not take
    status["compactedFields"], status["clonesOmitted"] = compact(
        clones, OBJECT_BUDGET - desired.fleet.stored_bytes - rest, attention
    )
    # Compared with the last status entry by entry as it was written: compacted alike while the fleet is the same.
    status["measuredAt"] = _measured_at(clones, logical, allocated, previous, now)
    status["clones"] = clones
    return status


def _measured_at(
    clones: list[dict[str, Any]], logical: int, allocated: int, previous: Mapping[str, Any] | None, now: str
) -> str:
    """When the figures shown last changed: re-measured figures that are the same leave the status as it was, so
    an unchanged fleet is not written at every resync (each write is a watch event to every watcher)."""
    prev = previous or {}

    def figures(entries: Any) -> list[tuple[Any, Any, Any]]:
        return [(c.get("ordinal"), c.get("logicalBytes"), c.get("allocatedBytes")) for c in entries or []]

    totals = (prev.get("logicalBytes"), prev.get("allocatedBytes")) == (logical, allocated)
    same = totals and figures(prev.get("clones")) == figures(clones)
    return str(prev["measuredAt"]) if same and prev.get("measuredAt") else now


def status_changes(previous: Mapping[str, Any] | None, status: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level fields of `status` that differ from `previous`: the merge patch to write (empty: no write).
    A field `previous` lacks and `status` sets to None is no change (merged, null removes)."""
    prev = previous or {}
    return {k: v for k, v in status.items() if prev.get(k) != v}


@dataclass(frozen=True)
class Rollout:
    """Where the update to the fleet's revision stands, for condition Updated and the revision fields."""

    rolling: bool  # vmfleet is bringing VMs to the revision (RollingUpdate), not stalled
    stalled: bool  # ... and has gone progressDeadlineSeconds without progress
    reason: str
    message: str
    current: str
    progressed_at: str


def _rollout(snap: Snapshot, plan: Plan, previous: Mapping[str, Any] | None, now: str) -> Rollout:
    desired, prev = snap.desired, previous or {}
    fleet, revision = desired.fleet, desired.revision
    pending = sorted(plan.pending)
    progressed = (
        prev.get("updateRevision") != revision
        or len(plan.updated) > int(prev.get("updatedReplicas") or 0)
        or not prev.get("updateProgressedAt")
    )
    progressed_at = now if progressed else str(prev["updateProgressedAt"])
    on = f"{len(plan.updated)}/{fleet.replicas} VMs on revision {revision}"
    unseen = [
        p
        for p in plan.problems
        if p.ordinal is not None and p.ordinal not in plan.updated and p.vm_state in ("Unknown", "Lost")
    ]
    if not pending and unseen:  # their revision cannot be known: not said to be done
        who = listing([fleet.vm_name(p.ordinal) for p in unseen if p.ordinal is not None])
        message = f"{on}; {who}: not seen, their revision is unknown"
        return Rollout(False, False, unseen[0].reason, message, str(prev.get("currentRevision") or ""), progressed_at)
    current = _current(snap, plan, prev)
    if not pending:  # VMs left behind are below a partition
        return Rollout(False, False, reasons.ROLLOUT_COMPLETE, on, current or revision, progressed_at)
    names = listing([fleet.vm_name(o) for o in pending])
    if fleet.update.type != "RollingUpdate" or plan.pending <= plan.waiting:
        # Nothing vmfleet takes down is left: the rest wait for a person, however long.
        why = "updateStrategy OnDelete" if fleet.update.type != "RollingUpdate" else "runStrategy Manual"
        message = f"{on}; {names}: on an older revision until stopped or reimaged ({why})"
        return Rollout(False, False, reasons.UPDATE_WAITING, message, current, progressed_at)
    names = listing([fleet.vm_name(o) for o in pending if o not in plan.waiting])
    # Paused VMs take the budget until a person resumes them.
    held = f"; {listing([fleet.vm_name(o) for o in sorted(plan.held)])} paused: counted as down" if plan.held else ""
    waited = _seconds_between(progressed_at, now)
    if waited > fleet.progress_deadline:
        message = (
            f"{on}; no VM became ready on it for {waited} s (progressDeadlineSeconds {fleet.progress_deadline}); "
            f"{names} still to update{held}"
        )
        return Rollout(False, True, reasons.ROLLOUT_STALLED, message, current, progressed_at)
    message = f"{on}; updating {names} (maxUnavailable {desired.update().budget}){held}"
    return Rollout(True, False, reasons.ROLLING_UPDATE, message, current, progressed_at)


def _current(snap: Snapshot, plan: Plan, prev: Mapping[str, Any]) -> str:
    """The revision the VMs not on the update run, as a StatefulSet's currentRevision: the one it said before
    while a VM still runs it, else the one most of them run; "" when every VM seen is on the update."""
    behind = [r for o, r in sorted(_revisions(snap).items()) if o not in plan.updated and r != snap.desired.revision]
    said = str(prev.get("currentRevision") or "")
    if not behind:
        return said if plan.pending else ""  # the revisions of VMs still to update are not known
    return said if said in behind else max(sorted(set(behind)), key=behind.count)


def _revisions(snap: Snapshot) -> dict[int, str]:
    """The revision each VM runs (a running VM its live definition's), where known."""
    seen = {o: vm.live_revision or vm.revision for o, vm in snap.seen.domains.items()}
    return {o: r for o, r in seen.items() if r and o < snap.desired.fleet.replicas}


def rollout_goes_on(status: Mapping[str, Any]) -> bool:
    """A rolling update in progress, not stalled: worth looking again in seconds."""
    return condition_of(status, "Updated").get("reason") == reasons.ROLLING_UPDATE


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _seconds_between(earlier: str, later: str) -> int:
    try:
        return int((_time(later) - _time(earlier)).total_seconds())
    except ValueError:
        return 0


# etcd refuses an object over 1.5 MiB (1,572,864 B), and a status write refused leaves the fleet's status stale for
# good. Whatever the rest of the object and of the status leaves of OBJECT_BUDGET is the room of the per-VM entries:
# the biggest fleets' leave out what can be found elsewhere, field by field in OPTIONAL_CLONE_FIELDS' order
# (status.compactedFields says which), then whole entries, the VMs that need a look kept (status.clonesOmitted says
# how many). The totals, and the counts by host and by parent, always count every VM.
OBJECT_BUDGET = 1_200_000  # 76% of the limit: 10,000 VMs of usual names keep their ordinal, host, state and space


def compact(clones: list[dict[str, Any]], room: int, attention: Set[int] = frozenset()) -> tuple[list[str], int]:
    """Drop OPTIONAL_CLONE_FIELDS from every entry, one field at a time, until the entries fit in `room` bytes; then
    drop whole entries, those of VMs not in `attention` and of the highest ordinals first. (fields dropped, entries
    dropped); `clones` keeps its order."""
    dropped: list[str] = []
    sizes = [len(json.dumps(c, separators=(",", ":"))) + 1 for c in clones]
    for name in OPTIONAL_CLONE_FIELDS:
        if sum(sizes) <= room:
            return dropped, 0
        for i, c in enumerate(clones):
            if c.pop(name, None) is not None:
                sizes[i] = len(json.dumps(c, separators=(",", ":"))) + 1
        dropped.append(name)
    total = sum(sizes)
    if total <= room:
        return dropped, 0
    # The entries left out: the latest ordinals among the VMs that are fine, then among the others.
    order = sorted(range(len(clones)), key=lambda i: (clones[i]["ordinal"] in attention, -clones[i]["ordinal"]))
    out: set[int] = set()
    for i in order:
        if total <= room:
            break
        out.add(i)
        total -= sizes[i]
    clones[:] = [c for i, c in enumerate(clones) if i not in out]
    return dropped, len(out)


def blocked_status(
    generation: int, previous: Mapping[str, Any] | None, kind: str, reason: str, message: str, now: str
) -> dict[str, Any]:
    """Status when a pass could not do its work, by kind: Waiting (on a reference that may yet appear: in
    progress, retried in seconds), Degraded (a fault the operator retries), Stalled (only a spec change helps).
    What the last good pass recorded stays (the status is merged, not replaced)."""
    return {
        "observedGeneration": generation,
        "conditions": summary_conditions(kind, reason, message, generation, previous, now),
    }


def summary_conditions(
    kind: str, reason: str, message: str, generation: int, previous: Mapping[str, Any] | None, now: str
) -> list[dict[str, Any]]:
    """Ready, Reconciling, Stalled and Degraded for one state (Ready, Waiting, Degraded or Stalled), as kstatus,
    Argo CD and `kubectl wait` read them."""
    ready = kind == "Ready"
    return [
        condition("Ready", ready, reason, message, generation, previous, now),
        condition(
            "Reconciling",
            kind in ("Waiting", "Degraded"),
            reason if not ready else reasons.CONVERGED,
            message if not ready else "",
            generation,
            previous,
            now,
        ),
        condition(
            "Stalled",
            kind == "Stalled",
            reason if kind == "Stalled" else reasons.NOT_STALLED,
            message if kind == "Stalled" else "",
            generation,
            previous,
            now,
        ),
        condition(
            "Degraded",
            kind == "Degraded",
            reason if kind == "Degraded" else reasons.NOT_DEGRADED,
            message if kind == "Degraded" else "",
            generation,
            previous,
            now,
        ),
    ]
