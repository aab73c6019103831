"""The storage interface every clone driver implements, and the layout of a store.

Drivers take paths relative to the store's root; `layout` is the only place that makes them, and
`StorePath.check` the only place that accepts them, so no `..` or absolute path reaches a driver.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..api.schema import RELATIVE_PATH_PATTERN
from ..disks import DiskSource, FileDisk
from ..errors import StoreError as StoreError  # the store's errors, re-exported for the drivers
from ..errors import StoreTimeout as StoreTimeout

PARTIAL_SUFFIX = ".partial"
_RELATIVE = re.compile(RELATIVE_PATH_PATTERN)


@dataclass(frozen=True)
class Space:
    logical: int
    allocated: int


def check_relative(path: str) -> str:
    """A path under the store's root, or StoreError: no '..', no leading '/', no odd characters."""
    if not _RELATIVE.match(path) or len(path) > 4096:
        raise StoreError(f"path {path!r} is not a plain relative path under the store root ({RELATIVE_PATH_PATTERN})")
    if any(len(part.encode()) > 255 for part in path.split("/")):
        raise StoreError(f"path {path[:80]!r}...: a file name is longer than 255 bytes")
    return path


CLONE_EXTENSIONS = {"raw": ".img", "qcow2": ".qcow2"}
"""Disk format -> the suffix of its files: a clone's format is read from its name (disk_format_of)."""


def extension(disk_format: str) -> str:
    return CLONE_EXTENSIONS[disk_format]


def parent_path(image_path: str, image_format: str) -> str:
    """The read-only clone parent of one template image: one per image, shared by all templates naming it."""
    digest = hashlib.sha256(f"{image_path}\0{image_format}".encode()).hexdigest()[:12]
    stem = image_path.rsplit("/", 1)[-1].split(".", 1)[0] or "image"
    return f"vmfleet/parents/{stem}-{digest}{extension(image_format)}"


def fleet_dir(namespace: str, fleet: str, uid: str) -> str:
    """Where one fleet keeps its clones and its record. The fleet's UID in the path records who made them:
    a later fleet of the same name has another directory and never touches these (I3)."""
    return f"vmfleet/clones/{namespace}/{fleet}/{uid}"


def clone_path(directory: str, vm_name: str, disk_format: str) -> str:
    return f"{directory}/{vm_name}{extension(disk_format)}"


def disk_format_of(name: str) -> str:
    """The disk format of a clone, by its name: a fleet keeps clones made before a change of driver or format."""
    return next((f for f, suffix in CLONE_EXTENSIONS.items() if name.endswith(suffix) and f != "raw"), "raw")


def file_disk(clone: str, on_host: str) -> FileDisk:
    """The disk source of a driver whose clones are files the KvmHost mounts."""
    return FileDisk(on_host, disk_format_of(clone))


class StoreDriver(Protocol):
    """What the engine needs from a store. All paths are relative to the store's root."""

    def clone_format(self, parent_format: str) -> str:
        """The disk format of a clone made from a parent of this format."""
        ...

    async def exists(self, path: str) -> bool: ...

    async def prepare_parent(self, image: str, image_format: str, parent: str) -> None:
        """Make the read-only clone parent of `image` at `parent` (nothing if it exists)."""
        ...

    async def list_dir(self, directory: str) -> list[str]:
        """File names in `directory` ([] if it does not exist), unfinished `.partial` files left out.
        Changes nothing: `vmfleet status` and `apply --dry-run` call it while others make clones (I6)."""
        ...

    async def create_clone(self, parent: str, parent_format: str, target: str) -> None:
        """A writable clone of `parent` at `target`; fails if `target` exists; leaves nothing half-made."""
        ...

    async def delete(self, path: str) -> None:
        """Remove a clone or a childless parent; a missing file is not an error."""
        ...

    async def delete_parent(self, parent: str, image: str) -> None:
        """Remove the clone parent made from `image`; StoreError while any clone still needs it."""
        ...

    async def measure(self, paths: Sequence[str]) -> dict[str, Space]:
        """Logical size and own bytes of each existing file, in one pass."""
        ...

    async def fingerprint(self, path: str) -> str | None:
        """What changes when a file is rewritten or replaced (size, modification time, inode); None if missing."""
        ...

    async def read_text(self, path: str) -> str | None:
        """A small text file vmfleet keeps in the store (a fleet's record); None if there is none."""
        ...

    async def write_file(self, path: str, data: bytes) -> None:
        """Create or replace a small file vmfleet keeps in the store (a VM's cloud-init seed image: any bytes)
        atomically: written beside it as a `.partial` file, then renamed over it, so a reader sees the old
        contents or the new, never a mix; on failure the old file stays and the partial is removed."""
        ...

    async def write_text(self, path: str, text: str) -> None:
        """`write_file` of the text as UTF-8 (a fleet's record)."""
        ...

    def disk_source(self, clone: str, on_host: str) -> DiskSource:
        """What a domain opens for `clone`; `on_host` is where its KvmHost sees that file if it mounts the store
        (KvmHost.store_path). A driver of block or network disks returns another kind (disks.py)."""
        ...

    async def probe(self) -> str:
        """What the CloneStore's Ready condition says when the store answers; StoreError saying why not
        (StoreTimeout when it did not answer in time)."""
        ...

    async def close(self) -> None: ...
