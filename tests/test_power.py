"""Graceful power-off (issue 16): LibvirtHost.shutdown() presses the ACPI power button, leaves the guest its grace
period and destroys it only then; list_domains() says why each stopped domain stopped. On the real libvirtd with
QEMU (TCG) guests defined from the operator's own domain XML and started together: the tiny Linux guest (busybox
acpid powers it off on the button), boot-sector guests (they ignore it), one whose QEMU is killed. libvirt's
lifecycle events say what happened and when. Then the same on libvirt's in-process test driver."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from conftest import TIMINGS
from helpers import LifecycleEvents, linux_image, wait_for
from vmfleet.disks import FileDisk
from vmfleet.errors import HostError
from vmfleet.guest import CONSOLE_LINE
from vmfleet.hypervisor import DomainInfo, DomainSpec, LibvirtHost, Owner, domain_xml
from vmfleet.images import make_template_image
from vmfleet.seed import Seed

pytestmark = pytest.mark.rollout

PREFIX = "vmfleet-power-"
MARKER = "VMFLEET-POWER-BOOT"
STOPPED = libvirt.VIR_DOMAIN_EVENT_STOPPED


class Guests:
    """This module's domains on the real libvirtd, named PREFIX + a run's token + a role; each started as soon as
    it is defined, so they boot in parallel, and every one undefined at the end."""

    def __init__(self, conn: libvirt.virConnect, base: Path):
        self.conn, self.base = conn, base
        self.token = uuid.uuid4().hex[:8]
        self.names: list[str] = []

    def name(self, role: str) -> str:
        return f"{PREFIX}{self.token}-{role}"

    def console(self, role: str) -> str:
        path = self.base / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def define(self, role: str, disk: Path, memory_mib: int = 32, seed: Path | None = None, start: bool = True) -> str:
        name = self.name(role)
        spec = DomainSpec(
            name=name,
            domain_type="qemu",
            vcpus=1,
            memory_mib=memory_mib,
            profile="linux-virtio",
            machine=None,
            firmware="bios",
            disk=FileDisk(str(disk), "raw"),
            network=None,
            console_log=str(self.base / f"{role}.log"),
            seed=FileDisk(str(seed), "raw") if seed else None,
        )
        owner = Owner(str(uuid.uuid4()), "power", "power", len(self.names), str(disk), spec.spec_hash())
        dom = self.conn.defineXML(domain_xml(spec, owner, str(uuid.uuid4())))
        self.names.append(name)
        if start:
            dom.create()
        return name

    def boot_sector(self, role: str, start: bool = True) -> str:
        """A guest of the boot-sector image (its own copy: virtlockd leases each disk to one domain): it prints
        MARKER and halts, deaf to the power button."""
        disk = self.base / f"{role}.img"
        make_template_image(str(disk), 1 << 20, marker=MARKER)
        return self.define(role, disk, start=start)

    def cleanup(self) -> None:
        for name in self.names:
            try:
                dom = self.conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            try:
                if dom.isActive():
                    dom.destroy()
            finally:
                dom.undefine()


@pytest.fixture(scope="module")
def events(libvirtd: str) -> Iterator[LifecycleEvents]:
    recorder = LifecycleEvents(libvirtd)
    yield recorder
    recorder.close()


@pytest.fixture(scope="module")
def guests(libvirtd: str, events: LifecycleEvents) -> Iterator[Guests]:
    """Every guest of the module, defined and started at once: the Linux guest's boot (~6-15 s of TCG) overlaps
    the boot-sector tests. Their files are in a directory of their own in /tmp, not under pytest's: every pytest
    that starts (another run beside this one) makes /tmp/pytest-of-root 0700 again, and QEMU could not open them."""
    base = Path(tempfile.mkdtemp(prefix=PREFIX))
    base.chmod(0o755)
    conn = libvirt.open(libvirtd)
    g = Guests(conn, base)
    try:
        # A NoCloud seed: the guest finds it at once and prints its VMFLEET-GUEST line, after acpid has started.
        seed = base / "seed.iso"
        seed.write_bytes(Seed("cidata", (("meta-data", b"instance-id: power\nlocal-hostname: power\n"),)).image())
        g.define("linux", linux_image(base), memory_mib=192, seed=seed)
        for role in ("deaf", "killed", "undefined", "late", "paused"):
            g.boot_sector(role)
        g.boot_sector("off", start=False)
        yield g
    finally:
        g.cleanup()
        conn.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def host(libvirtd: str) -> AsyncIterator[LibvirtHost]:
    h = LibvirtHost("kvm-a", libvirtd)
    yield h
    await h.close()


async def info(host: LibvirtHost, name: str) -> DomainInfo:
    return next(d for d in await host.list_domains() if d.name == name)


def stops(events: LifecycleEvents, name: str) -> list[int]:
    """The detail of each STOPPED event of `name` so far."""
    return [detail for _, event, detail in events.of(name) if event == STOPPED]


def booted(guests: Guests, role: str) -> None:
    wait_for(lambda: MARKER in guests.console(role), 30, f"the {role} guest's boot marker")


async def test_a_guest_that_answers_the_power_button_powers_itself_off(
    guests: Guests, events: LifecycleEvents, host: LibvirtHost
) -> None:
    name = guests.name("linux")
    wait_for(lambda: CONSOLE_LINE.search(guests.console("linux")), 120, "the Linux guest's VMFLEET-GUEST line")
    t0 = time.monotonic()
    assert await host.shutdown(name, 60) is True
    TIMINGS["power: the Linux guest powered off on the ACPI button"] = time.monotonic() - t0
    events.wait(name, STOPPED)
    assert stops(events, name) == [libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN]  # never destroyed
    found = await info(host, name)
    assert (found.state, found.stop_reason, found.active) == ("Stopped", "shutdown", False)


async def test_a_guest_deaf_to_the_button_is_destroyed_after_its_grace_period_not_before(
    guests: Guests, events: LifecycleEvents, host: LibvirtHost
) -> None:
    name = guests.name("deaf")
    booted(guests, "deaf")
    t0 = time.monotonic()
    shutdown = asyncio.create_task(host.shutdown(name, 3))
    await asyncio.sleep(2.5)
    assert not shutdown.done() and guests.conn.lookupByName(name).isActive()  # still running within its grace
    assert await shutdown is False
    at, _, detail = events.wait(name, STOPPED)
    assert detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED
    assert 3 <= at - t0 < 3 + 10, at - t0
    TIMINGS["power: a guest deaf to the button destroyed after shutdown(grace 3 s)"] = at - t0
    assert stops(events, name) == [libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED]
    found = await info(host, name)
    assert (found.state, found.stop_reason) == ("Stopped", "destroyed")


async def test_a_paused_guest_is_destroyed_at_once_as_qemu_refuses_its_power_button(
    guests: Guests, events: LifecycleEvents, host: LibvirtHost
) -> None:
    """`virsh suspend`, or a start not finished: QEMU's driver refuses the button ("domain is not running"), so
    waiting out the grace period would only delay the stop it is asked for."""
    name = guests.name("paused")
    booted(guests, "paused")
    guests.conn.lookupByName(name).suspend()
    assert (await info(host, name)).state == "Paused"
    t0 = time.monotonic()
    assert await host.shutdown(name, 60) is False
    assert time.monotonic() - t0 < 10
    events.wait(name, STOPPED)
    assert stops(events, name) == [libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED]
    assert (await info(host, name)).state == "Stopped"


async def test_a_guest_whose_qemu_was_killed_reads_crashed_not_shutdown(
    guests: Guests, events: LifecycleEvents, host: LibvirtHost
) -> None:
    name = guests.name("killed")
    booted(guests, "killed")
    assert (await info(host, name)).stop_reason == ""  # running: no reason
    os.kill(int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()), signal.SIGKILL)
    events.wait(name, STOPPED)
    # libvirt saw QEMU's monitor close without a SHUTDOWN event from the guest: it says the domain failed (the
    # event) and crashed (the state's reason).
    assert stops(events, name) == [libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED]
    found = await info(host, name)
    assert (found.state, found.stop_reason) == ("Stopped", "crashed")
    assert await host.shutdown(name, 5) is True  # nothing left to stop


async def test_shutdown_of_a_stopped_domain_changes_nothing(
    guests: Guests, events: LifecycleEvents, host: LibvirtHost
) -> None:
    name = guests.name("off")
    dom = guests.conn.lookupByName(name)
    before = (dom.state(), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), len(events.of(name)))
    t0 = time.monotonic()
    assert await host.shutdown(name, 30) is True
    assert await host.shutdown(name, 0) is True
    assert time.monotonic() - t0 < 2  # no grace period waited
    assert (dom.state(), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), len(events.of(name))) == before
    assert (await info(host, name)).stop_reason == ""  # never ran: libvirt knows no reason
    assert await host.shutdown(f"{PREFIX}{guests.token}-never-defined", 30) is True


async def test_a_domain_undefined_during_its_grace_period_counts_as_stopped(
    guests: Guests, events: LifecycleEvents, host: LibvirtHost
) -> None:
    name = guests.name("undefined")
    booted(guests, "undefined")
    shutdown = asyncio.create_task(host.shutdown(name, 30))
    await asyncio.sleep(1)
    dom = guests.conn.lookupByName(name)
    dom.destroy()  # by someone else
    dom.undefine()
    t0 = time.monotonic()
    assert await shutdown is True
    assert time.monotonic() - t0 < 2  # seen at the next look, not after the grace period


class StopsFirst(LibvirtHost):
    """A host whose domain stops (destroyed through another connection) just before shutdown() destroys it: the
    race between its last look and the destroy, made certain."""

    def __init__(self, uri: str, conn: libvirt.virConnect, name: str):
        super().__init__("kvm-a", uri)
        self.other, self.victim = conn, name

    async def _call(self, operation: str, what: str, fn: Any, touches: str | None = None) -> Any:
        if what.startswith("destroying"):
            self.other.lookupByName(self.victim).destroy()
        return await super()._call(operation, what, fn, touches)


async def test_a_domain_that_stopped_just_before_the_destroy_counts_as_stopped_by_itself(
    guests: Guests, libvirtd: str
) -> None:
    name = guests.name("late")
    booted(guests, "late")
    host = StopsFirst(libvirtd, guests.conn, name)
    try:
        assert await host.shutdown(name, 0.5) is True  # libvirt's "domain is not running" is no fault here
    finally:
        await host.close()


async def test_the_test_driver_shuts_down_and_says_why(unique: str) -> None:
    """libvirt's in-process test driver (the quickstart's and the benchmarks' host) has no ACPI flag: its plain
    shutdown stops the domain at once, as a guest that answered."""
    uri, name = "test:///default", f"{PREFIX}{unique}"
    conn = libvirt.open(uri)
    dom = conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"
    )
    host = LibvirtHost("test", uri)
    try:
        dom.create()
        assert (await info(host, name)).stop_reason == ""
        assert await host.shutdown(name, 5) is True
        found = await info(host, name)
        assert (found.state, found.stop_reason) == ("Stopped", "shutdown")
        dom.create()
        assert await host.shutdown(name, 0) is False  # no grace: destroyed at once
        assert (await info(host, name)).stop_reason == "destroyed"
        assert await host.shutdown(name, 5) is True
        assert (await info(host, name)).stop_reason == "destroyed"  # unchanged
        # Paused by a person after vmfleet decided to stop it while it ran: left alone, and said.
        dom.create()
        dom.suspend()
        assert (await info(host, name)).stop_reason == "user"
        with pytest.raises(HostError, match="paused since this stop was decided: left alone"):
            await host.shutdown(name, 5, paused=False)
        assert (await info(host, name)).state == "Paused"
    finally:
        await host.close()
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()
