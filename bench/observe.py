"""`python -m bench.resync [--fleets 100,500,1000] [--vms 10] [--sample 40] [--json]`: a resync round against the
number of fleets sharing one host.

N fleets of V running VMs on libvirt's test driver (clones on the gpfs simulator over SSH) are reconciled again,
unchanged, as a resync does. Each pass looks at the host: before (relist_seconds 0), by listing every domain of it
with its state and metadata; after, through the host's shared view (hypervisor/view.py), which lists in full once
and then looks only at domains libvirt's events say changed. Both are measured side by side on the same fleets,
alternating which goes first: the seconds of a pass and the domains libvirt was asked about per pass, over a sample
of the fleets (every pass of a round costs the same: the round is the sample's mean times N).

Prints a table, or with --json one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import libvirt

from vmfleet.engine import Runtime, reconcile_fleet
from vmfleet.sim.server import Simulator

from . import site
from .report import emit


class _Asked:
    """How many domains libvirt was asked the state of (every look at a domain starts there)."""

    def __init__(self) -> None:
        self.count = 0
        self._state = libvirt.virDomain.state

    def __enter__(self) -> _Asked:
        real = self._state

        def counted(dom: libvirt.virDomain, flags: int = 0) -> Any:
            self.count += 1
            return real(dom, flags)

        libvirt.virDomain.state = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        libvirt.virDomain.state = self._state  # type: ignore[method-assign]


async def _round(
    runtime: Runtime, server: Simulator, fleets: list[tuple[Any, dict]], relist: float
) -> tuple[float, float]:
    """(seconds per pass, domains asked per pass) over `fleets`, with the host's view set to `relist`."""
    view = runtime.host(site.host()).view
    view.relist_seconds = relist
    view.forget()
    store = site.store(server, 16)
    await reconcile_fleet(runtime, fleets[0][0], site.template(), store, [site.host()], fleets[0][1])  # the listing
    with _Asked() as asked:
        t0 = time.perf_counter()
        for fleet, status in fleets:
            result = await reconcile_fleet(runtime, fleet, site.template(), store, [site.host()], status)
            assert result.status["readyReplicas"] == status["readyReplicas"], result.status["conditions"]
            assert not result.plan.actions, result.plan.actions  # unchanged: a look, nothing done
        elapsed = time.perf_counter() - t0
    return elapsed / len(fleets), asked.count / len(fleets)


async def measure(counts: list[int], vms: int, sample: int, repeats: int) -> dict:
    rows = []
    from vmfleet.images import make_template_image

    with site.scratch() as (directory, _fs):
        make_template_image(str(directory / "bench" / "images" / "t.img"), 64 << 20, 4 << 20)
        async with site.simulator(directory) as (server, runtime):
            store = site.store(server, 16)
            fleets: list[tuple[Any, dict]] = []
            for n in counts:
                while len(fleets) < n:
                    fleet = site.fleet(vms, f"f{len(fleets)}")
                    result = await reconcile_fleet(runtime, fleet, site.template(), store, [site.host()])
                    assert result.status["readyReplicas"] == vms, result.status["conditions"]
                    fleets.append((fleet, result.status))
                picked = random.Random(n).sample(fleets, min(sample, n))
                before: list[tuple[float, float]] = []
                after: list[tuple[float, float]] = []
                for r in range(repeats):
                    order = [(0.0, before), (3600.0, after)]
                    for relist, out in order if r % 2 == 0 else order[::-1]:
                        out.append(await _round(runtime, server, picked, relist))
                b = statistics.median(s for s, _ in before)
                a = statistics.median(s for s, _ in after)
                rows.append(
                    {
                        "fleets": n,
                        "domains": n * vms,
                        "listing_pass_s": round(b, 5),
                        "view_pass_s": round(a, 5),
                        "listing_round_s": round(b * n, 2),
                        "view_round_s": round(a * n, 2),
                        "listing_domains_per_pass": before[0][1],
                        "view_domains_per_pass": after[0][1],
                        "speedup": round(b / a, 1),
                    }
                )
                print(rows[-1], flush=True)
    return {"vms_per_fleet": vms, "sample": sample, "repeats": repeats, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.resync")
    p.add_argument("--fleets", default="100,500,1000")
    p.add_argument("--vms", type=int, default=10)
    p.add_argument("--sample", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = asyncio.run(measure([int(n) for n in args.fleets.split(",")], args.vms, args.sample, args.repeats))
    emit(result, args.json)


if __name__ == "__main__":
    main()
