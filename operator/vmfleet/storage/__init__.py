"""Storage drivers: one per CloneStore driver name, all behind base.StoreDriver."""

from __future__ import annotations

from typing import Callable, Mapping

from ..api.types import CloneStore, SecretRef
from ..settings import Settings
from .base import Space, StoreDriver, StoreError, clone_path, fleet_dir, parent_path
from .local import root_field
from .qcow2 import Qcow2Store
from .reflink import ReflinkStore
from .remote import GpfsStore, SonasStore
from .ssh import KeyReader, SshEndpoint, SshRunner

SecretReader = Callable[[SecretRef], Mapping[str, str]]
"""Reads a Secret's data (decoded); raises StoreError naming the Secret when it cannot."""

PRIVATE_KEY = "ssh-privatekey"  # the key of a kubernetes.io/ssh-auth Secret
KNOWN_HOSTS = "known_hosts"


def ssh_keys(ref: SecretRef, read_secret: SecretReader, field: str) -> KeyReader:
    """Reads (private key, known_hosts) from a kubernetes.io/ssh-auth Secret at each call: at each connection."""

    def read() -> tuple[str, str]:
        data = read_secret(ref)
        missing = [k for k in (PRIVATE_KEY, KNOWN_HOSTS) if not data.get(k)]
        if missing:
            raise StoreError(f"Secret {ref.namespace}/{ref.name} ({field}) has no {' or '.join(missing)}")
        return data[PRIVATE_KEY], data[KNOWN_HOSTS]

    return read


def make_driver(store: CloneStore, read_secret: SecretReader, settings: Settings = Settings()) -> StoreDriver:
    if store.driver == "reflink":
        return ReflinkStore(store.local_path, root_field(store.driver, store.root, store.local_path), settings)
    if store.driver == "qcow2":
        return Qcow2Store(store.local_path, root_field(store.driver, store.root, store.local_path), settings)
    assert store.ssh is not None
    runner = SshRunner(SshEndpoint(store.ssh.host, store.ssh.port, store.ssh.user),
                       ssh_keys(store.ssh.secret, read_secret, "spec.ssh.secretRef"), channels=store.concurrency,
                       timeout=store.ssh.command_timeout, max_sessions=store.ssh.max_sessions)
    if store.driver == "sonas":
        return SonasStore(store.root, store.local_path, runner, store.max_clone_depth, settings)
    return GpfsStore(store.root, runner, store.max_clone_depth)


__all__ = ["KeyReader", "SecretReader", "Space", "StoreDriver", "StoreError", "clone_path", "fleet_dir",
           "make_driver", "parent_path", "ssh_keys"]
