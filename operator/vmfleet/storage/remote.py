"""The two SSH drivers: `sonas` (the SONAS CLI's mkclone/lsclone) and `gpfs` (mmclone on a GPFS node).

Both make clones from a read-only clone parent, on the server, in milliseconds and 0 bytes.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
from collections.abc import Sequence

from ..disks import FileDisk
from ..errors import StoreError
from ..extents import own_bytes
from ..settings import Settings
from . import commands as cmd
from .base import PARTIAL_SUFFIX, Space, file_disk
from .local import LocalStore
from .qcow2 import guest_size, read_header, refuse_backing_file
from .ssh import SshRunner


class SonasStore(LocalStore):
    """Clones through the SONAS CLI over SSH; listing, deleting and measuring through the NFS export
    mounted at `local` where the operator runs (the CLI user has no shell to do them with). The server
    follows links the CLI is given: each path is first checked through the export (no link, see local.py)."""

    def __init__(
        self, root: str, local: str, runner: SshRunner, max_depth: int, settings: Settings = Settings(), store: str = ""
    ):
        super().__init__(local, "spec.localPath", settings, store)
        self.root, self.runner, self.max_depth = root.rstrip("/"), runner, max_depth

    def clone_format(self, parent_format: str) -> str:
        return parent_format

    async def _cli(self, command: str, retry: bool = False) -> str:
        reply = await self.runner.run(command, retry=retry)
        return cmd.sonas_output(command, reply.exit_status, reply.stdout, reply.stderr)

    async def prepare_parent(self, image: str, image_format: str, parent: str) -> None:
        if await self.exists(parent):
            return
        seed = parent + ".seed"
        await self.require_file(image, "template image")
        refuse_backing_file(await self._run("reading", image, self._header, image), image)
        await self.make_dirs(posixpath.dirname(parent))
        await self._remove_local(seed)
        await self._cli(
            cmd.mkclone_with_parent(
                cmd.server_path(self.root, parent), cmd.server_path(self.root, image), cmd.server_path(self.root, seed)
            )
        )
        # `mkclone -p` always makes a first clone too; like Cinder's IBMNAS driver, drop it.
        await self._remove_local(seed)
        await self._check_depth(parent)

    async def _check_depth(self, parent: str) -> None:
        if not self.max_depth:
            return
        path = cmd.server_path(self.root, parent)
        (row,) = cmd.clone_rows(await self._cli(cmd.lsclone([path]), retry=True), [path])
        if row.depth is not None and row.depth + 1 > self.max_depth:
            await self._remove_local(parent)  # still childless: no later pass may clone from it
            raise StoreError(
                f"clones of {parent} would be {row.depth + 1} deep, over the store's maxCloneDepth "
                f"{self.max_depth}; the SONAS CLI cannot redirect: use a template image that is not "
                "itself a deep clone"
            )

    async def create_clone(self, parent: str, parent_format: str, target: str) -> None:
        if await self.exists(target):
            raise StoreError(f"clone {target!r} already exists")
        await self.require_file(parent, "clone parent")
        await self.make_dirs(posixpath.dirname(target))
        await self._cli(cmd.mkclone(cmd.server_path(self.root, parent), cmd.server_path(self.root, target)))

    async def _remove_local(self, path: str) -> None:
        await self.unlink(path)

    def _measure(self, fd: int, path: str) -> Space:
        return Space(guest_size(path, os.fstat(fd).st_size, read_header(fd)), own_bytes(fd))

    async def close(self) -> None:
        await super().close()
        await self.runner.close()


class GpfsStore:
    """Everything through a shell on a GPFS node: mmclone, mkdir, ls, rm, and one stat for many files."""

    def __init__(self, root: str, runner: SshRunner, max_depth: int):
        self.root, self.runner, self.max_depth = root.rstrip("/"), runner, max_depth
        self._dirs: set[str] = set()

    def clone_format(self, parent_format: str) -> str:
        return parent_format

    def _path(self, relative: str) -> str:
        return cmd.server_path(self.root, relative)

    def disk_source(self, clone: str, on_host: str) -> FileDisk:
        return file_disk(clone, on_host)  # KvmHosts mount the GPFS file system

    async def _sh(self, command: str, retry: bool = False) -> str:
        reply = await self.runner.run(command, retry=retry)
        return cmd.shell_output(command, reply.exit_status, reply.stdout, reply.stderr)

    async def exists(self, path: str) -> bool:
        reply = await self.runner.run(cmd.stat([self._path(path)]), retry=True)
        return reply.exit_status == 0

    async def probe(self) -> str:
        """Nothing of it is mounted here: the GPFS node answers for it."""
        await self.list_dir("vmfleet")
        return f"{self.root or '/'} answers over SSH"

    async def _mkdir(self, directory: str) -> None:
        if directory not in self._dirs:
            await self._sh(cmd.mkdir_p(directory))
            self._dirs.add(directory)

    async def prepare_parent(self, image: str, image_format: str, parent: str) -> None:
        if await self.exists(parent):
            return
        target = self._path(parent)
        await self._unlinked(self._path(image), target)
        refuse_backing_file((await self._headers([self._path(image)])).get(self._path(image), b""), image)
        await self._mkdir(posixpath.dirname(target))
        await self._sh(cmd.mmclone_snap(self._path(image), target))
        if self.max_depth:
            (row,) = cmd.clone_rows(await self._sh(cmd.mmclone_show([target]), retry=True), [target])
            for _ in range(max(0, (row.depth or 0) + 1 - self.max_depth)):
                await self._sh(cmd.mmclone_redirect(target))  # one link of the chain less each time

    async def list_dir(self, directory: str) -> list[str]:
        await self._unlinked(self._path(directory))
        reply = await self.runner.run(cmd.ls(self._path(directory)), retry=True)
        if reply.exit_status != 0:
            if "No such file or directory" in reply.stderr:
                return []
            cmd.shell_output("ls", reply.exit_status, reply.stdout, reply.stderr)
        return sorted(n for n in reply.stdout.splitlines() if n and not n.endswith(PARTIAL_SUFFIX))

    async def fingerprint(self, path: str) -> str | None:
        await self._unlinked(self._path(path))
        reply = await self.runner.run(cmd.fingerprint(self._path(path)), retry=True)
        if reply.exit_status != 0 and "No such file or directory" in reply.stderr:
            return None
        return cmd.fingerprint_output(cmd.shell_output("stat", reply.exit_status, reply.stdout, reply.stderr))

    async def _unlinked(self, *paths: str) -> None:
        """Refuse server paths that go through a symbolic link: GPFS's shell would follow it out of the root."""
        cmd.unlinked(list(paths), await self._sh(cmd.realpath(paths), retry=True))

    async def read_text(self, path: str) -> str | None:
        server = self._path(path)
        await self._unlinked(server)
        reply = await self.runner.run(cmd.head(server), retry=True)
        if reply.exit_status != 0 and "No such file or directory" in reply.stderr:
            return None
        text = cmd.shell_output("head", reply.exit_status, reply.stdout, reply.stderr)
        if len(text.encode()) > cmd.MAX_TEXT:
            raise StoreError(f"{server} is larger than {cmd.MAX_TEXT} bytes: not a file vmfleet wrote")
        return text

    async def write_file(self, path: str, data: bytes) -> None:
        """Written beside it (dd from the command's stdin, every byte as it is), then renamed over it: a reader
        sees the old contents or the new, never a mix. A failed write removes its partial; the old file stays."""
        target = self._path(path)
        await self._unlinked(target)
        partial = self._path(f"{path}.{secrets.token_hex(8)}{PARTIAL_SUFFIX}")
        await self._mkdir(posixpath.dirname(target))
        try:
            reply = await self.runner.run(cmd.dd_stdin_to(partial), stdin=bytes(data))
            cmd.shell_output("dd", reply.exit_status, reply.stdout, reply.stderr)
            await self._sh(cmd.mv_f(partial, target))
        except StoreError:
            with contextlib.suppress(StoreError):  # the write's error is the one to report
                await self.runner.run(cmd.rm_f(partial))
            raise

    async def write_text(self, path: str, text: str) -> None:
        await self.write_file(path, text.encode("utf-8"))

    async def create_clone(self, parent: str, parent_format: str, target: str) -> None:
        path = self._path(target)
        await self._mkdir(posixpath.dirname(path))
        try:
            await self._sh(cmd.mmclone_copy(self._path(parent), path))
        except cmd.CommandFailed as e:
            if "File exists" in str(e):
                raise StoreError(f"clone {target!r} already exists") from None
            raise

    async def delete(self, path: str) -> None:
        await self._unlinked(self._path(path))
        await self._sh(cmd.rm_f(self._path(path)))

    async def delete_parent(self, parent: str, image: str) -> None:
        """GPFS refuses to remove a clone parent (EROFS) while any file is its clone, and `mmclone snap IMAGE
        PARENT` made the template image one: the image leaves the parent first (split, or redirect to a
        grandparent it can keep sharing with), then rm. Not while fleets' clones remain: rm would still fail
        and the image's own copy of the blocks would cost space for nothing."""
        p, i = self._path(parent), self._path(image)
        await self._unlinked(p, i)
        reply = await self.runner.run(cmd.stat_links([p, i]), retry=True)
        links = cmd.stat_links_rows(reply.stdout)
        if p not in links:
            if reply.exit_status not in (0, 1) or "No such file" not in reply.stderr:
                cmd.shell_output("stat", reply.exit_status, reply.stdout, reply.stderr)
            return
        inode, nlink = links[p]
        image_row = parent_row = None
        if i in links:
            show = await self._sh(cmd.mmclone_show([p, i]), retry=True)
            parent_row, image_row = cmd.clone_rows(show, [p, i])
        image_is_child = image_row is not None and image_row.parent_inode == inode
        # A clone parent's link count is 1 + its clones (gpfs-clones.md §2.3). Where it is not, `others` is at
        # most 0 and rm below decides: the image may then be split in vain (space, never data).
        others = nlink - 1 - image_is_child
        if others > 0:
            raise StoreError(
                f"{others} clone(s) still depend on {parent} (GPFS keeps a clone parent while it "
                "has clones): delete them, or the fleets that retain them, first"
            )
        if image_is_child:
            assert parent_row is not None
            grandparent = parent_row.parent_inode is not None
            await self._sh(cmd.mmclone_redirect(i) if grandparent else cmd.mmclone_split(i))
        try:
            await self.delete(parent)
        except cmd.CommandFailed as e:
            if "Read-only file system" in str(e):
                raise StoreError(
                    f"GPFS refuses to delete {parent} (Read-only file system): clones still depend "
                    "on it; delete them, or the fleets that retain them, first"
                ) from None
            raise

    async def measure(self, paths: Sequence[str]) -> dict[str, Space]:
        if not paths:
            return {}
        server = [self._path(p) for p in paths]
        reply = await self.runner.run(cmd.stat_stdin(), retry=True, stdin=cmd.stat_input(server))
        # xargs exits 123 when stat failed for some file (one deleted by hand): the others still count.
        if reply.exit_status not in (0, 123):
            cmd.shell_output("stat", reply.exit_status, reply.stdout, reply.stderr)
        found = cmd.stat_rows(reply.stdout, [])
        headers = await self._headers([s for s in server if s.endswith(".qcow2") and s in found])
        return {
            rel: Space(self._logical(srv, found[srv][0], headers), found[srv][1] * 512)
            for rel, srv in zip(paths, server, strict=True)
            if srv in found
        }

    async def _headers(self, qcow2: Sequence[str]) -> dict[str, bytes]:
        """The first bytes of each qcow2 clone, in one more command: its guest-visible size is in there."""
        if not qcow2:
            return {}
        reply = await self.runner.run(cmd.headers_stdin(), retry=True, stdin=cmd.stat_input(qcow2))
        if reply.exit_status not in (0, 123):
            cmd.shell_output("od", reply.exit_status, reply.stdout, reply.stderr)
        return cmd.header_rows(reply.stdout, reply.stderr, qcow2)

    @staticmethod
    def _logical(path: str, size: int, headers: dict[str, bytes]) -> int:
        if path.endswith(".qcow2") and path not in headers:
            return size  # the file changed between the two commands: its size, until the next refresh
        return guest_size(path, size, headers.get(path, b""))

    async def close(self) -> None:
        await self.runner.close()
