"""`vmfleet apply`: the operator's reconcile, run once over manifests from files, with no cluster."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..api import VmFleet, VmTemplate
from ..api.status import clones_by_store_and_parent
from ..api.types import SecretRef
from ..credentials import SecretData, SecretReader, SecretUnreadable
from ..engine import Runtime, host_status, reconcile_fleet, reconcile_template, store_status
from ..engine.execute import Progress
from ..engine.fleet import FleetResult
from ..engine.status import Event
from ..planner import CloneAction, DomainAction, Op, summarise
from ..settings import Settings
from .manifests import Loaded, Secret, resolve


def _log(kind: str, name: str, events: Iterable[Event]) -> None:
    for e in events:
        print(f"{e.type:7} {e.reason:18} {kind} {name}: {e.message}", file=sys.stderr)


def plan_text(fleet: VmFleet, result: FleetResult) -> str:
    lines = [f"VmFleet {fleet.meta.namespace}/{fleet.meta.name}: {len(result.plan.actions)} action(s)"]
    for a in result.plan.actions:
        who, where = "(template)", ""
        if isinstance(a, DomainAction):
            who, where = fleet.vm_name(a.ordinal), a.host
        elif isinstance(a, CloneAction):
            who = fleet.vm_name(a.ordinal)
            where = result.plan.placement.get(a.ordinal, "") if a.op is Op.CREATE_CLONE else ""
        lines.append(f"  {a.op.value:15} {who:20} {where:12} {a.why}")
    for p, text in summarise(result.plan.problems):
        lines.append(f"  ! {p.severity.value}/{p.reason}: {text}")
    return "\n".join(lines)


def secret_reader(secrets: Mapping[tuple[str, str], Secret]) -> SecretReader:
    def read(ref: SecretRef) -> Mapping[str, str]:
        found = secrets.get((ref.namespace, ref.name))
        if found is None:
            raise SecretUnreadable(ref, "is not in the manifests")
        return SecretData(found.data, found.type)

    return read


async def apply(
    loaded: list[Loaded],
    secrets: Mapping[tuple[str, str], Secret] | None = None,
    dry_run: bool = False,
    progress: Callable[[VmFleet], Progress] | None = None,
    settings: Settings | None = None,
) -> tuple[list[dict[str, Any]], list[FleetResult]]:
    """Converge every fleet in the manifests; the objects with their status, in input order.
    Secrets are read, never printed."""
    catalog, fleets = resolve(item.resource for item in loaded)
    runtime = Runtime(secret_reader(secrets or {}), settings or Settings())
    statuses: dict[int, dict[str, Any]] = {}
    results: list[FleetResult] = []
    try:
        by_id = {id(item.resource): i for i, item in enumerate(loaded)}
        hosts = catalog.valid_hosts()
        for fleet in fleets:
            template = catalog.template_of(fleet)
            result = await reconcile_fleet(
                runtime,
                fleet,
                template,
                catalog.store_of(template),
                hosts,
                dry_run=dry_run,
                progress=progress(fleet) if progress else None,
            )
            while result.rolling and not dry_run:  # waiting for updated VMs to be ready, up to the deadline
                _log("VmFleet", f"{fleet.meta.namespace}/{fleet.meta.name}", result.events)
                await asyncio.sleep(runtime.settings.waiting_retry_seconds)
                result = await reconcile_fleet(
                    runtime, fleet, template, catalog.store_of(template), hosts, previous_status=result.status
                )
            _log("VmFleet", f"{fleet.meta.namespace}/{fleet.meta.name}", result.events)
            statuses[by_id[id(fleet)]] = result.status
            results.append(result)
        catalog.clones_by_parent = sum((Counter(clones_by_store_and_parent(r.status)) for r in results), Counter())
        for template in (item.resource for item in loaded if isinstance(item.resource, VmTemplate)):
            if dry_run:
                continue
            status, events = await reconcile_template(
                runtime, template, catalog.store_of(template), catalog.clones_of(template), None
            )
            _log("VmTemplate", f"{template.meta.namespace}/{template.meta.name}", events)
            statuses[by_id[id(template)]] = status
        for host in hosts:
            statuses[by_id[id(host)]] = await host_status(runtime, host, None)
        for store in catalog.valid_stores():
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
