"""The kopf handlers: thin doors that gather the indices into a Catalog and call passes.py."""

from __future__ import annotations

import os
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import kopf

from ..api.schema import GROUP, VERSION
from .. import metrics
from ..api.status import clone_count, clones_by_parent
from ..engine import Event, Runtime
from ..settings import Settings
from . import passes
from .secrets import ClusterSecrets

RESYNC_SECONDS = float(os.environ.get("VMFLEET_RESYNC_SECONDS", "60"))
WAITING_RETRY_SECONDS = min(5.0, RESYNC_SECONDS)  # objects applied together arrive in any order
METRICS_PORT = int(os.environ.get("VMFLEET_METRICS_PORT", "9090"))  # 0: no metrics endpoint
FINALIZER = f"{GROUP}/finalizer"


def plain(value: Any) -> Any:
    """A detached copy of a kopf body (its views follow the live object)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = 20  # INFO: our Normal events are worth posting
    settings.watching.server_timeout = 300
    # A resync pass still running when its object is deleted holds the finalizer; kopf rechecks after this
    # many seconds (default 60: `kubectl delete` would wait that long).
    settings.background.cancellation_polling = 1.0
    memo.runtime = Runtime(ClusterSecrets(), Settings.from_env())
    if METRICS_PORT:
        metrics.serve(METRICS_PORT)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.runtime.close()


# ---------------------------------------------------------------- indices: in-memory views of the API


@kopf.index(GROUP, VERSION, "clonestores")
def clonestores(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: plain(body)}


@kopf.index(GROUP, VERSION, "kvmhosts")
def kvmhosts(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: plain(body)}


@kopf.index(GROUP, VERSION, "vmtemplates")
def vmtemplates(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    return {(namespace, name): plain(body)}


@kopf.index(GROUP, VERSION, "vmfleets")
def fleet_clones(status: kopf.Status, **_: Any) -> dict[tuple[str, str], int]:
    """Clones per (store, clone parent), by what each fleet made (not by the template it names now)."""
    s = plain(status)
    return {(s.get("store") or "", parent): n for parent, n in clones_by_parent(s).items()}


@kopf.index(GROUP, VERSION, "vmfleets")
def fleet_hosts(status: kopf.Status, **_: Any) -> dict[str, int]:
    hosts: dict[str, int] = {}
    for entry in plain(status).get("clones", []) or []:
        if entry.get("host"):
            hosts[entry["host"]] = hosts.get(entry["host"], 0) + 1
    return hosts


@kopf.index(GROUP, VERSION, "vmfleets")
def fleet_stores(status: kopf.Status, **_: Any) -> dict[str, int]:
    """Clones per CloneStore: a store keeps its finalizer while any fleet has clones in it."""
    s = plain(status)
    return {s["store"]: clone_count(s)} if s.get("store") else {}


def catalog(clonestores: kopf.Index, kvmhosts: kopf.Index, vmtemplates: kopf.Index,
            fleet_clones: kopf.Index, fleet_hosts: kopf.Index, fleet_stores: kopf.Index) -> passes.Catalog:
    first = lambda store: next(iter(store))  # noqa: E731 - one object per name
    templates = {key: first(store) for key, store in vmtemplates.items()}
    return passes.Catalog(
        stores={key: first(store) for key, store in clonestores.items()},
        hosts=[first(store) for store in kvmhosts.values()],
        templates=templates,
        clones_by_parent={key: sum(store) for key, store in fleet_clones.items()},
        images_by_template={
            key: (t["spec"]["storeRef"]["name"], t["spec"]["image"]["path"], t["spec"]["image"].get("format", "raw"))
            for key, t in templates.items()
        },
        vms_by_host={key: sum(store) for key, store in fleet_hosts.items()},
        clones_by_store={key: sum(store) for key, store in fleet_stores.items()},
    )


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[None]])


def reconciled(plural: str) -> Callable[[Handler], Handler]:
    """Run a pass on resume, on create, on each spec change and every RESYNC_SECONDS (passes are idempotent)."""

    def register(fn: Handler) -> Handler:
        for on in (kopf.timer(GROUP, VERSION, plural, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS),
                   kopf.on.update(GROUP, VERSION, plural, field="spec"),
                   kopf.on.create(GROUP, VERSION, plural),
                   kopf.on.resume(GROUP, VERSION, plural)):
            fn = on(fn)
        return fn

    return register


def deleting(body: kopf.Body) -> bool:
    """Timers get a live body: a resync that fires while the object is being torn down sees it."""
    return bool(body.metadata.get("deletionTimestamp"))


def post(body: kopf.Body, events: list[Event]) -> None:
    metrics.count(events)
    for e in events:
        kopf.event(body, type=e.type, reason=e.reason, message=e.message)


def report(body: kopf.Body, patch: kopf.Patch, result: passes.PassResult) -> None:
    """Write the status and post the events; when waiting on a reference, come back in seconds."""
    patch.status.update(result.status)
    post(body, result.events)
    if result.waiting:
        raise kopf.TemporaryError(result.status["conditions"][0]["message"], delay=WAITING_RETRY_SECONDS)


def release(body: kopf.Body, released: bool, event: Event) -> None:
    """Let a deletion finish, or keep the finalizer and say why."""
    post(body, [event])
    if not released:
        raise kopf.TemporaryError(event.message, delay=RESYNC_SECONDS)


# ---------------------------------------------------------------- VmFleet


@reconciled("vmfleets")
async def reconcile_vmfleet(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    if deleting(body):
        return
    with metrics.RECONCILE.labels("VmFleet").time():
        result = await passes.fleet_pass(memo.runtime, plain(body), _catalog(kw), wanted=lambda: not deleting(body))
    metrics.record_fleet(body.metadata.namespace or "", body.metadata.name or "", body.spec, result.status)
    report(body, patch, result)


@kopf.on.delete(GROUP, VERSION, "vmfleets")
async def delete_vmfleet(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    try:
        result = await passes.fleet_delete_pass(memo.runtime, plain(body), _catalog(kw))
    except passes.Unresolved as e:
        raise kopf.TemporaryError(f"cannot clean up yet: {e}", delay=RESYNC_SECONDS) from e
    post(body, result.events)
    if result.complete:
        metrics.forget_fleet(body.metadata.namespace or "", body.metadata.name or "")
    else:
        raise kopf.TemporaryError("some domains or clones could not be removed yet; retrying", delay=RESYNC_SECONDS)


# ---------------------------------------------------------------- VmTemplate


@reconciled("vmtemplates")
async def reconcile_vmtemplate(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    if deleting(body):  # its parent is being released: a pass must not prepare it again
        return
    with metrics.RECONCILE.labels("VmTemplate").time():
        result = await passes.template_pass(memo.runtime, plain(body), _catalog(kw))
    report(body, patch, result)


@kopf.on.delete(GROUP, VERSION, "vmtemplates")
async def delete_vmtemplate(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    try:
        released, event = await passes.template_delete_pass(memo.runtime, plain(body), _catalog(kw))
    except passes.Unresolved as e:
        released, event = True, Event("Warning", e.reason, f"parent not deleted: {e}")
    release(body, released, event)


# ---------------------------------------------------------------- CloneStore and KvmHost: probed, never deleted in use


@reconciled("clonestores")
async def probe_clonestore(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    report(body, patch, await passes.store_pass(memo.runtime, plain(body)))


@reconciled("kvmhosts")
async def probe_kvmhost(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    report(body, patch, await passes.host_pass(memo.runtime, plain(body)))


@kopf.on.delete(GROUP, VERSION, "clonestores")
async def delete_clonestore(name: str, body: kopf.Body, **kw: Any) -> None:
    release(body, *passes.store_delete_pass(name, _catalog(kw)))


@kopf.on.delete(GROUP, VERSION, "kvmhosts")
async def delete_kvmhost(name: str, body: kopf.Body, **kw: Any) -> None:
    release(body, *passes.host_delete_pass(name, _catalog(kw)))


def _catalog(kw: Mapping[str, Any]) -> passes.Catalog:
    return catalog(kw["clonestores"], kw["kvmhosts"], kw["vmtemplates"], kw["fleet_clones"], kw["fleet_hosts"],
                   kw["fleet_stores"])
