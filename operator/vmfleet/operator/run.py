"""`vmfleet run`: the kopf operator with vmfleet's handlers."""

from __future__ import annotations

import kopf

from ..settings import Settings


def run_operator(settings: Settings, namespaces: list[str], liveness: str, standalone: bool, verbose: bool) -> int:
    from .handlers import registry

    kopf.configure(verbose=verbose)
    kopf.run(
        registry=registry(settings),
        memo=kopf.Memo(settings=settings),
        standalone=standalone,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness or None,
    )
    return 0
