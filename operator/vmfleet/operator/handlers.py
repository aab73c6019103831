"""The kopf handlers: thin doors that gather the indices into a Catalog and call passes.py.

Nothing registers at import: `registry(settings)` does, once the settings are read (a timer's interval is fixed
when it is registered); the handlers read the same Settings from kopf's memo.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import kopf

from .. import metrics
from ..api.schema import GROUP, VERSION
from ..api.status import clone_count, clones_by_store_and_parent, parent_in_use, vms_by_host
from ..api.types import REIMAGE_ANNOTATION
from ..engine import Event, Runtime
from ..engine.catalog import Catalog, FleetParents, Unresolved
from ..engine.status import rollout_goes_on, status_changes
from ..settings import Settings
from . import passes, records, session
from .pacing import Pacer
from .secrets import ClusterSecrets

FINALIZER = f"{GROUP}/finalizer"
T = TypeVar("T")


def plain(value: Any) -> Any:
    """A detached copy of a kopf body (its views follow the live object)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def settings_of(memo: kopf.Memo) -> Settings:
    """What `vmfleet run` read at start (kopf.run(memo=...)); every handler's memo is a copy of that one."""
    ours: Settings = memo.settings
    return ours


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    records.keep_in_status(settings)
    settings.posting.level = 20  # INFO: our Normal events are worth posting
    settings.watching.server_timeout = 300
    # A resync pass still running when its object is deleted holds the finalizer; kopf rechecks after this
    # many seconds (default 60: `kubectl delete` would wait that long).
    settings.background.cancellation_polling = 1.0
    ours = settings_of(memo)
    memo.runtime = Runtime(ClusterSecrets(), ours)
    memo.pacer = Pacer(ours.resync_rate)


async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.runtime.close()


# ---------------------------------------------------------------- indices: in-memory views of the API


def clonestores(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: plain(body)}


def kvmhosts(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: plain(body)}


def vmtemplates(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    assert namespace is not None  # a namespaced kind
    return {(namespace, name): plain(body)}


# The fleets' indices read the status where it is: a copy of a 10,000-VM fleet's took 58 ms, on the event loop.


def fleet_clones(status: kopf.Status, **_: Any) -> dict[tuple[str, str], int]:
    """Clones per (store, clone parent), by what each fleet made (not by the template it names now)."""
    return clones_by_store_and_parent(status)


def fleet_parents(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], FleetParents]:
    """Which parent each fleet clones from, and whether its counts are known yet: an old parent is deleted
    only when no fleet may still clone from it."""
    assert namespace is not None  # a namespaced kind
    store, parent, counted = parent_in_use(status)
    template = str((spec.get("templateRef") or {}).get("name") or "")
    return {(namespace, name): FleetParents(store, parent, counted, template)}


def fleet_hosts(status: kopf.Status, **_: Any) -> dict[str, int]:
    return vms_by_host(status)


def fleet_stores(status: kopf.Status, **_: Any) -> dict[str, int]:
    """Clones per CloneStore: a store keeps its finalizer while any fleet has clones in it."""
    return {status["store"]: clone_count(status)} if status.get("store") else {}


def on_loop(indexer: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`indexer` as a coroutine function. kopf runs a plain function in a thread of its executor: a hop per index
    and watch event (four for each event of a fleet) that cost more than the few dictionary reads it ran."""

    async def index(**kwargs: Any) -> T:
        return indexer(**kwargs)

    return index


def first(store: kopf.Store[Any]) -> Any:
    return next(iter(store))  # one object per name


K = TypeVar("K")


class _Firsts(Mapping[K, Any]):
    """An index's one object per key, read when asked: a pass reads a few, and the fleets' indices have an entry
    per fleet (copying them at every pass cost each pass the number of fleets)."""

    def __init__(self, index: kopf.Index[K, Any]) -> None:
        self._index = index

    def __getitem__(self, key: K) -> Any:
        return first(self._index[key])

    def __iter__(self) -> Iterator[K]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class _Sums(_Firsts[K]):
    """An index's counts per key, added up when asked."""

    def __getitem__(self, key: K) -> int:
        return sum(self._index[key])


def catalog(
    clonestores: kopf.Index[str, Any],
    kvmhosts: kopf.Index[str, Any],
    vmtemplates: kopf.Index[tuple[str, str], Any],
    fleet_clones: kopf.Index[tuple[str, str], int],
    fleet_hosts: kopf.Index[str, int],
    fleet_stores: kopf.Index[str, int],
    fleet_parents: kopf.Index[tuple[str, str], FleetParents],
) -> Catalog:
    templates = {key: first(store) for key, store in vmtemplates.items()}
    return Catalog(
        stores=_Firsts(clonestores),
        hosts=[first(store) for store in kvmhosts.values()],
        templates=templates,
        clones_by_parent=_Sums(fleet_clones),
        images_by_template={
            key: (t["spec"]["storeRef"]["name"], t["spec"]["image"]["path"], t["spec"]["image"].get("format", "raw"))
            for key, t in templates.items()
        },
        vms_by_host=_Sums(fleet_hosts),
        clones_by_store=_Sums(fleet_stores),
        fleets=_Firsts(fleet_parents),
    )


def deleting(body: kopf.Body) -> bool:
    """Timers get a live body: a resync that fires while the object is being torn down sees it."""
    return bool(body.metadata.get("deletionTimestamp"))


def post(body: kopf.Body, events: list[Event]) -> None:
    metrics.count(events)
    for e in events:
        kopf.event(body, type=e.type, reason=e.reason, message=e.message)


def report(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, result: passes.PassResult) -> None:
    """Write what changed in the status and post the events; when waiting on a reference, come back in seconds.
    Nothing changed, nothing is written: kopf sends no empty patch."""
    patch.status.update(status_changes(plain(body.get("status") or {}), result.status))
    if result.reimaged:
        patch.fns.append(forget_request(result.reimaged))
    post(body, result.events)
    if result.waiting:
        raise kopf.TemporaryError(
            result.status["conditions"][0]["message"], delay=settings_of(memo).waiting_retry_seconds
        )


def forget_request(done: str) -> kopf.PatchFn:
    """One-shot: the reimage request carried out goes, unless a person asked again meanwhile (another value).
    kopf applies it to the object as it is when written and JSON-patches that under its resourceVersion: the
    body a pass started from can be minutes old."""

    def forget(body: kopf.RawBody) -> None:
        annotations = body.get("metadata", {}).get("annotations", {})
        if annotations.get(REIMAGE_ANNOTATION, "").strip() == done:
            del annotations[REIMAGE_ANNOTATION]

    return forget


def release(body: kopf.Body, memo: kopf.Memo, released: bool, *events: Event) -> None:
    """Let a deletion finish, or keep the finalizer and say why (the last Warning says it)."""
    post(body, list(events))
    if not released:
        why = [e.message for e in events if e.type == "Warning"] or [e.message for e in events]
        raise kopf.TemporaryError(why[-1] if why else "not yet", delay=settings_of(memo).resync_seconds)


# ---------------------------------------------------------------- VmFleet


async def reconcile_vmfleet(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    if deleting(body):
        return
    with metrics.RECONCILE.labels("VmFleet").time():
        result = await passes.fleet_pass(memo.runtime, plain(body), _catalog(kw), wanted=lambda: not deleting(body))
    metrics.record_fleet(body.metadata.namespace or "", body.metadata.name or "", body.spec, result.status)
    report(body, patch, memo, result)


async def delete_vmfleet(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    try:
        result = await passes.fleet_delete_pass(memo.runtime, plain(body), _catalog(kw))
    except Unresolved as e:
        raise kopf.TemporaryError(f"cannot clean up yet: {e}", delay=settings_of(memo).resync_seconds) from e
    post(body, result.events)
    if result.complete:
        metrics.forget_fleet(body.metadata.namespace or "", body.metadata.name or "")
    else:
        raise kopf.TemporaryError(
            "some domains or clones could not be removed yet; retrying", delay=settings_of(memo).resync_seconds
        )


# ---------------------------------------------------------------- VmTemplate


async def reconcile_vmtemplate(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    if deleting(body):  # its parent is being released: a pass must not prepare it again
        return
    with metrics.RECONCILE.labels("VmTemplate").time():
        result = await passes.template_pass(memo.runtime, plain(body), _catalog(kw))
    report(body, patch, memo, result)


async def delete_vmtemplate(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    try:
        released, events = await passes.template_delete_pass(memo.runtime, plain(body), _catalog(kw))
    except Unresolved as e:
        released, events = True, [Event("Warning", e.reason, f"parent not deleted: {e}")]
    release(body, memo, released, *events)


# ---------------------------------------------------------------- CloneStore and KvmHost: probed, never deleted in use


async def probe_clonestore(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    report(body, patch, memo, await passes.store_pass(memo.runtime, plain(body)))


async def probe_kvmhost(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    report(body, patch, memo, await passes.host_pass(memo.runtime, plain(body)))


async def delete_clonestore(name: str, body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    release(body, memo, *passes.store_delete_pass(name, _catalog(kw)))


async def delete_kvmhost(name: str, body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    release(body, memo, *passes.host_delete_pass(name, _catalog(kw)))


def _catalog(kw: Mapping[str, Any]) -> Catalog:
    return catalog(
        kw["clonestores"],
        kw["kvmhosts"],
        kw["vmtemplates"],
        kw["fleet_clones"],
        kw["fleet_hosts"],
        kw["fleet_stores"],
        kw["fleet_parents"],
    )


# ---------------------------------------------------------------- registration


def registry(settings: Settings) -> kopf.OperatorRegistry:
    """Every handler above, in the order kopf runs them, with the resync interval of these settings."""
    r = kopf.OperatorRegistry()
    # kopf's default registry logs in with the kubernetes client (in-cluster, else $KUBECONFIG); ours must say so.
    kopf.on.login(registry=r, errors=kopf.ErrorsMode.IGNORED)(session.login)
    kopf.on.startup(registry=r)(configure)
    kopf.on.cleanup(registry=r)(close)
    for plural, indexer in (
        ("clonestores", clonestores),
        ("kvmhosts", kvmhosts),
        ("vmtemplates", vmtemplates),
        ("vmfleets", fleet_clones),
        ("vmfleets", fleet_hosts),
        ("vmfleets", fleet_stores),
        ("vmfleets", fleet_parents),
    ):
        kopf.index(GROUP, VERSION, plural, id=indexer.__name__, registry=r)(on_loop(indexer))
    resync = settings.resync_seconds
    for plural, reconcile, delete in (
        ("vmfleets", reconcile_vmfleet, delete_vmfleet),
        ("vmtemplates", reconcile_vmtemplate, delete_vmtemplate),
        ("clonestores", probe_clonestore, delete_clonestore),
        ("kvmhosts", probe_kvmhost, delete_kvmhost),
    ):
        # A pass on resume, on create, on each spec change and every resync_seconds (passes are idempotent), the
        # resyncs paced (operator/pacing.py).
        kopf.timer(GROUP, VERSION, plural, interval=resync, initial_delay=resync, registry=r)(paced(reconcile))
        kopf.on.update(GROUP, VERSION, plural, field="spec", registry=r)(reconcile)
        kopf.on.create(GROUP, VERSION, plural, registry=r)(reconcile)
        kopf.on.resume(GROUP, VERSION, plural, registry=r)(reconcile)
        kopf.on.delete(GROUP, VERSION, plural, registry=r)(delete)
    # The drain annotation of a KvmHost: its status says Draining at once (its fleets move their VMs at their pass).
    kopf.on.update(
        GROUP, VERSION, "kvmhosts", field="metadata.annotations", id="probe_kvmhost/annotations", registry=r
    )(probe_kvmhost)
    # While a rolling update goes on, a pass every few seconds: the next VMs go as soon as the last are ready.
    kopf.timer(
        GROUP,
        VERSION,
        "vmfleets",
        id="reconcile_vmfleet/rolling",
        interval=settings.waiting_retry_seconds,
        initial_delay=settings.waiting_retry_seconds,
        when=rolling,
        registry=r,
    )(reconcile_vmfleet)
    return r


def paced(handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """The handler, once the Pacer gives its turn: a resync. Its name is the handler's, so is its kopf id."""

    @functools.wraps(handler)
    async def resync(memo: kopf.Memo, **kw: Any) -> None:
        await memo.pacer.turn()
        await handler(memo=memo, **kw)

    return resync


def rolling(status: kopf.Status, **_: Any) -> bool:
    return rollout_goes_on(status)
