"""The operator against a real kube-apiserver, driven with kubectl, running as deploy/'s ServiceAccount."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import yaml

from cluster import Cluster
from helpers import REPO, wait_for
from kubefleet import apply, fleet, objects, ready_fleet, store_root, wait_ready
from operator_process import OperatorProcess
from vmfleet.seed import read_files

pytestmark = pytest.mark.kube


@pytest.mark.gitops  # also scrapes /metrics
def test_a_fleet_through_kubectl_scale_restart_and_delete(
    kube: Cluster, operator: OperatorProcess, libvirtd: str, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns = f"k-{unique}"
    kube.kubectl("create", "namespace", ns)
    root = store_root(tmp_path, small_image)
    apply(kube, objects(root, ns, libvirtd, 3, f"s-{unique}"))
    wait_ready(kube, ns)
    status = fleet(kube, ns)["status"]
    assert status["readyReplicas"] == 3 and len(status["clones"]) == 3
    assert all(c["allocatedBytes"] < c["logicalBytes"] // 100 for c in status["clones"])

    table = kube.kubectl("get", "vmf", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "DESIRED", "READY", "ALLOCATED", "SAVED", "AGE"]
    assert table[1].split()[:3] == ["web", "3", "3"]
    wide = kube.kubectl("get", "vmf", "-n", ns, "-o", "wide").stdout.splitlines()[0].split()
    assert wide[-4:] == ["TEMPLATE", "PLACEMENT", "RATIO", "STATUS"]
    reasons = {e["reason"] for e in kube.get("events", "-n", ns)["items"]}
    assert {"ClonesCreated", "DomainsDefined", "DomainsStarted"} <= reasons
    scraped = operator.metrics()
    labels = frozenset({("namespace", ns), ("fleet", "web")})
    assert scraped[("vmfleet_fleet_ready_replicas", labels)] == 3
    assert scraped[("vmfleet_fleet_allocated_bytes", labels)] == fleet(kube, ns)["status"]["allocatedBytes"]
    assert scraped[("vmfleet_events_total", frozenset({("type", "Normal"), ("reason", "ClonesCreated")}))] >= 1
    assert scraped[("vmfleet_reconcile_seconds_count", frozenset({("kind", "VmFleet")}))] >= 1
    assert scraped[("vmfleet_fleet_logical_bytes", labels)] == 3 * small_image.stat().st_size
    # what a HorizontalPodAutoscaler or KEDA reads: replicas and a selector (an HPA refuses a target without one)
    scale = json.loads(
        kube.kubectl("get", "--raw", f"/apis/vmfleet.io/v1alpha1/namespaces/{ns}/vmfleets/web/scale").stdout
    )
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (3, 3)
    assert scale["status"]["selector"] == "vmfleet.io/fleet=web"

    kube.kubectl("scale", "vmfleet/web", "-n", ns, "--replicas=5")
    kube.kubectl("wait", "--for=jsonpath={.status.readyReplicas}=5", "vmfleet/web", "-n", ns, "--timeout=90s")

    conn = libvirt.open(libvirtd)
    try:
        uuids = {o: conn.lookupByName(f"{ns}.web-{o}").UUIDString() for o in range(2)}
        inodes = {p.name: p.stat().st_ino for p in root.rglob("web-*.qcow2")}
        operator.kill()  # no cleanup, no goodbye
        kube.kubectl("scale", "vmfleet/web", "-n", ns, "--replicas=2")
        operator.start()
        kube.kubectl("wait", "--for=jsonpath={.status.replicas}=2", "vmfleet/web", "-n", ns, "--timeout=90s")
        wait_ready(kube, ns)
        assert {o: conn.lookupByName(f"{ns}.web-{o}").UUIDString() for o in range(2)} == uuids
        assert {p.name: p.stat().st_ino for p in root.rglob("web-*.qcow2")} == {
            n: i for n, i in inodes.items() if n in ("web-0.qcow2", "web-1.qcow2")
        }

        kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=90s")
        assert kube.kubectl("get", "vmfleet/web", "-n", ns, check=False).returncode != 0
        assert not [d for d in conn.listAllDomains() if d.name().startswith(f"{ns}.")]
    finally:
        conn.close()
    assert list(root.rglob("web-*.qcow2")) == []
    events = kube.get("events", "-n", ns)["items"]
    assert {"DomainsUndefined", "ClonesDeleted"} <= {e["reason"] for e in events}


def test_every_status_field_the_operator_writes_survives_the_apiserver(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns = f"s-{unique}"
    kube.kubectl("create", "namespace", ns)
    root = store_root(tmp_path, small_image)
    docs = objects(root, ns, "test:///default", 2, f"s-{unique}", policy="Retain")
    docs[2]["spec"]["network"] = "default"  # the test driver's: each VM's MAC and (fake) address in status
    apply(kube, docs)
    wait_ready(kube, ns)
    stored = fleet(kube, ns)["status"]

    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all(docs))
    local = subprocess.run(
        [
            str(Path(sys.executable).parent / "vmfleet"),
            "apply",
            "-f",
            str(tmp_path / "m.yaml"),
            "-o",
            "json",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    written = next(o for o in json.loads(local.stdout) if o["kind"] == "VmFleet")["status"]
    assert set(written) <= set(stored), f"pruned by the apiserver: {set(written) - set(stored)}"
    assert set(stored["clones"][0]) == {
        *("name", "ordinal", "host", "file", "state", "logicalBytes", "allocatedBytes"),
        *("uuid", "mac", "addresses", "revision"),
    }
    wait_for(
        lambda: kube.get("vmtemplate", "tiny", "-n", ns)["status"].get("parent", {}).get("clones") == 2,
        30,
        "the template to count its clones",
    )
    assert kube.get("vmtemplate", "tiny", "-n", ns)["status"]["parent"]["path"].startswith("vmfleet/parents/")

    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=60s")
    assert len(list(root.rglob("web-*.qcow2"))) == 2, "deletionPolicy Retain must keep the clones"


def test_a_ready_fleet_is_not_rewritten_at_each_resync_and_a_scale_still_shows_at_once(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns, name, _ = ready_fleet(kube, "q", unique, tmp_path, small_image)

    def versions() -> dict[str, str]:
        got = [fleet(kube, ns), kube.get("vmtemplates", "tiny", "-n", ns), kube.get("clonestores", name)]
        return {o["kind"]: o["metadata"]["resourceVersion"] for o in got}

    def passes() -> float:
        return operator.metrics()[("vmfleet_reconcile_seconds_count", frozenset({("kind", "VmFleet")}))]

    time.sleep(2 * operator.resync)  # the pass after the one that converged says it planned nothing: one write
    before, passes_before = versions(), passes()
    time.sleep(4 * operator.resync)
    assert passes() >= passes_before + 3, "the operator did not resync meanwhile"
    assert versions() == before, "an unchanged fleet, its template or its store was written at a resync"

    kube.kubectl("scale", "vmfleet/web", "-n", ns, "--replicas=3")
    kube.kubectl("wait", "--for=jsonpath={.status.readyReplicas}=3", "vmfleet/web", "-n", ns, "--timeout=30s")
    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=60s")


@pytest.mark.hosts
def test_a_cordoned_host_says_so_in_kubectl_get_kvh_and_gets_no_new_vm(
    kube: Cluster, operator: OperatorProcess, libvirtd: str, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns, name = f"c-{unique}", f"c-{unique}"
    kube.kubectl("create", "namespace", ns)
    apply(kube, objects(store_root(tmp_path, small_image), ns, libvirtd, 1, name))
    wait_ready(kube, ns)
    kube.kubectl("patch", "kvh", name, "--type", "merge", "-p", '{"spec":{"unschedulable":true}}')
    kube.kubectl("wait", "--for=condition=Schedulable=false", f"kvh/{name}", "--timeout=60s")
    table = kube.kubectl("get", "kvh", name).stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "URI", "READY", "SCHEDULABLE"] and table[1].split()[2:4] == [
        "True",
        "False",
    ]
    kube.kubectl("scale", "vmfleet/web", "-n", ns, "--replicas=2")
    kube.kubectl("wait", "--for=condition=Stalled", "vmfleet/web", "-n", ns, "--timeout=60s")
    stalled = [c for c in fleet(kube, ns)["status"]["conditions"] if c["type"] == "Stalled"]
    assert stalled[0]["reason"] == "HostsCordoned" and name in stalled[0]["message"]
    conn = libvirt.open(libvirtd)
    try:
        assert [d.name() for d in conn.listAllDomains() if d.name().startswith(f"{ns}.")] == [f"{ns}.web-0"]
        assert conn.lookupByName(f"{ns}.web-0").isActive()  # the VM on the cordoned host runs on
    finally:
        conn.close()
    kube.kubectl("patch", "kvh", name, "--type", "merge", "-p", '{"spec":{"unschedulable":false}}')
    kube.kubectl("wait", "--for=jsonpath={.status.readyReplicas}=2", "vmfleet/web", "-n", ns, "--timeout=90s")
    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=90s")


def test_a_template_with_live_clones_keeps_its_parent(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns = f"t-{unique}"
    kube.kubectl("create", "namespace", ns)
    root = store_root(tmp_path, small_image)
    apply(kube, objects(root, ns, "test:///default", 1, f"t-{unique}"))
    wait_ready(kube, ns)
    kube.kubectl("delete", "vmtemplate/tiny", "-n", ns, "--wait=false")
    wait_for(
        lambda: "ParentInUse" in {e["reason"] for e in kube.get("events", "-n", ns)["items"]},
        30,
        "the template to refuse deletion",
    )
    assert list(root.glob("vmfleet/parents/*.img")), "the parent went while a clone refers to it"
    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=60s")
    kube.kubectl("wait", "--for=delete", "vmtemplate/tiny", "-n", ns, "--timeout=90s")
    assert not list(root.glob("vmfleet/parents/*.img"))


def test_a_template_moved_to_a_patched_image_deletes_its_old_parent_once_no_clone_uses_it(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    """Issue 16 through kopf: the fleets' statuses reach the template's pass through the operator's indices."""
    ns = f"r-{unique}"
    kube.kubectl("create", "namespace", ns)
    root = store_root(tmp_path, small_image)
    shutil.copyfile(root / "images" / "t.img", root / "images" / "t-patched.img")
    apply(kube, objects(root, ns, "test:///default", 1, f"r-{unique}"))
    wait_ready(kube, ns)
    template = lambda: kube.get("vmtemplate", "tiny", "-n", ns).get("status", {})
    wait_for(lambda: template().get("parent", {}).get("clones") == 1, 30, "the template to count its clone")
    old = template()["parent"]["path"]
    patch = '{"spec":{"image":{"path":"images/t-patched.img"}}}'
    kube.kubectl("patch", "vmtemplate/tiny", "-n", ns, "--type=merge", "-p", patch)
    wait_for(
        lambda: [(e["path"], e.get("clones")) for e in template().get("retiredParents", [])] == [(old, 1)],
        30,
        "the old parent to be listed with the clone that still uses it",
    )
    assert (root / old).exists() and template()["parent"]["path"] != old
    kube.kubectl("scale", "vmfleet/web", "-n", ns, "--replicas=0")
    wait_for(lambda: template().get("retiredParents") == [], 60, "the old parent to go")
    assert not (root / old).exists() and (root / template()["parent"]["path"]).exists()
    said = {e["reason"] for e in kube.get("events", "-n", ns)["items"] if e["involvedObject"]["kind"] == "VmTemplate"}
    assert {"ParentRetired", "ParentDeleted"} <= said
    kube.kubectl("delete", "vmfleet/web", "vmtemplate/tiny", "-n", ns, "--timeout=60s")
    assert not list(root.glob("vmfleet/parents/*.img"))


def test_a_reimage_asked_through_the_cluster_is_done_once_and_its_annotation_goes(
    kube: Cluster, operator: OperatorProcess, libvirtd: str, tmp_path: Path, small_image: Path, unique: str
) -> None:
    """`vmfleet reimage web 1` sets the annotation on the VmFleet; the operator gives web-1 a new clone of the
    parent (what its guest wrote is gone, web-0's stays), says so as an Event, and removes the annotation."""
    ns = f"ri-{unique}"
    kube.kubectl("create", "namespace", ns)
    root = store_root(tmp_path, small_image)
    docs = objects(root, ns, libvirtd, 2, f"s-{unique}")
    docs[-1]["spec"]["running"] = False  # so that the test may write into the disks, as their guests would
    apply(kube, docs)
    wait_ready(kube, ns)
    clones = {p.name: p for p in root.rglob("web-*.qcow2")}
    for clone in clones.values():
        subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 64k", str(clone)], check=True, capture_output=True)
    asked = subprocess.run(
        [str(Path(sys.executable).parent / "vmfleet"), "reimage", "web", "1", "-n", ns],
        capture_output=True,
        text=True,
        env=kube.env(),
    )
    assert asked.returncode == 0, asked.stderr
    assert "vmfleet.io/reimage" in asked.stdout
    wait_for(
        lambda: "vmfleet.io/reimage" not in (fleet(kube, ns)["metadata"].get("annotations") or {}),
        90,
        "the operator to reimage web-1 and remove the annotation",
    )
    wait_ready(kube, ns)
    kept = {
        name: "Pattern verification failed"
        not in subprocess.run(["qemu-io", "-c", "read -P 0x5a 1M 64k", str(p)], capture_output=True, text=True).stdout
        for name, p in clones.items()
    }
    assert kept == {"web-0.qcow2": True, "web-1.qcow2": False}
    said = [e for e in kube.get("events", "-n", ns)["items"] if e["reason"] == "Reimaged"]
    assert [e["message"] for e in said] == ["reimaged 1 VM(s): web-1"]
    missing = subprocess.run(
        [str(Path(sys.executable).parent / "vmfleet"), "reimage", "nope", "0", "-n", ns],
        capture_output=True,
        text=True,
        env=kube.env(),
    )
    assert missing.returncode == 1 and "VmFleet" in missing.stderr and "not found" in missing.stderr
    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=90s")


def test_a_fleet_applied_before_its_template_waits_then_converges(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns = f"o-{unique}"
    kube.kubectl("create", "namespace", ns)
    docs = objects(store_root(tmp_path, small_image), ns, "test:///default", 2, f"o-{unique}")
    apply(kube, docs[3:])
    wait_for(
        lambda: any(
            c["type"] == "Reconciling" and c["reason"] == "TemplateNotFound"
            for c in fleet(kube, ns).get("status", {}).get("conditions", [])
        ),
        30,
        "the fleet to say its template is missing",
    )
    apply(kube, docs[:3])
    wait_ready(kube, ns)
    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=60s")


def test_a_store_and_a_host_in_use_are_not_deleted_from_under_the_fleet(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns, name, root = ready_fleet(kube, "d", unique, tmp_path, small_image)
    kube.kubectl("delete", f"clonestore/{name}", f"kvmhost/{name}", "--wait=false")
    reasons = lambda: {e["reason"] for e in kube.get("events", "-A")["items"] if e["involvedObject"]["name"] == name}
    wait_for(lambda: {"StoreInUse", "HostInUse"} <= reasons(), 30, "the store and the host to refuse deletion")
    assert kube.get("clonestore", name)["metadata"]["deletionTimestamp"]
    wait_ready(kube, ns)  # the fleet still converges with both going away
    assert len(list(root.rglob("web-*.qcow2"))) == 2
    kube.kubectl("delete", "vmfleet/web", "vmtemplate/tiny", "-n", ns, "--timeout=60s")
    kube.kubectl("wait", "--for=delete", f"clonestore/{name}", f"kvmhost/{name}", "--timeout=60s")
    assert not list(root.rglob("web-*.qcow2"))


def test_vmfleet_status_reads_fleets_from_the_cluster(
    kube: Cluster, operator: OperatorProcess, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns = f"v-{unique}"
    kube.kubectl("create", "namespace", ns)
    apply(kube, objects(store_root(tmp_path, small_image), ns, "test:///default", 2, f"v-{unique}"))
    wait_ready(kube, ns)
    vmfleet = lambda *args: subprocess.run(
        [str(Path(sys.executable).parent / "vmfleet"), "status", *args],
        capture_output=True,
        text=True,
        env=kube.env(),
        timeout=60,
    )
    listed = vmfleet("-n", ns)
    assert listed.returncode == 0, listed.stderr
    _, row = listed.stdout.splitlines()
    assert row.split()[:4] == [ns, "web", "2/2", "2"] and row.endswith("AllReplicasReady")
    one = vmfleet("web", "-n", ns).stdout.splitlines()
    assert one[0].startswith(f"VmFleet {ns}/web: 2/2 ready") and [r.split()[0] for r in one[2:4]] == ["web-0", "web-1"]
    assert one[4].startswith(f"clones in vmfleet/clones/{ns}/web/")
    assert [ns, "web", "2/2"] in [line.split()[:3] for line in vmfleet("-A").stdout.splitlines()]
    missing = vmfleet("nope", "-n", ns)
    assert missing.returncode == 1 and f"`vmfleet status -n {ns}` lists the fleets there" in missing.stderr
    # The store and the host report too, in kubectl's READY column.
    for kind in ("clonestore", "kvmhost"):
        table = lambda: kube.kubectl("get", kind, f"v-{unique}").stdout.splitlines()
        wait_for(
            lambda: dict(zip(*(line.split() for line in table()), strict=False)).get("READY") == "True",
            30,
            f"the {kind} to be Ready",
        )
    assert kube.get("kvmhost", f"v-{unique}")["status"]["domains"] >= 1
    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=60s")


def _fields(schema: dict, path: str) -> Iterator[tuple[str, str]]:
    for name, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", sub.get("description", "")
        yield from _fields(sub.get("items", sub), f"{path}.{name}")


@pytest.mark.parametrize("kind", ["VmFleet", "VmTemplate", "CloneStore", "KvmHost"])
def test_kubectl_explain_describes_every_field(kube: Cluster, kind: str) -> None:
    from vmfleet.api.crd import root_schema
    from vmfleet.api.schema import KINDS

    k = KINDS[kind]
    fields = list(_fields(root_schema(k)["properties"]["spec"], f"{k.plural}.spec"))
    assert len(fields) >= 10
    for path, description in fields:
        shown = " ".join(kube.kubectl("explain", path).stdout.split())
        assert description and " ".join(description.split())[:60] in shown, (path, shown)


def test_the_operator_nfs_example_mounts_the_export_and_is_accepted(kube: Cluster) -> None:
    overlay = str(REPO / "examples" / "operator-nfs")
    built = list(yaml.safe_load_all(kube.kubectl("kustomize", overlay).stdout))
    deployment = next(d for d in built if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "sonas-frank", "nfs": {"server": "sonas.example.com", "path": "/ibm/frank"}} in pod["volumes"]
    assert {"name": "sonas-frank", "mountPath": "/mnt/sonas/frank"} in pod["containers"][0]["volumeMounts"]
    assert pod["containers"][0]["image"] == "registry.example.com/platform/vmfleet:0.1.0"
    kube.kubectl("apply", "--dry-run=server", "-k", overlay)


def test_the_examples_are_accepted_by_the_apiserver(kube: Cluster) -> None:
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        if path.name != "kustomization.yaml":  # a kustomization is applied whole, above
            kube.kubectl("apply", "--dry-run=server", "-f", str(path))


def _invalid_corpus() -> list[tuple[str, dict, str]]:
    from test_api import BAD, _with

    cases = [(f"{path}={value!r}", _with(doc, path, value), field) for doc, path, value, field, _ in BAD]
    fleet = BAD[0][0]
    more = [
        (
            "spec.templateRef.name too long",
            _with(fleet, "spec.templateRef", {"name": "a" * 64}),
            "spec.templateRef.name",
        ),
        (
            "spec.overrides[0].ordinal out of range",
            _with(fleet, "spec.overrides", [{"ordinal": 10000}]),
            "spec.overrides[0].ordinal",
        ),
        (
            "spec.overrides[0].vcpus zero",
            _with(fleet, "spec.overrides", [{"ordinal": 0, "vcpus": 0}]),
            "spec.overrides[0].vcpus",
        ),
        ("spec.running not a boolean", _with(fleet, "spec.running", "yes"), "spec.running"),
        (
            "spec.hostSelector.matchLabels not a map",
            _with(fleet, "spec.hostSelector", {"matchLabels": ["a"]}),
            "spec.hostSelector.matchLabels",
        ),
        ("spec missing", _with(fleet, "spec", None), "spec"),
    ]
    template = next(b[0] for b in BAD if b[0]["kind"] == "VmTemplate")
    store = next(b[0] for b in BAD if b[0]["kind"] == "CloneStore")
    host = next(b[0] for b in BAD if b[0]["kind"] == "KvmHost")
    more += [
        ("spec.vcpus 0", _with(template, "spec.vcpus", 0), "spec.vcpus"),
        ("spec.firmware", _with(template, "spec.firmware", "coreboot"), "spec.firmware"),
        ("spec.machineType", _with(template, "spec.machineType", "q35; reboot"), "spec.machineType"),
        ("spec.network", _with(template, "spec.network", "br0 && ls"), "spec.network"),
        ("spec.concurrency 0", _with(store, "spec.concurrency", 0), "spec.concurrency"),
        ("spec.maxCloneDepth", _with(store, "spec.maxCloneDepth", 1000), "spec.maxCloneDepth"),
        ("spec.ssh.port", _with(store, "spec.ssh", {**store["spec"]["ssh"], "port": 70000}), "spec.ssh.port"),
        ("spec.capacity.vcpus", _with(host, "spec.capacity", {"vcpus": 0, "memoryMiB": 1024}), "spec.capacity.vcpus"),
        (
            "spec.storeMounts[0].path",
            _with(host, "spec.storeMounts", [{"store": "a", "path": "rel"}]),
            "spec.storeMounts[0].path",
        ),
    ]
    return cases + more


INVALID = _invalid_corpus()


def test_the_invalid_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 30


@pytest.mark.parametrize("name,doc,field", INVALID, ids=[c[0][:50] for c in INVALID])
def test_the_apiserver_rejects_invalid_manifests_naming_the_field(
    kube: Cluster, name: str, doc: dict, field: str
) -> None:
    doc = json.loads(json.dumps(doc))
    if doc.get("spec") is None:
        doc.pop("spec", None)
    if doc["kind"] in ("VmFleet", "VmTemplate"):
        doc["metadata"]["namespace"] = "default"
    done = kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc), check=False)
    assert done.returncode != 0, f"{name} was accepted"
    assert field in done.stderr, done.stderr


@pytest.fixture
def sonas_simulator(xfs: Path, unique: str, small_image: Path) -> Iterator[tuple[object, Path, str]]:
    """The SONAS simulator serving from its own thread and event loop, as a separate machine would."""
    import asyncio
    import threading

    import asyncssh

    from vmfleet.sim import server as sim

    directory = xfs / f"kube-sonas-{unique}"
    (directory / "frank" / "images").mkdir(parents=True)
    shutil.copyfile(small_image, directory / "frank" / "images" / "t.img")
    client = asyncssh.generate_private_key("ssh-ed25519")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        sim.start(str(directory), "/ibm/gpfs0", "sonas", client.export_public_key().decode()), loop
    ).result(10)
    yield server, directory, client.export_private_key().decode()
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.mark.gitops  # also scrapes the SSH metrics
def test_a_sonas_fleet_through_the_operator_with_its_key_in_a_secret(
    kube: Cluster, operator: OperatorProcess, sonas_simulator: tuple, unique: str
) -> None:
    server, directory, private_key = sonas_simulator
    ns = f"n-{unique}"
    kube.kubectl("create", "namespace", ns)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/ssh-auth",
        "metadata": {"name": f"sonas-{unique}", "namespace": "vmfleet-system"},
        "stringData": {"ssh-privatekey": private_key, "known_hosts": server.known_hosts},
    }
    docs = objects(directory, ns, "test:///default", 3, f"n-{unique}")
    docs[0]["spec"] = {
        "driver": "sonas",
        "root": "/ibm/gpfs0/frank",
        "localPath": str(directory / "frank"),
        "ssh": {
            "host": "127.0.0.1",
            "port": server.port,
            "user": "admin",
            "secretRef": {"name": f"sonas-{unique}", "namespace": "vmfleet-system"},
        },
    }
    apply(kube, [secret, *docs])
    wait_ready(kube, ns)
    status = fleet(kube, ns)["status"]
    assert [c["allocatedBytes"] for c in status["clones"]] == [0, 0, 0]
    assert server.count("mkclone -s") == 3, server.commands  # one connection for many clones: test_sonas.py
    scraped = operator.metrics()
    target = f"admin@127.0.0.1:{server.port}"
    assert (
        scraped[("vmfleet_ssh_command_seconds_count", frozenset({("target", target), ("command", "mkclone")}))]
        == server.count("mkclone")
        > 0
    )
    assert scraped[("vmfleet_fleet_clones", frozenset({("namespace", ns), ("fleet", "web")}))] == 3
    seen = json.dumps(status) + json.dumps(kube.get("events", "-n", ns)) + operator.output()
    assert private_key.splitlines()[1][:40] not in seen, "the private key leaked"
    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=60s")
    assert not list((directory / "frank").rglob("web-*.img"))


@pytest.mark.identity
def test_user_data_secrets_are_read_only_where_a_rolebinding_grants_it(
    kube: Cluster, operator: OperatorProcess, libvirtd: str, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns = f"u-{unique}"
    account = "--as=system:serviceaccount:vmfleet-system:vmfleet-operator"
    kube.kubectl("create", "namespace", ns)
    planted = f"planted-{unique}"
    kube.kubectl(
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        "web-user-data",
        "--type=vmfleet.io/user-data",
        f"--from-literal=userdata=#cloud-config {planted}",
    )
    root = store_root(tmp_path, small_image)
    docs = objects(root, ns, libvirtd, 2, f"u-{unique}")
    docs[3]["spec"]["cloudInit"] = {"userDataSecretRef": {"name": "web-user-data"}}
    apply(kube, docs)
    # As the operator's ServiceAccount, deploy/ grants no Secret outside vmfleet-system.
    assert kube.kubectl("auth", "can-i", "get", "secrets", "-n", ns, account, check=False).stdout.strip() == "no"
    kube.kubectl("wait", "--for=condition=Stalled", "vmfleet/web", "-n", ns, "--timeout=60s")
    stalled = next(c for c in fleet(kube, ns)["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "UserDataUnreadable", stalled
    assert f"Secret {ns}/web-user-data (spec.cloudInit.userDataSecretRef)" in stalled["message"]
    assert "403" in stalled["message"]
    assert not list(root.rglob("web-*.qcow2")), "nothing is made before the user data can be read"

    # The command the condition names is the grant: run it as it is written there.
    command = re.search(r"kubectl (-n \S+ create rolebinding .*)$", stalled["message"])
    assert command, stalled["message"]
    kube.kubectl(*command.group(1).split())
    assert kube.kubectl("auth", "can-i", "get", "secrets", "-n", ns, account).stdout.strip() == "yes"
    assert kube.kubectl("auth", "can-i", "list", "secrets", "-n", ns, account, check=False).stdout.strip() == "no"
    assert kube.kubectl("auth", "can-i", "get", "secrets", "-n", "default", account, check=False).stdout.strip() == "no"
    wait_ready(kube, ns)
    status = fleet(kube, ns)["status"]
    seeds = sorted(root.rglob("web-*.cidata-*.iso"))
    assert [p.name.split(".")[0] for p in seeds] == ["web-0", "web-1"]
    assert all(read_files(p.read_bytes())["user-data"] == f"#cloud-config {planted}".encode() for p in seeds)
    assert {c["uuid"] for c in status["clones"]} == {
        read_files(p.read_bytes())["meta-data"].decode().split("instance-id: ")[1].split()[0] for p in seeds
    }
    seen = json.dumps(status) + json.dumps(kube.get("events", "-n", ns)) + operator.output()
    assert planted not in seen, "the user data leaked"
    kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=60s")
    assert not list(root.rglob("web-*.iso")), "the seeds go with the VMs"


def test_the_operator_never_lacked_a_permission_or_crashed(operator: OperatorProcess) -> None:
    """Runs last: a verb missing from deploy/rbac.yaml shows up as a 403 in the operator's log."""
    log = operator.output()
    # 403 as a word of the message: not "port 40391", not the milliseconds of "[... 12:32:54,403]"
    messages = [re.sub(r"^\[[^]]*\]", "", line) for line in log.splitlines()]
    # The denial test_user_data_secrets_are_read_only_where_a_rolebinding_grants_it asks for and asserts.
    messages = [m for m in messages if "spec.cloudInit.userDataSecretRef" not in m]
    denied = [m for m in messages if "Forbidden" in m or re.search(r"\b403\b", m)]
    assert not denied, denied[:3]
    assert "Traceback" not in log, log[-5000:]
