"""The operator against the real kube-apiserver: kubectl apply to Ready, and the operator's peak RSS."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from cluster import Cluster, build  # noqa: E402  (the test suite's control plane)
from kubefleet import objects  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402
from vmfleet.images import make_template_image  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def manifests(root: Path, driver: str, n: int, namespace: str, uri: str = "test:///default") -> list[dict[str, Any]]:
    """A store, a test-driver host, a template and a fleet of n VMs: as kubectl and `vmfleet apply` take them."""
    return objects(
        root,
        namespace,
        uri,
        n,
        namespace,
        driver=driver,
        concurrency=16,
        capacity=(1 << 16, 1 << 30),
        template="t",
        fleet="f",
    )


@contextlib.contextmanager
def operator_on_cluster(resync_seconds: float = 30) -> Iterator[tuple[Cluster, OperatorProcess]]:
    """The test suite's control plane with deploy/ installed, and `vmfleet run` as its ServiceAccount."""
    base = Path(tempfile.mkdtemp(prefix="vmfleet-bench-kube-"))
    cluster = Cluster(build(), base)
    cluster.start()
    operator = None
    try:
        cluster.install(REPO / "deploy")
        sa = cluster.service_account_kubeconfig("vmfleet-system", "vmfleet-operator", base / "sa.kubeconfig")
        operator = OperatorProcess(sa, base / "operator.log", resync_seconds=resync_seconds)
        operator.start()
        assert operator.proc is not None
        yield cluster, operator
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def measure(directory: Path, sizes: list[int], budget_seconds: float = 600) -> dict:
    root = directory / "kube"
    make_template_image(str(root / "images" / "t.img"), 64 << 20, 4 << 20)
    driver = "reflink" if _reflinks(root) else "qcow2"
    rows = []
    with operator_on_cluster() as (cluster, operator):
        for n in sizes:
            ns = f"bench-{n}"
            cluster.kubectl("create", "namespace", ns)
            t0 = time.perf_counter()
            cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(manifests(root, driver, n, ns)))
            cluster.kubectl(
                "wait",
                "--for=condition=Ready",
                "vmfleet/f",
                "-n",
                ns,
                f"--timeout={int(budget_seconds)}s",
                timeout=budget_seconds + 30,
            )
            seconds = time.perf_counter() - t0
            size = len(cluster.kubectl("get", "vmfleets", "f", "-n", ns, "-o", "json").stdout)
            assert operator.proc is not None
            rows.append(
                {
                    "n": n,
                    "apply_to_ready_seconds": round(seconds, 2),
                    "object_bytes": size,
                    "operator_peak_rss_mib": round(peak_rss_mib(operator.proc.pid), 1),
                }
            )
    return {"rows": rows, "driver": driver}


def _reflinks(root: Path) -> bool:
    import subprocess

    return subprocess.run(["stat", "-f", "-c", "%T", str(root)], capture_output=True, text=True).stdout.strip() in (
        "xfs",
        "btrfs",
    )
