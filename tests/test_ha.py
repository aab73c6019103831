"""A highly available operator (issue 17): two replicas of `vmfleet run` on one Lease, against the real
kube-apiserver as deploy/'s ServiceAccount, with real libvirtd domains. One reconciles; when it is SIGKILLed
in the middle of provisioning a fleet, the other finishes the fleet without making anything twice; the
apiserver restarted under them (etcd kept) changes nothing either. The lease is short here (4 s) so that a
take-over is quick; deploy/ keeps the defaults (15 s)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from cluster import Cluster
from conftest import TIMINGS
from helpers import wait_for
from kubefleet import apply, fleet, objects, store_root, wait_ready
from operator_process import OperatorProcess

pytestmark = pytest.mark.ha

LEASE = "vmfleet-system/vmfleet-operator"  # as deploy/deployment.yaml names it
SHORT_LEASE = {
    "VMFLEET_LEASE": LEASE,
    "VMFLEET_LEASE_SECONDS": "4",
    "VMFLEET_LEASE_RENEW_DEADLINE_SECONDS": "3",
    "VMFLEET_LEASE_RETRY_SECONDS": "0.5",
}
LEADING = ("vmfleet_leader", frozenset())
HANDLED = "Handler '"  # what kopf logs of every handler it runs: a replica that reconciles says it


@pytest.fixture
def replicas(kube: Cluster, tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    sa = kube.service_account_kubeconfig("vmfleet-system", "vmfleet-operator", tmp_path / "sa.kubeconfig")
    ops = [OperatorProcess(sa, tmp_path / f"replica-{i}.log", env=SHORT_LEASE) for i in range(2)]
    try:
        for op in ops:
            op.start()
        yield ops
    finally:
        for op in ops:
            op.stop()
        kube.kubectl("delete", "lease", "-n", "vmfleet-system", "vmfleet-operator", "--ignore-not-found")


def holder(kube: Cluster) -> str:
    lease = kube.kubectl("get", "lease", "-n", "vmfleet-system", "vmfleet-operator", "-o", "json", check=False)
    if lease.returncode:
        return ""
    return json.loads(lease.stdout)["spec"].get("holderIdentity") or ""


def renewed(kube: Cluster) -> float:
    """When the Lease was last renewed, in seconds since the epoch (the holder's clock, this machine's)."""
    lease = json.loads(kube.kubectl("get", "lease", "-n", "vmfleet-system", "vmfleet-operator", "-o", "json").stdout)
    return dt.datetime.fromisoformat(lease["spec"]["renewTime"]).timestamp()


def leader(kube: Cluster, ops: list[OperatorProcess]) -> OperatorProcess:
    """The replica that holds the lease: it logged so under the identity the Lease names."""

    def found() -> OperatorProcess | None:
        name = holder(kube)
        held = [op for op in ops if name and f"{name} holds the lease now" in op.output()]
        return held[0] if len(held) == 1 and held[0].proc and held[0].proc.poll() is None else None

    found_op: OperatorProcess = wait_for(found, 30, "one live replica to hold the lease")
    return found_op


def clones(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in root.rglob("web-*.qcow2")}


def domains(conn: libvirt.virConnect, ns: str) -> dict[str, str]:
    return {d.name(): d.UUIDString() for d in conn.listAllDomains() if d.name().startswith(f"{ns}.")}


@dataclass
class Site:
    ns: str
    root: Path
    conn: libvirt.virConnect
    uri: str
    name: str

    def apply(self, kube: Cluster, replicas: int) -> None:
        docs = objects(self.root, self.ns, self.uri, replicas, self.name)
        # One VM at a time: the leader is killed mid-way however fast the machine (all 8 were once made before
        # the kill could land, and the test proved nothing).
        docs[0]["spec"]["concurrency"] = 1
        apply(kube, docs)


@pytest.fixture
def site(kube: Cluster, libvirtd: str, tmp_path: Path, small_image: Path, unique: str) -> Iterator[Site]:
    """A namespace, a store and the machine's libvirtd for one fleet `web`, deleted afterwards."""
    ns = f"ha-{unique}"
    kube.kubectl("create", "namespace", ns)
    conn = libvirt.open(libvirtd)
    try:
        yield Site(ns, store_root(tmp_path, small_image), conn, libvirtd, f"s-{unique}")
        kube.kubectl("delete", "vmfleet/web", "-n", ns, "--timeout=90s")
    finally:
        conn.close()


def test_the_standby_finishes_a_fleet_whose_leader_was_killed_mid_provisioning_making_nothing_twice(
    kube: Cluster, replicas: list[OperatorProcess], site: Site
) -> None:
    ns, root, conn = site.ns, site.root, site.conn
    active = leader(kube, replicas)
    (standby,) = [op for op in replicas if op is not active]
    assert (active.metrics()[LEADING], standby.metrics()[LEADING]) == (1, 0)  # both scraped, one leads
    site.apply(kube, 8)
    wait_for(lambda: clones(root), 60, "the leader to make the first clone")
    active.kill()  # SIGKILL: no goodbye, the lease is not handed back
    killed_at = time.monotonic()
    made, defined = clones(root), domains(conn, ns)
    assert len(made) < 8 or len(defined) < 8, "the fleet was provisioned before the kill: not mid-way"
    assert HANDLED not in standby.output(), "the standby reconciled while the other held the lease"

    wait_ready(kube, ns, timeout=120)
    took = time.monotonic() - killed_at
    TIMINGS["ha: a killed leader's fleet made Ready by the standby (lease 4 s)"] = took
    assert leader(kube, replicas) is standby
    assert HANDLED in standby.output() and standby.metrics()[LEADING] == 1
    status = fleet(kube, ns)["status"]
    assert status["readyReplicas"] == 8
    after = clones(root)
    assert sorted(after) == [f"web-{i}.qcow2" for i in range(8)]
    assert {n: after[n] for n in made} == made  # every clone made before the kill kept: none made twice
    now = domains(conn, ns)
    assert sorted(now) == [f"{ns}.web-{i}" for i in range(8)]  # no orphan, no duplicate
    assert {n: now[n] for n in defined} == defined  # the same domains, not defined again

    # the killed replica back (the kubelet restarts it): it waits, and reconciles nothing, for longer than the
    # lease would take to be taken over had the leader stopped renewing
    before = len(active.output())
    active.start()
    wait_for(lambda: "waits for Lease" in active.output()[before:], 30, "the restarted replica to wait")
    waiting_since = renewed(kube)
    lease_seconds = float(SHORT_LEASE["VMFLEET_LEASE_SECONDS"])
    wait_for(lambda: renewed(kube) - waiting_since > lease_seconds + 1, 30, "the leader to renew past a lease")
    assert leader(kube, replicas) is standby
    assert "holds the lease now" not in active.output()[before:] and HANDLED not in active.output()[before:]


def test_an_apiserver_restarted_under_the_replicas_changes_nothing_and_a_later_scale_is_done_once(
    kube: Cluster, replicas: list[OperatorProcess], site: Site
) -> None:
    ns, root, conn = site.ns, site.root, site.conn
    site.apply(kube, 3)
    wait_ready(kube, ns)
    made, defined = clones(root), domains(conn, ns)
    kube.restart_apiserver()
    # A leader that could not renew for 3 s stopped itself; the kubelet would start it again.
    for op in replicas:
        if op.proc is not None and op.proc.poll() is not None:
            assert op.proc.returncode == 3, op.output()[-2000:]
            op.start()
    leader(kube, replicas)
    kube.kubectl("scale", "vmfleet/web", "-n", ns, "--replicas=5")
    kube.kubectl("wait", "--for=jsonpath={.status.readyReplicas}=5", "vmfleet/web", "-n", ns, "--timeout=120s")
    after, now = clones(root), domains(conn, ns)
    assert sorted(after) == [f"web-{i}.qcow2" for i in range(5)]
    assert {n: after[n] for n in made} == made
    assert sorted(now) == [f"{ns}.web-{i}" for i in range(5)]
    assert {n: now[n] for n in defined} == defined
