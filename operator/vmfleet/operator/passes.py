"""What each kopf handler does, as plain functions over plain dicts: tests call these without a cluster."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from ..api import CloneStore, InvalidManifest, KvmHost, VmFleet, VmTemplate, parse
from ..engine import (Event, Runtime, TeardownResult, host_status, reconcile_fleet, reconcile_template, release_parent,
                      store_status, teardown_fleet)
from ..clock import now
from ..api.status import condition_of
from ..engine.status import blocked_status
from ..planner import listing
from ..storage import parent_path

Key = tuple[str, str]


@dataclass
class Catalog:
    """The objects a fleet or template refers to, as the operator's indices hold them."""

    stores: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hosts: list[Mapping[str, Any]] = field(default_factory=list)
    templates: Mapping[Key, Mapping[str, Any]] = field(default_factory=dict)
    # (store, parent path) -> clones of all fleets; store "" when a status does not say (counted for every store)
    clones_by_parent: Mapping[tuple[str, str], int] = field(default_factory=dict)
    images_by_template: Mapping[Key, tuple[str, str, str]] = field(default_factory=dict)
    vms_by_host: Mapping[str, int] = field(default_factory=dict)
    clones_by_store: Mapping[str, int] = field(default_factory=dict)


@dataclass
class PassResult:
    status: dict[str, Any]
    events: list[Event]
    waiting: bool = False  # on a reference that does not resolve yet: retry soon, not at the next resync


class Unresolved(Exception):
    """A reference that does not resolve, or an object the API should not have accepted."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _hosts(catalog: Catalog) -> list[KvmHost]:
    out = []
    for body in catalog.hosts:
        try:
            out.append(KvmHost.parse(_valid(body)))
        except Unresolved:
            continue  # an invalid host is reported on the host, not on every fleet
    return out


def _valid(body: Mapping[str, Any]) -> dict[str, Any]:
    from ..api import validate

    try:
        return validate(dict(body), "the API")
    except InvalidManifest as e:
        raise Unresolved("InvalidSpec", str(e)) from e


def resolve_template(body: Mapping[str, Any], catalog: Catalog) -> tuple[VmTemplate, CloneStore]:
    template = parse(_valid(body))
    assert isinstance(template, VmTemplate)
    store_body = catalog.stores.get(template.store)
    if store_body is None:
        raise Unresolved("StoreNotFound", f"spec.storeRef.name: CloneStore {template.store!r} does not exist")
    return template, CloneStore.parse(_valid(store_body))


def resolve_fleet(body: Mapping[str, Any], catalog: Catalog) -> tuple[VmFleet, VmTemplate, CloneStore, list[KvmHost]]:
    fleet = parse(_valid(body))
    assert isinstance(fleet, VmFleet)
    key = (fleet.meta.namespace or "default", fleet.template)
    template_body = catalog.templates.get(key)
    if template_body is None:
        raise Unresolved("TemplateNotFound",
                         f"spec.templateRef.name: VmTemplate {fleet.template!r} does not exist in {key[0]}")
    template, store = resolve_template(template_body, catalog)
    return fleet, template, store, _hosts(catalog)


def _unresolved(body: Mapping[str, Any], e: Unresolved) -> PassResult:
    """A missing reference is waited for (objects applied together arrive in any order, and Flux fails fast on
    Stalled); an invalid spec is Stalled: only an edit helps."""
    gen = int(body.get("metadata", {}).get("generation") or 1)
    kind = "Stalled" if e.reason == "InvalidSpec" else "Waiting"
    previous = body.get("status") or {}
    status = blocked_status(gen, previous, kind, e.reason, str(e), now())
    ready = condition_of(previous, "Ready")
    said = (ready.get("reason"), ready.get("message")) == (e.reason, str(e))  # retried every few seconds: once
    return PassResult(status, [] if said else [Event("Warning", e.reason, str(e))], waiting=kind == "Waiting")


async def fleet_pass(runtime: Runtime, body: Mapping[str, Any], catalog: Catalog,
                     wanted: Callable[[], bool] = lambda: True) -> PassResult:
    try:
        fleet, template, store, hosts = resolve_fleet(body, catalog)
    except Unresolved as e:
        return _unresolved(body, e)
    result = await reconcile_fleet(runtime, fleet, template, store, hosts, previous_status=body.get("status"),
                                   wanted=wanted)
    return PassResult(result.status, result.events)


async def fleet_delete_pass(runtime: Runtime, body: Mapping[str, Any], catalog: Catalog) -> TeardownResult:
    """A fleet is torn down by its UID, whether or not its template still resolves: its clones are looked for
    in the template's store, or in every store when the template or its store is gone."""
    fleet = parse(_valid(body))
    assert isinstance(fleet, VmFleet)
    stores = []
    for store_body in catalog.stores.values():  # all of them: the template may have moved to another store
        try:
            stores.append(CloneStore.parse(_valid(store_body)))
        except Unresolved:
            continue
    return await teardown_fleet(runtime, fleet, stores, _hosts(catalog))


async def template_pass(runtime: Runtime, body: Mapping[str, Any], catalog: Catalog) -> PassResult:
    try:
        template, store = resolve_template(body, catalog)
    except Unresolved as e:
        return _unresolved(body, e)
    status, events = await reconcile_template(runtime, template, store, _clones_of(template, catalog),
                                              body.get("status"))
    return PassResult(status, events)


async def store_pass(runtime: Runtime, body: Mapping[str, Any]) -> PassResult:
    return await _probe(body, lambda: store_status(runtime, CloneStore.parse(_valid(body)), body.get("status")))


async def host_pass(runtime: Runtime, body: Mapping[str, Any]) -> PassResult:
    result = await _probe(body, lambda: host_status(runtime, KvmHost.parse(_valid(body)), body.get("status")))
    result.status.setdefault("domains", None)  # unreachable: the last count goes (status is merged, not replaced)
    return result


async def _probe(body: Mapping[str, Any], probe: Callable[[], Awaitable[dict[str, Any]]]) -> PassResult:
    try:
        return PassResult(await probe(), [])
    except Unresolved as e:
        return _unresolved(body, e)


async def template_delete_pass(runtime: Runtime, body: Mapping[str, Any], catalog: Catalog) -> tuple[bool, Event]:
    template, store = resolve_template(body, catalog)
    key = (template.meta.namespace or "default", template.meta.name)
    image = (template.store, template.image_path, template.image_format)
    shared = any(k != key and v == image for k, v in catalog.images_by_template.items())
    return await release_parent(runtime, template, store, _clones_of(template, catalog), shared)


def _clones_of(template: VmTemplate, catalog: Catalog) -> int:
    """Clones that any fleet made from this template's parent, whichever template each fleet names now."""
    parent = parent_path(template.image_path, template.image_format)
    return catalog.clones_by_parent.get((template.store, parent), 0) + catalog.clones_by_parent.get(("", parent), 0)


def store_delete_pass(name: str, catalog: Catalog) -> tuple[bool, Event]:
    """A CloneStore goes only when no template refers to it and no fleet has clones in it: they would be out of
    reach."""
    users = [f"{ns}/{t}" for (ns, t), (store, _, _) in catalog.images_by_template.items() if store == name]
    if users:
        return False, Event("Warning", "StoreInUse", f"VmTemplates {listing(sorted(users))} use CloneStore {name}; "
                                                     "delete them (and their fleets) first")
    if catalog.clones_by_store.get(name):
        return False, Event("Warning", "StoreInUse", f"fleets still have {catalog.clones_by_store[name]} clone(s) "
                                                     f"in CloneStore {name}; delete or scale in those fleets first")
    return True, Event("Normal", "StoreReleased", f"no VmTemplate uses CloneStore {name}")


def host_delete_pass(name: str, catalog: Catalog) -> tuple[bool, Event]:
    """A KvmHost goes only when no VM is placed on it: they would be orphaned, not moved."""
    vms = catalog.vms_by_host.get(name, 0)
    if vms:
        return False, Event("Warning", "HostInUse", f"{vms} VM(s) are placed on KvmHost {name}; scale their "
                                                    "fleets in or change their hostSelector first")
    return True, Event("Normal", "HostReleased", f"no VM is placed on KvmHost {name}")
