"""qcow2: clones are qemu-img overlays backed by the parent; a clone's own bytes are the overlay's allocation.

Works on any file system. The overlay names its backing file by a path relative to itself, so it
opens wherever a KVM host mounts the store. qemu-img writes the overlay into a memory file and never
opens a path in the store: the driver copies it into the partial it holds (see local.py).
"""

from __future__ import annotations

import os
import posixpath
import stat
import struct
import subprocess

from ..errors import StoreError
from .base import PARTIAL_SUFFIX, Space
from .local import LocalStore, Partial, copy_sparse, require_tool

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_HEADER_BYTES = 32  # what `guest_size` needs of a file: magic, version, backing file, virtual size
_MAX_BACKING_NAME = 1023  # the qcow2 spec's limit
_MAX_DEPTH = 16  # vmfleet/clones/<namespace>/<fleet>/<uid>/<vm>.qcow2 is 5 deep


def virtual_size(header: bytes) -> int | None:
    """The guest-visible size in a qcow2 header (offset 24, big-endian u64); None if it is not one."""
    if len(header) < QCOW2_HEADER_BYTES or header[:4] != QCOW2_MAGIC:
        return None
    return int(struct.unpack(">Q", header[24:32])[0])


def guest_size(name: str, file_size: int, header: bytes) -> int:
    """The size of the disk a guest sees in a store's file: a `.qcow2` file's virtual size (from its first
    QCOW2_HEADER_BYTES bytes), else the file's own size (raw). For logicalBytes on every driver."""
    if not name.endswith(".qcow2"):
        return file_size
    size = virtual_size(header)
    if size is None:
        raise StoreError(f"{name} is named .qcow2 but has no qcow2 header")
    return size


def read_header(fd: int) -> bytes:
    return os.pread(fd, QCOW2_HEADER_BYTES, 0)


def qcow2_virtual_size(file: str | int) -> int:
    """The guest-visible size of a qcow2 file, given by path or open descriptor."""
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC) if isinstance(file, str) else file
    try:
        size = virtual_size(read_header(fd))
    finally:
        if fd != file:
            os.close(fd)
    if size is None:
        raise StoreError(f"{file} is not a qcow2 image")
    return size


def refuse_backing_file(header: bytes, image: str) -> None:
    """A template image that is a qcow2 overlay would make every clone read its backing file, wherever that
    is (outside the store too): only self-contained images are cloned."""
    if len(header) >= 16 and header[:4] == QCOW2_MAGIC and struct.unpack(">Q", header[8:16])[0]:
        raise StoreError(
            f"template image {image!r} is a qcow2 overlay with a backing file: vmfleet clones only "
            "self-contained images (flatten it: qemu-img convert -O qcow2 IMAGE NEW)"
        )


def qcow2_backing_file(fd: int) -> str | None:
    """The backing file an overlay open at `fd` names (offset 8: its offset, 16: its length), as written."""
    header = os.pread(fd, 20, 0)
    if len(header) < 20 or header[:4] != QCOW2_MAGIC:
        return None
    offset, size = struct.unpack(">QI", header[8:20])
    if not offset or size > _MAX_BACKING_NAME:
        return None
    return os.pread(fd, size, offset).decode(errors="replace")


class Qcow2Store(LocalStore):
    def clone_format(self, parent_format: str) -> str:
        return "qcow2"

    def _make_clone(self, src: int, parent: str, parent_format: str, p: Partial) -> None:
        # The name is relative to the overlay's own directory, so the store may be mounted anywhere.
        backing = posixpath.relpath(parent, posixpath.dirname(p.path) or ".")
        size = qcow2_virtual_size(src) if parent_format == "qcow2" else os.fstat(src).st_size
        memory = os.memfd_create("vmfleet-overlay", os.MFD_CLOEXEC)
        try:
            # -u: qemu-img opens no backing file (the size is given), so nothing in the store by a path.
            qemu_img = require_tool("qemu-img", "qemu-utils")
            try:
                done = subprocess.run(
                    [
                        qemu_img,
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-u",
                        "-b",
                        backing,
                        "-F",
                        parent_format,
                        f"/proc/self/fd/{memory}",
                        str(size),
                    ],
                    pass_fds=(memory,),
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            except OSError as e:  # not an error of the clone's path, which the caller would name
                raise StoreError(f"{qemu_img} cannot be run: {e.strerror or e}") from None
            if done.returncode != 0:
                raise StoreError(f"qemu-img create failed for {p.path}: {done.stderr.strip()}")
            copy_sparse(memory, p.fd)
        except subprocess.TimeoutExpired:
            raise StoreError(f"qemu-img create for {p.path} took longer than 120 s") from None
        finally:
            os.close(memory)

    async def delete_parent(self, parent: str, image: str) -> None:
        """Overlays read their parent at every boot: one that a retained clone still uses must stay."""
        await self._run("deleting the clone parent", parent, self._delete_parent, parent)

    def _delete_parent(self, parent: str) -> None:
        users = self._overlays_of(parent)
        if users:
            raise StoreError(
                f"{len(users)} clone(s) still use {parent} as their backing file (e.g. {users[0]}): delete them first"
            )
        self._delete(parent)

    def _overlays_of(self, parent: str) -> list[str]:
        """The overlays under vmfleet/clones, and the ones being made, backed by `parent`: a walk that
        follows no link (a link there is an error: the parent stays)."""
        users: list[str] = []
        with self._dirs("vmfleet/clones") as dirs:
            if dirs is not None:
                self._scan(os.dup(dirs[-1]), "vmfleet/clones", parent, users)
        return users

    def _scan(self, at: int, directory: str, parent: str, users: list[str]) -> None:
        try:
            for entry in sorted(os.listdir(at)):
                path = f"{directory}/{entry}"
                st = self._lstat(at, entry, path)
                if st is None:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if path.count("/") > _MAX_DEPTH:
                        raise StoreError(f"{self.where(path)} is deeper than any directory vmfleet makes")
                    sub = self._subdir(at, entry, path, create=False)
                    if sub is not None:
                        self._scan(sub, path, parent, users)
                    continue
                partial = entry.endswith(PARTIAL_SUFFIX)
                if not (entry.endswith(".qcow2") or (partial and ".qcow2." in entry)):
                    continue
                if partial and not self._live_partial(at, entry):
                    continue  # stale: its next maker removes it
                fd = self._open_regular(at, entry, path)
                if fd is None:
                    continue
                try:
                    backing = qcow2_backing_file(fd)
                finally:
                    os.close(fd)
                if backing and posixpath.normpath(posixpath.join(directory, backing)) == parent:
                    users.append(path)
        finally:
            os.close(at)

    def _measure(self, fd: int, path: str) -> Space:
        st = os.fstat(fd)
        return Space(guest_size(path, st.st_size, read_header(fd)), st.st_blocks * 512)
