"""Is a CloneStore reachable, is a KvmHost: the status `kubectl get clonestores,kvmhosts` shows."""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

from ..api import CloneStore, KvmHost
from ..errors import HostError
from ..storage import StoreError
from ..storage.local import root_field, root_problem
from ..clock import now
from .runtime import Runtime
from .status import summary_conditions
from ..api import reasons


async def host_status(runtime: Runtime, host: KvmHost, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    gen = host.meta.generation
    try:
        domains = await runtime.host(host).list_domains()
    except HostError as e:  # the driver's one error for the host, its Secret and its connection
        return {"observedGeneration": gen,
                "conditions": summary_conditions("Degraded", reasons.UNREACHABLE, str(e), gen, previous, now())}
    return {"observedGeneration": gen, "domains": len(domains),
            "conditions": summary_conditions("Ready", reasons.CONNECTED, f"{host.uri}: {len(domains)} domain(s)", gen,
                                             previous, now())}


async def store_status(runtime: Runtime, store: CloneStore, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    gen = store.meta.generation
    if store.driver == "gpfs":  # nothing of it is mounted here: ask the GPFS node
        try:
            await runtime.store_driver(store).list_dir("vmfleet")
            ok, reason, message = True, reasons.REACHABLE, f"{store.root} answers over SSH"
        except StoreError as e:
            ok, reason, message = False, reasons.UNREACHABLE, str(e)
    else:
        problem = await asyncio.to_thread(root_problem, store.local_path)
        ok = problem is None
        reason = reasons.REACHABLE if ok else reasons.ROOT_MISSING
        message = (f"{store.local_path} is reachable" if ok else
                   f"{root_field(store.driver, store.root, store.local_path)} {store.local_path} {problem}")
    return {"observedGeneration": gen,
            "conditions": summary_conditions("Ready" if ok else "Degraded", reason, message, gen, previous, now())}
