"""What GitOps tools read of vmfleet's objects: Argo CD's Lua health check run by a real Lua 5.1 (Argo CD's
gopher-lua speaks 5.1), and Flux's own kstatus and healthCheckExprs code (tests/flux, built from Flux's
modules), on objects the real operator wrote through the real kube-apiserver."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

import prebuild
from cluster import Cluster
from helpers import REPO, wait_for
from kubefleet import apply, objects, store_root, wait_ready
from operator_process import OperatorProcess
from test_rollout import conn, site  # noqa: F401 - the test driver and store of a rolling update

pytestmark = pytest.mark.gitops

ARGO = REPO / "gitops" / "argocd" / "resource_customizations" / "vmfleet.io"
FLUX = REPO / "gitops" / "flux" / "kustomization.yaml"
KINDS = ("VmFleet", "VmTemplate", "CloneStore", "KvmHost")
WRITE = os.environ.get("VMFLEET_WRITE_GITOPS_TESTDATA") == "1"  # refresh testdata/ from the live run

# What each state the operator reports reads as, in Argo CD, in kstatus (Flux's default) and in Flux with
# gitops/flux's healthCheckExprs (stricter: Degraded fails at once instead of at the Kustomization's timeout).
EXPECTED = {
    "VmFleet/new": ("Progressing", "InProgress", "InProgress"),
    "VmFleet/waiting": ("Progressing", "InProgress", "InProgress"),
    "VmFleet/ready": ("Healthy", "Current", "Current"),
    "VmFleet/generation-lag": ("Progressing", "InProgress", "InProgress"),
    "VmFleet/clone-lost": ("Degraded", "InProgress", "Failed"),
    "VmFleet/host-lost": ("Degraded", "InProgress", "Failed"),
    "VmFleet/stalled": ("Degraded", "Failed", "Failed"),
    "VmTemplate/new": ("Progressing", "InProgress", "InProgress"),
    "VmTemplate/waiting": ("Progressing", "InProgress", "InProgress"),
    "VmTemplate/ready": ("Healthy", "Current", "Current"),
    "VmTemplate/degraded": ("Degraded", "InProgress", "Failed"),
    # Stores and hosts: the example names no expression for them, so Flux uses kstatus alone ("").
    "CloneStore/new": ("Progressing", "InProgress", ""),
    "CloneStore/ready": ("Healthy", "Current", ""),
    "CloneStore/degraded": ("Degraded", "InProgress", ""),
    "KvmHost/new": ("Progressing", "InProgress", ""),
    "KvmHost/ready": ("Healthy", "Current", ""),
    "KvmHost/degraded": ("Degraded", "InProgress", ""),
}


def argo_health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """Run the health check as Argo CD does: the object in the global `obj`, the script's table returned."""
    lua = lua51.LuaRuntime()
    g = lua.globals()
    for unsafe in ("io", "os", "debug", "package", "require", "dofile", "loadfile"):  # Argo CD opens none
        g[unsafe] = None
    g.obj = lua.table_from(obj, recursive=True)
    result = lua.execute((ARGO / kind / "health.lua").read_text())
    return {"status": result["status"], "message": result["message"]}


@pytest.fixture(scope="session")
def flux() -> str:
    """fluxprobe: Flux's own health-check code, built in Go (tests/flux; started early by conftest's BUILT_FOR)."""
    done = prebuild.result("flux")
    if done.returncode != 0:
        raise RuntimeError(f"building tests/flux failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip()


def flux_status(flux: str, objs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """kstatus and the example's healthCheckExprs on each object, computed by Flux's own Go code."""
    exprs = yaml.safe_load(FLUX.read_text())["spec"]["healthCheckExprs"]
    done = subprocess.run(
        [flux], input=json.dumps({"healthCheckExprs": exprs, "objects": objs}), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def cases(kind: str) -> list[dict[str, Any]]:
    return yaml.safe_load((ARGO / kind / "health_test.yaml").read_text())["tests"]


def load_case(kind: str, case: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load((ARGO / kind / case["inputPath"]).read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_the_argo_cd_health_check_passes_its_cases(kind: str) -> None:
    for case in cases(kind):
        assert argo_health(kind, load_case(kind, case)) == case["healthStatus"], case["inputPath"]


def test_every_state_has_a_case_for_argo_cd_and_a_verdict_for_flux(flux: str) -> None:
    named = {f"{kind}/{Path(c['inputPath']).stem}" for kind in KINDS for c in cases(kind)}
    assert named == set(EXPECTED)
    objs = [load_case(key.split("/")[0], {"inputPath": f"testdata/{key.split('/')[1]}.yaml"}) for key in EXPECTED]
    for (key, (argo, kstatus, cel)), read in zip(EXPECTED.items(), flux_status(flux, objs), strict=True):
        kind = key.split("/")[0]
        assert argo_health(kind, objs[list(EXPECTED).index(key)])["status"] == argo, key
        assert (read["kstatus"], read["cel"]) == (kstatus, cel), (key, read)


def test_one_health_check_serves_every_kind_and_the_argocd_cm_patch_carries_it() -> None:
    script = (ARGO / "VmFleet" / "health.lua").read_text()
    assert all((ARGO / kind / "health.lua").read_text() == script for kind in KINDS)
    data = yaml.safe_load((REPO / "gitops" / "argocd" / "argocd-cm.yaml").read_text())["data"]
    assert data == {f"resource.customizations.health.vmfleet.io_{kind}": script for kind in KINDS}


# ---------------------------------------------------------------- states the real operator writes


def trimmed(obj: dict[str, Any]) -> dict[str, Any]:
    """What a health check reads (and what a test case keeps): no uid, managedFields or annotations."""
    meta = {k: obj["metadata"][k] for k in ("name", "namespace", "generation") if k in obj["metadata"]}
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": meta,
        "spec": obj["spec"],
        **({"status": obj["status"]} if "status" in obj else {}),
    }


def condition(obj: dict[str, Any], type_: str) -> tuple[str, str]:
    c = next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})
    return c.get("status", ""), c.get("reason", "")


class States:
    """Objects captured as the operator left them, checked against EXPECTED as they come."""

    def __init__(self, kube: Cluster, ns: str):
        self.kube, self.ns = kube, ns
        self.seen: dict[str, dict[str, Any]] = {}

    def capture(self, key: str, resource: str, name: str, until: Any) -> dict[str, Any]:
        where = ("-n", self.ns) if resource in ("vmfleets", "vmtemplates") else ()
        obj = wait_for(
            lambda: (lambda o: o if until(o) else None)(self.kube.get(resource, name, *where)),
            60,
            f"{key}: the operator to report it",
        )
        self.seen[key] = trimmed(obj)
        return obj


def test_states_the_real_operator_writes_read_right_in_argo_cd_and_flux(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str, flux: str
) -> None:
    ns, name = f"g-{unique}", f"g-{unique}"
    kube.kubectl("create", "namespace", ns)
    root = store_root(tmp_path, small_image)
    store, host, template, fleet = objects(root, ns, "test:///default", 2, name)
    s = States(kube, ns)

    apply(kube, [fleet, template])  # applied before the store and the host: both wait, in progress
    s.capture(
        "VmFleet/waiting",
        "vmfleets",
        "web",
        lambda o: condition(o, "Reconciling") in (("True", "TemplateNotFound"), ("True", "StoreNotFound")),
    )
    s.capture(
        "VmTemplate/waiting", "vmtemplates", "tiny", lambda o: condition(o, "Reconciling") == ("True", "StoreNotFound")
    )
    apply(kube, [store, host])
    wait_ready(kube, ns)
    s.capture("VmFleet/ready", "vmfleets", "web", lambda o: condition(o, "Ready")[0] == "True")
    s.capture("VmTemplate/ready", "vmtemplates", "tiny", lambda o: condition(o, "Ready")[0] == "True")
    s.capture("CloneStore/ready", "clonestores", name, lambda o: condition(o, "Ready")[0] == "True")
    s.capture("KvmHost/ready", "kvmhosts", name, lambda o: condition(o, "Ready")[0] == "True")

    operator.stop()  # the spec moves on while nobody answers: the generation lags, new objects wait
    kube.kubectl("scale", "vmfleet/web", "-n", ns, "--replicas=3")
    s.capture(
        "VmFleet/generation-lag",
        "vmfleets",
        "web",
        lambda o: o["status"]["observedGeneration"] < o["metadata"]["generation"],
    )
    apply(kube, [{**doc, "metadata": {**doc["metadata"], "name": "new"}} for doc in (template, fleet)])
    apply(kube, [{**doc, "metadata": {"name": f"{name}-new", "labels": {"test": "none"}}} for doc in (store, host)])
    for kind, resource, new in (
        ("VmFleet", "vmfleets", "new"),
        ("VmTemplate", "vmtemplates", "new"),
        ("CloneStore", "clonestores", f"{name}-new"),
        ("KvmHost", "kvmhosts", f"{name}-new"),
    ):
        s.capture(f"{kind}/new", resource, new, lambda o: True)
    operator.start()
    wait_ready(kube, ns)

    next(root.rglob("web-2.qcow2")).unlink()  # someone deletes a clone by hand
    s.capture("VmFleet/clone-lost", "vmfleets", "web", lambda o: condition(o, "Degraded") == ("True", "CloneLost"))
    kube.kubectl("scale", "vmfleet/web", "-n", ns, "--replicas=2")
    wait_ready(kube, ns)

    host["spec"]["uri"] = "qemu+tcp://127.0.0.1:1/system"  # the host goes away
    apply(kube, [host])
    s.capture("VmFleet/host-lost", "vmfleets", "web", lambda o: condition(o, "Degraded") == ("True", "HostUnreachable"))
    gone = s.capture("KvmHost/degraded", "kvmhosts", name, lambda o: condition(o, "Ready") == ("False", "Unreachable"))
    assert condition(gone, "Degraded")[0] == "True" and "domains" not in gone["status"]  # no stale count
    scraped = operator.metrics()
    assert scraped[("vmfleet_libvirt_errors_total", frozenset({("host", name), ("operation", "connect")}))] >= 1
    labels = frozenset({("namespace", ns), ("fleet", "web")})
    assert scraped[("vmfleet_fleet_clones", labels)] == 2

    big = {
        **fleet,
        "metadata": {"name": "big", "namespace": ns},
        "spec": {**fleet["spec"], "hostSelector": {"matchLabels": {"test": "nowhere"}}},
    }
    apply(kube, [big])
    s.capture("VmFleet/stalled", "vmfleets", "big", lambda o: condition(o, "Stalled") == ("True", "NoHosts"))
    broken = {
        **template,
        "metadata": {"name": "broken", "namespace": ns},
        "spec": {**template["spec"], "image": {"path": "images/missing.img"}},
    }
    apply(kube, [broken])
    s.capture("VmTemplate/degraded", "vmtemplates", "broken", lambda o: condition(o, "Degraded")[0] == "True")
    unmounted = {
        **store,
        "metadata": {"name": f"{name}-unmounted"},
        "spec": {**store["spec"], "root": str(tmp_path / "not-mounted")},
    }
    apply(kube, [unmounted])
    s.capture(
        "CloneStore/degraded",
        "clonestores",
        f"{name}-unmounted",
        lambda o: condition(o, "Degraded") == ("True", "RootMissing"),
    )

    verdicts = flux_status(flux, list(s.seen.values()))
    for (key, obj), flux in zip(s.seen.items(), verdicts, strict=True):
        kind, state = key.split("/")
        argo, kstatus, cel = EXPECTED[key]
        health = argo_health(kind, obj)
        assert health["status"] == argo and health["message"], (key, health)
        assert (flux["kstatus"], flux["cel"]) == (kstatus, cel), (key, flux)
        if WRITE:
            (ARGO / kind / "testdata" / f"{state}.yaml").write_text(yaml.safe_dump(obj, sort_keys=False))
    assert set(s.seen) == set(EXPECTED)
    kube.kubectl(
        "delete",
        "vmfleet/web",
        "vmfleet/new",
        "vmfleet/big",
        "vmtemplate/broken",
        "-n",
        ns,
        "--timeout=60s",
        check=False,
    )
    kube.kubectl(
        "delete",
        f"clonestore/{name}-unmounted",
        f"clonestore/{name}-new",
        f"kvmhost/{name}-new",
        "--timeout=60s",
        check=False,
    )


async def test_a_rolling_update_reads_in_progress_then_failed_once_stalled(
    runtime: Any, conn: Any, site: Any, monkeypatch: pytest.MonkeyPatch, flux: str
) -> None:
    """The statuses a rolling update writes (test_rollout.broken_rollout: the engine's, as the operator patches
    them): under way, Argo CD says Progressing and kstatus InProgress; stalled past progressDeadlineSeconds,
    Degraded and Failed; rolled back, Healthy and Current."""
    from test_rollout import broken_rollout

    passes = await broken_rollout(runtime, conn, site, monkeypatch)
    objs = [
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmFleet",
            "metadata": {"name": "web", "namespace": "prod", "generation": p.status["observedGeneration"]},
            "spec": {"templateRef": {"name": "t"}, "replicas": 6},
            "status": p.status,
        }
        for p in passes[1:]
    ]
    read = zip(objs, flux_status(flux, objs), strict=True)
    verdicts = [(argo_health("VmFleet", o)["status"], f["kstatus"], f["cel"]) for o, f in read]
    assert verdicts == [
        ("Progressing", "InProgress", "InProgress"),
        ("Degraded", "Failed", "Failed"),
        ("Healthy", "Current", "Current"),
    ]
