"""Issue 12 through the real kube-apiserver and the operator as deploy/'s ServiceAccount: a fleet whose template
no longer resolves is still deleted, by its UID, and the status the safety work added (cloneDirectory, per-VM
restartRequired, the RestartRequired condition) is accepted by the apiserver as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import Cluster
from helpers import wait_for
from kubefleet import apply, fleet, objects, store_root, wait_ready
from operator_process import OperatorProcess
from safety_world import write_into

pytestmark = [pytest.mark.kube, pytest.mark.safety]


def test_a_fleet_whose_template_is_gone_is_deleted_and_cleaned_up(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns = f"g-{unique}"
    kube.kubectl("create", "namespace", ns)
    root = store_root(tmp_path, small_image)
    apply(kube, objects(root, ns, "test:///default", 2, f"g-{unique}"))
    wait_ready(kube, ns)
    uid = fleet(kube, ns)["metadata"]["uid"]
    assert fleet(kube, ns)["status"]["cloneDirectory"] == f"vmfleet/clones/{ns}/web/{uid}"
    assert len(list(root.rglob("web-*.qcow2"))) == 2
    kube.kubectl("patch", "vmfleet/web", "-n", ns, "--type=merge", "-p", '{"spec":{"templateRef":{"name":"gone"}}}')
    wait_for(
        lambda: fleet(kube, ns)["status"]["conditions"][0]["reason"] == "TemplateNotFound",
        30,
        "the fleet to see its template gone",
    )
    done = kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=30s", check=False)
    assert done.returncode == 0, done.stderr  # the finalizer went: no 60 s retry, no stuck object
    assert list(root.rglob("web-*.qcow2")) == [] and not (root / f"vmfleet/clones/{ns}/web/{uid}").exists()


def test_a_template_change_on_running_vms_is_reported_in_a_status_the_apiserver_accepts(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns = f"r-{unique}"
    kube.kubectl("create", "namespace", ns)
    docs = objects(store_root(tmp_path, small_image), ns, "test:///default", 2, f"r-{unique}")
    docs[3]["spec"]["updateStrategy"] = {"type": "OnDelete"}  # RollingUpdate would restart them (test_rollout)
    apply(kube, docs)
    wait_ready(kube, ns)
    docs[2]["spec"]["memoryMiB"] = 96
    apply(kube, docs[2:3])

    def restart_required() -> dict | None:
        status = fleet(kube, ns)["status"]
        return next((c for c in status["conditions"] if c["type"] == "RestartRequired"), None)

    condition = wait_for(restart_required, 60, "RestartRequired after the template change")
    assert condition["status"] == "True" and "web-0, web-1" in condition["message"]
    status = fleet(kube, ns)["status"]
    assert [c.get("restartRequired") for c in status["clones"]] == [True, True]  # not pruned by the apiserver
    assert status["readyReplicas"] == 2
    assert "DefinitionChanged" in kube.kubectl("get", "vmf", "web", "-n", ns, "-o", "yaml").stdout


def test_an_overlay_written_in_full_still_gets_a_status_the_apiserver_accepts(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    """Finding 8: savedBytes went negative, and the apiserver refused the whole status update."""
    ns = f"o-{unique}"
    kube.kubectl("create", "namespace", ns)
    root = store_root(tmp_path, small_image)
    apply(kube, objects(root, ns, "test:///default", 1, f"o-{unique}"))
    wait_ready(kube, ns)
    (clone,) = root.rglob("web-0.qcow2")
    write_into(clone, "qcow2", 0, small_image.stat().st_size)  # every block: the overlay outgrows its disk

    def grown() -> dict | None:
        status = fleet(kube, ns)["status"]
        return status if status["allocatedBytes"] > status["logicalBytes"] else None

    status = wait_for(grown, 60, "the status to show the overlay bigger than its disk")
    assert status["savedBytes"] == 0 and status["savingsRatio"] == 0
