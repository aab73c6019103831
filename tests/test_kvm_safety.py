"""Safety on the real libvirtd (QEMU TCG guests): I4, every spec change converges by redefining domains in place
(issue 12, finding 5), and I2's second line of defence, a second domain on a clone refused by the host itself
(libvirtd runs with lock_manager = "lockd": the `libvirtd` fixture sets it and starts virtlockd)."""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from conftest import LOCK_MANAGER, QEMU_CONF, _daemon_pid, lock_disks_with_virtlockd
from helpers import open_up, wait_for
from test_kvm import Site, condition, site  # noqa: F401 - `site` is the fixture
from vmfleet.disks import FileDisk
from vmfleet.hypervisor import DomainSpec, Owner, domain_xml
from vmfleet.storage.reflink import ReflinkStore

pytestmark = [pytest.mark.safety, pytest.mark.kvm]


def defined(dom: libvirt.virDomain, live: bool = False) -> tuple[int, int]:
    """(vCPUs, memory in MiB) of a domain's live definition, or of its persistent one (the next boot's)."""
    xml = ET.fromstring(dom.XMLDesc(0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert xml.find("memory").attrib.get("unit", "KiB") == "KiB"  # type: ignore[union-attr]
    return int(xml.findtext("vcpu")), int(xml.findtext("memory")) // 1024  # type: ignore[arg-type]


def console_log(dom: libvirt.virDomain) -> str:
    log = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("devices/serial/log")
    return log.attrib["file"] if log is not None else ""


def restart_required(status: dict) -> dict[str, bool]:
    return {c["name"]: c.get("restartRequired", False) for c in status["clones"]}


def failures(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{o.action.op.value} {o.action.ordinal}: {o.error}" for o in result.outcomes if not o.ok] + [
        f"{e.reason}: {e.message}" for e in result.events if e.reason.endswith("Failed")
    ]


# RestartRequired semantics: a person restarts them (RollingUpdate would: test_rollout).
ON_DELETE = {"type": "OnDelete"}


async def test_finding_5_spec_changes_redefine_running_vms_in_place_and_a_restart_applies_them(site: Site) -> None:
    """Before each domain had a <uuid>, libvirt refused every redefinition ("domain '….web-0' already exists
    with uuid …"): DefineFailed on every pass, ReplicasNotReady for ever."""
    vms = ("web-0", "web-1")  # web-0 on kvm-a (qemu:///system), web-1 on kvm-b (qemu+libssh), one libvirtd
    status = (await site.converge(site.fleet(2, update=ON_DELETE))).status
    assert status["readyReplicas"] == 2, status["conditions"]
    uuids = {vm: site.domain(vm).UUIDString() for vm in vms}
    assert all(defined(site.domain(vm), live=True) == (1, 32) for vm in vms)

    # The template changes while both VMs run: redefined in place, still running the old definition.
    bigger = site.template(vcpus=2, memory_mib=48)
    changed = await site.converge(site.fleet(2, update=ON_DELETE), status, template=bigger)
    assert failures(changed) == []
    assert {vm: site.domain(vm).UUIDString() for vm in vms} == uuids
    for vm in vms:
        assert site.domain(vm).isActive()
        assert defined(site.domain(vm)) == (2, 48) and defined(site.domain(vm), live=True) == (1, 32)
    status = changed.status
    assert condition(status, "Ready")["status"] == "True" and status["readyReplicas"] == 2
    assert condition(status, "RestartRequired")["status"] == "True"
    assert "web-0, web-1" in condition(status, "RestartRequired")["message"]
    assert restart_required(status) == {"web-0": True, "web-1": True}

    # A person stops web-0: the next pass starts it again, with the new definition.
    site.domain("web-0").destroy()
    again = await site.converge(site.fleet(2, update=ON_DELETE), status, template=bigger)
    assert failures(again) == []
    assert site.domain("web-0").isActive() and site.domain("web-0").UUIDString() == uuids["web-0"]
    assert defined(site.domain("web-0"), live=True) == (2, 48) and site.domain("web-0").info()[3] == 2
    status = again.status
    assert restart_required(status) == {"web-0": False, "web-1": True}
    assert "web-0" not in condition(status, "RestartRequired")["message"]
    assert condition(status, "Ready")["status"] == "True"

    # An override for web-1 changes: redefined in place, reported, and applied at its next start.
    overrides = [{"ordinal": 1, "vcpus": 1, "memoryMiB": 64}]
    changed = await site.converge(site.fleet(2, overrides=overrides, update=ON_DELETE), status, template=bigger)
    assert failures(changed) == []
    assert site.domain("web-1").UUIDString() == uuids["web-1"]
    assert defined(site.domain("web-1")) == (1, 64) and defined(site.domain("web-0")) == (2, 48)
    assert restart_required(changed.status) == {"web-0": False, "web-1": True}
    assert condition(changed.status, "Ready")["status"] == "True"
    status = changed.status

    # Both KvmHosts get another consoleLogDir: every domain is redefined in place, both report it.
    logs = site.logs.parent / "logs-2"
    logs.mkdir()
    open_up(logs)
    hosts = site.hosts(logs=logs)
    moved = await site.converge(
        site.fleet(2, overrides=overrides, update=ON_DELETE), status, template=bigger, hosts=hosts
    )
    assert failures(moved) == []
    assert {vm: site.domain(vm).UUIDString() for vm in vms} == uuids
    assert all(console_log(site.domain(vm)) == f"{logs}/{site.ns}.{vm}.log" for vm in vms)
    assert restart_required(moved.status) == {"web-0": True, "web-1": True}
    status = moved.status

    # Both restarted by hand: they boot with every change, and nothing needs a restart any more.
    for vm in vms:
        site.domain(vm).destroy()
    done = await site.converge(
        site.fleet(2, overrides=overrides, update=ON_DELETE), status, template=bigger, hosts=hosts
    )
    assert failures(done) == []
    assert defined(site.domain("web-0"), live=True) == (2, 48) and defined(site.domain("web-1"), live=True) == (1, 64)
    for vm in vms:
        wait_for(lambda: "VMFLEET-BOOT-OK" in site.log(vm, logs), 30, f"{vm} to boot, logging to {logs}")
    assert condition(done.status, "Ready")["status"] == "True" and done.status["readyReplicas"] == 2
    assert restart_required(done.status) == {"web-0": False, "web-1": False}
    assert "RestartRequired" not in [c["type"] for c in done.status["conditions"]]
    assert {vm: site.domain(vm).UUIDString() for vm in vms} == uuids


# ---------------------------------------------------------------------------- I2: the host refuses a 2nd domain


@pytest.fixture
async def clone(xfs: Path, small_image: Path, unique: str) -> Path:
    """A real reflink clone on XFS, as a fleet's VM gets it."""
    root = xfs / f"lock-{unique}"
    (root / "images").mkdir(parents=True)
    shutil.copyfile(small_image, root / "images" / "t.img")
    store = ReflinkStore(str(root))
    await store.prepare_parent("images/t.img", "raw", "vmfleet/parents/t.img")
    await store.create_clone("vmfleet/parents/t.img", "raw", "vmfleet/clones/ns/web/web-0.img")
    open_up(root / "vmfleet/clones/ns/web")
    return root / "vmfleet/clones/ns/web/web-0.img"


@pytest.fixture
def domains(libvirtd: str, unique: str) -> Iterator[tuple[libvirt.virConnect, list[libvirt.virDomain]]]:
    conn = libvirt.open(libvirtd)
    made: list[libvirt.virDomain] = []
    yield conn, made
    for dom in made:
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
    conn.close()


def define(conn: libvirt.virConnect, made: list, name: str, disk: Path) -> libvirt.virDomain:
    """A tiny TCG domain on `disk`, with its own name and UUID."""
    spec = DomainSpec(name, "qemu", 1, 16, "linux-virtio", None, "bios", FileDisk(str(disk), "raw"), None, None)
    owner = Owner(f"uid-{name}", "ns", "web", 0, "vmfleet/clones/ns/web/web-0.img", spec.spec_hash())
    dom = conn.defineXML(domain_xml(spec, owner, str(uuid.uuid4())))
    made.append(dom)
    return dom


def virtlockd_leases(disk: Path) -> list[str]:
    """The locks virtlockd holds on `disk` (lockd's default lockspace locks the disk file itself)."""
    st, pid = os.stat(disk), _daemon_pid("virtlockd")
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return [
        line
        for line in Path("/proc/locks").read_text().splitlines()
        if line.split()[4:6] == [str(pid), inode] and " POSIX " in line
    ]


def test_the_real_libvirtd_runs_with_the_lockd_lock_manager(libvirtd: str) -> None:
    assert LOCK_MANAGER in [line.strip() for line in QEMU_CONF.read_text().splitlines()]
    assert _daemon_pid("virtlockd") is not None


def test_the_fixture_sets_one_line_of_qemu_conf_and_keeps_the_rest(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('# the user\'s\n#lock_manager = "lockd"\nuser = "root"\n')
    conf.chmod(0o600)
    assert lock_disks_with_virtlockd(conf)
    assert conf.read_text() == '# the user\'s\n#lock_manager = "lockd"\nuser = "root"\nlock_manager = "lockd"\n'
    assert not lock_disks_with_virtlockd(conf) and conf.stat().st_mode & 0o777 == 0o600
    conf.write_text('lock_manager = "sanlock"\nuser = "root"\n  lock_manager="x"')
    assert lock_disks_with_virtlockd(conf)
    assert conf.read_text() == 'lock_manager = "lockd"\nuser = "root"\n'


async def test_a_second_domain_on_a_running_clone_is_refused_by_qemu_while_virtlockd_holds_the_lease(
    clone: Path, domains: tuple[libvirt.virConnect, list], unique: str
) -> None:
    conn, made = domains
    first = define(conn, made, f"vmfleet-lock-{unique}-a", clone)
    second = define(conn, made, f"vmfleet-lock-{unique}-b", clone)
    assert first.UUIDString() != second.UUIDString()
    first.create()
    # Layer 1, virtlockd: the lease on the clone, a write lock held by virtlockd while the first domain runs.
    assert [line.split()[3] for line in virtlockd_leases(clone)] == ["WRITE"]
    with pytest.raises(libvirt.libvirtError) as refused:
        second.create()
    # Layer 2, QEMU's own image locking, is the one that refuses here: libvirt starts QEMU paused and takes the
    # leases only when it starts the CPUs, but QEMU opens the disk (and takes its locks) before that, so on one
    # host QEMU always sees the first domain first. virtlockd refuses what QEMU cannot see (the next test).
    assert 'Failed to get "write" lock' in str(refused.value), refused.value
    assert f"Is another process using the image [{clone}]" in str(refused.value)
    assert not second.isActive() and first.isActive()
    assert len(virtlockd_leases(clone)) == 1
    first.destroy()
    assert virtlockd_leases(clone) == []


async def test_virtlockd_refuses_a_domain_whose_clone_another_host_has_leased(
    clone: Path, domains: tuple[libvirt.virConnect, list], unique: str
) -> None:
    """Another host's virtlockd holds the clone's lease as a POSIX write lock on its first byte, on storage both
    hosts share: this process takes that same lock, as that virtlockd would. QEMU itself sees no conflict (no
    QEMU has the file open), so only the lock manager stands between the clone and a second writer."""
    conn, made = domains
    dom = define(conn, made, f"vmfleet-lock-{unique}-a", clone)
    fd = os.open(clone, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        with pytest.raises(libvirt.libvirtError) as refused:
            dom.create()
        assert refused.value.get_error_code() == libvirt.VIR_ERR_RESOURCE_BUSY
        assert f"resource busy: Lockspace resource '{clone}' is locked" in str(refused.value)
        assert not dom.isActive()
    finally:
        os.close(fd)  # the other host lets go
    dom.create()
    assert dom.isActive() and len(virtlockd_leases(clone)) == 1
    dom.destroy()
