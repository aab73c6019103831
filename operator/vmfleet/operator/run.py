"""`vmfleet run`: the kopf operator with vmfleet's handlers."""

from __future__ import annotations

import kopf


def run_operator(namespaces: list[str], liveness: str, standalone: bool, verbose: bool) -> int:
    from . import handlers  # noqa: F401 - registers the handlers

    kopf.configure(verbose=verbose)
    kopf.run(
        standalone=standalone,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness or None,
    )
    return 0
