"""One resolver of references for both doors: the operator fills a Catalog from kopf's indices (objects as the API
hands them over, validated here when first used), `vmfleet apply` from the manifests (objects already parsed)."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api import CloneStore, InvalidManifest, KvmHost, VmFleet, VmTemplate, reasons
from ..api.types import R, parse_as, stored_bytes
from ..errors import VmfleetError
from ..planner import listing
from ..storage import parent_path

Key = tuple[str, str]  # (namespace, name)


class Unresolved(VmfleetError):
    """A reference that does not resolve, or an object the API should not have accepted."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# What a typed object is made of, but the bytes it takes in etcd (its status is not: the apiserver checked that,
# and passes read it as it is).
_MADE_OF = ("name", "namespace", "uid", "generation", "labels", "annotations")
_TYPED_KEPT = 4096  # objects: one entry each, the least used going first
_typed: collections.OrderedDict[tuple[str, str, str, str], tuple[bytes, Any]] = collections.OrderedDict()


def typed(entry: Mapping[str, Any] | R, kind: type[R]) -> R:
    """The object as `kind`: parsed already, or validated first as the apiserver would have (InvalidSpec if not).
    Validating runs the CRDs' CEL rules, a few milliseconds an object: every pass of every fleet would pay it for
    each object it names, so the last one typed of each object is kept while its content is the same (an error
    never is: an invalid object is refused at every pass)."""
    if isinstance(entry, kind):
        return entry
    assert isinstance(entry, Mapping)
    meta = entry.get("metadata")
    made_of = {
        **{k: v for k, v in entry.items() if k not in ("metadata", "status")},
        "metadata": {k: meta[k] for k in _MADE_OF if k in meta} if isinstance(meta, Mapping) else meta,
    }
    digest = hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).digest()
    m = meta if isinstance(meta, Mapping) else {}
    key = (kind.__name__, str(m.get("namespace")), str(m.get("name")), str(m.get("uid")))
    kept = _typed.get(key)
    parsed: Any = None
    if kept is not None and kept[0] == digest:
        _typed.move_to_end(key)
        parsed = kept[1]
    else:
        try:
            parsed = parse_as(kind, made_of, "the API")
        except InvalidManifest as e:
            raise Unresolved(reasons.INVALID_SPEC, str(e)) from e
        _typed[key] = (digest, parsed)
        _typed.move_to_end(key)
        while len(_typed) > _TYPED_KEPT:
            _typed.popitem(last=False)
    if isinstance(parsed, VmFleet):  # its bytes as stored, managedFields and all: what its status may take
        size = stored_bytes(entry)
        if parsed.stored_bytes != size:
            parsed = dataclasses.replace(parsed, stored_bytes=size)
    assert isinstance(parsed, kind)
    return parsed


@dataclass(frozen=True)
class FleetParents:
    """What one fleet's status says of the clone parents it needs, beside its counts in clones_by_parent."""

    store: str  # the CloneStore its clones are in; "" when the status does not say
    parent: str  # the parent its last full pass cloned from; "" when none
    counted: bool  # False while its status counts no clones (never reconciled): it may be making some now
    template: str  # spec.templateRef.name, in the fleet's namespace


@dataclass(frozen=True)
class Holders:
    """Who may still need one clone parent: nothing does when all are empty."""

    clones: int  # that all fleets' statuses count
    templates: list[str]  # "ns/name" of the templates whose image it is now
    cloning: list[str]  # fleets whose last pass cloned from it
    uncounted: list[str]  # fleets that may be on its store and have counted no clones yet

    def reasons(self) -> list[str]:
        out = [f"{self.clones} clone(s) of fleets still use it"] if self.clones else []
        if self.templates:
            out.append(f"VmTemplate {listing(self.templates)} uses its image now")
        if self.cloning:
            out.append(f"VmFleet {listing(self.cloning)} still cloned from it in its last pass")
        if self.uncounted:
            out.append(f"VmFleet {listing(self.uncounted)} has not counted its clones yet")
        return out


@dataclass
class Catalog:
    """The objects fleets and templates refer to, by name, and how many clones and VMs refer to each."""

    stores: Mapping[str, Mapping[str, Any] | CloneStore] = field(default_factory=dict)
    hosts: list[Mapping[str, Any] | KvmHost] = field(default_factory=list)
    templates: Mapping[Key, Mapping[str, Any] | VmTemplate] = field(default_factory=dict)
    # (store, parent path) -> clones of all fleets; store "" when a status does not say (counted for every store)
    clones_by_parent: Mapping[tuple[str, str], int] = field(default_factory=dict)
    images_by_template: Mapping[Key, tuple[str, str, str]] = field(default_factory=dict)  # (store, path, format)
    vms_by_host: Mapping[str, int] = field(default_factory=dict)
    clones_by_store: Mapping[str, int] = field(default_factory=dict)
    fleets: Mapping[Key, FleetParents] = field(default_factory=dict)

    def template_of(self, fleet: VmFleet) -> VmTemplate:
        entry = self.templates.get((fleet.meta.namespace, fleet.template))
        if entry is None:
            raise Unresolved(
                reasons.TEMPLATE_NOT_FOUND,
                f"spec.templateRef.name: VmTemplate {fleet.template!r} does not exist in {fleet.meta.namespace}",
            )
        return typed(entry, VmTemplate)

    def store_of(self, template: VmTemplate) -> CloneStore:
        return self.store_named(template.store, "spec.storeRef.name: ")

    def store_named(self, name: str, where: str = "") -> CloneStore:
        entry = self.stores.get(name)
        if entry is None:
            raise Unresolved(reasons.STORE_NOT_FOUND, f"{where}CloneStore {name!r} does not exist")
        return typed(entry, CloneStore)

    def valid_hosts(self) -> list[KvmHost]:
        """An invalid host is reported on the host, not on every fleet."""
        return _valid(self.hosts, KvmHost)

    def valid_stores(self) -> list[CloneStore]:
        return _valid(list(self.stores.values()), CloneStore)

    def clones_of(self, template: VmTemplate) -> int:
        """Clones that any fleet made from this template's parent, whichever template each fleet names now."""
        parent = parent_path(template.image_path, template.image_format)
        return self.clones_by_parent.get((template.store, parent), 0) + self.clones_by_parent.get(("", parent), 0)

    def image_shared(self, template: VmTemplate) -> bool:
        """Another template has the same image in the same store, hence the same clone parent."""
        key = (template.meta.namespace, template.meta.name)
        image = (template.store, template.image_path, template.image_format)
        return any(k != key and v == image for k, v in self.images_by_template.items())

    def parent_holders(self, store: str, parent: str) -> Holders:
        """Who may still need a clone parent on `store`. Never before: a count not known yet holds it as a
        count would."""
        return Holders(
            clones=self.clones_by_parent.get((store, parent), 0) + self.clones_by_parent.get(("", parent), 0),
            templates=sorted(
                f"{ns}/{t}"
                for (ns, t), (s, path, fmt) in self.images_by_template.items()
                if s == store and parent_path(path, fmt) == parent
            ),
            # A pass that began before the template changed: its next status counts what it made.
            cloning=sorted(
                f"{ns}/{name}"
                for (ns, name), f in self.fleets.items()
                if f.counted and f.parent == parent and f.store in (store, "")
            ),
            uncounted=sorted(
                f"{ns}/{name}"
                for (ns, name), f in self.fleets.items()
                if not f.counted and self._fleet_store(ns, f) in (store, "")
            ),
        )

    def _fleet_store(self, namespace: str, fleet: FleetParents) -> str:
        """The store a fleet's clones are in, or its template's; "" when neither is known (any store)."""
        return fleet.store or self.images_by_template.get((namespace, fleet.template), ("", "", ""))[0]

    def templates_using(self, store: str) -> list[str]:
        return sorted(f"{ns}/{t}" for (ns, t), (name, _, _) in self.images_by_template.items() if name == store)


def _valid(entries: list[Mapping[str, Any] | R], kind: type[R]) -> list[R]:
    out = []
    for entry in entries:
        try:
            out.append(typed(entry, kind))
        except Unresolved:
            continue
    return out
