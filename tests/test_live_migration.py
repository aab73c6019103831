"""Drain with live migration (issue 17): two real libvirtd instances on this machine, each a KvmHost, over one
store that libvirt counts as shared; a running QEMU guest moves from one to the other without ever going inactive.
How the two instances are made is reference/test-infra.md, "Two libvirtd instances and live migration"."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from conftest import unavailable
from helpers import LifecycleEvents
from test_rollout import _doc
from vmfleet.api import parse
from vmfleet.engine import Runtime, host_status, reconcile_fleet

pytestmark = pytest.mark.hosts

# Run under `unshare -m -u --propagation private`: libvirt's state directories are bind-mounted over by private
# ones, so this libvirtd (and its virtlogd) see nothing of the machine's own, nor of the other instance.
INSTANCE = """#!/bin/sh
set -e
D=$1
mkdir -p "$D/run" "$D/lib" "$D/cache" "$D/etc" "$D/log"
cp -a /etc/libvirt/. "$D/etc/"
cat > "$D/etc/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "$2"
auth_tcp = "none"
host_uuid = "$3"
CONF
printf 'cgroup_controllers = [ ]\\nuser = "root"\\ngroup = "root"\\n' > "$D/etc/qemu.conf"
mount --bind "$D/run" /run/libvirt
mount --bind "$D/lib" /var/lib/libvirt
mount --bind "$D/cache" /var/cache/libvirt
mount --bind "$D/etc" /etc/libvirt
mount --bind "$D/log" /var/log/libvirt
virtlogd -d -p "$D/virtlogd.pid"
libvirtd -d -l -p "$D/libvirtd.pid"
"""


@dataclass
class Instance:
    directory: Path
    port: int
    bridge: str = ""  # of its network NETWORK (a bridge without addresses: the guests' NICs, their MACs)

    @property
    def uri(self) -> str:
        return f"qemu+tcp://127.0.0.1:{self.port}/system"

    def pids(self) -> list[int]:
        """Every process this instance started: its guests' QEMU, libvirtd and virtlogd (by their pid files)."""
        files = [p for p in (self.directory / "run" / "qemu").glob("*.pid") if p.name != "driver.pid"]
        files += [self.directory / "libvirtd.pid", self.directory / "virtlogd.pid"]
        out = []
        for f in files:
            try:
                out.append(int(f.read_text().strip()))
            except (OSError, ValueError):
                continue
        return out


NETWORK = "lm"


@dataclass
class Pair:
    store: Path  # the store's root, on a file system libvirt counts as shared (fuse.glusterfs, by bindfs)
    local: Path  # another directory, on a local file system: libvirt refuses to migrate a disk there
    a: Instance
    b: Instance


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(uri: str) -> bool:
    try:
        libvirt.open(uri).close()
    except libvirt.libvirtError:
        return False
    return True


def _end(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 10
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def two_libvirtds(tmp_path: Path) -> Iterator[Pair]:
    """Two libvirtd instances (own mount namespace, configuration, run directories, host_uuid and TCP port) and a
    store both see as shared storage. Every process they started is killed at the end, whatever happened."""
    if os.geteuid() != 0:
        unavailable("two libvirtd instances need root (mount namespaces)")
    needed = ("libvirtd", "virtlogd", "unshare", "bindfs", "fusermount", "qemu-system-x86_64")
    missing = [p for p in needed if not shutil.which(p)]
    if missing:
        unavailable(f"{', '.join(missing)} missing (apt-get install libvirt-daemon-system qemu-system-x86 bindfs)")
    base = Path(f"/tmp/vmfleet-lm-{uuid.uuid4().hex[:8]}")  # QEMU must reach it: not under pytest's 0700 tmp_path
    real, shared, local = base / "real", base / "store", base / "local"
    for d in (real, shared, local):
        d.mkdir(parents=True)
    script = base / "instance.sh"
    script.write_text(INSTANCE)
    script.chmod(0o755)
    instances: list[Instance] = []
    mounted = False
    try:
        done = subprocess.run(
            ["bindfs", "-o", "subtype=glusterfs,allow_other", str(real), str(shared)], capture_output=True, text=True
        )
        if done.returncode != 0:
            unavailable(f"bindfs could not mount the shared store: {done.stderr.strip()}")
        mounted = True
        for name in ("a", "b"):
            instance = Instance(base / name, _free_port())
            instances.append(instance)
            started = subprocess.run(
                ["unshare", "-m", "-u", "--propagation", "private", str(script)]
                + [str(instance.directory), str(instance.port), str(uuid.uuid4())],
                capture_output=True,
                text=True,
            )
            if started.returncode != 0:
                unavailable(f"libvirtd instance {name} did not start: {started.stderr.strip()}")
        for instance in instances:
            deadline = time.monotonic() + 30
            while not _answers(instance.uri):
                if time.monotonic() > deadline:
                    unavailable(f"libvirtd at {instance.uri} did not answer within 30 s")
                time.sleep(0.1)
            instance.bridge = f"vlm{uuid.uuid4().hex[:8]}"  # one network namespace: bridge names must differ
            conn = libvirt.open(instance.uri)
            try:
                xml = f"<network><name>{NETWORK}</name><bridge name='{instance.bridge}'/></network>"
                conn.networkDefineXML(xml).create()
            finally:
                conn.close()
        yield Pair(shared, local, instances[0], instances[1])
    finally:
        for instance in instances:
            _end(instance.pids())
            if instance.bridge:  # libvirtd leaves its network's bridge when it goes
                subprocess.run(["ip", "link", "delete", instance.bridge], capture_output=True)
        if mounted:
            subprocess.run(["fusermount", "-u", str(shared)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


class Site:
    def __init__(self, pair: Pair, image: Path, root: Path):
        (root / "images").mkdir()
        shutil.copyfile(image, root / "images" / "boot.img")
        self.pair, self.root = pair, root
        self.store = parse(_doc("CloneStore", "shared", {"driver": "qcow2", "root": str(root)}, ns=None))
        self.template = parse(
            _doc(
                "VmTemplate",
                "t",
                {"storeRef": {"name": "shared"}, "image": {"path": "images/boot.img"}, "network": NETWORK},
            )
        )
        # The boot-sector guest has no ACPI: a cold move would wait out the 60 s default grace to destroy it.
        spec = {"templateRef": {"name": "t"}, "replicas": 1, "placement": "pack", "shutdown": {"gracePeriodSeconds": 0}}
        self.fleet = parse(_doc("VmFleet", "web", spec))

    def hosts(self, drain: str = "") -> list[Any]:
        out = []
        for name, instance in (("kvm-a", self.pair.a), ("kvm-b", self.pair.b)):
            spec = {"uri": instance.uri, "domainType": "qemu", "migrationAddress": "127.0.0.1"}
            meta = {"annotations": {"vmfleet.io/drain": "true"}} if name == drain else {}
            out.append(parse(_doc("KvmHost", name, spec, ns=None, **meta)))
        return out


def _domains(uri: str) -> list[tuple[str, bool, str, str]]:
    """(name, active, UUID, MAC of its NIC as it runs or is defined) of each domain at `uri`."""
    conn = libvirt.open(uri)
    try:
        out = []
        for d in conn.listAllDomains():
            mac = ET.fromstring(d.XMLDesc(0)).find("devices/interface/mac")
            out.append((d.name(), bool(d.isActive()), d.UUIDString(), "" if mac is None else mac.get("address", "")))
        return out
    finally:
        conn.close()


async def test_a_drain_live_migrates_a_running_guest_which_never_goes_inactive(
    two_libvirtds: Pair, runtime: Runtime, small_image: Path
) -> None:
    site = Site(two_libvirtds, small_image, two_libvirtds.store)
    first = await reconcile_fleet(runtime, site.fleet, site.template, site.store, site.hosts())
    assert first.status["readyReplicas"] == 1, first.status["conditions"]
    ((name, active, vm_uuid, mac),) = _domains(two_libvirtds.a.uri)
    assert name == "prod.web-0" and active and mac == first.status["clones"][0]["mac"]
    clone = site.root / first.status["cloneDirectory"] / first.status["clones"][0]["file"]
    inode = clone.stat().st_ino
    on_a, on_b = LifecycleEvents(two_libvirtds.a.uri), LifecycleEvents(two_libvirtds.b.uri)
    try:
        second = await reconcile_fleet(
            runtime, site.fleet, site.template, site.store, site.hosts(drain="kvm-a"), first.status
        )
        on_a.wait(name, libvirt.VIR_DOMAIN_EVENT_STOPPED, 10)
        seen_a, seen_b = [(e, d) for _, e, d in on_a.of(name)], [(e, d) for _, e, d in on_b.of(name)]
    finally:
        on_a.close()
        on_b.close()
    assert [e.reason for e in second.events if e.type == "Warning"] == [], second.events
    assert [(e.reason, e.message) for e in second.events if e.reason == "Migrated"] == [
        ("Migrated", "moved (drain) 1 VM(s): web-0")
    ]
    assert _domains(two_libvirtds.a.uri) == [] and _domains(two_libvirtds.b.uri) == [(name, True, vm_uuid, mac)]
    # It left kvm-a by migration only, and came up on kvm-b by it: never shut off, crashed or started afresh.
    assert (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED) in seen_a, seen_a
    assert [e for e in seen_a if e[0] == libvirt.VIR_DOMAIN_EVENT_STOPPED] == [
        (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED)
    ]
    assert (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED) in seen_b, seen_b
    assert not [
        e for e in seen_a + seen_b if e[0] in (libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_CRASHED)
    ]
    assert second.status["clones"][0]["host"] == "kvm-b" and second.status["readyReplicas"] == 1
    assert clone.stat().st_ino == inode and second.status["clones"][0]["uuid"] == vm_uuid
    assert second.status["clones"][0]["mac"] == mac
    drained = await host_status(runtime, site.hosts(drain="kvm-a")[0], None)
    assert [(c["status"], c["reason"]) for c in drained["conditions"] if c["type"] == "Drained"] == [
        ("True", "Drained")
    ]


async def test_a_guest_moves_cold_when_libvirt_refuses_to_migrate_it_and_says_why(
    two_libvirtds: Pair, runtime: Runtime, small_image: Path
) -> None:
    # The store on a local file system: libvirt will not migrate a disk that is not on shared storage.
    site = Site(two_libvirtds, small_image, two_libvirtds.local)
    first = await reconcile_fleet(runtime, site.fleet, site.template, site.store, site.hosts())
    ((name, _, vm_uuid, mac),) = _domains(two_libvirtds.a.uri)
    second = await reconcile_fleet(
        runtime, site.fleet, site.template, site.store, site.hosts(drain="kvm-a"), first.status
    )
    cold = [e.message for e in second.events if e.reason == "MigratedCold"]
    assert len(cold) == 1 and cold[0].startswith("web-0: not migrated live (KvmHost kvm-a: migrating prod.web-0")
    assert "unsafe" in cold[0] and cold[0].endswith("moved cold to kvm-b")
    assert _domains(two_libvirtds.a.uri) == [] and _domains(two_libvirtds.b.uri) == [(name, True, vm_uuid, mac)]
    assert second.status["readyReplicas"] == 1
