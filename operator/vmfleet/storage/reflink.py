"""reflink: clones are FICLONE copies on XFS (reflink=1) or btrfs; a clone's own bytes come from FIEMAP."""

from __future__ import annotations

import fcntl
import os

from ..errors import StoreError
from ..extents import FICLONE, exclusive_and_shared
from .base import Space
from .local import NO_REFLINK, LocalStore, Partial
from .qcow2 import guest_size, read_header


class ReflinkStore(LocalStore):
    def clone_format(self, parent_format: str) -> str:
        return parent_format

    def _make_clone(self, src: int, parent: str, parent_format: str, p: Partial) -> None:
        try:
            fcntl.ioctl(p.fd, FICLONE, src)
        except OSError as e:
            if e.errno in NO_REFLINK:
                raise StoreError(
                    f"{self.base} cannot make reflinks ({os.strerror(e.errno)}): the reflink driver needs "
                    "XFS with reflink=1 or btrfs, with parents and clones on one file system"
                ) from None
            raise

    def _measure(self, fd: int, path: str) -> Space:
        """logical: the disk the guest sees (a qcow2 clone's virtual size); allocated: FIEMAP's extents
        without the shared flag, XFS's transient copy-on-write preallocation left out (extents.py)."""
        exclusive, _shared = exclusive_and_shared(fd)
        return Space(guest_size(path, os.fstat(fd).st_size, read_header(fd)), exclusive)
