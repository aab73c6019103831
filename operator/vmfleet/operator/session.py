"""The operator's HTTP session to the apiserver: kopf's, with its writes bounded.

kopf sends every request at once. 1,000 fleets applied together made about 1,000 patches and 3,000 Events at
the same moment, over the apiserver's --max-mutating-requests-inflight (200 by default, or the operator's share
of it under priority and fairness): it refused 927 of them (429), kopf retried each after 1 to 5 s, and the
operator sat half idle while it waited. client-go bounds its clients the same way (QPS and burst). Here at most
Settings.api_writes writes are in flight; the others wait their turn in the operator, and reads (watches,
lists) never wait. The leader Lease is renewed through a client of its own (leader.py), so the operator's own
writes cannot crowd its renewals out of the apiserver either.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kopf

READS = frozenset({"GET", "HEAD", "OPTIONS"})


def bounded_writes(limit: int) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware that lets at most `limit` non-read requests be in flight at once."""
    turns = asyncio.Semaphore(limit)

    async def middleware(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        if request.method in READS:
            return await handler(request)
        async with turns:
            return await handler(request)

    return middleware


_sessions: dict[kopf.ConnectionInfo, kopf.AiohttpSession] = {}


async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own login (in-cluster, else $KUBECONFIG; in a thread, as kopf runs it: an exec plugin may take
    seconds), in a session of the same make whose writes are bounded. The same credentials give the same session:
    kopf refuses a login equal to one the apiserver refused (401), where a new session each time would have it log
    in again and again."""
    info = await asyncio.to_thread(kopf.login_via_client, **kwargs)
    if info is None:
        return None
    if info not in _sessions:
        _sessions.clear()  # the last credentials only: kopf closes the sessions it gives up
        limit = memo.settings.api_writes
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),  # kopf's: watches hold theirs
            headers=info.as_http_headers(),  # the token, or basic auth
            proxy=info.proxy_url,
            trust_env=info.trust_env,
            middlewares=(bounded_writes(limit),) if limit else (),
        )
        _sessions[info] = kopf.AiohttpSession(
            aiohttp_session=session,
            server=info.server,
            default_namespace=info.default_namespace,
            priority=info.priority,
            expiration=info.expiration,
        )
    return _sessions[info]
