"""The simulator's SSH server: a real asyncssh server on loopback, key authentication only,
answering as a SONAS management node's CLI or as a GPFS node's shell, with latency and faults."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

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
    max_sessions: int = 10  # OpenSSH's MaxSessions: open sessions per connection, 10 by default
    refused: int = 0  # session channels refused for being over max_sessions
    # OpenSSH refuses a session opened right behind the close of another (38 of 60 on loopback): it frees
    # the closed one only when its loop next collects channels. The simulator frees a slot this much later.
    session_free_lag: float = 0.002
    _server: asyncssh.SSHAcceptor | None = None

    @property
    def known_hosts(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key.export_public_key().decode().strip()}\n"

    def count(self, prefix: str) -> int:
        return sum(1 for c in self.commands if c.startswith(prefix))

    async def handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """One command. The channel has no encoding: stdin reaches `dd` byte for byte, as through OpenSSH."""
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
            stdin = await process.stdin.read() if cli.reads_stdin(command) else b""
            status, out, err = await asyncio.to_thread(cli.execute, self.fs, self.personality, command, stdin)
        if n in self.faults.truncate:
            out = out[: len(out) // 2]
        process.stdout.write(out.encode())
        process.stderr.write(err.encode())
        process.exit(status)

    async def start(self, authorized_keys: str) -> Simulator:
        sim = self

        class Server(asyncssh.SSHServer):
            """One per connection: refuses a session beyond MaxSessions as OpenSSH's sshd does
            (code SSH2_OPEN_CONNECT_FAILED, "open failed", as OpenSSH 9.2 answers)."""

            def __init__(self) -> None:
                self.sessions = 0
                self.conn: asyncssh.SSHServerConnection | None = None
                self.waiting: set[asyncio.Task[None]] = set()

            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                sim.connections += 1
                self.conn = conn

            def session_requested(
                self,
            ) -> tuple[asyncssh.SSHServerChannel[bytes], asyncssh.SSHServerProcess[bytes]]:
                if self.sessions >= sim.max_sessions:
                    sim.refused += 1
                    raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "open failed")
                assert self.conn is not None
                chan = self.conn.create_server_channel(encoding=None)
                self.sessions += 1
                task = asyncio.get_running_loop().create_task(self._release(chan))
                self.waiting.add(task)
                task.add_done_callback(self.waiting.discard)
                return chan, asyncssh.SSHServerProcess(sim.handle, None, 0, False)

            async def _release(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
                await chan.wait_closed()  # sshd frees a session slot when its channel is gone, not at exit,
                await asyncio.sleep(sim.session_free_lag)  # and only once its loop gets to it
                self.sessions -= 1

        self._server = await asyncssh.create_server(
            Server,
            "127.0.0.1",
            self.port,
            server_host_keys=[self.host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(authorized_keys),
            password_auth=False,
            kbdint_auth=False,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def start(
    directory: str,
    mount_point: str,
    personality: str,
    authorized_keys: str,
    port: int = 0,
    faults: Faults | None = None,
    host_key: asyncssh.SSHKey | None = None,
    max_sessions: int = 10,
) -> Simulator:
    sim = Simulator(
        SimFs(directory, mount_point),
        personality,
        host_key or asyncssh.generate_private_key("ssh-ed25519"),
        port,
        faults or Faults(),
        max_sessions=max_sessions,
    )
    return await sim.start(authorized_keys)
