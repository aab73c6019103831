"""Crash anywhere, faults everywhere: vmfleet converges, loses no disk and leaves no orphan."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import yaml

from cluster import Cluster
from conftest import TIMINGS
from helpers import DirectoryWatch, LifecycleEvents, open_up, wait_for
from operator_process import OperatorProcess
from simulator import MOUNT, fleet, host, template
from test_sonas import MakeEnv, make_env  # noqa: F401 - the simulator fixture
from vmfleet.engine import reconcile_fleet
from vmfleet.hypervisor import parse_owner
from vmfleet.hypervisor.domain import METADATA_NS
from vmfleet.images import make_template_image
from vmfleet.planner import Op

pytestmark = pytest.mark.reliability

TRIALS = 20
VMS = 50
STOPPED, STARTED = libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STARTED


async def test_faults_are_reported_and_the_fleet_converges_once_they_stop(make_env: MakeEnv) -> None:
    """10 % of storage commands failing, a connection dropped mid-command, a command hanging past its timeout."""
    env = await make_env("gpfs", fail_fraction=0.10, drop={9, 30}, hang={15}, seed=7)
    store = env.store(timeout=1)
    status: dict | None = None
    failures = warnings = 0
    for _ in range(4):
        result = await reconcile_fleet(env.runtime, fleet(20), template(), store, [host()], status)
        failed = [o for o in result.outcomes if not o.ok]
        unavailable = [e for e in result.events if e.reason == "StoreUnavailable"]  # observing or recording failed
        failures += len(failed) + len(unavailable)
        warnings += sum(
            1 for e in result.events if e.type == "Warning" and e.reason.endswith(("Failed", "Unavailable"))
        )
        if failed or unavailable:
            degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
            assert degraded["status"] == "True" and degraded["reason"].endswith(("Failed", "Unavailable"))
        assert all(o.action.op is not Op.DELETE_CLONE for o in result.outcomes), "a clone with VM data was deleted"
        status = result.status if "clones" in result.status else status
    assert failures > 0 and warnings == failures, "every failed action is an Event with its reason"
    TIMINGS[f"reliability: {failures} storage faults over 4 passes, each an Event"] = 0.0
    env.sim.faults.fail_fraction, env.sim.faults.drop, env.sim.faults.hang = 0.0, set(), set()
    done = await reconcile_fleet(env.runtime, fleet(20), template(), store, [host()], status)
    assert done.status["readyReplicas"] == 20, done.status["conditions"]
    files = sorted(p.name for p in (env.directory / "frank").rglob("web-*"))
    assert files == sorted(f"web-{i}.img" for i in range(20))
    # Only a write's own partial file may go (a fault between its dd and its mv); never a clone or a record.
    removed = [c for c in env.sim.commands if c.startswith("rm ") and not c.rstrip("'").endswith(".partial")]
    assert not removed, f"nothing was deleted to converge: {removed}"


@pytest.fixture(scope="module")
def sa_kubeconfig(kube: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kube.service_account_kubeconfig(
        "vmfleet-system", "vmfleet-operator", tmp_path_factory.mktemp("crash") / "sa.kubeconfig"
    )


def _ours(conn: libvirt.virConnect, ns: str) -> dict[str, object]:
    out = {}
    for d in conn.listAllDomains():
        if d.name().startswith(f"{ns}."):
            out[d.name()] = parse_owner(d.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS))
    return out


@pytest.fixture
def crash_site(xfs: Path, small_image: Path, unique: str) -> Iterator[Path]:
    root = xfs / f"crash-{unique}"
    (root / "images").mkdir(parents=True)
    shutil.copyfile(small_image, root / "images" / "t.img")
    open_up(root)
    yield root


def test_sigkill_anywhere_while_provisioning_converges_without_orphans_or_remakes(
    kube: Cluster, sa_kubeconfig: Path, libvirtd: str, crash_site: Path, tmp_path: Path, unique: str
) -> None:
    rng = random.Random(20261129)
    conn = libvirt.open(libvirtd)
    landed_mid_way = 0
    points = []
    t0 = time.monotonic()
    try:
        for trial in range(TRIALS):
            ns = f"c{trial}-{unique}"
            kube.kubectl("create", "namespace", ns)
            docs = _crash_docs(ns, libvirtd, crash_site, VMS, running=False)
            operator = OperatorProcess(sa_kubeconfig, tmp_path / f"operator-{trial}.log", resync_seconds=2)
            operator.start()
            clones = crash_site / "vmfleet" / "clones" / ns / "web"  # then the fleet's UID, then its clones
            # The crash point: once k clones exist, or once k domains are defined (k seeded, 0..VMS-1).
            stage, k = rng.choice(["clones", "domains"]), rng.randrange(VMS)
            progress = {
                "clones": lambda: len(list(clones.glob("*/web-*"))) if clones.exists() else 0,
                "domains": lambda: len(_ours(conn, ns)),
            }[stage]
            kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
            deadline = time.monotonic() + 60
            while progress() < k and time.monotonic() < deadline:
                time.sleep(0.002)
            operator.kill()
            at_kill = {p.name: p.stat().st_ino for p in clones.glob("*/web-*.img")} if clones.exists() else {}
            domains_at_kill = len(_ours(conn, ns))
            landed_mid_way += 0 < len(at_kill) < VMS or 0 < domains_at_kill < VMS
            points.append((len(at_kill), domains_at_kill))

            operator.start()
            kube.kubectl("wait", "--for=condition=Ready", "vmfleet/web", "-n", ns, "--timeout=120s", timeout=150)
            (made,) = clones.iterdir()  # one fleet, one directory: its UID
            names = {p.name: p.stat().st_ino for p in made.iterdir() if p.name != "fleet.json"}
            assert sorted(names) == sorted(f"web-{i}.img" for i in range(VMS)), f"trial {trial}: {sorted(names)}"
            assert {n: names[n] for n in at_kill} == at_kill, f"trial {trial}: a clone was remade"
            domains = _ours(conn, ns)
            assert sorted(domains) == sorted(f"{ns}.web-{i}" for i in range(VMS)), f"trial {trial}"
            assert all(o is not None and o.clone.endswith(f"web-{o.ordinal}.img") for o in domains.values())
            status = json.loads(kube.kubectl("get", "vmfleets", "web", "-n", ns, "-o", "json").stdout)["status"]
            assert status["replicas"] == status["readyReplicas"] == VMS

            kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=120s", timeout=150)
            kube.kubectl("delete", "vmtemplate/t", "-n", ns, "--timeout=60s")
            kube.kubectl("delete", f"clonestore/{ns}", f"kvmhost/{ns}", "--timeout=60s")
            operator.stop()
            assert "Traceback" not in operator.output(), operator.output()[-3000:]
            assert (not _ours(conn, ns) and not clones.exists()) or not list(clones.iterdir())
    finally:
        conn.close()
    TIMINGS[f"reliability: {TRIALS} SIGKILL trials of a {VMS}-VM fleet, (clones, domains) at each kill {points}"] = (
        time.monotonic() - t0
    )
    assert landed_mid_way >= TRIALS // 2, f"only {landed_mid_way} kills landed mid-provisioning: {points}"


def _crash_docs(ns: str, libvirtd: str, crash_site: Path, replicas: int, running: bool) -> list[dict]:
    """A reflink store on XFS, the real libvirtd as a KvmHost, a template and a fleet, all named for `ns`."""
    return [
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "CloneStore",
            "metadata": {"name": ns},
            "spec": {"driver": "reflink", "root": str(crash_site), "concurrency": 8},
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "KvmHost",
            "metadata": {"name": ns, "labels": {"c": ns}},
            "spec": {"uri": libvirtd, "domainType": "qemu", "capacity": {"vcpus": 1024, "memoryMiB": 1 << 20}},
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmTemplate",
            "metadata": {"name": "t", "namespace": ns},
            "spec": {"storeRef": {"name": ns}, "image": {"path": "images/t.img"}, "memoryMiB": 16},
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmFleet",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "templateRef": {"name": "t"},
                "replicas": replicas,
                "running": running,
                "hostSelector": {"matchLabels": {"c": ns}},
            },
        },
    ]


def test_no_secret_reaches_logs_events_status_or_errors(tmp_path: Path, small_image: Path) -> None:
    """Standalone: a Secret in the manifests, a store that fails to use it; the key appears nowhere."""
    from test_cli import apply

    planted = "-----BEGIN OPENSSH PRIVATE KEY-----\nVMFLEET-PLANTED-SECRET-4f1c9\n-----END OPENSSH PRIVATE KEY-----\n"
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "ssh", "namespace": "vmfleet-system"},
            "stringData": {"ssh-privatekey": planted, "known_hosts": "[127.0.0.1]:1 ssh-ed25519 AAAAVMFLEETKNOWN"},
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "CloneStore",
            "metadata": {"name": "s"},
            "spec": {
                "driver": "gpfs",
                "root": f"{MOUNT}/x",
                "ssh": {
                    "host": "127.0.0.1",
                    "port": 1,
                    "user": "u",
                    "secretRef": {"name": "ssh", "namespace": "vmfleet-system"},
                },
            },
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "KvmHost",
            "metadata": {"name": "h"},
            "spec": {"uri": "test:///default"},
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmTemplate",
            "metadata": {"name": "t"},
            "spec": {"storeRef": {"name": "s"}, "image": {"path": "i.img"}},
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmFleet",
            "metadata": {"name": "f"},
            "spec": {"templateRef": {"name": "t"}, "replicas": 1},
        },
    ]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all(docs))
    seen = ""
    for fmt in ("json", "yaml", "table"):
        done = apply("-f", str(tmp_path / "m.yaml"), "-o", fmt)
        seen += done.stdout + done.stderr
        if fmt == "json":
            store = next(o for o in json.loads(done.stdout) if o["kind"] == "CloneStore")
            ready = store["status"]["conditions"][0]
            assert (ready["status"], ready["reason"]) == ("False", "Unreachable")
            assert not any(o["kind"] == "Secret" for o in json.loads(done.stdout))
    assert "StoreUnavailable" in seen or "unusable" in seen  # it did try, and failed
    for needle in ("VMFLEET-PLANTED-SECRET", "PRIVATE KEY", "AAAAVMFLEETKNOWN"):
        assert needle not in seen, f"{needle} leaked"


ROLLOUT_TRIALS = 5
ROLLOUT_VMS = 8


@pytest.mark.rollout
def test_sigkill_anywhere_in_a_rolling_reimage_converges_exactly_once_within_max_unavailable(
    kube: Cluster, sa_kubeconfig: Path, libvirtd: str, crash_site: Path, tmp_path: Path, unique: str
) -> None:
    """A running fleet's template moves to a new image (and more memory), maxUnavailable 2; the operator is
    SIGKILLed after a random number of VMs went down. It converges: every VM on the new image (its boot sector
    says so, and what the guest wrote is gone), each clone made exactly once (inotify on the clone directory),
    same domain UUIDs, and the domains' lifecycle events never show more than 2 down at once, crash included."""
    rng = random.Random(20261201)
    kills = rng.sample(range(1, ROLLOUT_VMS), ROLLOUT_TRIALS)  # after how many VMs went down, or clones were made
    make_template_image(str(crash_site / "images" / "u.img"), 64 << 20, 8 << 20, marker="VMFLEET-BOOT-U")
    events = LifecycleEvents(libvirtd)
    conn = libvirt.open(libvirtd)
    points = []
    t0 = time.monotonic()
    try:
        for trial in range(ROLLOUT_TRIALS):
            ns = f"r{trial}-{unique}"
            names = [f"{ns}.web-{i}" for i in range(ROLLOUT_VMS)]
            kube.kubectl("create", "namespace", ns)
            docs = _crash_docs(ns, libvirtd, crash_site, ROLLOUT_VMS, running=True)
            docs[-1]["spec"].update(
                shutdown={"gracePeriodSeconds": 0},  # the boot-sector guest ignores the ACPI button
                updateStrategy={"rollingUpdate": {"maxUnavailable": 2}},
            )
            operator = OperatorProcess(sa_kubeconfig, tmp_path / f"rollout-{trial}.log", resync_seconds=2)
            operator.start()
            kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
            waited = kube.kubectl(
                "wait", "--for=condition=Ready", "vmfleet/web", "-n", ns, "--timeout=120s", timeout=150, check=False
            )
            if waited.returncode:
                raise AssertionError(f"trial {trial}: not ready: {_what_happened(kube, ns, operator)}")
            (directory,) = (crash_site / "vmfleet" / "clones" / ns / "web").iterdir()
            for i in range(ROLLOUT_VMS):  # what each guest wrote
                with open(directory / f"web-{i}.img", "r+b") as disk:
                    disk.seek(32 << 20)
                    disk.write(b"GUEST-DATA")
            uuids = {n: conn.lookupByName(n).UUIDString() for n in names}
            revision = json.loads(kube.kubectl("get", "vmfleets", "web", "-n", ns, "-o", "json").stdout)["status"][
                "updateRevision"
            ]
            watch = DirectoryWatch(directory)
            since = time.monotonic()
            k, stage = kills[trial], ("stopped", "made")[trial % 2]
            kube.kubectl(
                "patch",
                "vmtemplate/t",
                "-n",
                ns,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"image": {"path": "images/u.img"}, "memoryMiB": 24}}),
            )
            stopped = lambda: sum(1 for n in names for e in events.of(n) if e[0] > since and e[1] == STOPPED)
            made = lambda: sum(watch.made()[f"web-{i}.img"] for i in range(ROLLOUT_VMS))
            progress = stopped if stage == "stopped" else made
            try:
                wait_for(lambda: progress() >= k, 120, f"{k} VMs {stage} by the rollout")
            except AssertionError as e:
                raise AssertionError(f"trial {trial}: {e}: {_what_happened(kube, ns, operator)}") from None
            operator.kill()
            points.append((stage, k, stopped(), made()))
            operator.start()
            try:
                status = wait_for(lambda: _rolled_out(kube, ns, revision), 180, f"trial {trial}: the rollout")
            except AssertionError:
                raise AssertionError(f"trial {trial}: no rollout: {_what_happened(kube, ns, operator)}") from None
            counted = watch.made()
            assert {f"web-{i}.img": counted[f"web-{i}.img"] for i in range(ROLLOUT_VMS)} == {
                f"web-{i}.img": 1 for i in range(ROLLOUT_VMS)
            }, f"trial {trial}: clones made {counted}"
            for i in range(ROLLOUT_VMS):
                data = (directory / f"web-{i}.img").read_bytes()
                assert b"VMFLEET-BOOT-U" in data[:512] and b"GUEST-DATA" not in data, f"trial {trial}: web-{i}"
            assert {n: conn.lookupByName(n).UUIDString() for n in names} == uuids
            assert all(conn.lookupByName(n).info()[1] == 24 << 10 for n in names)
            most = _most_down_at_once(events, names, since)
            timeline = sorted(
                (round(t - since, 2), e, n.split(".")[-1]) for n in names for t, e, _ in events.of(n) if t > since
            )
            assert most <= 2, f"trial {trial}: {most} VMs down at once: {timeline}\n{operator.output()[-6000:]}"
            assert status["updatedReplicas"] == status["readyReplicas"] == ROLLOUT_VMS
            assert status["currentRevision"] == status["updateRevision"] != revision
            watch.close()
            kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=120s", timeout=150)
            kube.kubectl("delete", "vmtemplate/t", "-n", ns, "--timeout=60s")
            kube.kubectl("delete", f"clonestore/{ns}", f"kvmhost/{ns}", "--timeout=60s")
            operator.stop()
            assert "Traceback" not in operator.output(), operator.output()[-3000:]
    finally:
        conn.close()
        events.close()
    TIMINGS[
        f"reliability: {ROLLOUT_TRIALS} SIGKILLs in a rolling reimage of {ROLLOUT_VMS} VMs, "
        f"(stage, k, stopped, clones made) at each kill {points}"
    ] = time.monotonic() - t0


def _what_happened(kube: Cluster, ns: str, operator: OperatorProcess) -> str:
    status = json.loads(kube.kubectl("get", "vmfleets", "web", "-n", ns, "-o", "json").stdout).get("status", {})
    vms = [(c["name"], c.get("state"), c.get("revision")) for c in status.get("clones", [])]
    said = kube.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp").stdout
    return f"{status.get('conditions')}\n{vms}\n{said[-4000:]}\n{operator.output()[-2000:]}"


def _rolled_out(kube: Cluster, ns: str, before: str) -> dict | None:
    """The fleet's status once it is Ready and Updated on a revision other than `before`, else None."""
    status = json.loads(kube.kubectl("get", "vmfleets", "web", "-n", ns, "-o", "json").stdout).get("status", {})
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    done = status.get("updateRevision") not in (None, before) and conditions.get("Updated") == "True"
    return status if done and conditions.get("Ready") == "True" else None


def _most_down_at_once(events: LifecycleEvents, names: list[str], since: float) -> int:
    timeline = sorted((t, e, n) for n in names for t, e, _ in events.of(n) if t > since)
    down: set[str] = set()
    most = 0
    for _, event, name in timeline:
        if event == STOPPED:
            down.add(name)
        elif event == STARTED:
            down.discard(name)
        most = max(most, len(down))
    return most
