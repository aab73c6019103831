"""Leader election on a coordination.k8s.io Lease: of the operator's replicas, one reconciles, the others wait.

A Lease rather than kopf peering: peers of equal priority all freeze (kopf's documented behaviour), so peering
suits a developer's operator pausing the cluster's, not identical replicas taking over from each other. The
rules are client-go's: a holder renews every `retry_seconds`; another replica takes the lease once it has seen
the same record, unchanged, for `lease_seconds` on its own clock (clocks of two machines are never compared);
a holder that could not renew for `renew_deadline_seconds` (< lease_seconds) stops at once, before anyone may
take over. It stops as a SIGKILLed operator does, which every pass is made to survive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holding:
    """A Lease's spec as the election reads it, and the resourceVersion a write must name."""

    holder: str
    lease_seconds: float
    acquired: str | None
    transitions: int
    version: str = ""
    renewed: str | None = None

    @classmethod
    def of(cls, lease: dict[str, Any]) -> Holding:
        spec = lease.get("spec") or {}
        return cls(
            spec.get("holderIdentity") or "",
            float(spec.get("leaseDurationSeconds") or 0),
            spec.get("acquireTime"),
            int(spec.get("leaseTransitions") or 0),
            lease.get("metadata", {}).get("resourceVersion", ""),
            spec.get("renewTime"),
        )


def claim(
    current: Holding | None, unchanged_for: float, me: str, lease_seconds: float, now: str
) -> dict[str, Any] | None:
    """The Lease spec that makes `me` the holder, or None while another holder's lease runs.

    `unchanged_for`: how long this replica has seen `current` as it is, on its own clock."""
    if current is not None and current.holder not in ("", me) and unchanged_for < current.lease_seconds:
        return None
    mine = current is not None and current.holder == me
    return {
        "holderIdentity": me,
        "leaseDurationSeconds": int(lease_seconds),
        "acquireTime": current.acquired if mine and current is not None else now,
        "renewTime": now,
        "leaseTransitions": (current.transitions if current else 0) + (0 if mine or current is None else 1),
    }


class Leases(Protocol):
    """The Lease API: get returns None when there is none; create and replace return False on a conflict."""

    async def get(self) -> dict[str, Any] | None: ...
    async def create(self, spec: dict[str, Any]) -> bool: ...
    async def replace(self, version: str, spec: dict[str, Any]) -> bool: ...


def micro_time() -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, in UTC."""
    return micro_time_of(datetime.now(UTC))


@dataclass
class Elector:
    leases: Leases
    identity: str
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _seen: Holding | None = None
    _seen_at: float = 0.0

    async def try_once(self) -> bool:
        """One read and, when it may, one write: True if this replica holds the lease now."""
        lease = await self.leases.get()
        current = Holding.of(lease) if lease is not None else None
        if current != self._seen:
            self._seen, self._seen_at = current, self.clock()
        spec = claim(current, self.clock() - self._seen_at, self.identity, self.lease_seconds, micro_time())
        if spec is None:
            return False
        won = await self.leases.create(spec) if current is None else await self.leases.replace(current.version, spec)
        if won and (current is None or current.holder != self.identity):
            log.info("leader election: %s holds the lease now (was %r)", self.identity, current and current.holder)
        return won

    async def acquire(self) -> None:
        """Returns once this replica holds the lease."""
        while not await self._attempt():
            await self.sleep(self.retry_seconds)

    async def keep(self, lost: Callable[[], Awaitable[None]]) -> None:
        """Renews until cancelled; calls `lost` when a renewal has not succeeded for the renew deadline."""
        renewed = self.clock()
        while True:
            await self.sleep(self.retry_seconds)
            if await self._attempt():
                renewed = self.clock()
            elif self.clock() - renewed >= self.renew_deadline_seconds:
                log.error("leader election: %s lost the lease (not renewed for %.0f s)", self.identity,
                          self.clock() - renewed)  # fmt: skip
                await lost()
                return

    async def release(self) -> None:
        """On a clean stop: the lease is handed back, so that a waiting replica takes over within a retry."""
        lease = await self.leases.get()
        if lease is not None and Holding.of(lease).holder == self.identity:
            spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": micro_time()}
            await self.leases.replace(Holding.of(lease).version, spec)

    async def _attempt(self) -> bool:
        try:
            return await self.try_once()
        except Exception as e:  # the apiserver down or slow: judged by the deadline, not by one failure
            log.warning("leader election: the Lease could not be read or written: %s", e)
            return False


@contextlib.asynccontextmanager
async def health_while_waiting(endpoint: str | None) -> AsyncIterator[None]:
    """A replica waiting for the lease answers its liveness probe (kopf serves it only once it runs)."""
    if not endpoint:
        yield
        return
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    app = web.Application()
    app.router.add_get(url.path or "/", lambda _: _ok())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, url.hostname, url.port or 80).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def _ok() -> web.Response:
    return web.json_response({"leader": False})


@dataclass
class ClusterLeases:
    """Leases on the Kubernetes API: one named Lease, written under its resourceVersion (409: another won)."""

    namespace: str
    name: str
    _api: Any = None

    def _coordination(self) -> Any:
        from kubernetes import client

        from .kube_api import api_client

        self._api = self._api or client.CoordinationV1Api(api_client())
        return self._api

    async def get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            lease = await asyncio.to_thread(
                self._coordination().read_namespaced_lease, self.name, self.namespace, _request_timeout=5
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        spec = lease.spec
        return {
            "metadata": {"resourceVersion": lease.metadata.resource_version},
            "spec": {
                "holderIdentity": spec.holder_identity,
                "leaseDurationSeconds": spec.lease_duration_seconds,
                "acquireTime": spec.acquire_time and micro_time_of(spec.acquire_time),
                "renewTime": spec.renew_time and micro_time_of(spec.renew_time),
                "leaseTransitions": spec.lease_transitions,
            },
        }

    async def create(self, spec: dict[str, Any]) -> bool:
        body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        return await self._write(self._coordination().create_namespaced_lease, self.namespace, body)

    async def replace(self, version: str, spec: dict[str, Any]) -> bool:
        body = {"metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": version}, "spec": spec}
        return await self._write(self._coordination().replace_namespaced_lease, self.name, self.namespace, body)

    @staticmethod
    async def _write(call: Callable[..., Any], *args: Any) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            await asyncio.to_thread(call, *args, _request_timeout=5)
        except ApiException as e:
            if e.status == 409:  # another replica wrote first (create or a newer resourceVersion)
                return False
            raise
        return True


def micro_time_of(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
