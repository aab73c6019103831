"""The operator's apiserver session (operator/session.py): at most Settings.api_writes writes in flight, reads
never held. Through a real HTTP server that counts what it is serving at once."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from vmfleet.operator.session import bounded_writes


async def _serve() -> tuple[web.AppRunner, str, dict[str, int]]:
    seen = {"writes": 0, "most_writes": 0, "reads_while_writes_wait": 0}
    gate = asyncio.Event()

    async def write(_: web.Request) -> web.Response:
        seen["writes"] += 1
        seen["most_writes"] = max(seen["most_writes"], seen["writes"])
        await gate.wait()  # writes stay in flight until a read has got through
        await asyncio.sleep(0.01)
        seen["writes"] -= 1
        return web.json_response({})

    async def read(_: web.Request) -> web.Response:
        if seen["writes"]:
            seen["reads_while_writes_wait"] += 1
        gate.set()
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/w", write)
    app.router.add_get("/r", read)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}", seen


def test_writes_wait_their_turn_and_reads_do_not() -> None:
    async def play() -> dict[str, int]:
        runner, url, seen = await _serve()
        try:
            async with aiohttp.ClientSession(middlewares=(bounded_writes(4),)) as session:

                async def call(method: str, path: str) -> int:
                    async with session.request(method, url + path) as r:
                        return r.status

                writes = [asyncio.create_task(call(m, "/w")) for m in ("POST", "PATCH", "PUT", "DELETE") * 10]
                await asyncio.sleep(0.2)  # every write sent; 4 reach the server, the others wait in the client
                in_flight = seen["writes"]
                assert await call("GET", "/r") == 200  # not queued behind the held writes
                assert set(await asyncio.gather(*writes)) == {200}
                return {**seen, "in_flight_before_the_read": in_flight}
        finally:
            await runner.cleanup()

    seen = asyncio.run(play())
    assert seen["in_flight_before_the_read"] == 4
    assert seen["most_writes"] == 4
    assert seen["reads_while_writes_wait"] == 1


def test_the_bound_is_a_setting() -> None:
    from vmfleet.settings import Settings

    assert Settings().api_writes == 16
    assert Settings.from_env({"VMFLEET_API_WRITES": "0"}).api_writes == 0


def test_the_operator_logs_in_through_the_bounded_session() -> None:
    from vmfleet.operator import handlers, session
    from vmfleet.settings import Settings

    activities = handlers.registry(Settings())._activities.get_all_handlers()
    logins = [h.fn for h in activities if h.activity is not None and h.activity.value == "authentication"]
    assert logins == [session.login]


def test_the_same_credentials_give_the_same_session_so_kopf_can_refuse_them(monkeypatch: Any) -> None:
    """Found in review: kopf refuses a login equal to one the apiserver refused (401); a new session at each login
    was never equal, so revoked credentials had every watcher log in again and again, without a pause."""
    import kopf

    from vmfleet.operator import session
    from vmfleet.settings import Settings

    tokens = iter(["a", "a", "b"])
    monkeypatch.setattr(
        kopf, "login_via_client", lambda **_: kopf.ConnectionInfo(server="https://127.0.0.1:1", token=next(tokens))
    )

    async def play() -> list[Any]:
        memo = kopf.Memo(settings=Settings())
        logins = [await session.login(memo=memo) for _ in range(3)]
        for s in {id(x): x for x in logins}.values():
            assert s is not None
            await s.aiohttp_session.close()
        return logins

    first, again, other = asyncio.run(play())
    assert again is first and again == first  # kopf's vault compares them: this one it has refused already
    assert other is not first and other.aiohttp_session.headers["Authorization"] == "Bearer b"
