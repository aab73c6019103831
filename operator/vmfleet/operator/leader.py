"""Leader election on a coordination.k8s.io Lease: of the operator's replicas, one reconciles, the others wait.

A Lease rather than kopf peering: peers of equal priority all freeze (kopf's documented behaviour), so peering
suits a developer's operator pausing the cluster's, not identical replicas taking over from each other. The
rules are client-go's: a holder renews every `retry_seconds`; another replica takes the lease once it has seen
the same record, unchanged, for `lease_seconds` on its own clock (clocks of two machines are never compared);
a holder none of whose renewals sent in the last `renew_deadline_seconds` (< lease_seconds) succeeded stops at
once, before anyone may take over. It stops as a SIGKILLed operator does, which every pass is made to survive.
The lease is never handed back: a stopping operator's cut-off calls may still be running in its threads, and
the process holds the lease until it has ended.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
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
    version: str = ""  # a renewal is a new version: a record seen unchanged is one whose version stays

    @classmethod
    def of(cls, lease: dict[str, Any]) -> Holding:
        spec = lease.get("spec") or {}
        return cls(
            spec.get("holderIdentity") or "",
            float(spec.get("leaseDurationSeconds") or 0),
            spec.get("acquireTime"),
            int(spec.get("leaseTransitions") or 0),
            lease.get("metadata", {}).get("resourceVersion", ""),
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
        "leaseDurationSeconds": math.ceil(lease_seconds),  # rounded up: the others wait longer, never less
        "acquireTime": current.acquired if mine and current is not None else now,
        "renewTime": now,
        "leaseTransitions": (current.transitions if current else 0) + (0 if mine or current is None else 1),
    }


class Leases(Protocol):
    """The Lease API, blocking, each call given up after `timeout` seconds: get returns None when there is none;
    create and replace return False on a conflict."""

    def get(self, timeout: float) -> dict[str, Any] | None: ...
    def create(self, spec: dict[str, Any], timeout: float) -> bool: ...
    def replace(self, version: str, spec: dict[str, Any], timeout: float) -> bool: ...


def micro_time() -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, in UTC."""
    return micro_time_of(datetime.now(UTC))


@dataclass
class Elector:
    """Blocking, on a thread of its own: renewing never waits on the operator's event loop or its thread pool,
    which a hung store or libvirtd may hold (the deadline would otherwise be checked only once they let go)."""

    leases: Leases
    identity: str
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _seen: Holding | None = None
    _seen_at: float = 0.0

    def try_once(self, timeout: float = 5.0) -> bool:
        """One read and, when it may, one write, each given up after `timeout`: True if this replica holds the
        lease now."""
        lease = self.leases.get(timeout)
        current = Holding.of(lease) if lease is not None else None
        if current != self._seen:
            self._seen, self._seen_at = current, self.clock()
        spec = claim(current, self.clock() - self._seen_at, self.identity, self.lease_seconds, micro_time())
        if spec is None:
            return False
        if current is None:
            won = self.leases.create(spec, timeout)
        else:
            won = self.leases.replace(current.version, spec, timeout)
        if won and (current is None or current.holder != self.identity):
            log.info("leader election: %s holds the lease now (was %r)", self.identity, current and current.holder)
        return won

    def acquire(self) -> None:
        """Returns once this replica holds the lease."""
        while not self._attempt(5.0):
            self.sleep(self.retry_seconds)

    def keep(self, lost: Callable[[], None]) -> None:
        """Renews for ever; calls `lost` once no renewal sent in the last renew deadline succeeded. A renewal counts
        from when it was sent, and a call is given up when the deadline comes, so `lost` is never late."""
        renewed = self.clock()  # the acquiring write was sent before this
        while True:
            self.sleep(self.retry_seconds)
            sent = self.clock()
            left = renewed + self.renew_deadline_seconds - sent
            if left > 0 and self._attempt(left):
                renewed = sent
            elif self.clock() - renewed >= self.renew_deadline_seconds:
                log.error("leader election: %s lost the lease (not renewed for %.1f s)", self.identity,
                          self.clock() - renewed)  # fmt: skip
                lost()
                return

    def _attempt(self, timeout: float) -> bool:
        try:
            return self.try_once(timeout)
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

    def get(self, timeout: float) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            lease = self._coordination().read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
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

    def create(self, spec: dict[str, Any], timeout: float) -> bool:
        body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        return self._write(self._coordination().create_namespaced_lease, (self.namespace, body), timeout)

    def replace(self, version: str, spec: dict[str, Any], timeout: float) -> bool:
        body = {"metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": version}, "spec": spec}
        return self._write(self._coordination().replace_namespaced_lease, (self.name, self.namespace, body), timeout)

    @staticmethod
    def _write(call: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            call(*args, _request_timeout=timeout)
        except ApiException as e:
            if e.status == 409:  # another replica wrote first (create or a newer resourceVersion)
                return False
            raise
        return True


def micro_time_of(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
