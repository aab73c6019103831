"""The two ioctls of copy-on-write files: FICLONE makes a reflink; FIEMAP tells the bytes a file shares
with others from the bytes it owns. A leaf: the storage drivers and the simulator's file system use it, and
the simulator's per-command interpreter loads nothing more.

`du` and st_blocks count shared extents in full and cannot see copy-on-write overwrites; FIEMAP's
SHARED flag can (see reference/test-infra.md §4).

Like the os calls it stands beside, it raises OSError: the drivers call it inside LocalStore._run, which
makes that a StoreError naming the file in the store (this module knows only a descriptor), and the
simulator reports it as a server's stat would.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

FICLONE = 0x40049409
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_SHARED = 0x2000
_HEADER = struct.Struct("=QQLLLL")
_EXTENT = struct.Struct("=QQQQQLLLL")
_BATCH = 512


def ficlone(source: str, target: str) -> None:
    """Reflink `source` to a new file `target` (O_EXCL: an existing target is an error)."""
    with open(source, "rb") as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.ioctl(fd, FICLONE, src.fileno())
        except BaseException:
            os.close(fd)
            os.unlink(target)
            raise
        os.close(fd)


def exclusive_and_shared(file: str | int) -> tuple[int, int]:
    """(bytes only this file holds, bytes it shares with any other file), of a path or an open descriptor.

    On XFS "only this file" excludes the copy-on-write fork: right after an overwrite of shared data XFS
    holds up to cowextsize (128 KiB by default) more per region written, until its background scan trims
    it (fs.xfs.speculative_prealloc_lifetime, 300 s); no ioctl outside debug kernels shows that fork.
    """
    exclusive = shared = 0
    start = 0
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC) if isinstance(file, str) else os.dup(file)
    try:
        while True:
            request = bytearray(_HEADER.size + _EXTENT.size * _BATCH)
            _HEADER.pack_into(request, 0, start, 0xFFFFFFFFFFFFFFFF - start, FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
            mapped = _HEADER.unpack_from(request, 0)[3]
            if mapped == 0:
                return exclusive, shared
            for i in range(mapped):
                logical, _, length, _, _, flags, *_ = _EXTENT.unpack_from(request, _HEADER.size + i * _EXTENT.size)
                if flags & FIEMAP_EXTENT_SHARED:
                    shared += length
                else:
                    exclusive += length
                start = logical + length
                if flags & FIEMAP_EXTENT_LAST:
                    return exclusive, shared
    finally:
        os.close(fd)


def own_bytes(file: str | int) -> int:
    """Bytes that belong to this file alone: FIEMAP where the file system shares extents by reference
    (XFS, btrfs), else st_blocks, which GPFS (also through its NFS export) charges to the file's own
    copy-on-write blocks only, the shared ones going to the clone parent."""
    try:
        return exclusive_and_shared(file)[0]
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            raise
    return (os.stat(file) if isinstance(file, str) else os.fstat(file)).st_blocks * 512
