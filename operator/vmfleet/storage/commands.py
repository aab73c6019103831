"""Every command vmfleet sends to SONAS or a GPFS node is built here, and every output parsed here.

Paths are server-side absolute paths checked by `server_path` before any command is built; every
argument is quoted with shlex.quote, so no name or path is ever read by a shell as syntax.
Output formats: shared/reference/gpfs-clones.md (mmclone show table, EFSSG messages, Cinder fixtures).
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import StoreError
from .base import check_relative

MMCLONE = "/usr/lpp/mmfs/bin/mmclone"
SUCCESS = "EFSSG1000I The command completed successfully."
_EFSSG = re.compile(r"\b(EFSSG\d{4}[A-Z])\b\s*(.*)")
MAX_PATH = 4096


class CommandFailed(StoreError):
    """A storage command exited non-zero or printed an error; `code` is the EFSSG code where there is one."""

    def __init__(self, command: str, message: str, code: str = "", exit_status: int | None = None):
        super().__init__(f"{command.split()[0]} failed: {message}")
        self.code, self.exit_status = code, exit_status


def server_path(root: str, relative: str) -> str:
    """The absolute server-side path of `relative` under `root`; nothing outside the root gets through."""
    path = posixpath.join(root, check_relative(relative))
    if len(path) > MAX_PATH or posixpath.normpath(path) != path or not path.startswith(root.rstrip("/") + "/"):
        raise StoreError(f"path {relative!r} does not stay under the store root {root}")
    return path


def _join(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


# ---------------------------------------------------------------- builders: SONAS CLI (restricted shell)


def mkclone_with_parent(parent: str, source: str, target: str) -> str:
    """Make the read-only clone parent of `source` and a first clone of it (SONAS `mkclone -p -s -t`)."""
    return _join("mkclone", "-p", parent, "-s", source, "-t", target)


def mkclone(parent: str, target: str) -> str:
    """A writable clone of an existing clone parent (SONAS `mkclone -s -t`)."""
    return _join("mkclone", "-s", parent, "-t", target)


def lsclone(paths: Sequence[str]) -> str:
    return _join("lsclone", *paths)


# ---------------------------------------------------------------- builders: a GPFS node's shell


def mmclone_snap(source: str, parent: str) -> str:
    return _join(MMCLONE, "snap", source, parent)


def mmclone_copy(parent: str, target: str) -> str:
    return _join(MMCLONE, "copy", parent, target)


def mmclone_show(paths: Sequence[str]) -> str:
    return _join(MMCLONE, "show", *paths)


def mmclone_redirect(path: str) -> str:
    return _join(MMCLONE, "redirect", path)


def mmclone_split(path: str) -> str:
    return _join(MMCLONE, "split", path)


def mkdir_p(path: str) -> str:
    return _join("mkdir", "-p", "--", path)


def rm_f(path: str) -> str:
    return _join("rm", "-f", "--", path)


def ls(directory: str) -> str:
    return _join("ls", "-1", "--", directory)


MAX_TEXT = 16 << 20  # a fleet record of 10,000 VMs is under 2 MiB: anything bigger is not vmfleet's


def head(path: str) -> str:
    """A small text file vmfleet keeps, read at most MAX_TEXT + 1 bytes (a larger one is refused)."""
    return _join("head", "-c", str(MAX_TEXT + 1), "--", path)


def realpath(paths: Sequence[str]) -> str:
    """The canonical paths (GNU `realpath -m`: missing ones allowed): a path that comes back otherwise goes
    through a symbolic link, which vmfleet never follows inside a store."""
    return _join("realpath", "-m", "--", *paths)


def unlinked(paths: Sequence[str], stdout: str) -> None:
    """StoreError naming the first path that is not its own canonical path (or an unexpected answer)."""
    got = stdout.splitlines()
    if len(got) != len(paths):
        raise StoreError(f"unexpected realpath output for {len(paths)} path(s): {stdout[:200]!r}")
    for asked, real in zip(paths, got, strict=True):
        if asked != real:
            raise StoreError(
                f"{asked} is or passes through a symbolic link (to {real}); vmfleet follows none inside a store"
            )


def dd_stdin_to(path: str) -> str:
    """Write stdin to a new file, on disk before it exits (for `mv_f` over the old one)."""
    return _join("dd", f"of={path}", "conv=fsync", "status=none")


def mv_f(source: str, target: str) -> str:
    """Rename `source` over the file `target` (one rename(2): atomic). -T: a directory at `target` is an error,
    never a directory to move `source` into."""
    return _join("mv", "-f", "-T", "--", source, target)


STAT_FORMAT = "%n\t%s\t%b"


def stat(paths: Sequence[str]) -> str:
    """stat of a few files: name, size in bytes, 512-byte blocks charged to the file."""
    return _join("stat", "-c", STAT_FORMAT, "--", *paths)


def stat_stdin() -> str:
    """stat of any number of files in one command: the paths come NUL-separated on stdin (`stat_input`),
    so neither an SSH packet nor ARG_MAX limits the fleet's size."""
    return _join("xargs", "-0", "stat", "-c", STAT_FORMAT, "--")


def stat_input(paths: Sequence[str]) -> str:
    return "\0".join(paths)


FINGERPRINT_FORMAT = "%s:%Y:%i"
_FINGERPRINT = re.compile(r"^\d+:\d+:\d+$")


def fingerprint(path: str) -> str:
    """Size, modification time and inode of one file: what changes when it is rewritten or replaced."""
    return _join("stat", "-c", FINGERPRINT_FORMAT, "--", path)


def fingerprint_output(stdout: str) -> str:
    line = stdout.strip()
    if not _FINGERPRINT.match(line):
        raise StoreError(f"unexpected stat output for a fingerprint: {stdout[:200]!r}")
    return line


LINKS_FORMAT = "%n\t%i\t%h"


def stat_links(paths: Sequence[str]) -> str:
    """stat of a few files: name, inode, link count (a GPFS clone parent counts one link per clone)."""
    return _join("stat", "-c", LINKS_FORMAT, "--", *paths)


HEADER_BYTES = 32


def headers_stdin() -> str:
    """The first 32 bytes of each file, one hex line per file: one `od` per path, paths NUL-separated on
    stdin (`stat_input`). `-v`: od would print a run of equal lines as `*`."""
    return _join("xargs", "-0", "-n1", "od", "-An", "-tx1", f"-N{HEADER_BYTES}", f"-w{HEADER_BYTES}", "-v", "--")


# ---------------------------------------------------------------- parsers


def sonas_output(command: str, exit_status: int | None, stdout: str, stderr: str) -> str:
    """The CLI's output without its success trailer; CommandFailed for an EFSSG error, a non-zero exit,
    or output cut off before `EFSSG1000I The command completed successfully.`"""
    text = stdout + ("\n" + stderr if stderr else "")
    for line in text.splitlines():
        m = _EFSSG.search(line)
        if m and not m.group(1).endswith("I"):
            raise CommandFailed(command, f"{m.group(1)} {m.group(2)}".strip(), m.group(1), exit_status)
    if exit_status != 0:
        raise CommandFailed(command, f"exit status {exit_status}: {text.strip() or 'no output'}", "", exit_status)
    lines = stdout.rstrip("\n").splitlines()
    if not lines or lines[-1].strip() != SUCCESS:
        raise CommandFailed(command, f"output ended without {SUCCESS} (truncated?): {stdout[-200:]!r}")
    return "\n".join(lines[:-1])


def shell_output(command: str, exit_status: int | None, stdout: str, stderr: str) -> str:
    if exit_status != 0:
        raise CommandFailed(
            command, f"exit status {exit_status}: {(stderr or stdout).strip() or 'no output'}", "", exit_status
        )
    return stdout


@dataclass(frozen=True)
class CloneRow:
    """One row of `mmclone show` / `lsclone`."""

    name: str
    is_parent: bool | None  # None: not a clone at all
    depth: int | None
    parent_inode: int | None


_ROW = re.compile(r"^\s*(?:(yes|no)\s+(\d+)\s+(?:(\d+)\s+)?)?(\S.*?)\s*$")


def clone_rows(text: str, expected: Sequence[str] | None = None) -> list[CloneRow]:
    """Parse the `Parent Depth Parent inode File name` table; the file name is the last column."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].split()[:2] == ["Parent", "Depth"] or not set(lines[1]) <= set("- "):
        raise StoreError(f"unexpected clone listing (no 'Parent Depth Parent inode File name' header): {text[:200]!r}")
    rows = []
    for line in lines[2:]:
        m = _ROW.match(line)
        if not m:
            raise StoreError(f"unexpected clone listing row: {line!r}")
        flag, depth, inode, name = m.groups()
        rows.append(
            CloneRow(
                name,
                None if flag is None else flag == "yes",
                None if depth is None else int(depth),
                None if inode is None else int(inode),
            )
        )
    if expected is not None and [r.name for r in rows] != list(expected):
        raise StoreError(f"clone listing names {[r.name for r in rows]} instead of {list(expected)} (truncated?)")
    return rows


def stat_rows(text: str, expected: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Parse `stat -c '%n\\t%s\\t%b'`: path -> (size, 512-byte blocks). Every expected path must be there."""
    out = _path_and_two_numbers(text)
    missing = [p for p in expected if p not in out]
    if missing:
        raise StoreError(f"stat printed nothing for {len(missing)} file(s), e.g. {missing[0]!r} (truncated?)")
    return out


def stat_links_rows(text: str) -> dict[str, tuple[int, int]]:
    """Parse `stat -c '%n\\t%i\\t%h'`: path -> (inode, link count)."""
    return _path_and_two_numbers(text)


def _path_and_two_numbers(text: str) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise StoreError(f"unexpected stat output line: {line!r}")
        out[parts[0]] = (int(parts[1]), int(parts[2]))
    return out


def header_rows(stdout: str, stderr: str, paths: Sequence[str]) -> dict[str, bytes]:
    """Parse `headers_stdin` for `paths` (in the order sent). A file that vanished since it was listed is
    named in od's errors and printed nothing; the others' lines stay in order. When that does not add up
    (a file emptied, a name od quoted), nothing is returned rather than a header under the wrong name."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        data = [bytes.fromhex(line) for line in lines]
    except ValueError:
        raise StoreError(f"unexpected od output line: {next(iter(lines), '')[:120]!r}") from None
    failed = {line[len("od: ") :].rsplit(": ", 1)[0] for line in stderr.splitlines() if line.startswith("od: ")}
    present = [p for p in paths if p not in failed]
    if len(data) != len(present) or any(len(d) > HEADER_BYTES for d in data):
        return {}
    return dict(zip(present, data, strict=True))
