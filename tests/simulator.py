"""A SONAS or GPFS simulator on XFS for the tests, with the objects that point vmfleet at it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import asyncssh

from conftest import Sshd
from vmfleet import sim
from vmfleet.api import CloneStore, KvmHost, VmFleet, VmTemplate, parse
from vmfleet.api.types import SecretRef
from vmfleet.engine import Runtime

MOUNT = "/ibm/gpfs0"


class OpenSshSim:
    """OpenSSH's sshd whose ForceCommand hands each command to the simulator's interpreter
    (`python -m vmfleet.sim --exec`): the commands and files of `sim.Simulator`, the SSH server users meet."""

    def __init__(self, base: Path, directory: Path, personality: str, latency: float = 0.0,
                 max_sessions: int = 10):
        self.fs, self.personality, self.log = sim.SimFs(str(directory), MOUNT), personality, base / "commands.log"
        self.log.touch()
        force = [sys.executable, "-m", "vmfleet.sim", "--exec", "--dir", str(directory), "--mount-point", MOUNT,
                 "--personality", personality, "--log", str(self.log), "--latency", str(latency)]
        self.sshd = Sshd(base, [f"ForceCommand {' '.join(force)}", f"MaxSessions {max_sessions}", "LogLevel INFO",
                                "AllowTcpForwarding no", "PermitTTY no"])
        self.sshd.start()

    @property
    def port(self) -> int:
        return self.sshd.port

    @property
    def known_hosts(self) -> str:
        return self.sshd.known_hosts

    @property
    def client_key(self) -> asyncssh.SSHKey:
        return asyncssh.import_private_key(self.sshd.private_key)

    @property
    def commands(self) -> list[str]:
        return self.log.read_text().splitlines()

    def count(self, prefix: str) -> int:
        return sum(1 for c in self.commands if c.startswith(prefix))

    @property
    def connections(self) -> int:
        return (self.sshd.base / "sshd.log").read_text().count("Accepted publickey")

    async def stop(self) -> None:
        self.sshd.stop()


@dataclass
class SimEnv:
    sim: Union[sim.Simulator, OpenSshSim]
    directory: Path  # what the simulated GPFS file system holds; also "the NFS export" the operator mounts
    client_key: asyncssh.SSHKey
    runtime: Runtime
    known_hosts: str = ""
    user: str = "vmfleet"  # OpenSshSim: root, the only user with the test's key

    def read_secret(self, ref: SecretRef) -> dict[str, str]:
        return {"ssh-privatekey": self.client_key.export_private_key().decode(),
                "known_hosts": self.known_hosts or self.sim.known_hosts}

    def store(self, timeout: int = 10, ssh: dict[str, Any] | None = None, **spec: Any) -> CloneStore:
        personality = self.sim.personality
        base = {"driver": personality, "root": f"{MOUNT}/frank",
                "ssh": {"host": "127.0.0.1", "port": self.sim.port, "user": self.user, "commandTimeoutSeconds": timeout,
                        "secretRef": {"name": "ssh", "namespace": "vmfleet-system"}, **(ssh or {})}}
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


def template(path: str = "image/linux/basic.img", image_format: str = "raw") -> VmTemplate:
    t = parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "VmTemplate",
               "metadata": {"name": "basic", "namespace": "seed"},
               "spec": {"storeRef": {"name": "sim"}, "image": {"path": path, "format": image_format},
                        "memoryMiB": 16}})
    assert isinstance(t, VmTemplate)
    return t


def fleet(replicas: int, name: str = "web") -> VmFleet:
    f = parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "VmFleet", "metadata": {"name": name, "namespace": "seed"},
               "spec": {"templateRef": {"name": "basic"}, "replicas": replicas}})
    assert isinstance(f, VmFleet)
    return f
