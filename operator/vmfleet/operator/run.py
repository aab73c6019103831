"""`vmfleet run`: the kopf operator with vmfleet's handlers, on the leader Lease when the settings name one."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

import kopf

from .. import metrics
from ..settings import Settings
from .leader import ClusterLeases, Elector, health_while_waiting

log = logging.getLogger(__name__)


def run_operator(settings: Settings, namespaces: list[str], liveness: str, standalone: bool, verbose: bool) -> int:
    kopf.configure(verbose=verbose)
    asyncio.run(_operate(settings, namespaces, liveness or None, standalone))
    return 0


async def _operate(settings: Settings, namespaces: list[str], liveness: str | None, standalone: bool) -> None:
    from .handlers import registry

    if settings.metrics_port:  # a waiting replica is scraped too: vmfleet_leader 0 says why it has no fleets
        metrics.serve(settings.metrics_port)
    lease = settings.lease_name()
    if lease is not None:
        # The pod's name (its hostname) says which replica leads; the suffix tells a restarted container apart.
        elector = Elector(
            ClusterLeases(*lease),
            f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
            settings.lease_seconds,
            settings.lease_renew_deadline_seconds,
            settings.lease_retry_seconds,
        )
        log.info("leader election: %s waits for Lease %s/%s", elector.identity, *lease)
        async with health_while_waiting(liveness):
            await _in_thread(elector.acquire)
        # Renewed on a thread of its own until the process ends, also while it finishes work cut off by a stop.
        threading.Thread(target=elector.keep, args=(_stop_at_once,), name="leader-lease", daemon=True).start()
    metrics.LEADER.set(1)
    await kopf.operator(
        registry=registry(settings),
        memo=kopf.Memo(settings=settings),
        standalone=standalone,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )


async def _in_thread(fn: Callable[[], None]) -> None:
    """`fn` on a daemon thread: a waiting replica told to stop (SIGINT) does not wait for it to return."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        fn()
        loop.call_soon_threadsafe(done.set_result, None)

    threading.Thread(target=run, name="leader-wait", daemon=True).start()
    await done


def _stop_at_once() -> None:
    """The lease is lost: another replica may reconcile in a moment. Stopping gracefully could take longer than
    that (a pass waits on its store), so the process ends now, as a SIGKILLed operator does."""
    logging.shutdown()
    os._exit(3)
