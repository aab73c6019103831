"""A SONAS or GPFS simulator on XFS for the tests, with the objects that point vmfleet at it."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from conftest import Sshd
from vmfleet.api import CloneStore, KvmHost, VmFleet, VmTemplate
from vmfleet.api.types import SecretRef
from vmfleet.engine import Runtime
from vmfleet.sim import objects
from vmfleet.sim import server as sim
from vmfleet.sim.fs import SimFs
from vmfleet.sim.objects import MOUNT


class OpenSshSim:
    """OpenSSH's sshd whose ForceCommand hands each command to the simulator's interpreter
    (`python -m vmfleet.sim --exec`): the commands and files of `sim.Simulator`, the SSH server users meet."""

    def __init__(
        self,
        base: Path,
        directory: Path,
        personality: str,
        latency: float = 0.0,
        max_sessions: int = 10,
        address: str = "127.0.0.1",
        port: int = 0,
    ):
        self.fs, self.personality, self.log = SimFs(str(directory), MOUNT), personality, base / "commands.log"
        self.log.touch()
        self.hold = base / "hold"  # see hold_replies
        force = [
            sys.executable,
            "-m",
            "vmfleet.sim",
            "--exec",
            "--dir",
            str(directory),
            "--mount-point",
            MOUNT,
            "--personality",
            personality,
            "--log",
            str(self.log),
            "--latency",
            str(latency),
            "--hold-file",
            str(self.hold),
        ]
        # The simulator of the tree the tests import (a worktree's, not the one installed in the venv): sshd runs
        # ForceCommand through root's shell, which takes the assignment.
        tree = Path(sim.__file__).resolve().parent.parent.parent
        self.sshd = Sshd(
            base,
            [
                f"ForceCommand PYTHONPATH={shlex.quote(str(tree))} {shlex.join(force)}",
                f"MaxSessions {max_sessions}",
                "LogLevel INFO",
                "AllowTcpForwarding no",
                "PermitTTY no",
            ],
            address,
            port,
        )
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

    def hold_replies(self, prefix: str | None) -> None:
        """Commands that start with `prefix` ("" for all) do their work, then wait to answer until this is
        called with None."""
        if prefix is None:
            self.hold.unlink(missing_ok=True)
        else:
            self.hold.write_text(prefix)

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
    sim: sim.Simulator | OpenSshSim
    directory: Path  # what the simulated GPFS file system holds; also "the NFS export" the operator mounts
    client_key: asyncssh.SSHKey
    runtime: Runtime
    known_hosts: str = ""
    user: str = "vmfleet"  # OpenSshSim: root, the only user with the test's key

    def read_secret(self, ref: SecretRef) -> dict[str, str]:
        return {
            "ssh-privatekey": self.client_key.export_private_key().decode(),
            "known_hosts": self.known_hosts or self.sim.known_hosts,
        }

    def store(self, timeout: int = 10, ssh: dict[str, Any] | None = None, **spec: Any) -> CloneStore:
        if self.sim.personality == "sonas":
            spec.setdefault("localPath", str(self.directory / "frank"))
        return objects.store(
            "sim",
            self.sim.personality,
            self.sim.port,
            self.user,
            f"{MOUNT}/frank",
            SecretRef("ssh", "vmfleet-system"),
            {"commandTimeoutSeconds": timeout, **(ssh or {})},
            **spec,
        )


def host(vcpus: int = 4096, memory: int = 1 << 22) -> KvmHost:
    return objects.host(vcpus, memory)


def template(path: str = "image/linux/basic.img", image_format: str = "raw") -> VmTemplate:
    return objects.template("basic", "seed", "sim", path, image_format)


def fleet(replicas: int, name: str = "web") -> VmFleet:
    return objects.fleet(replicas, name, "seed", "basic")
