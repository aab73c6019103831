"""Storage drivers: one per CloneStore driver name, all behind base.StoreDriver."""

from __future__ import annotations

from ..api.types import CloneStore
from ..credentials import SecretReader, ssh_keys
from ..errors import StoreError
from ..settings import Settings
from .base import Space, StoreDriver, clone_path, fleet_dir, parent_path
from .local import root_field
from .qcow2 import Qcow2Store
from .reflink import ReflinkStore
from .remote import GpfsStore, SonasStore
from .ssh import SshRunner


def make_driver(store: CloneStore, read_secret: SecretReader, settings: Settings = Settings()) -> StoreDriver:
    if store.driver == "reflink":
        return ReflinkStore(
            store.local_path, root_field(store.driver, store.root, store.local_path), settings, store.meta.name
        )
    if store.driver == "qcow2":
        return Qcow2Store(
            store.local_path, root_field(store.driver, store.root, store.local_path), settings, store.meta.name
        )
    assert store.ssh is not None
    runner = SshRunner(store.ssh, ssh_keys(store.ssh.secret, read_secret, "spec.ssh.secretRef"), store.concurrency)
    if store.driver == "sonas":
        return SonasStore(store.root, store.local_path, runner, store.max_clone_depth, settings, store.meta.name)
    return GpfsStore(store.root, runner, store.max_clone_depth)


__all__ = ["Space", "StoreDriver", "StoreError", "clone_path", "fleet_dir", "make_driver", "parent_path"]
