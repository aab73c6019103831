"""What a domain's disk is, as a store driver hands it to the hypervisor (StoreDriver.disk_source) and
hypervisor/domain.py renders it into the <disk> element.

Storage and hypervisor both import this and neither imports the other. A new kind (a block device, a
network disk such as Ceph RBD) is a new class here, a case in domain.py and a driver that returns it; the
engine only carries the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True)
class FileDisk:
    """A disk image file on a file system the KvmHost mounts."""

    path: str  # as the KvmHost sees it (its spec.storeMounts, else the store's root)
    format: str  # what QEMU reads it as: "raw" or "qcow2"


DiskSource: TypeAlias = FileDisk  # a union once there is more than one kind

__all__ = ["DiskSource", "FileDisk"]
