"""The simulator's SSH server: a real asyncssh server on loopback, key authentication only,
answering as a SONAS management node's CLI or as a GPFS node's shell, with latency and faults."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Callable

import asyncssh

from . import cli
from .fs import SimFs


@dataclass
class Faults:
    """What goes wrong, by command number (1 = the first command the server receives)."""

    latency: float = 0.0
    fail: set[int] = field(default_factory=set)
    fail_fraction: float = 0.0
    drop: set[int] = field(default_factory=set)  # the connection is cut mid-command
    hang: set[int] = field(default_factory=set)  # the command never answers
    truncate: set[int] = field(default_factory=set)  # output cut short, exit status still 0
    seed: int = 0
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def fails(self, n: int) -> bool:
        return n in self.fail or (self.fail_fraction > 0 and self._random.random() < self.fail_fraction)


@dataclass
class Simulator:
    fs: SimFs
    personality: str  # "sonas" or "gpfs"
    host_key: asyncssh.SSHKey
    port: int = 0
    faults: Faults = field(default_factory=Faults)
    commands: list[str] = field(default_factory=list)
    connections: int = 0
    _server: asyncssh.SSHAcceptor | None = None

    @property
    def known_hosts(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key.export_public_key().decode().strip()}\n"

    def count(self, prefix: str) -> int:
        return sum(1 for c in self.commands if c.startswith(prefix))

    async def handle(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command or ""
        self.commands.append(command)
        n = len(self.commands)
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        if n in self.faults.hang:
            await asyncio.Event().wait()
        if n in self.faults.drop:
            process.channel.get_connection().abort()
            return
        if self.faults.fails(n):
            status, out, err = 1, "", "simulated failure\n"
            if self.personality == "sonas":
                status, out, err = 1, "EFSSG0632C Command execution aborted.\n", ""
        else:
            try:
                argv = cli.split(command)
                if argv[:2] == ["xargs", "-0"] and self.personality == "gpfs":
                    stdin = await process.stdin.read()
                    argv = argv[2:] + [p for p in stdin.split("\0") if p]
                run: Callable[[SimFs, list[str]], cli.Result] = cli.sonas if self.personality == "sonas" else cli.gpfs
                status, out, err = await asyncio.to_thread(run, self.fs, argv)
                if command.startswith("xargs") and status == 1:
                    status = 123  # what xargs reports when the command it ran failed
            except ValueError as e:
                status, out, err = 2, "", f"sim: refusing {e}: {command!r}\n"
            except OSError as e:  # a real server reports its errors; it does not drop the connection
                status, out, err = 1, "", f"{command.split()[0]}: {e.strerror or e}\n"
        if n in self.faults.truncate:
            out = out[: len(out) // 2]
        process.stdout.write(out)
        process.stderr.write(err)
        process.exit(status)

    async def start(self, authorized_keys: str) -> "Simulator":
        sim = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                sim.connections += 1

        self._server = await asyncssh.create_server(
            Server, "127.0.0.1", self.port, server_host_keys=[self.host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(authorized_keys),
            process_factory=self.handle, password_auth=False, kbdint_auth=False,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def start(directory: str, mount_point: str, personality: str, authorized_keys: str, port: int = 0,
                faults: Faults | None = None, host_key: asyncssh.SSHKey | None = None) -> Simulator:
    sim = Simulator(SimFs(directory, mount_point), personality, host_key or asyncssh.generate_private_key(
        "ssh-ed25519"), port, faults or Faults())
    return await sim.start(authorized_keys)
