"""What the reflink and qcow2 drivers share: a store that is a directory the operator can open."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from typing import Sequence

from .base import PARTIAL_SUFFIX, Space, StoreError, check_relative

FICLONE = 0x40049409


def ficlone(source: str, target: str) -> None:
    """Reflink `source` to a new file `target` (O_EXCL: an existing target is an error)."""
    import fcntl

    with open(source, "rb") as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.ioctl(fd, FICLONE, src.fileno())
        except BaseException:
            os.close(fd)
            os.unlink(target)
            raise
        os.close(fd)


class LocalStore:
    """Files under `base` (the store's root as mounted here). Subclasses make and measure clones."""

    def __init__(self, base: str):
        self.base = base.rstrip("/") or "/"

    def abspath(self, path: str) -> str:
        return os.path.join(self.base, check_relative(path))

    async def exists(self, path: str) -> bool:
        return os.path.exists(self.abspath(path))

    async def prepare_parent(self, image: str, image_format: str, parent: str) -> None:
        src, dst = self.abspath(image), self.abspath(parent)
        if os.path.exists(dst):
            return
        if not os.path.isfile(src):
            raise StoreError(f"template image {image!r} not found under the store root {self.base}")
        await asyncio.to_thread(self._copy_read_only, src, dst)

    @staticmethod
    def _copy_read_only(src: str, dst: str) -> None:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = dst + PARTIAL_SUFFIX
        if os.path.exists(tmp):
            os.unlink(tmp)
        # A reflink where the file system has them, else a sparse copy: never a dense one.
        done = subprocess.run(
            ["cp", "--reflink=auto", "--sparse=always", "--", src, tmp], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise StoreError(f"copying the template image to its clone parent failed: {done.stderr.strip()}")
        os.chmod(tmp, 0o444)
        os.rename(tmp, dst)

    async def list_dir(self, directory: str) -> list[str]:
        return await asyncio.to_thread(self._list_dir, self.abspath(directory))

    @staticmethod
    def _list_dir(path: str) -> list[str]:
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            return []
        for name in names:
            if name.endswith(PARTIAL_SUFFIX):
                os.unlink(os.path.join(path, name))
        return sorted(n for n in names if not n.endswith(PARTIAL_SUFFIX))

    async def create_clone(self, parent: str, parent_format: str, target: str) -> None:
        src, dst = self.abspath(parent), self.abspath(target)
        if os.path.exists(dst):
            raise StoreError(f"clone {target!r} already exists")
        if not os.path.exists(src):
            raise StoreError(f"clone parent {parent!r} does not exist")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = dst + PARTIAL_SUFFIX
        if os.path.exists(tmp):
            os.unlink(tmp)
        try:
            await self._make_clone(src, parent_format, tmp)
            os.rename(tmp, dst)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    async def _make_clone(self, src: str, parent_format: str, tmp: str) -> None:
        raise NotImplementedError

    async def delete(self, path: str) -> None:
        target = self.abspath(path)
        try:
            os.unlink(target)
        except FileNotFoundError:
            return
        try:
            os.rmdir(os.path.dirname(target))
        except OSError:
            pass

    async def delete_parent(self, parent: str) -> None:
        await self.delete(parent)

    async def measure(self, paths: Sequence[str]) -> dict[str, Space]:
        return await asyncio.to_thread(self._measure_all, list(paths))

    def _measure_all(self, paths: list[str]) -> dict[str, Space]:
        out = {}
        for path in paths:
            try:
                out[path] = self._measure(self.abspath(path))
            except FileNotFoundError:
                continue
        return out

    def _measure(self, path: str) -> Space:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def require_tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if not found:
        raise StoreError(f"{name} not found: install {package}")
    return found
