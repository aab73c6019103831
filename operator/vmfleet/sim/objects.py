"""The vmfleet objects that point at a simulator: a store on it, a test:/// host that any fleet fits on, a
template and its fleets. The tests and the benchmarks build theirs here, each with its own names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.schema import API_VERSION
from ..api.types import CloneStore, KvmHost, R, SecretRef, VmFleet, VmTemplate, parse_as

MOUNT = "/ibm/gpfs0"  # where the simulated file system is on the server (python -m vmfleet.sim's default)


def _object(kind: type[R], metadata: dict[str, Any], spec: dict[str, Any]) -> R:
    return parse_as(kind, {"apiVersion": API_VERSION, "kind": kind.__name__, "metadata": metadata, "spec": spec})


def store(
    name: str,
    personality: str,
    port: int,
    user: str,
    root: str,
    secret: SecretRef,
    ssh: Mapping[str, Any] | None = None,
    **spec: Any,
) -> CloneStore:
    """A sonas or gpfs store on the simulator listening on `port`; `ssh` and `spec` add or replace fields."""
    endpoint = {
        "host": "127.0.0.1",
        "port": port,
        "user": user,
        "secretRef": {"name": secret.name, "namespace": secret.namespace},
        **(ssh or {}),
    }
    return _object(CloneStore, {"name": name}, {"driver": personality, "root": root, "ssh": endpoint, **spec})


def host(vcpus: int, memory_mib: int, name: str = "t") -> KvmHost:
    """libvirt's test driver: domains that are only records, as many as the capacity allows."""
    return _object(
        KvmHost,
        {"name": name},
        {"uri": "test:///default", "domainType": "qemu", "capacity": {"vcpus": vcpus, "memoryMiB": memory_mib}},
    )


def template(
    name: str, namespace: str, store: str, path: str, image_format: str = "raw", memory_mib: int = 16
) -> VmTemplate:
    return _object(
        VmTemplate,
        {"name": name, "namespace": namespace},
        {"storeRef": {"name": store}, "image": {"path": path, "format": image_format}, "memoryMiB": memory_mib},
    )


def fleet(replicas: int, name: str, namespace: str, template: str, **spec: Any) -> VmFleet:
    """`spec` adds fields (updateStrategy, shutdown, ...)."""
    return _object(
        VmFleet,
        {"name": name, "namespace": namespace},
        {"templateRef": {"name": template}, "replicas": replicas, **spec},
    )
