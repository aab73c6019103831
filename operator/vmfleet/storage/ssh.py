"""One SSH connection per store, reused by every reconcile; a bounded number of channels on it;
host keys always checked against the store's known_hosts; reconnect with backoff."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

import asyncssh

from .. import metrics
from .base import StoreError


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    port: int
    user: str


KeyReader = Callable[[], tuple[str, str]]
"""() -> (private key, known_hosts), read again at every (re)connection so a rotated Secret takes effect;
blocking (it may ask the Kubernetes API), so it runs in a thread; raises StoreError naming the Secret."""


@dataclass(frozen=True)
class Reply:
    exit_status: int | None
    stdout: str
    stderr: str


class SshRunner:
    RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)

    def __init__(self, endpoint: SshEndpoint, keys: KeyReader, channels: int, timeout: float):
        self.endpoint = endpoint
        self._keys = keys
        self.timeout = timeout
        self._channels = asyncio.Semaphore(channels)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connecting = asyncio.Lock()
        self.commands_sent = 0
        self.connections_made = 0

    @property
    def where(self) -> str:
        e = self.endpoint
        return f"{e.user}@{e.host}:{e.port}"

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._connecting:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            ep = self.endpoint
            private_key, known_hosts = await asyncio.to_thread(self._keys)
            try:
                key = asyncssh.import_private_key(private_key)
                known = asyncssh.import_known_hosts(known_hosts)
            except (asyncssh.KeyImportError, ValueError) as e:
                raise StoreError(f"SSH credentials for {self.where} are unusable: {type(e).__name__}") from None
            try:
                self._conn = await asyncio.wait_for(
                    asyncssh.connect(ep.host, ep.port, username=ep.user, client_keys=[key], known_hosts=known,
                                     agent_path=None, config=None, keepalive_interval=30),
                    self.timeout,
                )
            except asyncssh.HostKeyNotVerifiable as e:
                metrics.SSH_ERRORS.labels(self.where, "hostkey").inc()
                raise StoreError(f"host key of {self.where} is not in the store's known_hosts ({e.reason}); "
                                 "refusing to connect") from None
            except asyncssh.PermissionDenied:
                metrics.SSH_ERRORS.labels(self.where, "auth").inc()
                raise StoreError(f"{self.where} refused the store's SSH key (permission denied)") from None
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
                metrics.SSH_ERRORS.labels(self.where, "connect").inc()
                raise StoreError(f"cannot reach {self.where}: {type(e).__name__}: {e}") from None
            self.connections_made += 1
            return self._conn

    async def run(self, command: str, retry: bool = False, stdin: str | None = None) -> Reply:
        """Run one command. `retry`: the command only reads, so it is sent again after a dropped connection."""
        delays = self.RETRY_DELAYS if retry else ()
        for attempt in range(len(delays) + 1):
            try:
                return await self._run_once(command, stdin)
            except ConnectionDropped as e:
                if attempt == len(delays):
                    raise StoreError(str(e)) from None
                await asyncio.sleep(delays[attempt])
        raise AssertionError("unreachable")

    async def _run_once(self, command: str, stdin: str | None) -> Reply:
        conn = await self._connection()
        name = command.split()[0]
        async with self._channels:
            self.commands_sent += 1
            try:
                with metrics.SSH_SECONDS.labels(self.where, name).time():
                    done = await asyncio.wait_for(conn.run(command, check=False, input=stdin), self.timeout)
            except asyncio.TimeoutError:
                metrics.SSH_ERRORS.labels(self.where, "timeout").inc()
                raise StoreError(f"{name} on {self.where} took longer than {self.timeout:g} s") from None
            except (OSError, asyncssh.Error) as e:
                self._drop()
                metrics.SSH_ERRORS.labels(self.where, "dropped").inc()
                raise ConnectionDropped(f"connection to {self.where} lost during {name}: "
                                        f"{type(e).__name__}") from None
        if done.exit_status is None and done.exit_signal is None and conn.is_closed():
            self._drop()
            metrics.SSH_ERRORS.labels(self.where, "dropped").inc()
            raise ConnectionDropped(f"connection to {self.where} closed during {name}")
        return Reply(done.exit_status, _text(done.stdout), _text(done.stderr))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()


class ConnectionDropped(StoreError):
    pass


def _text(data: object) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)
