"""GPFS file-clone semantics on a directory of a real file system.

Clones are real reflinks where the file system has them (XFS reflink=1, btrfs), so a clone costs no
space until written, as on GPFS. What GPFS keeps in the inode (is it a clone parent, its depth, its
parent's inode) is kept in an extended attribute. GPFS's space accounting (a clone's blocks are only
its copy-on-write ones; shared blocks are charged to the parent) is computed from FIEMAP.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat as stat_module
from dataclasses import dataclass

from ..extents import exclusive_and_shared, ficlone

XATTR = "user.vmfleet.sim.clone"
_FALLOC_FL_UNSHARE_RANGE = 0x40
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


class FsError(OSError):
    """errno and the path, as the GPFS commands report them."""


def _err(code: int, path: str) -> FsError:
    return FsError(code, os.strerror(code), path)


@dataclass(frozen=True)
class CloneInfo:
    is_parent: bool
    depth: int
    parent_inode: int | None


class SimFs:
    def __init__(self, directory: str, mount_point: str):
        self.directory = os.path.realpath(directory)
        self.mount_point = mount_point.rstrip("/")

    # ---------------------------------------------------------- paths

    def local(self, server_path: str) -> str:
        """The backing file of a server-side path; EINVAL for paths outside the GPFS file system."""
        norm = os.path.normpath(server_path)
        if not server_path.startswith("/") or not (norm == self.mount_point or norm.startswith(self.mount_point + "/")):
            raise _err(errno.EINVAL, server_path)
        return os.path.join(self.directory, os.path.relpath(norm, self.mount_point))

    def server(self, local_path: str) -> str:
        return os.path.join(self.mount_point, os.path.relpath(local_path, self.directory))

    # ---------------------------------------------------------- clone metadata

    def info(self, path: str) -> CloneInfo | None:
        try:
            raw = os.getxattr(self.local(path), XATTR)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP):
                return None
            raise _err(e.errno or errno.EIO, path) from None
        d = json.loads(raw)
        return CloneInfo(d["is_parent"], d["depth"], d["parent_inode"])

    def _set_info(self, path: str, info: CloneInfo | None) -> None:
        local = self.local(path)
        if info is None:
            try:
                os.removexattr(local, XATTR)
            except OSError:
                pass
            return
        os.setxattr(local, XATTR, json.dumps(info.__dict__).encode())

    def _regular(self, path: str) -> os.stat_result:
        try:
            st = os.stat(self.local(path))
        except FileNotFoundError:
            raise _err(errno.ENOENT, path) from None
        if stat_module.S_ISDIR(st.st_mode):
            raise _err(errno.EISDIR, path)
        if not stat_module.S_ISREG(st.st_mode):
            raise _err(errno.EINVAL, path)
        return st

    def _clone_file(self, source: str, target: str) -> None:
        src, dst = self.local(source), self.local(target)
        if os.path.lexists(dst):
            raise _err(errno.EEXIST, target)
        if not os.path.isdir(os.path.dirname(dst)):
            raise _err(errno.ENOENT, target)
        try:
            ficlone(src, dst)
        except FileExistsError:
            raise _err(errno.EEXIST, target) from None  # made by a concurrent command a moment ago
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL):
                raise
            shutil.copyfile(src, dst)  # no reflinks here: a copy, with the same meaning but not the same cost

    # ---------------------------------------------------------- mmclone

    def snap(self, source: str, parent: str | None) -> None:
        """`mmclone snap SOURCE [PARENT]`: PARENT becomes a read-only clone parent; SOURCE its child."""
        st = self._regular(source)
        old = self.info(source)
        if old is not None and old.is_parent:
            raise _err(errno.EROFS, source)
        if parent is None:  # in place: the file itself becomes the parent
            self._set_info(source, CloneInfo(True, old.depth if old else 0, old.parent_inode if old else None))
            os.chmod(self.local(source), st.st_mode & 0o7555)
            return
        self._clone_file(source, parent)
        depth = old.depth if old else 0
        self._set_info(parent, CloneInfo(True, depth, old.parent_inode if old else None))
        os.chmod(self.local(parent), 0o444)
        self._set_info(source, CloneInfo(False, depth + 1, os.stat(self.local(parent)).st_ino))

    def copy(self, parent: str, target: str) -> None:
        """`mmclone copy PARENT TARGET`: a writable clone; PARENT must be a clone parent."""
        self._regular(parent)
        info = self.info(parent)
        if info is None or not info.is_parent:
            raise _err(errno.EINVAL, parent)
        self._clone_file(parent, target)
        os.chmod(self.local(target), 0o644)
        self._set_info(target, CloneInfo(False, info.depth + 1, os.stat(self.local(parent)).st_ino))

    def split(self, path: str) -> None:
        """`mmclone split`: the clone leaves all its parents and owns every block it reads (a regular file)."""
        self._regular(path)
        info = self.info(path)
        if info is None or info.is_parent:
            raise _err(errno.EPERM, path)
        _unshare(self.local(path))
        self._set_info(path, None)

    def redirect(self, path: str) -> None:
        """Point a clone at its grandparent; GPFS leaves the depth field as it was. A clone of a root
        parent has no grandparent: it is split."""
        self._regular(path)
        info = self.info(path)
        if info is None or info.parent_inode is None:
            raise _err(errno.EPERM, path)
        parent = self._by_inode(info.parent_inode)
        grand = self.info(parent) if parent else None
        if (grand is None or grand.parent_inode is None) and not info.is_parent:
            _unshare(self.local(path))
            self._set_info(path, None)
            return
        self._set_info(path, CloneInfo(info.is_parent, info.depth, grand.parent_inode if grand else None))

    def _by_inode(self, inode: int) -> str | None:
        for dirpath, _, files in os.walk(self.directory):
            for f in files:
                p = os.path.join(dirpath, f)
                if os.stat(p).st_ino == inode:
                    return self.server(p)
        return None

    def children(self, path: str) -> int:
        inode = os.stat(self.local(path)).st_ino
        count = 0
        for dirpath, _, files in os.walk(self.directory):
            for f in files:
                try:
                    raw = os.getxattr(os.path.join(dirpath, f), XATTR)
                except OSError:
                    continue
                count += json.loads(raw)["parent_inode"] == inode
        return count

    # ---------------------------------------------------------- plain file operations

    def remove(self, path: str) -> None:
        """`rm`: a clone parent that still has clones cannot go (EROFS, as reported for GPFS)."""
        local = self.local(path)
        if not os.path.lexists(local):
            raise _err(errno.ENOENT, path)
        info = self.info(path)
        if info is not None and info.is_parent and self.children(path):
            raise _err(errno.EROFS, path)
        os.unlink(local)

    def open_write(self, path: str) -> int:
        """A descriptor to write a plain file's new contents from its start (created, or truncated: `dd of=`);
        a clone parent is read-only (EROFS). FsError when it cannot be opened."""
        local = self.local(path)
        if not os.path.isdir(os.path.dirname(local)):
            raise _err(errno.ENOENT, path)
        info = self.info(path) if os.path.lexists(local) else None
        if info is not None and info.is_parent:
            raise _err(errno.EROFS, path)
        try:
            return os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise _err(e.errno or errno.EIO, path) from None

    def rename(self, source: str, target: str) -> None:
        """`mv`: a clone parent cannot be replaced (EROFS)."""
        src, dst = self.local(source), self.local(target)
        if not os.path.lexists(src):
            raise _err(errno.ENOENT, source)
        if os.path.lexists(dst) and (self.info(target) or CloneInfo(False, 0, None)).is_parent:
            raise _err(errno.EROFS, target)
        os.rename(src, dst)

    def links(self, path: str) -> int:
        """The link count GPFS shows: a clone parent counts one link per clone (`ls -il` of base.img: 3
        with two clones, gpfs-clones.md §2.3)."""
        nlink = os.stat(self.local(path)).st_nlink
        info = self.info(path)
        return nlink + self.children(path) if info is not None and info.is_parent else nlink

    def charged_blocks(self, path: str) -> int:
        """512-byte blocks GPFS charges to the file: a clone's own copy-on-write blocks only."""
        local = self.local(path)
        st = os.stat(local)
        info = self.info(path)
        if info is not None and not info.is_parent:
            return -(-exclusive_and_shared(local)[0] // 512)
        return st.st_blocks


def _unshare(local: str) -> None:
    """Give the file its own copy of every block it shares (XFS, btrfs: FALLOC_FL_UNSHARE_RANGE), as a GPFS
    split copies the parent's blocks in; holes stay holes."""
    fd = os.open(local, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size and _libc.fallocate(fd, _FALLOC_FL_UNSHARE_RANGE, 0, size) != 0:
            code = ctypes.get_errno()
            if code not in (errno.EOPNOTSUPP, errno.EINVAL):  # not a reflink file system: nothing is shared
                raise OSError(code, os.strerror(code), local)
    finally:
        os.close(fd)
