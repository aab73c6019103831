"""Fleets that change safely (issue 16), proven with real Linux guests: six VMs of the tiny Debian-kernel guest
(vmfleet.guest) on a reflink store on XFS, under the real libvirtd and QEMU (TCG), on a libvirt network with DHCP,
driven through reconcile_fleet pass after pass as the operator drives it while a rolling update goes on. libvirt's
lifecycle events say when each domain stopped and started; each guest's console says when it was up again (its
line comes after its DHCP lease) and which image it booted (the image's marker, vmfleet.guest.mark_image).

One fleet, booted once in parallel, goes through a hardware change, an image change behind a partition, a
revision whose guests cannot boot and its rollback, then power: an ephemeral guest that powers itself off, and
under RerunOnFailure one whose QEMU is killed beside one that powers itself off."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from conftest import TIMINGS
from helpers import GuestSite, LifecycleEvents, dhcp_network, linux_image, wait_for, xfs_io_exclusive
from vmfleet.api.status import condition_of
from vmfleet.engine import FleetResult, reconcile_fleet
from vmfleet.guest import CONSOLE_LINE, IMAGE_LINE, mark_image
from vmfleet.planner import Op

pytestmark = pytest.mark.rollout

NETWORK = "vmfleet-ro"
BRIDGE = "vmfleet-ro0"
SUBNET = "10.251.8"
REPLICAS = 6
MEMORY = 192  # MiB: the guest boots in less; 6 of them fit a small machine
GRACE = 15  # seconds: the guest's acpid powers it off a second or two after the button
STARTED, STOPPED = libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STOPPED
# What a domain's guest lives through (not DEFINED: a VM waiting its turn is redefined, its guest runs on).
POWER = {STARTED, STOPPED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_RESUMED}
POWER |= {libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_CRASHED}


@pytest.fixture(scope="module")
def network(libvirtd: str) -> Iterator[str]:
    with dhcp_network(libvirtd, NETWORK, BRIDGE, SUBNET) as name:
        yield name


class Consoles(threading.Thread):
    """When each VM's console shows its VMFLEET-GUEST line anew (the log starts afresh at every start of the
    domain; the line comes once the guest has its DHCP lease), and the image marker above it: polled."""

    def __init__(self, site: GuestSite, vms: list[str]):
        super().__init__(name="consoles", daemon=True)
        self.site, self.vms = site, vms
        self.seen: dict[str, list[tuple[float, str]]] = {vm: [] for vm in vms}
        self._done = threading.Event()

    def run(self) -> None:
        shown = dict.fromkeys(self.vms, False)
        while not self._done.wait(0.2):
            for vm in self.vms:
                text = self.site.console(vm)
                now = bool(CONSOLE_LINE.search(text))
                if now and not shown[vm]:
                    marker = IMAGE_LINE.search(text)
                    self.seen[vm].append((time.monotonic(), marker.group("marker") if marker else ""))
                shown[vm] = now

    def since(self, vm: str, t: float) -> list[tuple[float, str]]:
        return [(at, m) for at, m in list(self.seen[vm]) if at >= t]

    def stop(self) -> None:
        self._done.set()
        self.join()


class Site(GuestSite):
    """The fleet `web` of REPLICAS Linux guests, readiness Address, maxUnavailable 2; the attributes say its
    template and update strategy now."""

    def __init__(self, xfs: Path, base: Path, unique: str, libvirtd: str):
        one, two = linux_image(base), base / "two.img"
        subprocess.run(["cp", str(one), str(two)], check=True)  # its own blocks: a parent of its own on the store
        mark_image(str(one), "one")
        mark_image(str(two), "two")
        zeros = base / "zeros.img"  # no boot sector: SeaBIOS finds nothing to boot, the guest never gets an address
        with open(zeros, "wb") as f:
            f.truncate(one.stat().st_size)
        images = {"one.img": one, "two.img": two, "zeros.img": zeros}
        super().__init__(xfs / f"rollout-{unique}", base / "logs", images, f"ro-{unique}")
        self.vms = [f"web-{o}" for o in range(REPLICAS)]
        self.image, self.memory, self.partition, self.deadline = "one.img", MEMORY, 0, 300
        self.run_strategy, self.ephemeral = "Always", False
        self.status: dict[str, Any] = {}
        self.log: list[str] = []  # one line a pass: what it stopped, what it said
        self.conn = libvirt.open(libvirtd)
        self.events = LifecycleEvents(libvirtd)
        self.consoles = Consoles(self, self.vms)
        self.consoles.start()

    def domain(self, vm: str) -> libvirt.virDomain:
        return self.conn.lookupByName(f"{self.ns}.{vm}")

    async def reconcile(self) -> FleetResult:
        fleet, template, store, hosts = self.objects(
            {"image": {"path": f"images/{self.image}"}, "memoryMiB": self.memory, "network": NETWORK},
            {
                "replicas": REPLICAS,
                "runStrategy": self.run_strategy,
                "ephemeral": self.ephemeral,
                "readiness": "Address",
                "shutdown": {"gracePeriodSeconds": GRACE},
                "progressDeadlineSeconds": self.deadline,
                "updateStrategy": {"rollingUpdate": {"maxUnavailable": 2, "partition": self.partition}},
            },
        )
        t0 = time.monotonic()
        result = await reconcile_fleet(self.runtime, fleet, template, store, hosts, self.status)
        self.status = result.status
        stopped = [self.vms[o.action.ordinal] for o in result.outcomes if o.action.op is Op.STOP]
        updated = condition_of(self.status, "Updated")
        wrong = [
            f"{c['type']}: {c['message']}"
            for c in self.status["conditions"]
            if c["type"] in ("Stalled", "Degraded") and c["status"] == "True"
        ]
        self.log.append(
            f"pass {len(self.log) + 1} ({time.monotonic() - t0:.1f} s): stopped {stopped or 'none'}; "
            f"ready {self.status.get('readyReplicas')}, updated {self.status.get('updatedReplicas')}; "
            f"Updated {updated.get('status')} {updated.get('reason')}" + "".join(f"; {w}" for w in wrong)
        )
        return result

    async def passes(self, done: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> int:
        """Passes as the operator makes them while a rolling update goes on (one every 2 s) until `done(status)`;
        how many it took."""
        deadline, n = time.monotonic() + timeout, 0
        while True:
            await self.reconcile()
            n += 1
            if done(self.status):
                return n
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not so after {n} passes in {timeout} s:\n" + "\n".join(self.log))
            await asyncio.sleep(2)

    def lines(self, vms: list[str], since: float, marker: str, timeout: float = 120) -> None:
        """Each of `vms` printed its console line after `since`, from the image marked `marker`."""
        for vm in vms:
            wait_for(lambda vm=vm: self.consoles.since(vm, since), timeout, f"{vm}'s console line")
            assert [m for _, m in self.consoles.since(vm, since)] == [marker], (vm, self.console(vm)[-2000:])

    def down_at_once(self, since: float) -> tuple[int, int]:
        """From `since`: (the most domains inactive at once, by libvirt's events; the most VMs unavailable at
        once: inactive, or started but not yet up to their console line, i.e. without a new DHCP lease)."""
        changes: list[tuple[float, str, str]] = []
        for vm in self.vms:
            changes += [
                (t, vm, "stopped" if event == STOPPED else "started")
                for t, event, _ in self.events.of(f"{self.ns}.{vm}")
                if t >= since and event in (STARTED, STOPPED)
            ]
            changes += [(t, vm, "up") for t, _ in self.consoles.since(vm, since)]
        inactive: set[str] = set()
        unavailable: set[str] = set()
        most = [0, 0]
        for _, vm, what in sorted(changes):
            if what == "stopped":
                inactive.add(vm)
                unavailable.add(vm)
            elif what == "started":
                inactive.discard(vm)
            else:
                unavailable.discard(vm)
            most = [max(most[0], len(inactive)), max(most[1], len(unavailable))]
        return most[0], most[1]

    def stops(self, since: float) -> list[tuple[str, int]]:
        """(VM, stop detail) of every domain stop after `since`, in the order they came."""
        found = [
            (t, vm, detail)
            for vm in self.vms
            for t, event, detail in self.events.of(f"{self.ns}.{vm}")
            if t >= since and event == STOPPED
        ]
        return [(vm, detail) for _, vm, detail in sorted(found)]

    def touched(self, since: float) -> set[str]:
        """VMs whose guest was stopped, started, paused or crashed after `since`."""
        return {
            vm for vm in self.vms if any(t >= since and e in POWER for t, e, _ in self.events.of(f"{self.ns}.{vm}"))
        }

    def clone(self, vm: str) -> Path:
        c = next(c for c in self.status["clones"] if c["name"] == vm)
        return self.root / self.status["cloneDirectory"] / c["file"]

    def revisions(self) -> list[str]:
        return [c.get("revision", "") for c in self.status["clones"]]

    async def close(self) -> None:
        try:
            self.consoles.stop()
            self.events.close()
            self.conn.close()
        finally:
            await super().close()


@pytest.fixture
async def site(xfs: Path, tmp_path: Path, network: str, unique: str, libvirtd: str) -> Iterator[Site]:
    s = Site(xfs, tmp_path, unique, libvirtd)
    yield s
    print("\n".join(s.log))
    await s.close()


def extents(path: Path) -> list[str]:
    """The file's extents as xfs_io's FIEMAP reader prints them (file range: physical block range), holes left
    out: two files with the same list share every block (a reflink clone of the other, written by nobody)."""
    out = subprocess.run(["xfs_io", "-r", "-c", "fiemap", str(path)], capture_output=True, text=True, check=True)
    return [line.split(":", 1)[1].strip() for line in out.stdout.splitlines()[1:] if "hole" not in line]


def live_memory_kib(dom: libvirt.virDomain) -> int:
    found = re.search(r"<memory unit='KiB'>(\d+)</memory>", dom.XMLDesc(0))  # the running definition
    assert found, dom.XMLDesc(0)
    return int(found.group(1))


def updated(status: dict[str, Any]) -> bool:
    return condition_of(status, "Updated").get("status") == "True" and status.get("readyReplicas") == REPLICAS


async def test_six_linux_guests_roll_two_at_a_time_stop_on_a_revision_that_cannot_boot_and_rerun_as_asked(
    site: Site,
) -> None:
    vms = site.vms
    t_start = time.monotonic()
    await site.passes(updated, 300, "the fleet up, every VM with an address")
    site.lines(vms, t_start, "one")
    TIMINGS["rollout: 6 Linux guests cloned, booted and addressed (TCG, parallel)"] = time.monotonic() - t_start
    first = site.status
    identity = {c["name"]: (c["uuid"], c["mac"], c["host"]) for c in first["clones"]}
    assert {site.domain(vm).UUIDString() for vm in vms} == {u for u, _, _ in identity.values()}
    # The clones are held open: an inode still open cannot be given to another file, so a clone that is the
    # same inode as before is the same file, and one whose inode has no link left was deleted.
    held = {vm: os.open(site.clone(vm), os.O_RDONLY) for vm in vms}
    try:
        # 1. A hardware change: restarted two at a time from the highest ordinal, on the same UUID, MAC, host
        # and disk, each back on its DHCP lease before the next two go.
        site.memory = MEMORY + 32
        t1 = time.monotonic()
        n = await site.passes(updated, 600, "the memory change rolled out")
        took = time.monotonic() - t1
        site.lines(vms, t1, "one")
        inactive, unavailable = site.down_at_once(t1)
        TIMINGS[f"rollout: memory change over 6 guests, maxUnavailable 2 ({n} passes)"] = took
        print(f"memory change: {n} passes, {took:.1f} s, most inactive {inactive}, most unavailable {unavailable}")
        stops = site.stops(t1)
        assert [vm for vm, _ in stops][:2] in (["web-5", "web-4"], ["web-4", "web-5"]), stops
        assert sorted(vm for vm, _ in stops) == vms, stops  # each once
        assert {d for _, d in stops} == {libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN}, stops  # each answered ACPI
        assert inactive == 2, site.log
        assert unavailable <= 2, site.log
        status = site.status
        for vm in vms:
            assert live_memory_kib(site.domain(vm)) == (MEMORY + 32) * 1024, vm
            assert os.fstat(held[vm]).st_nlink == 1 and os.fstat(held[vm]).st_ino == site.clone(vm).stat().st_ino
        assert status["updatedReplicas"] == REPLICAS
        assert (
            set(site.revisions()) == {status["updateRevision"]}
            and status["currentRevision"] == status["updateRevision"] != first["updateRevision"]
        )
        assert condition_of(status, "Updated")["reason"] == "RolloutComplete"
        assert {c["name"]: (c["uuid"], c["mac"], c["host"]) for c in status["clones"]} == identity
        assert {site.domain(vm).UUIDString() for vm in vms} == {u for u, _, _ in identity.values()}

        # 2. An image change behind a partition: only web-4 and web-5 get new clones of the new image's parent.
        before = status
        site.image, site.partition = "two.img", 4
        t2 = time.monotonic()
        n_canary = await site.passes(
            lambda s: s["updatedReplicas"] == 2 and condition_of(s, "Updated").get("status") == "True"
            and s["readyReplicas"] == REPLICAS,
            300,
            "the canary (partition 4)",
        )  # fmt: skip
        site.lines(["web-4", "web-5"], t2, "two")
        assert site.touched(t2) == {"web-4", "web-5"}
        new_revision = site.status["updateRevision"]
        assert site.revisions() == [before["updateRevision"]] * 4 + [new_revision] * 2
        canary = site.status
        canary_said = (canary["currentRevision"], condition_of(canary, "Updated").get("reason"))
        print(f"canary: old {before['updateRevision']}, new {new_revision}, (currentRevision, Updated) {canary_said}")
        for vm in vms[:4]:
            assert os.fstat(held[vm]).st_nlink == 1 and os.fstat(held[vm]).st_ino == site.clone(vm).stat().st_ino
            assert [m for _, m in site.consoles.since(vm, t2)] == []  # not restarted: still on image one
        parent_one, parent_two = site.root / before["parent"], site.root / site.status["parent"]
        assert parent_one != parent_two and extents(parent_one) != extents(parent_two)
        site.partition = 0
        n = n_canary + await site.passes(updated, 600, "the image change rolled out")
        took = time.monotonic() - t2
        site.lines(vms[:4], t2, "two")
        inactive, unavailable = site.down_at_once(t2)
        TIMINGS[f"rollout: image change over 6 guests, partition 4 then 0 ({n} passes)"] = took
        print(f"image change: {n} passes, {took:.1f} s, most inactive {inactive}, most unavailable {unavailable}")
        assert inactive <= 2 and unavailable <= 2, site.log
        for vm in vms:  # a new file each, every block the new parent's
            assert os.fstat(held[vm]).st_nlink == 0 and os.fstat(held[vm]).st_ino != site.clone(vm).stat().st_ino
            assert extents(site.clone(vm)) == extents(parent_two), vm
            os.close(held.pop(vm))
            held[vm] = os.open(site.clone(vm), os.O_RDONLY)
        status = site.status
        assert status["updatedReplicas"] == REPLICAS and set(site.revisions()) == {status["updateRevision"]}
        assert status["currentRevision"] == status["updateRevision"] == new_revision
        assert [p["parent"] for p in status["clonesByParent"]] == [status["parent"]]
        assert {c["name"]: (c["uuid"], c["mac"], c["host"]) for c in status["clones"]} == identity

        # 3. A revision whose guests cannot boot: two VMs go down onto it, the other four are not touched, and
        # the update stalls once progressDeadlineSeconds have passed; rolling the template back finishes it.
        good = status
        ids = {vm: site.domain(vm).ID() for vm in vms}
        site.image, site.deadline = "zeros.img", 20
        t3 = time.monotonic()
        await site.passes(lambda s: condition_of(s, "Stalled").get("status") == "True", 120, "RolloutStalled")
        stalled_after = time.monotonic() - t3
        TIMINGS["rollout: a revision that cannot boot, until RolloutStalled (progressDeadlineSeconds 20)"] = (
            stalled_after
        )
        status = site.status
        assert condition_of(status, "Stalled")["reason"] == "RolloutStalled", status["conditions"]
        assert (condition_of(status, "Updated")["status"], condition_of(status, "Updated")["reason"]) == (
            "False",
            "RolloutStalled",
        )
        assert site.touched(t3) == {"web-4", "web-5"}, site.log
        assert site.revisions() == [good["updateRevision"]] * 4 + [status["updateRevision"]] * 2
        assert status["updatedReplicas"] == 2 and status["readyReplicas"] == 4
        for vm in vms[:4]:  # the same QEMU, on the same disk, with the memory it had
            assert os.fstat(held[vm]).st_nlink == 1 and os.fstat(held[vm]).st_ino == site.clone(vm).stat().st_ino
            assert site.domain(vm).ID() == ids[vm] and live_memory_kib(site.domain(vm)) == (MEMORY + 32) * 1024
        for vm in ("web-4", "web-5"):
            assert site.domain(vm).isActive() and not site.consoles.since(vm, t3)  # SeaBIOS: nothing to boot
        inactive, unavailable = site.down_at_once(t3)
        assert inactive <= 2 and unavailable == 2, site.log
        site.image = "two.img"
        t4 = time.monotonic()
        n = await site.passes(updated, 300, "the rollback")
        took = time.monotonic() - t4
        site.lines(["web-4", "web-5"], t4, "two")
        TIMINGS[f"rollout: rolled back onto the last good revision ({n} passes)"] = took
        print(f"rollback: {n} passes, {took:.1f} s, stalled after {stalled_after:.1f} s")
        status = site.status
        assert site.touched(t4) == {"web-4", "web-5"}
        assert status["updateRevision"] == status["currentRevision"] == good["updateRevision"]
        assert set(site.revisions()) == {good["updateRevision"]} and status["updatedReplicas"] == REPLICAS
        assert condition_of(status, "Stalled")["status"] == "False"
        for vm in vms:
            assert extents(site.clone(vm)) == extents(parent_two), vm
        assert {c["name"]: (c["uuid"], c["mac"], c["host"]) for c in status["clones"]} == identity

        # 4. Power: an ephemeral VM whose guest powers itself off comes back on a fresh clone; RerunOnFailure starts
        # a guest whose QEMU was killed, not one that powered itself off.
        site.ephemeral = True
        clone = site.clone("web-0")
        with open(clone, "r+b") as f:  # what the guest wrote (the test writes it: this guest writes nothing)
            f.seek(clone.stat().st_size - (1 << 20))
            f.write(os.urandom(1 << 20))
        assert xfs_io_exclusive(clone) >= 1 << 20
        t5 = time.monotonic()
        site.domain("web-0").shutdown()  # the ACPI button: its acpid powers it off, as a guest's own poweroff
        wait_for(lambda: site.stops(t5), 60, "web-0 to power itself off")
        assert site.stops(t5) == [("web-0", libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)]
        n = await site.passes(updated, 300, "the ephemeral VM back")
        site.lines(["web-0"], t5, "two")
        TIMINGS[f"rollout: an ephemeral guest powered off, back on a new clone ({n} passes)"] = time.monotonic() - t5
        assert (
            os.fstat(held["web-0"]).st_nlink == 0
            and site.clone("web-0").stat().st_ino != os.fstat(held["web-0"]).st_ino
        )
        assert xfs_io_exclusive(site.clone("web-0")) == 0 and extents(site.clone("web-0")) == extents(parent_two)
        assert site.touched(t5) == {"web-0"}

        site.ephemeral, site.run_strategy = False, "RerunOnFailure"
        await site.reconcile()  # nothing to do: the run strategy is not part of the revision
        t6 = time.monotonic()
        os.kill(int(Path(f"/run/libvirt/qemu/{site.ns}.web-1.pid").read_text()), signal.SIGKILL)
        site.domain("web-2").shutdown()
        wait_for(lambda: len(site.stops(t6)) == 2, 60, "web-1 killed and web-2 powered off")
        stops = dict(site.stops(t6))
        assert stops["web-2"] == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, stops
        assert stops["web-1"] != libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, stops  # FAILED: QEMU went away
        await site.passes(lambda s: site.domain("web-1").isActive(), 60, "web-1 started again")
        for _ in range(3):  # and again: web-2 stays off
            await asyncio.sleep(2)
            await site.reconcile()
        site.lines(["web-1"], t6, "two")
        assert site.touched(t6) == {"web-1", "web-2"} and not site.domain("web-2").isActive()
        assert [t for t, e, _ in site.events.of(f"{site.ns}.web-2") if e == STARTED and t >= t6] == []
        states = {c["name"]: c["state"] for c in site.status["clones"]}
        print(f"power: stops {stops}, states {states}, ready {site.status['readyReplicas']}")
    finally:
        for fd in held.values():
            os.close(fd)
