"""A SONAS or GPFS simulator on XFS for the tests, with the objects that point vmfleet at it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from vmfleet import sim
from vmfleet.api import CloneStore, KvmHost, VmFleet, VmTemplate, parse
from vmfleet.api.types import SecretRef
from vmfleet.engine import Runtime

MOUNT = "/ibm/gpfs0"


@dataclass
class SimEnv:
    sim: sim.Simulator
    directory: Path  # what the simulated GPFS file system holds; also "the NFS export" the operator mounts
    client_key: asyncssh.SSHKey
    runtime: Runtime
    known_hosts: str = ""

    def read_secret(self, ref: SecretRef) -> dict[str, str]:
        return {"ssh-privatekey": self.client_key.export_private_key().decode(),
                "known_hosts": self.known_hosts or self.sim.known_hosts}

    def store(self, timeout: int = 10, **spec: Any) -> CloneStore:
        personality = self.sim.personality
        base = {"driver": personality, "root": f"{MOUNT}/frank",
                "ssh": {"host": "127.0.0.1", "port": self.sim.port, "user": "vmfleet", "commandTimeoutSeconds": timeout,
                        "secretRef": {"name": "ssh", "namespace": "vmfleet-system"}}}
        if personality == "sonas":
            base["localPath"] = str(self.directory / "frank")
        base.update(spec)
        store = parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "CloneStore", "metadata": {"name": "sim"},
                       "spec": base})
        assert isinstance(store, CloneStore)
        return store


def host(vcpus: int = 4096, memory: int = 1 << 22) -> KvmHost:
    h = parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "KvmHost", "metadata": {"name": "t"},
               "spec": {"uri": "test:///default", "domainType": "qemu",
                        "capacity": {"vcpus": vcpus, "memoryMiB": memory}}})
    assert isinstance(h, KvmHost)
    return h


def template(path: str = "image/linux/basic.img") -> VmTemplate:
    t = parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "VmTemplate",
               "metadata": {"name": "basic", "namespace": "seed"},
               "spec": {"storeRef": {"name": "sim"}, "image": {"path": path}, "memoryMiB": 16}})
    assert isinstance(t, VmTemplate)
    return t


def fleet(replicas: int, name: str = "web") -> VmFleet:
    f = parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "VmFleet", "metadata": {"name": name, "namespace": "seed"},
               "spec": {"templateRef": {"name": "basic"}, "replicas": replicas}})
    assert isinstance(f, VmFleet)
    return f
