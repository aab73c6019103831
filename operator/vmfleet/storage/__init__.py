"""Storage drivers: one per CloneStore driver name, all behind base.StoreDriver."""

from ..api.types import CloneStore
from .base import Space, StoreDriver, StoreError, clone_path, fleet_dir, parent_path
from .qcow2 import Qcow2Store
from .reflink import ReflinkStore


def make_driver(store: CloneStore) -> StoreDriver:
    if store.driver == "reflink":
        return ReflinkStore(store.local_path)
    if store.driver == "qcow2":
        return Qcow2Store(store.local_path)
    raise StoreError(f"CloneStore {store.meta.name}: the {store.driver} driver is not available in this release")


__all__ = ["Space", "StoreDriver", "StoreError", "clone_path", "fleet_dir", "make_driver", "parent_path"]
