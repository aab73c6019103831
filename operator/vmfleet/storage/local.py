"""What the reflink, qcow2 and sonas drivers share: a store that is a directory the operator can open.

Nothing outside the store's root is read, written or deleted, whatever the store holds (I6): every path
is opened from a descriptor of the root one component at a time with O_NOFOLLOW, so a symbolic link
anywhere under the root is an error, never followed (the root itself may be a link: it is configuration,
not content). Every OSError becomes a StoreError that names the path.

Every file-system call runs in the store's own threads, never the event loop's default executor, and is
waited for at most `store_timeout_seconds` (`copy_timeout_seconds` for a copy): a hung mount (a stopped NFS
server, a FUSE daemon that stops answering) blocks those threads for good, so it must not block the threads
libvirt and the other stores use. The call is then reported as a StoreTimeout; its thread stays stuck until
the mount answers, and the calls queued behind it time out too and never run.

A file being made is `<target>.<random>.partial`, under an exclusive flock held by its maker until it is
renamed into place. Listing never removes anything; a partial is removed only by the next maker (or
delete) of the same target, and only when a non-blocking flock on it succeeds: its maker is gone. So
`vmfleet status`, `apply --dry-run`, `vmfleet apply` and the operator can share a store.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import os
import posixpath
import re
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..disks import FileDisk
from ..errors import RootMissing, StoreError, StoreTimeout
from ..extents import FICLONE
from ..settings import Settings
from ..threads import CallPool
from .base import PARTIAL_SUFFIX, Space, check_relative, file_disk

NO_REFLINK = (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO planted in the store cannot hang us
_CHUNK = 1 << 20
_ZERO = bytes(64 << 10)
_PARTIAL = re.compile(r"\.[0-9a-f]{16}" + re.escape(PARTIAL_SUFFIX) + "$")
MAX_TEXT = 16 << 20
CALL_THREADS = 8  # the short calls (listing, stat, read, unlink, rename, reflink): a CloneStore's default concurrency
COPY_THREADS = 2  # copies take minutes: they never hold up the short calls
T = TypeVar("T")


def copy_sparse(src: int, dst: int) -> None:
    """Copy the data of `src` into the empty `dst`, leaving holes where `src` has holes or zeros:
    never a dense copy."""
    size = os.fstat(src).st_size
    pos = 0
    while pos < size:
        try:
            data = os.lseek(src, pos, os.SEEK_DATA)
            hole = os.lseek(src, data, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole up to the end
                break
            data, hole = pos, size  # no SEEK_DATA here: read it all, zeros still become holes
        while data < hole:
            chunk = os.pread(src, min(_CHUNK, hole - data), data)
            if not chunk:
                break
            for at in range(0, len(chunk), len(_ZERO)):
                piece = chunk[at : at + len(_ZERO)]
                if piece != _ZERO[: len(piece)]:
                    os.pwrite(dst, piece, data + at)
            data += len(chunk)
        pos = hole
    os.ftruncate(dst, size)


def clone_or_copy(src: int, dst: int) -> None:
    """A reflink where the file system has them, else a sparse copy."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as e:
        if e.errno not in NO_REFLINK:
            raise
        copy_sparse(src, dst)


def root_field(driver: str, root: str, local_path: str) -> str:
    """The CloneStore field that names the directory the operator opens."""
    return "spec.localPath" if driver == "sonas" or local_path != root else "spec.root"


def root_problem(base: str) -> str | None:
    """Why the store's root cannot be used here, or None."""
    try:
        os.close(os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        return None
    except OSError as e:
        return _root_reason(e)


def _root_reason(e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return "does not exist"
    if e.errno == errno.ENOTDIR:
        return "is not a directory"
    return f"cannot be opened ({os.strerror(e.errno) if e.errno else e})"


def _split(path: str) -> tuple[str, str]:
    directory, _, name = check_relative(path).rpartition("/")
    return directory, name


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_LIBC = ctypes.CDLL(None, use_errno=True)
_RENAME_NOREPLACE = 1


def _rename_noreplace(dir_fd: int, old: str, new: str) -> bool:
    """renameat2(RENAME_NOREPLACE) within one directory; False where the file system or libc cannot (NFS)."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(dir_fd, os.fsencode(old), dir_fd, os.fsencode(new), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), new)


class _Running:
    """Calls given up on after they started, under one name of a store (its root, its CloneStore)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[int, tuple[str, str]] = {}  # what each is, and why it was given up on


_RUNNING: dict[str, _Running] = {}
_RUNNING_LOCK = threading.Lock()


class Pending:
    """Calls of one store that were given up on after they had started: their threads go on and may still
    change the store. While any is running, the store refuses every other call (StoreTimeout): no pass decides
    on what such a call may yet change (a late delete, a late record, a late clone).

    Kept per name for the process: the store's root as written and its CloneStore, so that a driver made
    again (its CloneStore edited: another root spelling, a mount moved) refuses what the old one left running.
    Not across processes: a new `vmfleet apply`, or the operator restarted, does not know of them."""

    def __init__(self, *names: str) -> None:
        with _RUNNING_LOCK:
            self._sets = [_RUNNING.setdefault(n, _Running()) for n in dict.fromkeys(names)] or [_Running()]

    @staticmethod
    def root(path: str) -> str:
        return f"root {os.path.normpath(path)}"  # no realpath: the mount may hang

    def add(self, job: concurrent.futures.Future[Any], what: str, why: str) -> None:
        for running in self._sets:
            with running.lock:
                running.calls[id(job)] = (what, why)
        job.add_done_callback(lambda done: self._forget(id(done)))

    def _forget(self, key: int) -> None:
        for running in self._sets:
            with running.lock:
                running.calls.pop(key, None)

    def running(self) -> list[tuple[str, str]]:
        """What is still running and why it was given up on, oldest first."""
        out: list[tuple[str, str]] = []
        for running in self._sets:
            with running.lock:
                out += [c for c in running.calls.values() if c not in out]
        return out

    def refusal(self, what: str) -> StoreTimeout | None:
        earlier = self.running()
        if not earlier:
            return None
        # What hangs and for how long, whichever call is refused: a fleet's, its CloneStore's and its
        # templates' conditions then all say why, and say it alike from one pass to the next.
        call, why = earlier[0]
        return StoreTimeout(
            f"{what}: refused while an earlier call ({call}) has not returned: {why} (a hung mount?); the store is "
            "used again once it has"
        )


def store_pool(name: str, size: int, pending: Pending | None = None) -> CallPool:
    """At most `size` threads of one store (threads.py); a call given up on after it started makes the store refuse
    every call until it returns (Pending)."""
    return CallPool(
        name,
        size,
        lambda what, seconds: StoreTimeout(f"{what} did not answer within {seconds:g} s (a hung mount?)"),
        lambda what: StoreError(f"{what}: the store is closed"),
        pending if pending is not None else Pending(),
    )


class AlreadyExists(StoreError):
    """The target of a clone or parent is there already."""


@dataclass
class Partial:
    """A file being made next to its target, locked by its maker."""

    dir_fd: int
    fd: int
    name: str
    target: str  # the final name in the same directory
    path: str  # the target, relative to the store's root: for messages


class LocalStore:
    """Files under `base` (the store's root as mounted here). Subclasses make and measure clones."""

    def __init__(self, base: str, field: str = "spec.root", settings: Settings = Settings(), store: str = ""):
        """`store`: the CloneStore's name, under which calls that run late are remembered too (Pending)."""
        self.base = base.rstrip("/") or "/"
        names = [f"CloneStore {store}"] if store else []
        self.field = field
        self.timeout, self.copy_timeout = settings.store_timeout_seconds, settings.copy_timeout_seconds
        pending = Pending(Pending.root(self.base), *names)  # shared: a late copy holds up the short calls too
        self._calls = store_pool(f"store {self.base}", CALL_THREADS, pending)
        self._copies = store_pool(f"store {self.base} copies", COPY_THREADS, pending)

    # ------------------------------------------------------------------ safe resolution (in threads)

    def where(self, path: str) -> str:
        return f"{self.base.rstrip('/')}/{path}" if path else self.base

    def _error(self, e: OSError, path: str) -> StoreError:
        return StoreError(f"{self.where(path)}: {os.strerror(e.errno) if e.errno else e}")

    def _symlink(self, path: str) -> StoreError:
        return StoreError(f"{self.where(path)} is a symbolic link; vmfleet follows none inside a store")

    def _root(self) -> int:
        try:
            return os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise StoreError(f"the store root {self.base} ({self.field}) {_root_reason(e)}") from None

    def _failed(self, e: OSError, at: int, name: str, path: str) -> StoreError:
        """The error for `name` in `at`: a symbolic link is named as one."""
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=at, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    return self._symlink(path)
                if not stat.S_ISDIR(st.st_mode) and e.errno == errno.ENOTDIR:
                    return StoreError(f"{self.where(path)} is not a directory")
        return self._error(e, path)

    @contextlib.contextmanager
    def _dirs(self, directory: str, create: bool = False) -> Iterator[list[int] | None]:
        """Descriptors of the root and of each directory down to `directory` ("": the root), each opened
        without following a link; None when a directory is missing and `create` is false."""
        fds = [self._root()]
        try:
            parts = directory.split("/") if directory else []
            for i, name in enumerate(parts):
                fd = self._subdir(fds[-1], name, "/".join(parts[: i + 1]), create)
                if fd is None:
                    break
                fds.append(fd)
            yield fds if len(fds) == len(parts) + 1 else None
        finally:
            for fd in fds:
                os.close(fd)

    def _subdir(self, at: int, name: str, path: str, create: bool) -> int | None:
        for _ in range(3):
            try:
                return os.open(name, _DIR, dir_fd=at)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(name, 0o755, dir_fd=at)
                except FileExistsError:
                    pass  # made by another maker a moment ago, or a link: the next open tells
                except OSError as e:
                    raise self._error(e, path) from None
            except OSError as e:
                raise self._failed(e, at, name, path) from None
        raise StoreError(f"{self.where(path)} keeps disappearing")

    def _lstat(self, at: int, name: str, path: str) -> os.stat_result | None:
        """The file `name` in `at` as it is (None if missing); a symbolic link is an error."""
        try:
            st = os.stat(name, dir_fd=at, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._error(e, path) from None
        if stat.S_ISLNK(st.st_mode):
            raise self._symlink(path)
        return st

    def _open_regular(self, at: int, name: str, path: str, flags: int = os.O_RDONLY) -> int | None:
        """A descriptor of the regular file `name` in `at` (None if missing): no link, no device, no FIFO."""
        st = self._lstat(at, name, path)
        if st is None:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{self.where(path)} is not a regular file")
        try:
            fd = os.open(name, flags | _FILE, dir_fd=at)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._failed(e, at, name, path) from None
        if not _same_file(os.fstat(fd), st):  # replaced between the look and the open
            os.close(fd)
            raise StoreError(f"{self.where(path)} changed while it was opened; the next pass retries")
        os.set_blocking(fd, True)
        return fd

    def _guarded(self, path: str, work: Callable[[], T]) -> T:
        try:
            return work()
        except StoreError:
            raise
        except OSError as e:
            raise self._error(e, path) from None

    async def _run(self, what: str, path: str, work: Callable[..., T], *args: object, copy: bool = False) -> T:
        """`work(*args)` in the store's threads, within its timeout; any OSError it raises becomes a StoreError
        naming `path`, a timeout a StoreTimeout naming `what` (doing what) and `path`. `copy`: it copies data."""
        if path:
            check_relative(path)
        pool, timeout = (self._copies, self.copy_timeout) if copy else (self._calls, self.timeout)
        return await pool.run(lambda: self._guarded(path, lambda: work(*args)), timeout, f"{what} {self.where(path)}")

    # ------------------------------------------------------------------ partial files

    def _begin(self, dirs: list[int], target: str, path: str, replace: bool = False) -> Partial:
        """A new locked partial for `target`; stale partials of the same target are removed first."""
        at = dirs[-1]
        self._remove_stale(at, target, path)
        if self._lstat(at, target, path) is not None and not replace:  # a link there is an error either way
            raise AlreadyExists(f"clone {path!r} already exists")
        while True:
            name = f"{target}.{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=at)
            except FileExistsError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a remover that saw it unlocked looks at it
            try:
                if _same_file(os.fstat(fd), os.stat(name, dir_fd=at, follow_symlinks=False)):
                    return Partial(at, fd, name, target, path)
            except FileNotFoundError:
                pass  # that remover took it for stale: take another name
            os.close(fd)

    def _remove_stale(self, at: int, target: str, path: str) -> None:
        """Remove the partials of `target` whose maker is gone (a non-blocking flock succeeds)."""
        for name in os.listdir(at):
            ours = name.startswith(target) and _PARTIAL.fullmatch(name[len(target) :])
            if name != target + PARTIAL_SUFFIX and not ours:
                continue
            where = posixpath.join(posixpath.dirname(path), name)
            fd = self._open_regular(at, name, where)
            if fd is None:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its maker is at work
                with contextlib.suppress(FileNotFoundError):
                    if _same_file(os.fstat(fd), os.stat(name, dir_fd=at, follow_symlinks=False)):
                        os.unlink(name, dir_fd=at)
            finally:
                os.close(fd)

    def _live_partial(self, at: int, name: str) -> bool:
        """Is a maker holding this partial right now?"""
        try:
            fd = os.open(name, os.O_RDONLY | _FILE, dir_fd=at)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    @staticmethod
    def _publish(p: Partial, replace: bool = False) -> None:
        """Give the partial its final name, never replacing an existing clone: an atomic rename that refuses
        an existing target (renameat2 RENAME_NOREPLACE), else a hard link then an unlink (a crash between
        the two leaves a second name, removed with the clone)."""
        os.fsync(p.fd)
        if replace:
            os.rename(p.name, p.target, src_dir_fd=p.dir_fd, dst_dir_fd=p.dir_fd)
            return
        try:
            if _rename_noreplace(p.dir_fd, p.name, p.target):
                return
            os.link(p.name, p.target, src_dir_fd=p.dir_fd, dst_dir_fd=p.dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise AlreadyExists(f"clone {p.path!r} already exists (made by another maker meanwhile)") from None
        os.unlink(p.name, dir_fd=p.dir_fd)

    @staticmethod
    def _abandon(p: Partial) -> None:
        with contextlib.suppress(OSError):
            if _same_file(os.fstat(p.fd), os.stat(p.name, dir_fd=p.dir_fd, follow_symlinks=False)):
                os.unlink(p.name, dir_fd=p.dir_fd)
        os.close(p.fd)

    def _make(self, path: str, fill: Callable[[Partial], None], mode: int = 0o644, replace: bool = False) -> None:
        """Make `path` through a locked partial that `fill` writes; nothing half-made is left behind."""
        directory, target = _split(path)
        with self._dirs(directory, create=True) as dirs:
            assert dirs is not None
            p = self._begin(dirs, target, path, replace)
            try:
                fill(p)
                os.fchmod(p.fd, mode)
                self._publish(p, replace)
            finally:
                self._abandon(p)

    # ------------------------------------------------------------------ the StoreDriver interface

    async def exists(self, path: str) -> bool:
        return await self._run("looking up", path, self._exists, path)

    def _exists(self, path: str) -> bool:
        directory, name = _split(path)
        with self._dirs(directory) as dirs:
            return dirs is not None and self._lstat(dirs[-1], name, path) is not None

    async def prepare_parent(self, image: str, image_format: str, parent: str) -> None:
        check_relative(image)
        await self._run("making the clone parent", parent, self._prepare_parent, image, parent, copy=True)

    def _prepare_parent(self, image: str, parent: str) -> None:
        if self._exists(parent):
            return
        directory, name = _split(image)
        with self._dirs(directory) as dirs:
            src = self._open_regular(dirs[-1], name, image) if dirs is not None else None
            if src is None:
                raise StoreError(f"template image {image!r} not found under the store root {self.base}")
            from .qcow2 import refuse_backing_file  # qcow2.py builds on this module

            try:
                refuse_backing_file(os.pread(src, 32, 0), image)
                # Read-only: a clone parent is never written to.
                self._make(parent, lambda p: clone_or_copy(src, p.fd), mode=0o444)
            except AlreadyExists:
                pass  # another maker prepared it meanwhile: that is the parent
            finally:
                os.close(src)

    async def list_dir(self, directory: str) -> list[str]:
        """The files in `directory`, partials left out; changes nothing."""
        return await self._run("listing", directory, self._list_dir, directory)

    def _list_dir(self, directory: str) -> list[str]:
        with self._dirs(directory) as dirs:
            if dirs is None:
                return []
            return sorted(n for n in os.listdir(dirs[-1]) if not n.endswith(PARTIAL_SUFFIX))

    async def create_clone(self, parent: str, parent_format: str, target: str) -> None:
        check_relative(parent)
        await self._run("making the clone", target, self._create_clone, parent, parent_format, target)

    def _create_clone(self, parent: str, parent_format: str, target: str) -> None:
        directory, name = _split(parent)
        with self._dirs(directory) as dirs:
            src = self._open_regular(dirs[-1], name, parent) if dirs is not None else None
        if src is None:
            raise StoreError(f"clone parent {parent!r} does not exist")
        try:
            self._make(target, lambda p: self._make_clone(src, parent, parent_format, p))
        finally:
            os.close(src)

    def _make_clone(self, src: int, parent: str, parent_format: str, p: Partial) -> None:
        """Write a clone of the parent open at `src` (relative path `parent`) into the partial `p`."""
        raise NotImplementedError

    async def delete(self, path: str) -> None:
        """Remove a file and, when it empties it, its directory. A symbolic link is refused, not removed."""
        await self._run("deleting", path, self._delete, path)

    def _delete(self, path: str) -> None:
        directory, name = _split(path)
        with self._dirs(directory) as dirs:
            if dirs is None:
                return
            st = self._lstat(dirs[-1], name, path)
            if st is not None:
                if stat.S_ISDIR(st.st_mode):
                    raise StoreError(f"{self.where(path)} is a directory, not a clone")
                os.unlink(name, dir_fd=dirs[-1])
            self._remove_stale(dirs[-1], name, path)
            if len(dirs) > 1:
                with contextlib.suppress(OSError):  # not empty: other clones, a record, a live partial
                    os.rmdir(directory.rsplit("/", 1)[-1], dir_fd=dirs[-2])

    async def delete_parent(self, parent: str, image: str) -> None:
        await self.delete(parent)

    def disk_source(self, clone: str, on_host: str) -> FileDisk:
        return file_disk(clone, on_host)

    async def make_dirs(self, directory: str) -> None:
        """`directory` and those above it, each made or opened without following a link."""
        await self._run("making the directory", directory, self._make_dirs, directory)

    def _make_dirs(self, directory: str) -> None:
        with self._dirs(directory, create=True):
            pass

    async def require_file(self, path: str, what: str) -> None:
        """StoreError unless `path` is a regular file reached through no link."""
        await self._run("looking up", path, self._require_file, path, what)

    def _require_file(self, path: str, what: str) -> None:
        directory, name = _split(path)
        with self._dirs(directory) as dirs:
            st = self._lstat(dirs[-1], name, path) if dirs is not None else None
        if st is None:
            raise StoreError(f"{what} {path!r} not found under the store root {self.base}")
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{self.where(path)} is not a regular file")

    async def unlink(self, path: str) -> None:
        """Remove one file (not a link: refused); a missing one is not an error."""
        await self._run("deleting", path, self._unlink, path)

    def _unlink(self, path: str) -> None:
        directory, name = _split(path)
        with self._dirs(directory) as dirs:
            if dirs is not None and self._lstat(dirs[-1], name, path) is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dirs[-1])

    async def measure(self, paths: Sequence[str]) -> dict[str, Space]:
        for path in paths:
            check_relative(path)
        return await self._run(f"measuring {len(paths)} file(s) under", "", self._measure_all, list(paths))

    def _measure_all(self, paths: list[str]) -> dict[str, Space]:
        by_dir: dict[str, list[str]] = {}
        for path in paths:
            by_dir.setdefault(_split(path)[0], []).append(path)
        out: dict[str, Space] = {}
        for directory, group in by_dir.items():
            with self._dirs(directory) as dirs:
                if dirs is None:
                    continue
                for path in group:
                    fd = self._open_regular(dirs[-1], _split(path)[1], path)
                    if fd is None:
                        continue
                    try:
                        out[path] = self._guarded(path, lambda: self._measure(fd, path))  # noqa: B023 - called here
                    finally:
                        os.close(fd)
        return out

    def _measure(self, fd: int, path: str) -> Space:
        raise NotImplementedError

    async def fingerprint(self, path: str) -> str | None:
        return await self._run("looking up", path, self._fingerprint, path)

    def _fingerprint(self, path: str) -> str | None:
        directory, name = _split(path)
        with self._dirs(directory) as dirs:
            st = self._lstat(dirs[-1], name, path) if dirs is not None else None
        return None if st is None else f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"

    def _header(self, path: str) -> bytes:
        """The first bytes of a file (b"" if there is none), opened as every file here is: no link followed."""
        directory, name = _split(path)
        with self._dirs(directory) as dirs:
            fd = self._open_regular(dirs[-1], name, path) if dirs is not None else None
        if fd is None:
            return b""
        try:
            return os.pread(fd, 32, 0)
        finally:
            os.close(fd)

    async def read_text(self, path: str) -> str | None:
        return await self._run("reading", path, self._read_text, path)

    def _read_text(self, path: str) -> str | None:
        directory, name = _split(path)
        with self._dirs(directory) as dirs:
            fd = self._open_regular(dirs[-1], name, path) if dirs is not None else None
        if fd is None:
            return None
        try:
            data = os.read(fd, MAX_TEXT + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_TEXT:
            raise StoreError(f"{self.where(path)} is larger than {MAX_TEXT} bytes: not a file vmfleet wrote")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise StoreError(f"{self.where(path)} is not UTF-8 text ({e.reason})") from None

    async def write_file(self, path: str, data: bytes) -> None:
        """Replace the file atomically through a locked partial: a reader sees the old bytes or the new."""
        await self._run("writing", path, self._make, path, lambda p: _write_all(p.fd, data), 0o644, True)

    async def write_text(self, path: str, text: str) -> None:
        await self.write_file(path, text.encode("utf-8"))

    async def probe(self) -> str:
        problem = await self._run("opening the store root", "", root_problem, self.base)
        if problem is not None:
            raise RootMissing(f"{self.field} {self.base} {problem}")
        return f"{self.base} is reachable"

    def in_flight(self) -> int:
        """The store's calls running or queued, in both pools."""
        return self._calls.in_flight() + self._copies.in_flight()

    async def close(self) -> None:
        self._calls.close()
        self._copies.close()


def require_tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if not found:
        raise StoreError(f"{name} not found: install {package}")
    return found
