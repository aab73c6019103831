"""A few SSH connections per store, reused by every reconcile; at most `max_sessions` channels on each
(OpenSSH's sshd refuses the 11th session of a connection by default: MaxSessions 10), so `concurrency`
channels take ceil(concurrency / max_sessions) connections; host keys always checked against the store's
known_hosts; reconnect with backoff; a refused channel is retried (the command never started)."""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass

import asyncssh

from .. import metrics
from ..api.types import SshEndpoint
from ..credentials import KeyReader
from ..errors import CredentialsError, StoreError


@dataclass(frozen=True)
class Reply:
    exit_status: int | None
    stdout: str
    stderr: str


class _Link:
    """One connection of the pool and the channels open (or opening) on it."""

    def __init__(self) -> None:
        self.conn: asyncssh.SSHClientConnection | None = None
        self.channels = 0
        self.connecting = asyncio.Lock()

    @property
    def live(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()


class SshRunner:
    RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)
    REFUSED_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)  # then 1 s apart, until the command's timeout
    SESSION_FREE_DELAY = 0.01  # s; 0.002 still saw refusals on loopback, 0.01 none in 200 commands

    def __init__(self, endpoint: SshEndpoint, keys: KeyReader, channels: int):
        self.endpoint = endpoint
        self._keys = keys
        self.timeout = endpoint.command_timeout
        self.max_sessions = max(1, endpoint.max_sessions)
        self._channels = asyncio.Semaphore(channels)
        # Enough connections for `channels` at `max_sessions` each; one is opened only when the others are full.
        self._links = [_Link() for _ in range(-(-channels // self.max_sessions))]
        self.commands_sent = 0
        self.connections_made = 0
        self.channels_refused = 0

    @property
    def where(self) -> str:
        e = self.endpoint
        return f"{e.user}@{e.host}:{e.port}"

    @property
    def connections(self) -> int:
        return sum(link.live for link in self._links)

    def _claim(self) -> _Link:
        """A connection with a free session slot, a live one first. Called holding `_channels`, so one has
        a slot: channels <= len(links) * max_sessions."""
        free = [link for link in self._links if link.channels < self.max_sessions]
        link = ([link for link in free if link.live] or free)[0]
        link.channels += 1
        return link

    async def _connection(self, link: _Link) -> asyncssh.SSHClientConnection:
        async with link.connecting:
            if link.conn is not None and not link.conn.is_closed():
                return link.conn
            ep = self.endpoint
            try:
                private_key, known_hosts = await asyncio.to_thread(self._keys)
            except CredentialsError as e:  # the store is unusable while its Secret is: StoreUnavailable
                raise StoreError(str(e)) from None
            try:
                key = asyncssh.import_private_key(private_key)
                known = asyncssh.import_known_hosts(known_hosts)
            except (asyncssh.KeyImportError, ValueError) as e:
                raise StoreError(f"SSH credentials for {self.where} are unusable: {type(e).__name__}") from None
            try:
                link.conn = await asyncio.wait_for(
                    asyncssh.connect(
                        ep.host,
                        ep.port,
                        username=ep.user,
                        client_keys=[key],
                        known_hosts=known,
                        agent_path=None,
                        config=None,
                        keepalive_interval=30,
                    ),
                    self.timeout,
                )
            except asyncssh.HostKeyNotVerifiable as e:
                metrics.SSH_ERRORS.labels(self.where, "hostkey").inc()
                raise StoreError(
                    f"host key of {self.where} is not in the store's known_hosts ({e.reason}); refusing to connect"
                ) from None
            except asyncssh.PermissionDenied:
                metrics.SSH_ERRORS.labels(self.where, "auth").inc()
                raise StoreError(f"{self.where} refused the store's SSH key (permission denied)") from None
            except (TimeoutError, OSError, asyncssh.Error) as e:
                metrics.SSH_ERRORS.labels(self.where, "connect").inc()
                raise StoreError(f"cannot reach {self.where}: {type(e).__name__}: {e}") from None
            self.connections_made += 1
            return link.conn

    async def run(self, command: str, retry: bool = False, stdin: str | bytes | None = None) -> Reply:
        """Run one command. `retry`: the command only reads, so it is sent again after a dropped connection.
        `stdin` as text is sent UTF-8 encoded; as bytes, unchanged (a binary channel: no encoding either way,
        its output decoded afterwards as a text command's would be, undecodable bytes replaced)."""
        delays = self.RETRY_DELAYS if retry else ()
        for attempt in range(len(delays) + 1):
            try:
                return await self._run_once(command, stdin)
            except ConnectionDropped as e:
                if attempt == len(delays):
                    raise StoreError(str(e)) from None
                await asyncio.sleep(delays[attempt])
        raise AssertionError("unreachable")

    async def _run_once(self, command: str, stdin: str | bytes | None) -> Reply:
        name = command.split()[0]
        await self._channels.acquire()
        link = self._claim()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            for attempt in itertools.count():
                conn = await self._connection(link)
                try:
                    return await self._on(link, conn, command, name, stdin)
                except asyncssh.ChannelOpenError as e:
                    # Refused before the command started (the server's MaxSessions, or a connection
                    # closing): any command may be sent again; the connection's other channels go on.
                    self.channels_refused += 1
                    metrics.SSH_ERRORS.labels(self.where, "refused").inc()
                    delay = self.REFUSED_DELAYS[attempt] if attempt < len(self.REFUSED_DELAYS) else 1.0
                    delay *= 0.5 + random.random()  # channels refused together do not come back together
                    if loop.time() + delay > deadline:
                        raise StoreError(
                            f"{self.where} refused to open a channel for {name} for "
                            f"{self.timeout:g} s ({e.reason}): is spec.ssh.maxSessions "
                            f"({self.max_sessions}) above the server's MaxSessions?"
                        ) from None
                    await asyncio.sleep(delay)
            raise AssertionError("unreachable")
        finally:
            # sshd frees a session when its loop next collects the closed channel, after reading the
            # client's close: a session opened at once behind it is refused. Free the slot a moment later.
            asyncio.get_running_loop().call_later(self.SESSION_FREE_DELAY, self._free, link)

    def _free(self, link: _Link) -> None:
        link.channels -= 1
        self._channels.release()

    async def _on(
        self, link: _Link, conn: asyncssh.SSHClientConnection, command: str, name: str, stdin: str | bytes | None
    ) -> Reply:
        self.commands_sent += 1
        # asyncssh's default encoding (UTF-8) takes str only: bytes go through a channel without one. A text
        # command's channel stays as it always was.
        binary: dict[str, None] = {"encoding": None} if isinstance(stdin, bytes) else {}
        try:
            with metrics.SSH_SECONDS.labels(self.where, name).time():
                done = await asyncio.wait_for(conn.run(command, check=False, input=stdin, **binary), self.timeout)
        except TimeoutError:
            metrics.SSH_ERRORS.labels(self.where, "timeout").inc()
            raise StoreError(f"{name} on {self.where} took longer than {self.timeout:g} s") from None
        except asyncssh.ChannelOpenError:
            raise
        except (OSError, asyncssh.Error) as e:
            self._drop(link, conn)
            metrics.SSH_ERRORS.labels(self.where, "dropped").inc()
            raise ConnectionDropped(f"connection to {self.where} lost during {name}: {type(e).__name__}") from None
        if done.exit_status is None and done.exit_signal is None and conn.is_closed():
            self._drop(link, conn)
            metrics.SSH_ERRORS.labels(self.where, "dropped").inc()
            raise ConnectionDropped(f"connection to {self.where} closed during {name}")
        return Reply(done.exit_status, _text(done.stdout), _text(done.stderr))

    def _drop(self, link: _Link, conn: asyncssh.SSHClientConnection) -> None:
        if link.conn is conn:  # not a newer connection another command already made
            link.conn = None
        conn.abort()

    async def close(self) -> None:
        for link in self._links:
            conn, link.conn = link.conn, None
            if conn is not None:
                conn.close()
                await conn.wait_closed()


class ConnectionDropped(StoreError):
    pass


def _text(data: object) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)
