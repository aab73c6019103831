"""The cold builds some tests need, started in the background as soon as pytest knows which tests run.

On a fresh machine the Kubernetes binaries alone take ~15 minutes to build on 2 cores. Started at the lowest CPU
priority while the tests that need none of them run, they cost the run the idle time of those tests instead.
A build nobody started is started the first time it is asked for, and waited for; each result is kept.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Build:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


_ARCHIVE = Path(tempfile.gettempdir()) / f"vmfleet-image-{os.getpid()}.tar"
BUILDS = {
    "kube": Build((str(HERE / "kube" / "build.sh"),)),
    "flux": Build((str(HERE / "flux" / "build.sh"),)),
    # The operator's image, saved for `ctr images import` on the single-node cluster.
    "image": Build((str(REPO / "hack" / "build-image.sh"),), (("VMFLEET_IMAGE_ARCHIVE", str(_ARCHIVE)),)),
}
_started: dict[str, tuple[subprocess.Popen[str], IO[str]]] = {}
_done: dict[str, subprocess.CompletedProcess[str]] = {}


def start(name: str) -> None:
    if name in _started or name in _done:
        return
    build = BUILDS[name]
    stderr = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        ("nice", "-n", "19", *build.argv),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, **dict(build.env)},
        start_new_session=True,  # its own process group, which stop() ends whole
    )
    _started[name] = (process, stderr)


def result(name: str) -> subprocess.CompletedProcess[str]:
    """The build's output (returncode, stdout, stderr), started now if nobody started it, and waited for."""
    if name not in _done:
        start(name)  # niced: the lowest priority costs nothing when nothing else runs
        process, stderr = _started.pop(name)
        out, _ = process.communicate()
        stderr.seek(0)
        _done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, stderr.read())
        stderr.close()
    return _done[name]


def image_archive() -> Path:
    return _ARCHIVE


def stop() -> None:
    """Ends the builds nobody waited for (a run cut short) and removes the image archive."""
    for process, stderr in _started.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        stderr.close()
    _started.clear()
    _ARCHIVE.unlink(missing_ok=True)
