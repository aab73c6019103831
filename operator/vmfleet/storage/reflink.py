"""reflink: clones are FICLONE copies on XFS (reflink=1) or btrfs; a clone's own bytes come from FIEMAP."""

from __future__ import annotations

import asyncio
import errno
import os

from .base import Space, StoreError
from .fiemap import exclusive_and_shared
from .local import LocalStore, ficlone


class ReflinkStore(LocalStore):
    def clone_format(self, parent_format: str) -> str:
        return parent_format

    async def _make_clone(self, src: str, parent_format: str, tmp: str) -> None:
        try:
            await asyncio.to_thread(ficlone, src, tmp)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL):
                raise StoreError(
                    f"{self.base} cannot make reflinks ({os.strerror(e.errno)}): the reflink driver needs "
                    "XFS with reflink=1 or btrfs, with parents and clones on one file system"
                ) from e
            raise

    def _measure(self, path: str) -> Space:
        exclusive, _shared = exclusive_and_shared(path)
        return Space(os.stat(path).st_size, exclusive)
