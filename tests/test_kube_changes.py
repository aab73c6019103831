"""Changes reach the operator through its watch, not its resync: an operator whose resync is 10 minutes away
acts on a spec edit and on a KvmHost's drain annotation at once. kopf's record of the last spec it handled lives
in status.kopf, written with the status, so making or editing an object costs one write less; one an older
vmfleet left as annotations is read once and removed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import Cluster
from helpers import wait_for
from kubefleet import apply, fleet, objects, store_root, wait_ready
from operator_process import OperatorProcess

pytestmark = [pytest.mark.kube, pytest.mark.hosts]

LEGACY = "vmfleet.io/last-handled-configuration"
MARKER = "vmfleet.io/kopf-managed"
DRAINING = (("False", "Draining"), ("True", "Drained"))


@pytest.fixture(scope="module")
def operator(kube: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    d = tmp_path_factory.mktemp("operator")
    sa = kube.service_account_kubeconfig("vmfleet-system", "vmfleet-operator", d / "sa.kubeconfig")
    op = OperatorProcess(sa, d / "operator.log", resync_seconds=600)
    op.start()
    yield op
    op.stop()


def _drained(kube: Cluster, host: str) -> tuple[str, str] | None:
    conditions = kube.get("kvmhosts", host).get("status", {}).get("conditions") or []
    return next(((c["status"], c["reason"]) for c in conditions if c["type"] == "Drained"), None)


def test_a_drain_annotation_and_a_scale_are_acted_on_at_once_and_kopf_keeps_its_record_in_status(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns = name = f"ch-{unique}"
    kube.kubectl("create", "namespace", ns)
    apply(kube, objects(store_root(tmp_path, small_image), ns, "test:///default", 1, name))
    wait_ready(kube, ns)
    kube.kubectl("scale", "vmfleet/web", "-n", ns, "--replicas=2")
    kube.kubectl("wait", "--for=jsonpath={.status.readyReplicas}=2", "vmfleet/web", "-n", ns, "--timeout=30s")
    kube.kubectl("annotate", "kvh", name, "vmfleet.io/drain=true")
    wait_for(lambda: _drained(kube, name) in DRAINING, 30, f"KvmHost {name} to say it drains (resync in 600 s)")

    body = fleet(kube, ns)
    assert LEGACY not in (body["metadata"].get("annotations") or {}), body["metadata"]
    record = json.loads(body["status"]["kopf"]["last-handled-configuration"])
    assert record["spec"]["replicas"] == 2
    kube.kubectl("annotate", "kvh", name, "vmfleet.io/drain-")
    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=60s")


def test_the_record_an_older_vmfleet_annotated_is_read_once_and_removed(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    """An object as vmfleet 0.1 left it: kopf's record and marker as annotations (the marker made kopf blind to
    every vmfleet.io/ annotation, the drain included)."""
    ns = name = f"old-{unique}"
    kube.kubectl("create", "namespace", ns)
    docs = objects(store_root(tmp_path, small_image), ns, "test:///default", 1, name)
    host = docs[1]
    host["metadata"]["annotations"] = {
        MARKER: "yes",
        LEGACY: json.dumps({"metadata": {"labels": host["metadata"]["labels"]}, "spec": host["spec"]}),
    }
    apply(kube, docs)
    wait_ready(kube, ns)
    wait_for(lambda: LEGACY not in (kube.get("kvmhosts", name)["metadata"].get("annotations") or {}), 30,
             "the old record to go")  # fmt: skip
    meta = kube.get("kvmhosts", name)["metadata"]
    assert MARKER not in (meta.get("annotations") or {}), meta
    kube.kubectl("annotate", "kvh", name, "vmfleet.io/drain=true")
    wait_for(lambda: _drained(kube, name) in DRAINING, 30, f"KvmHost {name} to say it drains")
    kube.kubectl("annotate", "kvh", name, "vmfleet.io/drain-")
    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=60s")
