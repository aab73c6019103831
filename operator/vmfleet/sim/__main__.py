"""`python -m vmfleet.sim`: serve the SONAS CLI or a GPFS node over SSH on loopback, for trying vmfleet.

Writes a client key, the Secret that carries it with known_hosts, and prints where it listens.

`python -m vmfleet.sim --exec --dir DIR --personality sonas|gpfs` runs the one command in
$SSH_ORIGINAL_COMMAND (stdin, as bytes, for `xargs -0` and `dd`) and exits with its status: an OpenSSH sshd's
ForceCommand, so the SSH server in front of the simulator is the one users meet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m vmfleet.sim")
    p.add_argument("--dir", required=True, help="the directory that holds the simulated file system")
    p.add_argument("--mount-point", default="/ibm/gpfs0", help="where the file system is on the server")
    p.add_argument("--personality", choices=["sonas", "gpfs"], default="sonas")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--secret", help="write the SSH Secret manifest here")
    p.add_argument("--secret-name", default="sonas-ssh")
    p.add_argument("--max-sessions", type=int, default=10, help="sessions per connection, as OpenSSH's MaxSessions")
    p.add_argument("--exec", action="store_true", help="run $SSH_ORIGINAL_COMMAND once and exit with its status")
    p.add_argument("--latency", type=float, default=0.0, help="--exec: seconds each command takes at least")
    p.add_argument(
        "--hold-file",
        help="--exec: while this file exists, each command that starts with what it holds (any, if it is empty) "
        "does its work, then waits for the file to go before it answers (10 minutes at most): a server slow to "
        "say so, held as long as a test needs",
    )
    p.add_argument("--log", help="--exec: append each command to this file, one a line")
    args = p.parse_args()
    if args.exec:
        sys.exit(run_once(args.dir, args.mount_point, args.personality, args.latency, args.log, args.hold_file))
    if not args.secret:
        p.error("--secret is required unless --exec")

    import asyncio

    import asyncssh
    import yaml

    from .server import start

    async def serve() -> None:
        client = asyncssh.generate_private_key("ssh-ed25519")
        sim = await start(
            args.dir,
            args.mount_point,
            args.personality,
            client.export_public_key().decode(),
            args.port,
            max_sessions=args.max_sessions,
        )
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/ssh-auth",
            "metadata": {"name": args.secret_name, "namespace": "vmfleet-system"},
            "stringData": {"ssh-privatekey": client.export_private_key().decode(), "known_hosts": sim.known_hosts},
        }
        with open(os.open(args.secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            yaml.safe_dump(secret, f)
        print(
            f"{args.personality} simulator on 127.0.0.1:{sim.port}, {args.mount_point} -> {args.dir}; "
            f"Secret in {args.secret}",
            flush=True,
        )
        await asyncio.Event().wait()

    asyncio.run(serve())


def run_once(
    directory: str,
    mount_point: str,
    personality: str,
    latency: float,
    log: str | None,
    hold_file: str | None = None,
) -> int:
    from .cli import execute, reads_stdin
    from .fs import SimFs

    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    if log:
        with open(log, "a") as f:
            f.write(command.replace("\n", " ") + "\n")
    stdin = sys.stdin.buffer.read() if reads_stdin(command) else b""  # bytes: dd writes them as they are
    time.sleep(latency)
    status, out, err = execute(SimFs(directory, mount_point), personality, command, stdin)
    deadline = time.monotonic() + 600
    while hold_file and _holds(hold_file, command) and time.monotonic() < deadline:
        time.sleep(0.1)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


def _holds(hold_file: str, command: str) -> bool:
    try:
        with open(hold_file) as f:
            return command.startswith(f.read().strip())
    except OSError:
        return False  # no file: no hold


if __name__ == "__main__":
    main()
