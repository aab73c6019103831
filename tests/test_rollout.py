"""Revisions, rolling updates, run strategies, ephemeral VMs and reimage (issue 16), without QEMU: the planner's
rules, then whole passes through the engine on libvirt's test driver and a qcow2 store. The same behaviour with
real guests is proven in test_rollout_guest.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from helpers import quickstart
from vmfleet.api import parse
from vmfleet.engine import Runtime, reconcile_fleet
from vmfleet.hypervisor import LibvirtHost
from vmfleet.planner import HostView, Observation, Update, VmSeen, VmWant, plan_fleet
from vmfleet.planner.model import Plan

pytestmark = pytest.mark.rollout

VMFLEET = str(Path(sys.executable).parent / "vmfleet")

# ------------------------------------------------------------------ the planner


def _vm(o: int, active: bool = True, spec: str = "new", live: str = "new", **kw: Any) -> VmSeen:
    return VmSeen(o, "a", "Running" if active else "Stopped", active, spec, live if active else "", **kw)


def _plan(
    vms: list[VmSeen], n: int | None = None, strategy: str = "", parents: dict[int, str] | None = None, **update: Any
) -> Plan:
    n = len(vms) if n is None else n
    seen = Observation(
        parent_exists=True,
        clones=frozenset(vm.ordinal for vm in vms),
        domains={vm.ordinal: vm for vm in vms},
        hosts={"a": HostView("a", True, vcpus=64, memory_mib=65536)},
        recorded={vm.ordinal: "a" for vm in vms},
        parents=parents or {},
    )
    wants = [VmWant(o, f"web-{o}", 1, 64, strategy not in ("Halted", "Manual"), strategy) for o in range(n)]
    return plan_fleet(wants, seen, "spread", lambda o, h: "new", Update(**update))


def _ops(plan: Plan) -> list[tuple[str, int]]:
    return [(a.op.value, a.ordinal) for a in plan.actions if hasattr(a, "ordinal")]


def test_a_rolling_update_takes_down_at_most_max_unavailable_ready_vms_from_the_highest_ordinal() -> None:
    plan = _plan([_vm(o, live="old") for o in range(6)], budget=2)
    assert _ops(plan) == [("stop", 4), ("start", 4), ("stop", 5), ("start", 5)]
    assert plan.pending == {0, 1, 2, 3, 4, 5} and not plan.updated and not plan.restart_required


def test_a_vm_already_down_costs_the_budget_and_is_updated_without_waiting() -> None:
    # web-1 should run and does not: it is down already, so only 1 more of the ready ones may go.
    vms = [_vm(0, live="old"), _vm(1, active=False, spec="old"), _vm(2, live="old"), _vm(3, live="old")]
    plan = _plan(vms, budget=2)
    assert _ops(plan) == [("define", 1), ("start", 1), ("stop", 3), ("start", 3)]


def test_a_vm_libvirt_is_still_starting_is_down_and_costs_the_budget() -> None:
    # After a crash mid-wave: web-3's start was sent (QEMU is up, paused until libvirt resumes it), web-2 is off.
    # Both are down, so with maxUnavailable 2 no other VM may go (CI saw web-1 stopped too: 3 down at once).
    starting = VmSeen(3, "a", "Paused", True, "new", "new", stop_reason="starting")
    vms = [_vm(0, live="old"), _vm(1, live="old"), _vm(2, active=False), starting]
    plan = _plan(vms, budget=2)
    assert _ops(plan) == [("start", 2)]
    assert plan.ready == {0, 1} and not plan.problems  # it ends by itself: nothing for a person to do


def test_a_vm_a_person_paused_is_down_waits_and_is_named_but_never_destroyed_for_an_update() -> None:
    # `virsh suspend`, or QEMU pausing a guest whose writes failed (a full store): vmfleet does not resume it, so
    # it does not destroy it either (its guest's memory would be lost): the update waits, and says for what.
    paused = [VmSeen(o, "a", "Paused", True, "new", "old", stop_reason=why) for o, why in ((2, "user"), (3, "ioerror"))]
    plan = _plan([_vm(0, live="old"), _vm(1, live="old"), *paused], budget=2)
    assert _ops(plan) == [] and plan.ready == {0, 1}  # two down already: the budget is spent
    assert plan.pending == {0, 1, 2, 3}
    assert [(p.reason, p.subject, p.vm_state) for p in plan.problems] == [
        ("VmPaused", "web-2", "Paused"),
        ("VmPaused", "web-3", "Paused"),
    ]
    assert "paused by a person" in plan.problems[0].message and "I/O error" in plan.problems[1].message
    # ... unless a person asks for its reimage: it is destroyed at once (the power button does nothing to it)
    plan = _plan([_vm(0, live="old"), _vm(1, live="old"), *paused], budget=2, reimage=frozenset({3}))
    assert _ops(plan) == [("stop", 3), ("reimage", 3), ("start", 3)]
    assert [p.subject for p in plan.problems] == ["web-2"] and plan.held == {2}
    # one current and paused: not ready, named, nothing done to it
    plan = _plan([_vm(0), VmSeen(1, "a", "Paused", True, "new", "new", stop_reason="user")])
    assert _ops(plan) == [] and plan.ready == {0} and [p.subject for p in plan.problems] == ["web-1"]


def test_partition_updates_only_ordinals_at_or_above_it_and_leaves_the_rest_as_they_are() -> None:
    vms = [_vm(o, live="old", spec="old") for o in range(6)]
    vms[1] = _vm(1, active=False, spec="old")  # below the partition and off: started on its old definition
    plan = _plan(vms, budget=6, partition=4)
    assert _ops(plan) == [
        ("start", 1),
        ("stop", 4),
        ("define", 4),
        ("start", 4),
        ("stop", 5),
        ("define", 5),
        ("start", 5),
    ]
    assert plan.pending == {4, 5}


def test_on_delete_redefines_and_waits_for_the_vm_to_be_off() -> None:
    plan = _plan([_vm(0, spec="old", live="old"), _vm(1, active=False, spec="old")], rolling=False)
    assert _ops(plan) == [("define", 0), ("define", 1), ("start", 1)]
    assert plan.restart_required == [0]


def test_an_image_change_reimages_with_diskpolicy_reimage_and_keeps_disks_with_keep() -> None:
    parents = {0: "parents/old.img", 1: "parents/old.img"}
    plan = _plan([_vm(0), _vm(1, active=False)], parents=parents, parent="parents/new.img", budget=2)
    assert _ops(plan) == [("stop", 0), ("reimage", 0), ("start", 0), ("reimage", 1), ("start", 1)]
    # with a budget of 1, web-1 (down already) takes it: web-0 waits for the next wave
    plan = _plan([_vm(0), _vm(1, active=False)], parents=parents, parent="parents/new.img", budget=1)
    assert _ops(plan) == [("reimage", 1), ("start", 1)]
    kept = _plan([_vm(0), _vm(1)], parents=parents, parent="parents/new.img", reimage_on_image_change=False)
    assert _ops(kept) == [] and kept.updated == {0, 1}
    unknown = _plan([_vm(0)], parent="parents/new.img")  # a clone whose parent was never recorded: left alone
    assert _ops(unknown) == []


def test_ephemeral_reimages_a_vm_that_ran_and_stopped_but_not_one_never_started() -> None:
    done = _vm(0, active=False, stop_reason="shutdown")
    fresh = _vm(1, active=False, stop_reason="")
    crashed = _vm(2, active=False, stop_reason="crashed")
    plan = _plan([done, fresh, crashed], ephemeral=True)
    assert _ops(plan) == [("reimage", 0), ("start", 0), ("start", 1), ("reimage", 2), ("start", 2)]


def test_rerun_on_failure_restarts_a_crash_not_a_clean_power_off() -> None:
    vms = [_vm(0, active=False, stop_reason="shutdown"), _vm(1, active=False, stop_reason="crashed"), _vm(2)]
    plan = _plan(vms, strategy="RerunOnFailure")
    assert _ops(plan) == [("start", 1)]
    assert plan.ready == {0, 2}  # a guest that finished its job is where the spec wants it


def test_manual_neither_starts_nor_stops_and_a_new_vm_is_only_defined() -> None:
    vms = [_vm(0, active=False, stop_reason="shutdown"), _vm(1, spec="old", live="old")]
    plan = _plan(vms, n=3, strategy="Manual")
    assert _ops(plan) == [("define", 1), ("create-clone", 2), ("define", 2)]
    assert plan.restart_required == [1]


def test_halted_stops_and_then_updates_without_budget() -> None:
    plan = _plan([_vm(0, live="old"), _vm(1, live="old")], strategy="Halted", budget=1)
    assert _ops(plan) == [("stop", 0), ("stop", 1)]


def test_a_requested_reimage_goes_past_partition_and_budget() -> None:
    plan = _plan([_vm(0), _vm(1), _vm(2)], reimage=frozenset({0, 2}), partition=3, budget=1)
    assert _ops(plan) == [("stop", 0), ("reimage", 0), ("start", 0), ("stop", 2), ("reimage", 2), ("start", 2)]


def test_a_reimage_cut_short_makes_the_clone_instead_of_reporting_it_lost() -> None:
    seen = Observation(
        parent_exists=True,
        clones=frozenset(),
        domains={0: _vm(0, active=False)},
        hosts={"a": HostView("a", True, vcpus=8, memory_mib=8192)},
        recorded={0: "a"},
        settling=frozenset({0}),
    )
    plan = plan_fleet([VmWant(0, "web-0", 1, 64, True)], seen, "spread", lambda o, h: "new")
    assert _ops(plan) == [("reimage", 0), ("start", 0)] and not plan.problems
    lost = plan_fleet(
        [VmWant(0, "web-0", 1, 64, True)],
        seen.__class__(**{**seen.__dict__, "settling": frozenset()}),
        "spread",
        lambda o, h: "new",
    )
    assert [p.reason for p in lost.problems] == ["CloneLost"] and not lost.actions


def test_a_running_vm_that_should_be_stopped_is_reimaged_and_left_stopped() -> None:
    """Found by the safety machine in CI: a VM overridden to stop, not yet stopped, and a reimage asked for. It was
    stopped, reimaged and started again ("updated"), so a healthy world's pass left it running and not ready."""
    plan = _plan([_vm(0)], strategy="Halted", reimage=frozenset({0}))
    assert _ops(plan) == [("stop", 0), ("reimage", 0)]
    manual = _plan([_vm(0)], strategy="Manual", reimage=frozenset({0}))
    assert _ops(manual) == [("stop", 0), ("reimage", 0), ("start", 0)]  # a person's VM comes back as it was


def test_a_saved_vm_is_not_reimaged_under_its_saved_memory() -> None:
    plan = _plan([_vm(0, active=False, saved=True)], reimage=frozenset({0}))
    assert ("reimage", 0) not in _ops(plan)


# ------------------------------------------------------------------ whole passes on the test driver


def _doc(kind: str, name: str, spec: dict[str, Any], ns: str | None = "prod", **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, **meta}
    if ns:
        metadata["namespace"] = ns
    return {"apiVersion": "vmfleet.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}


class Site:
    def __init__(self, root: Path, image: Path):
        (root / "images").mkdir(parents=True)
        for name in ("a.img", "b.img"):
            (root / "images" / name).write_bytes(image.read_bytes())
        self.root = root
        self.store = parse(_doc("CloneStore", "local", {"driver": "qcow2", "root": str(root)}, ns=None))
        self.host = parse(
            _doc("KvmHost", "kvm-a", {"uri": "test:///default", "capacity": {"vcpus": 64, "memoryMiB": 65536}}, ns=None)
        )

    def template(self, image: str = "a.img", memory: int = 64, **spec: Any) -> Any:
        return parse(
            _doc(
                "VmTemplate",
                "t",
                {"storeRef": {"name": "local"}, "image": {"path": f"images/{image}"}, "memoryMiB": memory, **spec},
            )
        )

    def fleet(self, annotations: dict[str, str] | None = None, replicas: int = 6, **spec: Any) -> Any:
        meta = {"uid": "u-roll", "annotations": annotations or {}}
        return parse(_doc("VmFleet", "web", {"templateRef": {"name": "t"}, "replicas": replicas, **spec}, **meta))

    def backing(self, status: dict[str, Any]) -> dict[str, str]:
        """Each VM's clone parent, as its qcow2 overlay names it (relative to the store's root)."""
        d = self.root / status["cloneDirectory"]
        out = {}
        for c in status["clones"]:
            info = subprocess.run(
                ["qemu-img", "info", "--output=json", "-U", str(d / c["file"])], capture_output=True, text=True
            )
            backing = os.path.normpath(json.loads(info.stdout)["full-backing-filename"])
            out[c["name"]] = str(Path(backing).relative_to(self.root))
        return out

    def inodes(self, status: dict[str, Any]) -> dict[str, int]:
        d = self.root / status["cloneDirectory"]
        return {c["name"]: (d / c["file"]).stat().st_ino for c in status["clones"]}


class Downs:
    """Counts the VMs of the fleet that are down at once, around every stop and start the engine makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.down: set[str] = set()
        self.most = 0
        self.stops: list[str] = []
        shutdown, start = LibvirtHost.shutdown, LibvirtHost.start

        async def counted_shutdown(host: LibvirtHost, name: str, grace: float, paused: bool = True) -> bool:
            self.down.add(name)
            self.most = max(self.most, len(self.down))
            self.stops.append(name)
            return await shutdown(host, name, grace, paused)

        async def counted_start(host: LibvirtHost, name: str) -> None:
            await start(host, name)
            await asyncio.sleep(0.01)  # let others' chains interleave
            self.down.discard(name)

        monkeypatch.setattr(LibvirtHost, "shutdown", counted_shutdown)
        monkeypatch.setattr(LibvirtHost, "start", counted_start)


@pytest.fixture
def conn() -> Iterator[Any]:
    """libvirt's test driver keeps its domains while a connection to it is open."""
    c = libvirt.open("test:///default")
    yield c
    c.close()


@pytest.fixture
def site(tmp_path: Path, small_image: Path) -> Site:
    return Site(tmp_path / "store", small_image)


async def test_a_template_edit_rolls_through_six_vms_two_at_a_time_in_one_pass(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = site.fleet(updateStrategy={"rollingUpdate": {"maxUnavailable": 2}})
    first = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host])
    assert first.status["readyReplicas"] == 6
    before = {c["name"]: (c["uuid"], c["host"]) for c in first.status["clones"]}
    old_revision = first.status["updateRevision"]
    downs = Downs(monkeypatch)
    bigger = site.template(memory=96)
    second = await reconcile_fleet(runtime, fleet, bigger, site.store, [site.host], first.status)
    status = second.status
    assert downs.most == 2, downs.stops
    assert set(downs.stops[:2]) == {"prod.web-5", "prod.web-4"} and len(downs.stops) == 6  # highest first
    assert status["updatedReplicas"] == 6 and status["readyReplicas"] == 6
    assert status["updateRevision"] == status["currentRevision"] != old_revision
    assert {c["revision"] for c in status["clones"]} == {status["updateRevision"]}
    assert {c["name"]: (c["uuid"], c["host"]) for c in status["clones"]} == before
    updated = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert updated["Updated"] == ("True", "RolloutComplete") and updated["Ready"][0] == "True"
    for o in range(6):
        dom = conn.lookupByName(f"prod.web-{o}")
        assert dom.isActive() and dom.info()[1] == 96 * 1024  # the running definition has the new memory
    assert "restartRequired" not in json.dumps(status)


async def test_a_canary_partition_reports_the_revision_the_vms_below_it_keep_as_current(
    runtime: Runtime, conn: Any, site: Site
) -> None:
    """As a StatefulSet's status does: with partition 4 of 6, the update is done when 4 and 5 are updated, and
    currentRevision stays the one 0-3 run until they are updated too (a canary is not the whole fleet)."""
    canary = {"rollingUpdate": {"partition": 4, "maxUnavailable": 2}}
    first = await reconcile_fleet(runtime, site.fleet(updateStrategy=canary), site.template(), site.store, [site.host])
    old = first.status["updateRevision"]
    bigger = site.template(memory=96)
    second = await reconcile_fleet(
        runtime, site.fleet(updateStrategy=canary), bigger, site.store, [site.host], first.status
    )
    status = second.status
    new = status["updateRevision"]
    assert {c["name"]: c["revision"] for c in status["clones"]} == {
        **{f"web-{o}": old for o in range(4)},
        **{f"web-{o}": new for o in (4, 5)},
    }
    assert (status["currentRevision"], status["updatedReplicas"]) == (old, 2) and new != old
    assert [(c["status"], c["reason"]) for c in status["conditions"] if c["type"] == "Updated"] == [
        ("True", "RolloutComplete")
    ]
    whole = {"rollingUpdate": {"partition": 0, "maxUnavailable": 2}}
    third = await reconcile_fleet(runtime, site.fleet(updateStrategy=whole), bigger, site.store, [site.host], status)
    assert third.status["currentRevision"] == third.status["updateRevision"] == new
    assert third.status["updatedReplicas"] == 6


async def test_an_image_change_reimages_every_vm_and_releases_the_old_parent_count(
    runtime: Runtime, conn: Any, site: Site
) -> None:
    fleet = site.fleet(updateStrategy={"rollingUpdate": {"maxUnavailable": "50%"}})
    first = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host])
    backing = site.backing(first.status)
    (old,) = [p["parent"] for p in first.status["clonesByParent"]]
    assert set(backing.values()) == {old}
    second = await reconcile_fleet(runtime, fleet, site.template("b.img"), site.store, [site.host], first.status)
    status = second.status
    assert status["updatedReplicas"] == 6, status["conditions"]
    assert site.backing(status) == {n: status["parent"] for n in backing} != backing  # a new clone each
    assert [p["parent"] for p in status["clonesByParent"]] == [status["parent"]] != [old]
    said = [e.reason for e in second.events]
    assert "Reimaged" in said and "ClonesCreated" not in said
    keep = site.fleet(updateStrategy={"diskPolicy": "Keep"})
    third = await reconcile_fleet(runtime, keep, site.template("a.img"), site.store, [site.host], status)
    assert site.backing(third.status) == site.backing(status) and "Reimaged" not in [e.reason for e in third.events]
    assert third.status["updatedReplicas"] == 6  # Keep: a disk of the earlier image is on the revision


async def broken_rollout(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any, Any, Any]:
    """readiness Address. The test driver has no DHCP: here a guest gets its address when it runs with 64 MiB,
    and the broken revision (96 MiB) never boots far enough to take one. The passes: the fleet ready, the update
    under way, the update stalled once progressDeadlineSeconds (1) have passed, the template rolled back."""
    import vmfleet.engine.fleet as engine_fleet
    from vmfleet.engine.observe import Addresses

    async def addresses(desired: Any, domains: Any, endpoints: Any) -> Addresses:
        up = {o for o, vm in domains.items() if vm.active}
        booted = [o for o in up if conn.lookupByName(f"prod.web-{o}").info()[1] == 64 * 1024]
        return Addresses({o: (f"10.0.0.{o + 2}",) for o in booted}, {})

    monkeypatch.setattr(engine_fleet, "observe_addresses", addresses)
    net = {"network": "default"}
    fleet = site.fleet(
        readiness="Address", progressDeadlineSeconds=1, updateStrategy={"rollingUpdate": {"maxUnavailable": 2}}
    )
    first = await reconcile_fleet(runtime, fleet, site.template(**net), site.store, [site.host])
    broken = site.template(memory=96, **net)
    second = await reconcile_fleet(runtime, fleet, broken, site.store, [site.host], first.status)
    await asyncio.sleep(2.2)
    third = await reconcile_fleet(runtime, fleet, broken, site.store, [site.host], second.status)
    back = await reconcile_fleet(runtime, fleet, site.template(**net), site.store, [site.host], third.status)
    return first, second, third, back


async def test_a_revision_whose_guests_never_get_ready_stops_after_max_unavailable_and_stalls(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The update takes 2 VMs down, stops, says Stalled once progressDeadlineSeconds have passed; rolling the
    template back finishes it."""
    first, second, third, back = await broken_rollout(runtime, conn, site, monkeypatch)
    assert first.status["readyReplicas"] == 6, first.status["conditions"]
    assert second.rolling and second.status["updatedReplicas"] == 2
    updated = [c.get("revision") == second.status["updateRevision"] for c in second.status["clones"]]
    assert updated == [False, False, False, False, True, True]
    conditions = {c["type"]: c for c in second.status["conditions"]}
    assert (conditions["Updated"]["status"], conditions["Updated"]["reason"]) == ("False", "Updating")
    assert conditions["Reconciling"]["status"] == "True" and conditions["Stalled"]["status"] == "False"
    conditions = {c["type"]: c for c in third.status["conditions"]}
    assert (conditions["Stalled"]["status"], conditions["Stalled"]["reason"]) == ("True", "RolloutStalled")
    assert conditions["Updated"]["reason"] == "RolloutStalled" and not third.rolling
    assert "progressDeadlineSeconds 1" in conditions["Stalled"]["message"]
    assert third.status["updatedReplicas"] == 2 and third.status["readyReplicas"] == 4
    assert "RolloutStalled" in [e.reason for e in third.events]
    conditions = {c["type"]: c for c in back.status["conditions"]}
    assert back.status["updatedReplicas"] == 6 and back.status["readyReplicas"] == 6
    assert conditions["Updated"]["status"] == "True" and conditions["Stalled"]["status"] == "False"
    assert back.status["updateRevision"] == first.status["updateRevision"]


class Dnsmasq:
    """DHCP leases as libvirt's dnsmasq keeps them, on the test driver's network: a guest that boots takes a lease
    for its MAC, one an hour long from then; the lease stays when the guest stops (nothing releases it), so a guest
    started again and not (yet) booted still has the one it took before. Here a guest boots when it has 64 MiB."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.leases: dict[str, dict[str, Any]] = {}
        self.clock = 1_000_000
        create = libvirt.virDomain.create

        def boot(dom: libvirt.virDomain) -> int:
            done = create(dom)
            if dom.info()[1] == 64 * 1024:
                mac = re.search(r"<mac address='([^']+)'/>", dom.XMLDesc()).group(1)  # type: ignore[union-attr]
                self.clock += 10
                ip = self.leases.get(mac, {}).get("ipaddr") or f"192.168.122.{len(self.leases) + 100}"
                self.leases[mac] = {"mac": mac, "ipaddr": ip, "expirytime": self.clock + 3600, "type": 0}
            return int(done)

        monkeypatch.setattr(libvirt.virDomain, "create", boot)
        monkeypatch.setattr(libvirt.virNetwork, "DHCPLeases", lambda net, mac=None, flags=0: list(self.leases.values()))


async def test_a_dhcp_lease_from_before_a_restart_does_not_make_the_vm_ready(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """readiness Address with the leases libvirt really reports: the lease a guest took before it was restarted
    for the update is still there while its new revision does not boot. It must not count: the update stops
    after maxUnavailable VMs, as when the guest never had a lease."""
    dnsmasq = Dnsmasq(monkeypatch)
    net = {"network": "default"}
    fleet = site.fleet(readiness="Address", updateStrategy={"rollingUpdate": {"maxUnavailable": 2}})
    first = await reconcile_fleet(runtime, fleet, site.template(**net), site.store, [site.host])
    assert first.status["readyReplicas"] == 6 and len(dnsmasq.leases) == 6, first.status["conditions"]
    broken = site.template(memory=96, **net)  # its guests never boot far enough to ask for a lease
    second = await reconcile_fleet(runtime, fleet, broken, site.store, [site.host], first.status)
    assert second.status["updatedReplicas"] == 2 and second.status["readyReplicas"] == 4
    third = await reconcile_fleet(runtime, fleet, broken, site.store, [site.host], second.status)
    assert third.status["updatedReplicas"] == 2 and not [a for a in third.plan.actions if a.op.value == "stop"]
    back = await reconcile_fleet(runtime, fleet, site.template(**net), site.store, [site.host], third.status)
    assert back.status["updatedReplicas"] == 6 and back.status["readyReplicas"] == 6  # booted: new leases


def test_vmfleet_reimage_over_manifests_gives_the_vms_named_new_clones(tmp_path: Path, small_image: Path) -> None:
    manifests = quickstart(tmp_path, small_image)
    done = subprocess.run([VMFLEET, "apply", "-f", str(manifests), "-o", "json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (fleet,) = [o for o in json.loads(done.stdout) if o["kind"] == "VmFleet"]
    directory = tmp_path / "store" / fleet["status"]["cloneDirectory"]
    for c in fleet["status"]["clones"]:  # what each guest wrote: a reimage takes it away
        subprocess.run(
            ["qemu-io", "-c", "write -P 0x5a 0 64k", str(directory / c["file"])], check=True, capture_output=True
        )
    before = {c["name"]: _written(directory / c["file"]) for c in fleet["status"]["clones"]}
    assert all(before.values())
    again = subprocess.run(
        [VMFLEET, "reimage", "demo", "2", "0", "-f", str(manifests), "-o", "json"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "Reimaged" in again.stderr and "reimaged 2 VM(s): demo-0, demo-2" in again.stderr
    (fleet,) = [o for o in json.loads(again.stdout) if o["kind"] == "VmFleet"]
    after = {c["name"]: _written(directory / c["file"]) for c in fleet["status"]["clones"]}
    assert after == {"demo-0": False, "demo-1": True, "demo-2": False}
    bad = subprocess.run([VMFLEET, "reimage", "nope", "0", "-f", str(manifests)], capture_output=True, text=True)
    assert bad.returncode != 0 and "no VmFleet 'nope'" in bad.stderr
    worse = subprocess.run([VMFLEET, "reimage", "demo", "-1", "-f", str(manifests)], capture_output=True, text=True)
    assert worse.returncode != 0


def _written(clone: Path) -> bool:
    """The guest's write is in the clone (qemu-io reads it back)."""
    done = subprocess.run(["qemu-io", "-c", "read -P 0x5a 0 64k", str(clone)], capture_output=True, text=True)
    return "Pattern verification failed" not in done.stdout and done.returncode == 0


async def test_a_reimage_annotation_that_is_not_ordinals_stalls_the_fleet_naming_it_and_does_not_block_deletion(
    runtime: Runtime, conn: Any, site: Site
) -> None:
    from vmfleet.engine import teardown_fleet

    fleet = site.fleet(replicas=1, annotations={"vmfleet.io/reimage": "web-0"})
    result = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host])
    stalled = next(c for c in result.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "metadata.annotations[vmfleet.io/reimage]" in stalled["message"]
    assert not result.outcomes  # nothing made
    gone = await teardown_fleet(runtime, fleet, [site.store], [site.host])
    assert gone.complete


class Crash(BaseException):
    """The operator killed at this point: nothing after it runs, not even the record's settling."""


@pytest.mark.parametrize("where", ["before the delete", "after the delete", "after the new clone"])
async def test_a_reimage_cut_short_anywhere_is_done_exactly_once(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The record announces a reimage with the fingerprint of the clone it replaces: the next pass (a new
    process) makes the clone if it is missing, replaces it if it is still the old one, and leaves a new one be."""
    from vmfleet.storage.qcow2 import Qcow2Store as LocalDriver

    fleet = site.fleet(replicas=1)
    first = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host])
    (clone,) = [site.root / first.status["cloneDirectory"] / c["file"] for c in first.status["clones"]]
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(clone)], check=True, capture_output=True)
    made: list[str] = []
    delete, create = LocalDriver.delete, LocalDriver.create_clone

    async def crashing_delete(driver: Any, path: str) -> None:
        if where == "before the delete" and path.endswith(".qcow2"):
            raise Crash
        await delete(driver, path)
        if where == "after the delete" and path.endswith(".qcow2"):
            raise Crash

    async def counted_create(driver: Any, parent: str, fmt: str, target: str) -> None:
        made.append(target)
        await create(driver, parent, fmt, target)
        if where == "after the new clone":
            raise Crash

    monkeypatch.setattr(LocalDriver, "delete", crashing_delete)
    monkeypatch.setattr(LocalDriver, "create_clone", counted_create)
    with pytest.raises(Crash):
        await reconcile_fleet(runtime, fleet, site.template("b.img"), site.store, [site.host], first.status)
    monkeypatch.setattr(LocalDriver, "delete", delete)
    record = json.loads((clone.parent / "fleet.json").read_text())["vms"]["0"]
    # announced (reimaging); creating once the old clone is gone and the record says so, before the new one
    assert record["state"] == ("creating" if where == "after the new clone" else "reimaging")
    restarted = Runtime()  # the operator again, with nothing in memory
    try:
        after = await reconcile_fleet(restarted, fleet, site.template("b.img"), site.store, [site.host], first.status)
    finally:
        await restarted.close()
    assert after.status["updatedReplicas"] == 1 and after.status["readyReplicas"] == 1, after.status
    assert len(made) == 1  # made once: before the crash, or after it, never both
    assert not _written(clone)  # the guest's old disk is gone either way
    assert site.backing(after.status) == {"web-0": after.status["parent"]}
    assert json.loads((clone.parent / "fleet.json").read_text())["vms"]["0"]["state"] == "placed"
    assert [p["parent"] for p in after.status["clonesByParent"]] == [after.status["parent"]]


async def test_rerun_on_failure_starts_again_what_vmfleet_stopped_but_not_what_the_guest_did(
    runtime: Runtime, conn: Any, site: Site
) -> None:
    halted = await reconcile_fleet(
        runtime, site.fleet(runStrategy="Halted", replicas=2), site.template(), site.store, [site.host]
    )
    assert not conn.lookupByName("prod.web-0").isActive()
    rerun = site.fleet(runStrategy="RerunOnFailure", replicas=2)
    up = await reconcile_fleet(runtime, rerun, site.template(), site.store, [site.host], halted.status)
    assert up.status["readyReplicas"] == 2 and conn.lookupByName("prod.web-0").isActive()
    conn.lookupByName("prod.web-1").shutdown()  # the guest is done with its job
    done = await reconcile_fleet(runtime, rerun, site.template(), site.store, [site.host], up.status)
    assert not conn.lookupByName("prod.web-1").isActive() and done.status["readyReplicas"] == 2
    assert [a for a in done.plan.actions] == []


async def test_running_manual_vms_on_an_older_revision_wait_for_a_person_not_a_rolling_update(
    runtime: Runtime, conn: Any, site: Site
) -> None:
    """Found by the state machine: RollingUpdate with runStrategy Manual said "updating web-0, web-1" for VMs
    vmfleet never takes down (Ready False, looked at again every few seconds, Stalled after the progress deadline).
    They wait for a person, as under OnDelete: UpdateWaiting, RestartRequired, and the fleet is Ready."""
    first = await reconcile_fleet(runtime, site.fleet(replicas=2), site.template(), site.store, [site.host])
    assert first.status["readyReplicas"] == 2
    manual = site.fleet(replicas=2, runStrategy="Manual")
    second = await reconcile_fleet(runtime, manual, site.template(memory=96), site.store, [site.host], first.status)
    conditions = {c["type"]: c for c in second.status["conditions"]}
    assert (conditions["Updated"]["status"], conditions["Updated"]["reason"]) == ("False", "UpdateWaiting")
    assert "runStrategy Manual" in conditions["Updated"]["message"]
    assert conditions["RestartRequired"]["status"] == "True"
    assert conditions["Ready"]["status"] == "True" and not second.rolling
    assert all(conn.lookupByName(f"prod.web-{o}").isActive() for o in range(2))  # nobody took them down


async def test_a_domain_that_stops_while_its_host_is_listed_leaves_the_host_observable(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen with the real guests on a busy libvirtd: a domain stopped between list_domains reading its state and
    its live metadata, libvirt said "domain is not running", and the whole host counted as unreachable for that
    pass: every VM Unknown, Degraded HostUnreachable, and condition Updated True with updatedReplicas 0."""
    fleet = site.fleet(replicas=2)
    first = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host])
    assert first.status["readyReplicas"] == 2
    metadata, stopped = libvirt.virDomain.metadata, []

    def stops_meanwhile(dom: libvirt.virDomain, kind: int, uri: str, flags: int = 0) -> str:
        if flags & libvirt.VIR_DOMAIN_AFFECT_LIVE and dom.name() == "prod.web-1" and not stopped:
            stopped.append(dom.destroy())  # once, after list_domains read it as running
        return str(metadata(dom, kind, uri, flags))

    monkeypatch.setattr(libvirt.virDomain, "metadata", stops_meanwhile)
    runtime.host(site.host).view.forget()  # a full listing, as at every relist
    second = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host], first.status)
    monkeypatch.undo()
    degraded = {c["type"]: c for c in second.status["conditions"]}["Degraded"]
    assert degraded["status"] == "False", degraded["message"]
    assert [(a.op.value, a.ordinal) for a in second.plan.actions] == [("start", 1)]  # seen stopped: started
    assert (second.status["readyReplicas"], second.status["updatedReplicas"]) == (2, 2), second.status
