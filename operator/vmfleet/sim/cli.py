"""The commands the simulator answers: the SONAS CLI (mkclone, lsclone) and a GPFS node's shell
(mmclone snap|copy|show|split|redirect, mkdir, ls, rm, stat, od, head, realpath, dd, mv, xargs -0), with their output
formats and errors. `execute` is the one entry point: the asyncssh server and `python -m vmfleet.sim --exec` (run by a
real OpenSSH sshd's ForceCommand) both hand it each command.

Verified against shared/reference/gpfs-clones.md: the `mmclone show` table, the
`EFSSG1000I The command completed successfully.` trailer, `mmclone: Read-only file system` on
re-snapping a parent, EROFS from rm of a parent with clones. The texts of the SONAS CLI's own
errors are not public; the simulator uses EFSSG-coded stand-ins (marked below), and vmfleet relies
only on their form (`EFSSG<4 digits><severity>`, non-zero exit), never on their numbers.
"""

from __future__ import annotations

import errno
import os
import re
import shlex

from .fs import FsError, SimFs

Result = tuple[int, str, str]  # exit status, stdout, stderr

_DD_BLOCK = 512  # dd's default block size: it writes what it reads, at most this much at a time
SUCCESS = "EFSSG1000I The command completed successfully.\n"
_SAFE_UNQUOTED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./- ")
# Stand-ins for SONAS CLI errors whose real codes are not public (EFSSG0264C is real: path not found).
_SONAS_ERRORS = {
    errno.ENOENT: "EFSSG0264C The path {path} does not exist.",
    errno.EEXIST: "EFSSG0765C The file {path} already exists.",
    errno.EINVAL: "EFSSG0766C The file {path} is not a clone parent or not in a GPFS file system.",
    errno.EROFS: "EFSSG0767C The file {path} is a read-only clone parent.",
    errno.EISDIR: "EFSSG0768C The path {path} is a directory.",
}


def unquoted_metacharacters(command: str) -> set[str]:
    """Characters a shell would read as syntax: what vmfleet must never send unquoted."""
    found: set[str] = set()
    quote = None
    escaped = False
    for ch in command:
        if escaped:
            escaped = False
        elif quote == "'":
            quote = None if ch == "'" else quote
        elif quote == '"':
            if ch == '"':
                quote = None
            elif ch in "$`\\":
                found.add(ch)
        elif ch in "'\"":
            quote = ch
        elif ch == "\\":
            escaped = True
        elif ch not in _SAFE_UNQUOTED:
            found.add(ch)
    return found


def split(command: str) -> list[str]:
    bad = unquoted_metacharacters(command)
    if bad:
        raise ValueError(f"unquoted shell syntax {''.join(sorted(bad))!r}")
    return shlex.split(command)


def reads_stdin(command: str) -> bool:
    """Only `xargs -0` and `dd` read stdin; others must not wait for an EOF the client may never send."""
    return command.startswith(("xargs ", "dd "))


def execute(fs: SimFs, personality: str, command: str, stdin: bytes | str = b"") -> Result:
    """One command line as the SONAS CLI or a GPFS node's shell would run it. `stdin`: the bytes the command
    reads (text is taken as UTF-8): `dd` writes them as they are; `xargs -0` takes its arguments from them."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    try:
        argv = split(command)
        if argv[:2] == ["xargs", "-0"] and personality == "gpfs":
            return _xargs(fs, argv[2:], [os.fsdecode(p) for p in data.split(b"\0") if p])
        if argv[:1] == ["dd"] and personality == "gpfs":
            return _dd(fs, argv[1:], data)
        return (sonas if personality == "sonas" else gpfs)(fs, argv)
    except ValueError as e:
        return 2, "", f"sim: refusing {e}: {command!r}\n"
    except OSError as e:  # a real server reports its errors; it does not drop the connection
        return 1, "", f"{command.split()[0]}: {e.strerror or e}\n"


def _xargs(fs: SimFs, argv: list[str], items: list[str]) -> Result:
    """`xargs -0 [-n1] COMMAND...`: exit 123 when some run of COMMAND failed, as GNU xargs."""
    per_item = argv[:1] == ["-n1"]
    argv = argv[1:] if per_item else argv
    runs = [argv + [item] for item in items] if per_item else [argv + items]
    out, err, status = [], [], 0
    for run in runs if items else []:
        code, o, e = gpfs(fs, run)
        out.append(o)
        err.append(e)
        status = status or (123 if code else 0)
    return status, "".join(out), "".join(err)


# ---------------------------------------------------------------- SONAS CLI


def _sonas_error(e: FsError) -> Result:
    text = _SONAS_ERRORS.get(e.errno or 0, "EFSSG0632C Command execution aborted.")  # EFSSG0632C is real
    return 1, text.format(path=e.filename) + "\n", ""


def sonas(fs: SimFs, argv: list[str]) -> Result:
    if not argv:
        return 1, "", "EFSSG0001C Enter a command.\n"  # stand-in
    name, args = argv[0], argv[1:]
    try:
        if name == "mkclone":
            opts = _options(args, {"-p", "-s", "-t"})
            if opts is None or "-s" not in opts or "-t" not in opts:
                return 1, "EFSSG0002C Usage: mkclone [-p parent] -s source -t target\n", ""  # stand-in
            if "-p" in opts:
                fs.snap(opts["-s"], opts["-p"])
                fs.copy(opts["-p"], opts["-t"])
            else:
                fs.copy(opts["-s"], opts["-t"])
            return 0, SUCCESS, ""
        if name == "lsclone":
            if not args:
                return 1, "EFSSG0002C Usage: lsclone file [file...]\n", ""  # stand-in
            return 0, _show(fs, args) + SUCCESS, ""
    except FsError as e:
        return _sonas_error(e)
    return 1, f"EFSSG0003C {name}: unknown command (restricted CLI).\n", ""  # stand-in


def _options(args: list[str], allowed: set[str]) -> dict[str, str] | None:
    if len(args) % 2:
        return None
    opts = dict(zip(args[::2], args[1::2], strict=True))
    return opts if set(opts) <= allowed and len(opts) == len(args) // 2 else None


# ---------------------------------------------------------------- GPFS node


def _show(fs: SimFs, paths: list[str]) -> str:
    lines = ["Parent  Depth   Parent inode   File name", "------  -----  --------------  ---------"]
    for p in paths:
        fs.local(p)
        if not os.path.lexists(fs.local(p)):
            raise FsError(errno.ENOENT, os.strerror(errno.ENOENT), p)
        info = fs.info(p)
        if info is None:
            lines.append(f"{'':>6}  {'':>5}  {'':>14}  {p}")
        else:
            inode = "" if info.parent_inode is None else str(info.parent_inode)
            lines.append(f"{'yes' if info.is_parent else 'no':>6}  {info.depth:>5}  {inode:>14}  {p}")
    return "\n".join(lines) + "\n"


def gpfs(fs: SimFs, argv: list[str]) -> Result:
    if not argv:
        return 0, "", ""
    name, args = os.path.basename(argv[0]), argv[1:]
    try:
        if name == "mmclone":
            return _mmclone(fs, args)
        if name == "mkdir" and args[:2] == ["-p", "--"] and len(args) == 3:
            os.makedirs(fs.local(args[2]), exist_ok=True)
            return 0, "", ""
        if name == "rm" and args[:2] == ["-f", "--"]:
            for p in args[2:]:
                try:
                    fs.remove(p)
                except FsError as e:
                    if e.errno != errno.ENOENT:
                        return 1, "", f"rm: cannot remove '{p}': {os.strerror(e.errno or 0)}\n"
            return 0, "", ""
        if name == "ls" and args[:2] == ["-1", "--"] and len(args) == 3:
            local = fs.local(args[2])
            if not os.path.isdir(local):
                return 2, "", f"ls: cannot access '{args[2]}': No such file or directory\n"
            return 0, "".join(f"{n}\n" for n in sorted(os.listdir(local))), ""
        if name == "stat" and args[:1] == ["-c"] and len(args) >= 4 and args[2] == "--":
            return _stat(fs, args[1], args[3:])
        if (
            name == "head"
            and args[:1] == ["-c"]
            and args[1:2]
            and args[1].isdigit()
            and args[2:3] == ["--"]
            and len(args) == 4
        ):
            try:
                with open(fs.local(args[3]), encoding="utf-8", errors="replace") as f:
                    return 0, f.read(int(args[1])), ""
            except FileNotFoundError:
                return 1, "", f"head: cannot open '{args[3]}' for reading: No such file or directory\n"
        if name == "realpath" and args[:2] == ["-m", "--"] and len(args) > 2:
            # As GNU realpath -m: links resolved, missing components allowed; a path leading out of the
            # simulated file system comes back as where it really is.
            out = []
            for p in args[2:]:
                real = os.path.realpath(fs.local(p))
                inside = real == fs.directory or real.startswith(fs.directory.rstrip("/") + "/")
                out.append((fs.server(real) if inside else real) + "\n")
            return 0, "".join(out), ""
        if name == "mv" and args[:3] == ["-f", "-T", "--"] and len(args) == 5:
            if os.path.isdir(fs.local(args[4])) and not os.path.islink(fs.local(args[4])):
                return 1, "", f"mv: cannot overwrite directory '{args[4]}' with non-directory\n"  # GNU mv -T
            fs.rename(args[3], args[4])
            return 0, "", ""
        if name == "od" and args[:5] == ["-An", "-tx1", "-N32", "-w32", "-v"] and args[5:6] == ["--"]:
            return _od(fs, args[6:])
    except FsError as e:
        return 1, "", f"{name}: {e.filename}: {os.strerror(e.errno or 0)}\n"
    return 127, "", f"bash: {argv[0]}: command not found\n"


def _mmclone(fs: SimFs, args: list[str]) -> Result:
    usage = (1, "", "Usage: mmclone {snap|copy|split|redirect|show} ...\n")
    if not args:
        return usage
    verb, files = args[0], args[1:]
    try:
        if verb == "snap" and len(files) in (1, 2):
            fs.snap(files[0], files[1] if len(files) == 2 else None)
        elif verb == "copy" and len(files) == 2:
            fs.copy(files[0], files[1])
        elif verb == "split" and files:
            for f in files:
                fs.split(f)
        elif verb == "redirect" and files:
            for f in files:
                fs.redirect(f)
        elif verb == "show" and files:
            return 0, _show(fs, files), ""
        else:
            return usage
    except FsError as e:
        return e.errno or 1, "", f"mmclone: {os.strerror(e.errno or 0)}\n"
    return 0, "", ""


def _stat(fs: SimFs, fmt: str, paths: list[str]) -> Result:
    out, err, status = [], [], 0
    for p in paths:
        try:
            local = fs.local(p)
            st = os.stat(local)
        except (FsError, FileNotFoundError):
            err.append(f"stat: cannot statx '{p}': No such file or directory\n")
            status = 1
            continue
        values = {
            "%n": p,
            "%s": str(st.st_size),
            "%b": str(fs.charged_blocks(p)),
            "%i": str(st.st_ino),
            "%h": str(fs.links(p)),
            "%Y": str(int(st.st_mtime)),
        }
        out.append(re.sub(r"%[nsbihY]", lambda m: values[m.group()], fmt) + "\n")  # noqa: B023 - called here
    return status, "".join(out), "".join(err)


def _od(fs: SimFs, paths: list[str]) -> Result:
    """`od -An -tx1 -N32 -w32 -v -- FILE...`: the first 32 bytes of the files read as one stream, in hex."""
    data, err, status = b"", [], 0
    for p in paths:
        try:
            with open(fs.local(p), "rb") as f:
                data += f.read(32 - len(data))
        except (FsError, OSError):
            err.append(f"od: {p}: No such file or directory\n")
            status = 1
    out = "".join(f" {b:02x}" for b in data) + "\n" if data else ""
    return status, out, "".join(err)


def _dd(fs: SimFs, args: list[str], stdin: bytes) -> Result:
    """`dd of=FILE conv=fsync status=none`, as GNU coreutils' dd: stdin, byte for byte, into FILE (created, or
    truncated), then fsync; nothing printed but errors. A failed write leaves what was written, as dd does."""
    if len(args) != 3 or not args[0].startswith("of=") or args[1:] != ["conv=fsync", "status=none"]:
        return 1, "", f"dd: unsupported operands {args!r}\n"
    path = args[0][len("of=") :]
    try:
        fd = fs.open_write(path)
    except FsError as e:
        return 1, "", f"dd: failed to open '{path}': {os.strerror(e.errno or 0)}\n"
    try:
        view = memoryview(stdin)
        while view:
            try:
                view = view[os.write(fd, view[:_DD_BLOCK]) :]
            except OSError as e:
                return 1, "", f"dd: writing to '{path}': {os.strerror(e.errno or 0)}\n"
        try:
            os.fsync(fd)
        except OSError as e:
            return 1, "", f"dd: fsync failed for '{path}': {os.strerror(e.errno or 0)}\n"
    finally:
        os.close(fd)
    return 0, "", ""
