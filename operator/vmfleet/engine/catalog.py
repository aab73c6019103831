"""One resolver of references for both doors: the operator fills a Catalog from kopf's indices (objects as the API
hands them over, validated here when first used), `vmfleet apply` from the manifests (objects already parsed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api import CloneStore, InvalidManifest, KvmHost, VmFleet, VmTemplate, reasons
from ..api.types import R, parse_as
from ..errors import VmfleetError
from ..storage import parent_path

Key = tuple[str, str]  # (namespace, name)


class Unresolved(VmfleetError):
    """A reference that does not resolve, or an object the API should not have accepted."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def typed(entry: Mapping[str, Any] | R, kind: type[R]) -> R:
    """The object as `kind`: parsed already, or validated first as the apiserver would have (InvalidSpec if not)."""
    if isinstance(entry, kind):
        return entry
    assert isinstance(entry, Mapping)
    try:
        return parse_as(kind, dict(entry), "the API")
    except InvalidManifest as e:
        raise Unresolved(reasons.INVALID_SPEC, str(e)) from e


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

    def template_of(self, fleet: VmFleet) -> VmTemplate:
        entry = self.templates.get((fleet.meta.namespace, fleet.template))
        if entry is None:
            raise Unresolved(
                reasons.TEMPLATE_NOT_FOUND,
                f"spec.templateRef.name: VmTemplate {fleet.template!r} does not exist in {fleet.meta.namespace}",
            )
        return typed(entry, VmTemplate)

    def store_of(self, template: VmTemplate) -> CloneStore:
        entry = self.stores.get(template.store)
        if entry is None:
            raise Unresolved(
                reasons.STORE_NOT_FOUND, f"spec.storeRef.name: CloneStore {template.store!r} does not exist"
            )
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
