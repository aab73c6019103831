"""Typed views of the four kinds, built from validated and defaulted dicts (see validation.validate)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .schema import API_VERSION, DEFAULT_NAMESPACE, KINDS
from .validation import FieldError, InvalidManifest, validate

HOSTS_LOST_ANNOTATION = "vmfleet.io/hosts-lost"

# Fleets read in standalone mode have no apiserver UID: derive a stable one from namespace/name.
_STANDALONE_UID_NAMESPACE = uuid.UUID("6f1c5f7e-2d0b-4b8e-9a57-0c9f3a1e7d42")


@dataclass(frozen=True)
class Meta:
    name: str
    namespace: str  # "" for the cluster-scoped kinds, as in Kubernetes' own ObjectMeta
    uid: str
    generation: int
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, meta: Mapping[str, Any], kind: str) -> Meta:
        given = meta.get("namespace")
        namespace = (given or DEFAULT_NAMESPACE) if KINDS[kind].namespaced else ""
        # From the namespace as written: standalone UIDs name clone directories and must not change.
        uid = meta.get("uid") or str(uuid.uuid5(_STANDALONE_UID_NAMESPACE, f"{kind}/{given}/{meta['name']}"))
        return cls(
            meta["name"],
            namespace,
            uid,
            int(meta.get("generation") or 1),
            dict(meta.get("labels") or {}),
            {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        )


@dataclass(frozen=True)
class SecretRef:
    name: str
    namespace: str


@dataclass(frozen=True)
class SshEndpoint:
    """A CloneStore's spec.ssh: where the sonas and gpfs drivers run their commands (storage/ssh.py)."""

    host: str
    port: int
    user: str
    secret: SecretRef
    command_timeout: float
    max_sessions: int = 10


@dataclass(frozen=True)
class CloneStore:
    meta: Meta
    driver: str
    root: str
    local_path: str
    ssh: SshEndpoint | None
    max_clone_depth: int
    concurrency: int

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> CloneStore:
        s = doc["spec"]
        ssh = None
        if "ssh" in s:
            x = s["ssh"]
            ssh = SshEndpoint(
                x["host"],
                x["port"],
                x["user"],
                SecretRef(**x["secretRef"]),
                float(x["commandTimeoutSeconds"]),
                x.get("maxSessions", 10),
            )
        root = s["root"].rstrip("/") or "/"
        return cls(
            Meta.parse(doc["metadata"], "CloneStore"),
            s["driver"],
            root,
            (s.get("localPath") or root).rstrip("/") or "/",
            ssh,
            s["maxCloneDepth"],
            s["concurrency"],
        )


@dataclass(frozen=True)
class Capacity:
    vcpus: int
    memory_mib: int


@dataclass(frozen=True)
class KvmHost:
    meta: Meta
    uri: str
    domain_type: str
    capacity: Capacity | None
    store_mounts: Mapping[str, str]
    console_log_dir: str | None
    secret: SecretRef | None = None

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> KvmHost:
        s = doc["spec"]
        cap = s.get("capacity") or {}
        capacity = Capacity(cap["vcpus"], cap["memoryMiB"]) if {"vcpus", "memoryMiB"} <= set(cap) else None
        return cls(
            Meta.parse(doc["metadata"], "KvmHost"),
            s["uri"],
            s["domainType"],
            capacity,
            {m["store"]: m["path"].rstrip("/") for m in s.get("storeMounts", [])},
            s.get("consoleLogDir"),
            SecretRef(**s["secretRef"]) if "secretRef" in s else None,
        )

    def store_path(self, store: CloneStore, relative: str) -> str:
        """Where this host sees a file that lives at `relative` under the store's root."""
        return f"{self.store_mounts.get(store.meta.name, store.root).rstrip('/')}/{relative}"


@dataclass(frozen=True)
class VmTemplate:
    meta: Meta
    store: str
    image_path: str
    image_format: str
    profile: str
    vcpus: int
    memory_mib: int
    machine_type: str | None
    firmware: str
    network: str | None

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> VmTemplate:
        s = doc["spec"]
        return cls(
            Meta.parse(doc["metadata"], "VmTemplate"),
            s["storeRef"]["name"],
            s["image"]["path"],
            s["image"]["format"],
            s["profile"],
            s["vcpus"],
            s["memoryMiB"],
            s.get("machineType"),
            s["firmware"],
            s.get("network"),
        )


@dataclass(frozen=True)
class VmOverride:
    vcpus: int | None = None
    memory_mib: int | None = None
    running: bool | None = None


@dataclass(frozen=True)
class VmFleet:
    meta: Meta
    template: str
    replicas: int
    match_labels: Mapping[str, str]
    placement: str
    running: bool
    deletion_policy: str
    overrides: Mapping[int, VmOverride] = field(default_factory=dict)

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> VmFleet:
        s = doc["spec"]
        overrides = {
            o["ordinal"]: VmOverride(o.get("vcpus"), o.get("memoryMiB"), o.get("running"))
            for o in s.get("overrides", [])
        }
        return cls(
            Meta.parse(doc["metadata"], "VmFleet"),
            s["templateRef"]["name"],
            s["replicas"],
            dict((s.get("hostSelector") or {}).get("matchLabels") or {}),
            s["placement"],
            s["running"],
            s["deletionPolicy"],
            overrides,
        )

    @property
    def hosts_declared_lost(self) -> frozenset[str]:
        """KvmHosts a person declared down for good (annotation HOSTS_LOST): their VMs count as stopped."""
        value = self.meta.annotations.get(HOSTS_LOST_ANNOTATION, "")
        return frozenset(h.strip() for h in value.split(",") if h.strip())

    def vm_name(self, ordinal: int) -> str:
        return f"{self.meta.name}-{ordinal}"

    def selects(self, host: KvmHost) -> bool:
        return all(host.meta.labels.get(k) == v for k, v in self.match_labels.items())


Resource = CloneStore | KvmHost | VmTemplate | VmFleet
PARSERS: dict[str, type[Resource]] = {
    "CloneStore": CloneStore,
    "KvmHost": KvmHost,
    "VmTemplate": VmTemplate,
    "VmFleet": VmFleet,
}


def parse(doc: Mapping[str, Any], source: str = "manifest") -> Resource:
    """Validate, default and type one object; raises InvalidManifest naming each bad field."""
    checked = validate(doc, source)
    return PARSERS[checked["kind"]].parse(checked)


R = TypeVar("R", CloneStore, KvmHost, VmTemplate, VmFleet)


def parse_as(kind: type[R], doc: Mapping[str, Any], source: str = "manifest") -> R:
    """`parse`, for an object that must be of this kind."""
    checked = validate(doc, source)
    if checked["kind"] != kind.__name__:
        raise InvalidManifest(source, [FieldError("kind", f"must be {kind.__name__}")])
    return kind.parse(checked)


def to_manifest(kind: str, meta: Meta, spec: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": meta.name}
    if meta.namespace:
        metadata["namespace"] = meta.namespace
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": dict(spec), "status": dict(status)}
