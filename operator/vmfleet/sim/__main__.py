"""`python -m vmfleet.sim`: serve the SONAS CLI or a GPFS node over SSH on loopback, for trying vmfleet.

Writes a client key, the Secret that carries it with known_hosts, and prints where it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import asyncssh
import yaml

from .server import start


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m vmfleet.sim")
    p.add_argument("--dir", required=True, help="the directory that holds the simulated file system")
    p.add_argument("--mount-point", default="/ibm/gpfs0", help="where the file system is on the server")
    p.add_argument("--personality", choices=["sonas", "gpfs"], default="sonas")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--secret", required=True, help="write the SSH Secret manifest here")
    p.add_argument("--secret-name", default="sonas-ssh")
    args = p.parse_args()

    async def serve() -> None:
        client = asyncssh.generate_private_key("ssh-ed25519")
        sim = await start(args.dir, args.mount_point, args.personality,
                          client.export_public_key().decode(), args.port)
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/ssh-auth",
                  "metadata": {"name": args.secret_name, "namespace": "vmfleet-system"},
                  "stringData": {"ssh-privatekey": client.export_private_key().decode(),
                                 "known_hosts": sim.known_hosts}}
        with open(os.open(args.secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            yaml.safe_dump(secret, f)
        print(f"{args.personality} simulator on 127.0.0.1:{sim.port}, {args.mount_point} -> {args.dir}; "
              f"Secret in {args.secret}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
