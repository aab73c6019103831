"""Typed views of the four kinds, built from validated and defaulted dicts (see validation.validate)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from .identity import SAMPLE_VALUES, VARIABLES, render, unknown_variables, vm_mac
from .schema import API_VERSION, DEFAULT_NAMESPACE, KINDS
from .validation import FieldError, InvalidManifest, validate

HOSTS_LOST_ANNOTATION = "vmfleet.io/hosts-lost"
FLEET_LABEL = "vmfleet.io/fleet"  # status.labelSelector of the scale subresource: <label>=<fleet name>
REIMAGE_ANNOTATION = "vmfleet.io/reimage"  # one-shot: ordinals to reimage; the operator removes it once done
DRAIN_ANNOTATION = "vmfleet.io/drain"  # on a KvmHost, "true": its VMs move to other hosts; it takes no new one

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
    unschedulable: bool = False  # cordoned: no new VM is placed here
    migration_address: str | None = None  # where live migrations to this host send memory (tcp://ADDRESS)

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
            s.get("unschedulable") is True,
            s.get("migrationAddress"),
        )

    @property
    def draining(self) -> bool:
        """Annotation DRAIN_ANNOTATION is "true": every VM here moves to another host its fleet may use."""
        return self.meta.annotations.get(DRAIN_ANNOTATION, "").strip().lower() == "true"

    @property
    def cordoned(self) -> bool:
        """No new VM is placed here: spec.unschedulable, or drained (a drained host is also cordoned)."""
        return self.unschedulable or self.draining

    def store_path(self, store: CloneStore, relative: str) -> str:
        """Where this host sees a file that lives at `relative` under the store's root."""
        return f"{self.store_mounts.get(store.meta.name, store.root).rstrip('/')}/{relative}"


@dataclass(frozen=True)
class CloudInit:
    """spec.cloudInit of a template or a fleet: None where a field is not set, so that a fleet's replaces only
    what it sets (`over`)."""

    datasource: str | None = None
    user_data: str | None = None
    user_data_secret: tuple[str, str] | None = None  # (Secret name in the fleet's namespace, key)
    network_data: str | None = None
    meta_data: Mapping[str, str] = field(default_factory=dict)
    ssh_authorized_keys: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, s: Mapping[str, Any] | None, what: str) -> CloudInit | None:
        """None when not set; InvalidManifest (about `what`) naming the field of each unknown variable."""
        if s is None:
            return None
        ref = s.get("userDataSecretRef")
        out = cls(
            s.get("datasource"),
            s.get("userData"),
            (ref["name"], ref["key"]) if ref else None,
            s.get("networkData"),
            dict(s.get("metaData") or {}),
            tuple(s["sshAuthorizedKeys"]) if "sshAuthorizedKeys" in s else None,
        )
        problem = out.network_data_problem() if out.datasource else None
        errors = [FieldError("spec.cloudInit.networkData", problem.split(": ", 1)[1])] if problem else []
        errors += [
            FieldError(
                f"spec.cloudInit.{name}",
                f"unknown variable {', '.join(bad)}: the variables are {', '.join(VARIABLES)}",
            )
            for name, text in out._texts()
            if (bad := unknown_variables(text))
        ]
        if errors:
            raise InvalidManifest(what, errors)
        return out

    def _texts(self) -> list[tuple[str, str]]:
        texts = [("userData", self.user_data), ("networkData", self.network_data)]
        texts += [(f"metaData.{k}", v) for k, v in self.meta_data.items()]
        return [(name, text) for name, text in texts if text is not None]

    def network_data_problem(self) -> str | None:
        """Why networkData, its variables filled in, is not what the datasource reads (network_data.json for
        ConfigDrive, a network-config mapping for NoCloud); None when it is, or is not set."""
        if self.network_data is None:
            return None
        text = render(self.network_data, SAMPLE_VALUES)
        try:
            if self.datasource == "ConfigDrive":
                json.loads(text)
                return None
            parsed = yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as e:
            kind = "JSON (network_data.json)" if self.datasource == "ConfigDrive" else "YAML (network-config)"
            return f"spec.cloudInit.networkData: not valid {kind}: {str(e).splitlines()[0]}"
        if not isinstance(parsed, dict):
            return "spec.cloudInit.networkData: must be a network-config mapping (version: 1 or 2)"
        return None

    def over(self, base: CloudInit | None) -> CloudInit:
        """This (a fleet's) laid over `base` (its template's)."""
        if base is None:
            return self
        own_user_data = self.user_data is not None or self.user_data_secret is not None
        return CloudInit(
            self.datasource or base.datasource,
            self.user_data if own_user_data else base.user_data,
            self.user_data_secret if own_user_data else base.user_data_secret,
            self.network_data if self.network_data is not None else base.network_data,
            {**base.meta_data, **self.meta_data},
            self.ssh_authorized_keys if self.ssh_authorized_keys is not None else base.ssh_authorized_keys,
        )


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
    cloud_init: CloudInit | None = None

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
            CloudInit.parse(s.get("cloudInit"), f"VmTemplate {doc['metadata']['name']!r}"),
        )


@dataclass(frozen=True)
class VmOverride:
    vcpus: int | None = None
    memory_mib: int | None = None
    running: bool | None = None
    mac: str | None = None


@dataclass(frozen=True)
class UpdateStrategy:
    type: str = "RollingUpdate"
    max_unavailable: int | str = 1
    partition: int = 0
    disk_policy: str = "Reimage"

    @classmethod
    def parse(cls, s: Mapping[str, Any]) -> UpdateStrategy:
        rolling = s.get("rollingUpdate") or {}
        return cls(
            s.get("type", "RollingUpdate"),
            rolling.get("maxUnavailable", 1),
            int(rolling.get("partition", 0)),
            s.get("diskPolicy", "Reimage"),
        )

    def unavailable_budget(self, replicas: int) -> int:
        """maxUnavailable as a number of VMs: a percent of `replicas` rounded down, and never below 1."""
        value = self.max_unavailable
        if isinstance(value, str):
            return max(1, replicas * int(value.rstrip("%")) // 100)
        return max(1, value)


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
    cloud_init: CloudInit | None = None  # laid over the template's (CloudInit.over)
    run_strategy: str = ""  # "" when not set: `running` says Always or Halted
    ephemeral: bool = False
    grace_seconds: int = 60
    update: UpdateStrategy = field(default_factory=lambda: UpdateStrategy())
    readiness: str = "Running"
    progress_deadline: int = 600
    # The object's bytes but its status (spec, metadata, kubectl's copy of the spec in an annotation, managedFields)
    # and kopf's copy in status.kopf: what is left of etcd's object size limit is what the status may take.
    stored_bytes: int = 0

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> VmFleet:
        s = doc["spec"]
        overrides = {
            o["ordinal"]: VmOverride(o.get("vcpus"), o.get("memoryMiB"), o.get("running"), o.get("mac"))
            for o in s.get("overrides", [])
        }
        fleet = cls(
            Meta.parse(doc["metadata"], "VmFleet"),
            s["templateRef"]["name"],
            s["replicas"],
            dict((s.get("hostSelector") or {}).get("matchLabels") or {}),
            s["placement"],
            s["running"],
            s["deletionPolicy"],
            overrides,
            CloudInit.parse(s.get("cloudInit"), f"VmFleet {doc['metadata']['name']!r}"),
            s.get("runStrategy") or "",
            bool(s.get("ephemeral", False)),
            int((s.get("shutdown") or {}).get("gracePeriodSeconds", 60)),
            UpdateStrategy.parse(s.get("updateStrategy") or {}),
            s.get("readiness", "Running"),
            int(s.get("progressDeadlineSeconds", 600)),
            stored_bytes(doc),
        )
        fleet._check_macs(s.get("overrides", []))
        return fleet

    def run_strategy_of(self, ordinal: int) -> str:
        """Always, Halted, Manual or RerunOnFailure for one VM: an override's `running` wins, then
        spec.runStrategy, then spec.running."""
        ov = self.overrides.get(ordinal)
        if ov is not None and ov.running is not None:
            return "Always" if ov.running else "Halted"
        return self.run_strategy or ("Always" if self.running else "Halted")

    @property
    def reimage_request(self) -> str:
        """The value of annotation REIMAGE_ANNOTATION ("" without one)."""
        return self.meta.annotations.get(REIMAGE_ANNOTATION, "").strip()

    @property
    def reimage_requested(self) -> frozenset[int]:
        """The ordinals the reimage annotation asks to reimage ("0,3" or "0 3"); none when it does not parse
        (reimage_problem says why: the fleet is Stalled, and it can still be deleted)."""
        if self.reimage_problem:
            return frozenset()
        return frozenset(int(w) for w in self._reimage_words())

    def _reimage_words(self) -> list[str]:
        """The ordinals: what comes before a ';' (after it, anything that makes a request new, as `vmfleet
        reimage` writes a time there: the same ordinals asked again are a new request)."""
        return self.reimage_request.split(";", 1)[0].replace(",", " ").split()

    @property
    def reimage_problem(self) -> str:
        words = self._reimage_words()
        if all(w.isdigit() and (w == "0" or not w.startswith("0")) and len(w) <= 5 for w in words):
            return ""
        return (
            f"metadata.annotations[{REIMAGE_ANNOTATION}]: {self.reimage_request!r} is not a list of ordinals "
            "(for example 0,3)"
        )

    def mac(self, ordinal: int) -> str:
        pinned = self.overrides.get(ordinal)
        return pinned.mac if pinned and pinned.mac else vm_mac(self.meta.uid, ordinal)

    def _check_macs(self, overrides: list[dict[str, Any]]) -> None:
        """A pinned MAC may not be another VM's, pinned or derived (for any ordinal the fleet may reach)."""
        errors = []
        taken: dict[str, int] = {}
        for i, o in enumerate(overrides):
            if "mac" not in o:
                continue
            mac, ordinal = o["mac"], o["ordinal"]
            other = taken.setdefault(mac, ordinal)
            derived_for = int(mac[-5:].replace(":", ""), 16)  # the ordinal whose derived MAC it could be
            if other != ordinal:
                errors.append(FieldError(f"spec.overrides[{i}].mac", f"{mac} is pinned for ordinal {other} too"))
            elif derived_for != ordinal and vm_mac(self.meta.uid, derived_for) == mac:
                errors.append(
                    FieldError(f"spec.overrides[{i}].mac", f"{mac} is the MAC of ordinal {derived_for}: pick another")
                )
        if errors:
            raise InvalidManifest(f"VmFleet {self.meta.name!r}", errors)

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


def stored_bytes(doc: Mapping[str, Any]) -> int:
    """The object's bytes in etcd but the status vmfleet writes (VmFleet.stored_bytes): all but the status, and
    kopf's record of the spec, labels and annotations, an escaped JSON string in status.kopf that goes out with
    the status (operator/records.py), counted as it will be even before it is there."""
    meta = doc.get("metadata")
    kept = {k: meta[k] for k in ("labels", "annotations") if k in meta} if isinstance(meta, Mapping) else {}
    record = {"spec": doc.get("spec"), "metadata": kept}
    rest = {k: v for k, v in doc.items() if k != "status"}
    return len(_compact(rest)) + len(json.dumps(_compact(record)))


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


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
