"""`vmfleet apply`: the operator's reconcile, run once over manifests from files, with no cluster."""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Mapping

from ..api import VmFleet
from ..api.types import SecretRef
from ..engine import Runtime, host_status, reconcile_fleet, reconcile_template, store_status
from ..engine.execute import Progress
from ..api.status import clones_by_parent
from ..engine.fleet import FleetResult
from ..engine.status import Event
from ..planner import summarise
from ..settings import Settings
from ..storage import SecretReader, StoreError, parent_path
from .manifests import Loaded, Secret, World


def _log(kind: str, name: str, events: Iterable[Event]) -> None:
    for e in events:
        print(f"{e.type:7} {e.reason:18} {kind} {name}: {e.message}", file=sys.stderr)


def plan_text(fleet: VmFleet, result: FleetResult) -> str:
    lines = [f"VmFleet {fleet.meta.namespace}/{fleet.meta.name}: {len(result.plan.actions)} action(s)"]
    for a in result.plan.actions:
        who = fleet.vm_name(a.ordinal) if a.ordinal is not None else "(template)"
        lines.append(f"  {a.op.value:15} {who:20} {a.host or '':12} {a.why}")
    for p, text in summarise(result.plan.problems):
        lines.append(f"  ! {p.severity.value}/{p.reason}: {text}")
    return "\n".join(lines)


def secret_reader(secrets: Mapping[tuple[str, str], Secret]) -> SecretReader:
    def read(ref: SecretRef) -> Mapping[str, str]:
        found = secrets.get((ref.namespace, ref.name))
        if found is None:
            raise StoreError(f"Secret {ref.namespace}/{ref.name} (spec.ssh.secretRef) is not in the manifests")
        return found.data

    return read


async def apply(loaded: list[Loaded], secrets: Mapping[tuple[str, str], Secret] | None = None,
                dry_run: bool = False, progress: Callable[[VmFleet], Progress] | None = None,
                ) -> tuple[list[dict[str, Any]], list[FleetResult]]:
    """Converge every fleet in the manifests; the objects with their status, in input order.
    Secrets are read, never printed."""
    world = World.of(item.resource for item in loaded)
    runtime = Runtime(secret_reader(secrets or {}), Settings.from_env())
    statuses: dict[int, dict[str, Any]] = {}
    results: list[FleetResult] = []
    try:
        by_id = {id(item.resource): i for i, item in enumerate(loaded)}
        hosts = list(world.hosts.values())
        for fleet in world.fleets:
            template = world.template_of(fleet)
            result = await reconcile_fleet(runtime, fleet, template, world.stores[template.store], hosts,
                                           dry_run=dry_run, progress=progress(fleet) if progress else None)
            _log("VmFleet", f"{fleet.meta.namespace}/{fleet.meta.name}", result.events)
            statuses[by_id[id(fleet)]] = result.status
            results.append(result)
        for (ns, name), template in world.templates.items():
            if dry_run:
                continue
            parent = parent_path(template.image_path, template.image_format)
            count = sum(clones_by_parent(r.status).get(parent, 0) for r in results
                        if r.status.get("store") in (None, template.store))
            status, events = await reconcile_template(runtime, template, world.stores[template.store], count, None)
            _log("VmTemplate", f"{ns}/{name}", events)
            statuses[by_id[id(template)]] = status
        for host in hosts:
            statuses[by_id[id(host)]] = await host_status(runtime, host, None)
        for store in world.stores.values():
            statuses[by_id[id(store)]] = await store_status(runtime, store, None)
    finally:
        await runtime.close()
    objects = []
    for i, item in enumerate(loaded):
        obj = dict(item.doc)
        obj["status"] = statuses.get(i, {})
        objects.append(obj)
    return objects, results


__all__ = ["apply", "plan_text"]
