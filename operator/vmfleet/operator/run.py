"""`vmfleet run`: the kopf operator with vmfleet's handlers, on the leader Lease when the settings name one."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

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
    elector = None
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
            await elector.acquire()
    metrics.LEADER.set(1)
    keeper = asyncio.create_task(elector.keep(_stop_at_once)) if elector else None
    try:
        await kopf.operator(
            registry=registry(settings),
            memo=kopf.Memo(settings=settings),
            standalone=standalone,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
        )
    finally:
        if keeper is not None and elector is not None:
            keeper.cancel()
            try:
                await elector.release()
            except Exception as e:  # the apiserver gone too: the lease runs out instead
                log.warning("leader election: the Lease could not be handed back: %s", e)


async def _stop_at_once() -> None:
    """The lease is lost: another replica may reconcile in a moment. Stopping gracefully could take longer than
    that (a pass waits on its store), so the process ends now, as a SIGKILLed operator does."""
    logging.shutdown()
    os._exit(3)
