"""`python -m bench soak [--examples N] [--steps N] [--store qcow2|reflink|both]`: the safety state machine of
tests/test_safety_property.py with fresh random seeds and as long as asked; prints what it tried as JSON.

The CI run is a fixed seed with 300 examples per store; this is the long run that keeps looking.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from . import site

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench soak")
    p.add_argument("--examples", type=int, default=3000, help="sequences per store (default 3000)")
    p.add_argument("--steps", type=int, default=40, help="at most this many steps per sequence (default 40)")
    p.add_argument("--store", choices=("qcow2", "reflink", "both"), default="both")
    args = p.parse_args(argv)
    sys.path.insert(0, str(TESTS))
    import test_safety_property as machine
    from vmfleet.images import make_template_image

    results = []
    with tempfile.TemporaryDirectory(prefix="vmfleet-soak-") as tmp:
        image = Path(tmp) / "t.img"
        make_template_image(str(image), 64 << 20, 8 << 20)
        stores = ["qcow2", "reflink"] if args.store == "both" else [args.store]
        for driver in stores:
            with site.scratch() if driver == "reflink" else contextlib.nullcontext((Path(tmp), "")) as (root, fs):
                if driver == "reflink" and fs != "xfs":
                    results.append({"store": driver, "skipped": f"needs root for an XFS loop mount (got {fs})"})
                    continue
                before = dict(machine.STATS)
                t0 = time.monotonic()
                machine.run_machine(root, driver, image, args.examples, args.steps, seed=False)  # raises on a violation
                results.append(
                    {
                        "store": driver,
                        "sequences": machine.STATS["examples"] - before["examples"],
                        "engine_steps": machine.STATS["steps"] - before["steps"],
                        "seconds": round(time.monotonic() - t0, 1),
                        "violations": 0,
                    }
                )
    print(json.dumps({"soak": results}))
