"""Real KVM hosts: QEMU (TCG) guests on the real libvirtd, reached as two KvmHosts (qemu:///system and
qemu+libssh:// through sshd), booting from their own clones; placement, drift and outages."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from conftest import TIMINGS, Sshd
from helpers import clone_path, open_up, wait_for
from vmfleet.api import parse
from vmfleet.api.types import CloneStore, KvmHost, VmFleet, VmTemplate
from vmfleet.engine import Runtime, reconcile_fleet, teardown_fleet
from vmfleet.images import boot_sector

pytestmark = pytest.mark.kvm


class Site:
    """A reflink store on XFS, seen by host b through a bind mount at another path, and two KvmHosts."""

    def __init__(self, xfs: Path, base: Path, libvirtd: str, sshd: Sshd, image: Path, unique: str):
        self.root = xfs / f"kvm-{unique}"
        (self.root / "images").mkdir(parents=True)
        shutil.copyfile(image, self.root / "images" / "t.img")
        self.view = base / "b-mount"  # where host b mounts the store
        self.view.mkdir()
        subprocess.run(["mount", "--bind", str(self.root), str(self.view)], check=True)
        self.logs = base / "logs"
        self.logs.mkdir()
        for p in (self.root, self.view, self.logs):
            open_up(p)
        self.sshd = sshd
        self.ns = f"kvm-{unique}"
        self.conn = libvirt.open(libvirtd)
        self.runtime = Runtime(lambda ref: {"ssh-privatekey": sshd.private_key, "known_hosts": sshd.known_hosts})

    def store(self) -> CloneStore:
        return parse(
            {
                "apiVersion": "vmfleet.io/v1alpha1",
                "kind": "CloneStore",
                "metadata": {"name": "xfs"},
                "spec": {"driver": "reflink", "root": str(self.root)},
            }
        )  # type: ignore[return-value]

    def hosts(self, vcpus: int = 4, logs: Path | None = None) -> list[KvmHost]:
        logs = logs or self.logs
        a = {
            "uri": "qemu:///system",
            "domainType": "qemu",
            "consoleLogDir": str(logs),
            "capacity": {"vcpus": vcpus, "memoryMiB": 4096},
        }
        b = {
            "uri": f"qemu+libssh://root@127.0.0.1:{self.sshd.port}/system",
            "domainType": "qemu",
            "consoleLogDir": str(logs),
            "capacity": {"vcpus": vcpus, "memoryMiB": 4096},
            "secretRef": {"name": "kvm-b-ssh", "namespace": "vmfleet-system"},
            "storeMounts": [{"store": "xfs", "path": str(self.view)}],
        }
        return [
            parse(
                {
                    "apiVersion": "vmfleet.io/v1alpha1",
                    "kind": "KvmHost",  # type: ignore[misc]
                    "metadata": {"name": name, "labels": {"site": self.ns}},
                    "spec": spec,
                }
            )
            for name, spec in (("kvm-a", a), ("kvm-b", b))
        ]

    def template(self, vcpus: int = 1, memory_mib: int = 32) -> VmTemplate:
        return parse(
            {
                "apiVersion": "vmfleet.io/v1alpha1",
                "kind": "VmTemplate",  # type: ignore[return-value]
                "metadata": {"name": "tiny", "namespace": self.ns},
                "spec": {
                    "storeRef": {"name": "xfs"},
                    "image": {"path": "images/t.img"},
                    "vcpus": vcpus,
                    "memoryMiB": memory_mib,
                },
            }
        )

    def fleet(
        self,
        replicas: int,
        running: bool = True,
        placement: str = "spread",
        overrides: list[dict] | None = None,
        update: dict | None = None,
    ) -> VmFleet:
        return parse(
            {
                "apiVersion": "vmfleet.io/v1alpha1",
                "kind": "VmFleet",  # type: ignore[return-value]
                "metadata": {"name": "web", "namespace": self.ns},
                "spec": {
                    "templateRef": {"name": "tiny"},
                    "replicas": replicas,
                    "running": running,
                    "placement": placement,
                    "hostSelector": {"matchLabels": {"site": self.ns}},
                    "overrides": overrides or [],
                    "shutdown": {"gracePeriodSeconds": 0},  # the boot-sector guest ignores the ACPI button
                    "updateStrategy": update or {},
                },
            }
        )

    async def converge(
        self,
        fleet: VmFleet,
        previous: dict | None = None,
        vcpus: int = 4,
        template: VmTemplate | None = None,
        hosts: list[KvmHost] | None = None,
    ):
        return await reconcile_fleet(
            self.runtime, fleet, template or self.template(), self.store(), hosts or self.hosts(vcpus), previous
        )

    def log(self, vm: str, logs: Path | None = None) -> str:
        path = (logs or self.logs) / f"{self.ns}.{vm}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def domain(self, vm: str) -> libvirt.virDomain:
        return self.conn.lookupByName(f"{self.ns}.{vm}")

    def ours(self) -> list[str]:
        return sorted(d.name() for d in self.conn.listAllDomains() if d.name().startswith(f"{self.ns}."))


@pytest.fixture
async def site(xfs: Path, tmp_path: Path, libvirtd: str, sshd: Sshd, small_image: Path, unique: str) -> Iterator[Site]:
    s = Site(xfs, tmp_path, libvirtd, sshd, small_image, unique)
    yield s
    if not sshd.proc or sshd.proc.poll() is not None:
        sshd.start()
    await teardown_fleet(s.runtime, s.fleet(0), [s.store()], s.hosts())
    await s.runtime.close()
    s.conn.close()
    subprocess.run(["umount", str(s.view)], check=False)


def placement(status: dict) -> dict[str, str]:
    return {c["name"]: c.get("host", "") for c in status["clones"]}


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == kind)


async def test_a_fleet_on_two_real_endpoints_boots_scales_heals_and_goes(site: Site) -> None:
    t0 = time.monotonic()
    first = await site.converge(site.fleet(4))
    status = first.status
    assert status["readyReplicas"] == 4, status["conditions"]
    assert placement(status) == {"web-0": "kvm-a", "web-1": "kvm-b", "web-2": "kvm-a", "web-3": "kvm-b"}
    for i in range(4):
        wait_for(lambda: "VMFLEET-BOOT-OK" in site.log(f"web-{i}"), 30, f"web-{i} to boot")
    assert str(site.view) in site.domain("web-1").XMLDesc()  # host b's path for the same clone
    TIMINGS["kvm: 4 VMs cloned, defined, started and booted on two endpoints"] = time.monotonic() - t0

    # Each VM boots its own clone: give every clone its own boot marker, and read it back.
    status = (await site.converge(site.fleet(4, running=False), status)).status
    assert status["readyReplicas"] == 4 and not any(site.domain(f"web-{i}").isActive() for i in range(4))
    for c in status["clones"]:
        with open(site.root / clone_path(status, c), "r+b") as disk:
            disk.write(boot_sector(f"OWN-CLONE-{c['name']}"))
    status = (await site.converge(site.fleet(4), status)).status
    for i in range(4):
        wait_for(lambda: f"OWN-CLONE-web-{i}" in site.log(f"web-{i}"), 30, f"web-{i} to boot its own clone")
    parent = site.root / status["parent"]
    assert parent.read_bytes()[:512] != boot_sector("OWN-CLONE-web-0")  # the parent never changed

    t1 = time.monotonic()
    status = (await site.converge(site.fleet(6), status)).status
    assert status["readyReplicas"] == 6
    assert sorted(placement(status).values()).count("kvm-a") == 3
    status = (await site.converge(site.fleet(2), status)).status
    assert status["readyReplicas"] == 2 and site.ours() == [f"{site.ns}.web-0", f"{site.ns}.web-1"]
    assert sorted(p.name for p in site.root.rglob("web-*.img")) == ["web-0.img", "web-1.img"]
    TIMINGS["kvm: scaled 4 -> 6 -> 2"] = time.monotonic() - t1

    # Drift: a domain undefined by hand comes back on its host; one stopped by hand is started.
    site.domain("web-1").destroy()
    site.domain("web-1").undefine()
    site.domain("web-0").destroy()
    healed = await site.converge(site.fleet(2), status)
    assert healed.status["readyReplicas"] == 2
    assert placement(healed.status) == {"web-0": "kvm-a", "web-1": "kvm-b"}
    assert site.domain("web-0").isActive() and site.domain("web-1").isActive()
    status = healed.status

    # One endpoint goes away: Degraded, its VM reported, nothing moved; back again: converged.
    site.sshd.stop()
    out = await site.converge(site.fleet(2), status)
    assert condition(out.status, "Degraded")["reason"] == "HostUnreachable"
    assert {c["name"]: c["state"] for c in out.status["clones"]} == {"web-0": "Running", "web-1": "Unknown"}
    assert "HostUnreachable" in [e.reason for e in out.events]
    site.sshd.start()
    back = await site.converge(site.fleet(2), out.status)
    assert back.status["readyReplicas"] == 2 and condition(back.status, "Ready")["status"] == "True"
    status = back.status

    # A clone deleted by hand is reported, never recreated empty.
    (site.root / next(clone_path(status, c) for c in status["clones"] if c["name"] == "web-1")).unlink()
    lost = await site.converge(site.fleet(2), status)
    assert condition(lost.status, "Degraded")["reason"] == "CloneLost"
    assert {c["name"]: c["state"] for c in lost.status["clones"]}["web-1"] == "Lost"
    assert "CloneLost" in [e.reason for e in lost.events]
    assert not list((site.root / f"vmfleet/clones/{site.ns}/web").rglob("web-1.img"))

    t2 = time.monotonic()
    gone = await teardown_fleet(site.runtime, site.fleet(2), [site.store()], site.hosts())
    assert gone.complete and site.ours() == [] and not list(site.root.rglob("web-*.img"))
    TIMINGS["kvm: fleet deleted"] = time.monotonic() - t2


async def test_pack_fills_one_endpoint_before_the_next(site: Site) -> None:
    status = (await site.converge(site.fleet(3, placement="pack"), vcpus=2)).status
    assert status["readyReplicas"] == 3
    assert placement(status) == {"web-0": "kvm-a", "web-1": "kvm-a", "web-2": "kvm-b"}


def test_a_host_secret_needs_a_libssh_uri() -> None:
    from vmfleet.api import InvalidManifest

    with pytest.raises(InvalidManifest, match="spec.secretRef: spec.secretRef needs a qemu\\+libssh://"):
        parse(
            {
                "apiVersion": "vmfleet.io/v1alpha1",
                "kind": "KvmHost",
                "metadata": {"name": "x"},
                "spec": {"uri": "qemu+ssh://root@h/system", "secretRef": {"name": "s", "namespace": "n"}},
            }
        )
