"""qcow2: clones are qemu-img overlays backed by the parent; a clone's own bytes are the overlay's allocation.

Works on any file system. The overlay names its backing file by a path relative to itself, so it
opens wherever a KVM host mounts the store.
"""

from __future__ import annotations

import asyncio
import os
import struct

from .base import Space, StoreError
from .local import LocalStore, require_tool

_QCOW2_MAGIC = b"QFI\xfb"


def qcow2_backing_file(path: str) -> str | None:
    """The backing file an overlay names (offset 8: its offset, 16: its length), as written."""
    with open(path, "rb") as f:
        header = f.read(20)
        if len(header) < 20 or header[:4] != _QCOW2_MAGIC:
            return None
        offset, size = struct.unpack(">QI", header[8:20])
        if not offset:
            return None
        f.seek(offset)
        return f.read(size).decode(errors="replace")


def qcow2_virtual_size(path: str) -> int:
    """The guest-visible size from the qcow2 header (offset 24, big-endian u64)."""
    with open(path, "rb") as f:
        header = f.read(32)
    if len(header) < 32 or header[:4] != _QCOW2_MAGIC:
        raise StoreError(f"{path} is not a qcow2 image")
    return struct.unpack(">Q", header[24:32])[0]


class Qcow2Store(LocalStore):
    def clone_format(self, parent_format: str) -> str:
        return "qcow2"

    async def _make_clone(self, src: str, parent_format: str, tmp: str) -> None:
        backing = os.path.relpath(src, os.path.dirname(tmp))
        proc = await asyncio.create_subprocess_exec(
            require_tool("qemu-img", "qemu-utils"),
            "create", "-q", "-f", "qcow2", "-b", backing, "-F", parent_format, tmp,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise StoreError(f"qemu-img create failed for {tmp}: {err.decode(errors='replace').strip()}")

    async def delete_parent(self, parent: str) -> None:
        """Overlays read their parent at every boot: one that a retained clone still uses must stay."""
        target = self.abspath(parent)
        users = [p for p in self._overlays() if os.path.normpath(os.path.join(
            os.path.dirname(p), qcow2_backing_file(p) or "")) == target]
        if users:
            raise StoreError(f"{len(users)} clone(s) still use {parent} as their backing file "
                             f"(e.g. {os.path.relpath(users[0], self.base)}): delete them first")
        await self.delete(parent)

    def _overlays(self) -> list[str]:
        out = []
        for dirpath, _, files in os.walk(os.path.join(self.base, "vmfleet", "clones")):
            out += [os.path.join(dirpath, f) for f in files if f.endswith(".qcow2")]
        return out

    def _measure(self, path: str) -> Space:
        return Space(qcow2_virtual_size(path), os.stat(path).st_blocks * 512)
