"""What each kopf handler does, as plain functions over plain dicts: tests call these without a cluster."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..api import CloneStore, KvmHost, VmFleet, VmTemplate, reasons
from ..api.status import condition_of
from ..api.types import FLEET_LABEL
from ..clock import now
from ..engine import (
    Event,
    Runtime,
    TeardownResult,
    host_status,
    reconcile_fleet,
    reconcile_template,
    release_parent,
    release_retired,
    retire,
    store_status,
    teardown_fleet,
)
from ..engine.catalog import Catalog, Unresolved, typed
from ..engine.status import blocked_status
from ..planner import listing
from ..storage import parent_path


@dataclass
class PassResult:
    status: dict[str, Any]
    events: list[Event]
    waiting: bool = False  # on a reference that does not resolve yet: retry soon, not at the next resync
    reimaged: str | None = None  # the reimage annotation's value, once every VM it names was reimaged: it goes


def resolve_template(body: Mapping[str, Any], catalog: Catalog) -> tuple[VmTemplate, CloneStore]:
    template = typed(body, VmTemplate)
    return template, catalog.store_of(template)


def resolve_fleet(body: Mapping[str, Any], catalog: Catalog) -> tuple[VmFleet, VmTemplate, CloneStore, list[KvmHost]]:
    fleet = typed(body, VmFleet)
    template = catalog.template_of(fleet)
    return fleet, template, catalog.store_of(template), catalog.valid_hosts()


def _unresolved(body: Mapping[str, Any], e: Unresolved) -> PassResult:
    """A missing reference is waited for (objects applied together arrive in any order, and Flux fails fast on
    Stalled); an invalid spec is Stalled: only an edit helps."""
    gen = int(body.get("metadata", {}).get("generation") or 1)
    kind = "Stalled" if e.reason == reasons.INVALID_SPEC else "Waiting"
    previous = body.get("status") or {}
    status = blocked_status(gen, previous, kind, e.reason, str(e), now())
    ready = condition_of(previous, "Ready")
    said = (ready.get("reason"), ready.get("message")) == (e.reason, str(e))  # retried every few seconds: once
    return PassResult(status, [] if said else [Event("Warning", e.reason, str(e))], waiting=kind == "Waiting")


async def fleet_pass(
    runtime: Runtime, body: Mapping[str, Any], catalog: Catalog, wanted: Callable[[], bool] = lambda: True
) -> PassResult:
    selector = {"labelSelector": f"{FLEET_LABEL}={body['metadata']['name']}"}  # whatever the pass says
    try:
        fleet, template, store, hosts = resolve_fleet(body, catalog)
    except Unresolved as e:
        unresolved = _unresolved(body, e)
        return replace(unresolved, status={**unresolved.status, **selector})
    result = await reconcile_fleet(
        runtime, fleet, template, store, hosts, previous_status=body.get("status"), wanted=wanted
    )
    done = fleet.reimage_request if result.reimage_left == frozenset() else None
    return PassResult({**result.status, **selector}, result.events, reimaged=done)


async def fleet_delete_pass(runtime: Runtime, body: Mapping[str, Any], catalog: Catalog) -> TeardownResult:
    """A fleet is torn down by its UID, whether or not its template still resolves: its clones are looked for
    in the template's store, or in every store when the template or its store is gone."""
    # All the stores: the template may have moved to another store.
    return await teardown_fleet(runtime, typed(body, VmFleet), catalog.valid_stores(), catalog.valid_hosts())


async def template_pass(runtime: Runtime, body: Mapping[str, Any], catalog: Catalog) -> PassResult:
    try:
        template, store = resolve_template(body, catalog)
    except Unresolved as e:
        return _unresolved(body, e)
    status, events = await reconcile_template(
        runtime, template, store, catalog.clones_of(template), body.get("status"), catalog
    )
    return PassResult(status, events)


async def store_pass(runtime: Runtime, body: Mapping[str, Any]) -> PassResult:
    return await _probe(body, lambda: store_status(runtime, typed(body, CloneStore), body.get("status")))


async def host_pass(runtime: Runtime, body: Mapping[str, Any]) -> PassResult:
    result = await _probe(body, lambda: host_status(runtime, typed(body, KvmHost), body.get("status")))
    result.status.setdefault("domains", None)  # unreachable: the last count goes (status is merged, not replaced)
    return result


async def _probe(body: Mapping[str, Any], probe: Callable[[], Awaitable[dict[str, Any]]]) -> PassResult:
    try:
        return PassResult(await probe(), [])
    except Unresolved as e:
        return _unresolved(body, e)


async def template_delete_pass(runtime: Runtime, body: Mapping[str, Any], catalog: Catalog) -> tuple[bool, list[Event]]:
    """A template goes once its parent and every old parent it still owes a release are deleted, or owed by
    another template that names their image now."""
    template, store = resolve_template(body, catalog)
    released, event = await release_parent(
        runtime, template, store, catalog.clones_of(template), catalog.image_shared(template)
    )
    owed, _ = retire(template, store, body.get("status"), now())
    current = (store.meta.name, parent_path(template.image_path, template.image_format))
    left, events = await release_retired(runtime, owed, current, catalog, deleting=True)
    events.insert(0, event)
    for entry in left:
        events.append(
            Event(
                "Warning",
                reasons.PARENT_IN_USE,
                f"old parent {entry['path']} on CloneStore {entry['store']}: {entry['message']}; the template is "
                "deleted once it goes",
            )
        )
    return released and not left, events


def store_delete_pass(name: str, catalog: Catalog) -> tuple[bool, Event]:
    """A CloneStore goes only when no template refers to it and no fleet has clones in it: they would be out of
    reach."""
    users = catalog.templates_using(name)
    if users:
        return False, Event(
            "Warning",
            reasons.STORE_IN_USE,
            f"VmTemplates {listing(users)} use CloneStore {name}; delete them (and their fleets) first",
        )
    if catalog.clones_by_store.get(name):
        return False, Event(
            "Warning",
            reasons.STORE_IN_USE,
            f"fleets still have {catalog.clones_by_store[name]} clone(s) "
            f"in CloneStore {name}; delete or scale in those fleets first",
        )
    return True, Event("Normal", reasons.STORE_RELEASED, f"no VmTemplate uses CloneStore {name}")


def host_delete_pass(name: str, catalog: Catalog) -> tuple[bool, Event]:
    """A KvmHost goes only when no VM is placed on it: they would be orphaned, not moved."""
    vms = catalog.vms_by_host.get(name, 0)
    if vms:
        return False, Event(
            "Warning",
            reasons.HOST_IN_USE,
            f"{vms} VM(s) are placed on KvmHost {name}; scale their fleets in or change their hostSelector first",
        )
    return True, Event("Normal", reasons.HOST_RELEASED, f"no VM is placed on KvmHost {name}")
