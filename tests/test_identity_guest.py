"""Per-VM identity proven inside real Linux guests (issue 15): a 3-VM fleet on a reflink store boots the tiny
Debian-kernel image (vmfleet.guest) under the real libvirtd and QEMU (TCG), on a libvirt network with DHCP
(dnsmasq). Each guest prints its own hostname, instance-id, MAC, IP and first user-data line, read from its own
seed; status says the same. One fleet, booted in parallel, serves every check."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from conftest import TIMINGS
from helpers import GuestSite, dhcp_network, linux_image, wait_for
from vmfleet.engine import reconcile_fleet
from vmfleet.seed import read_files

pytestmark = pytest.mark.identity

NETWORK = "vmfleet-id"
BRIDGE = "vmfleet-id0"
SUBNET = "10.251.7"
LINE = re.compile(
    r"VMFLEET-GUEST hostname=(?P<hostname>\S*) instance-id=(?P<iid>\S*) mac=(?P<mac>\S*) ip=(?P<ip>\S*) "
    r"user-data=(?P<user_data>[^\r\n]*)"
)


@pytest.fixture(scope="module")
def network(libvirtd: str) -> Iterator[str]:
    with dhcp_network(libvirtd, NETWORK, BRIDGE, SUBNET) as name:
        yield name


class Site(GuestSite):
    def __init__(self, xfs: Path, base: Path, image: Path, unique: str):
        super().__init__(xfs / f"identity-{unique}", base / "logs", {"linux.img": image}, f"id-{unique}")
        self.user_data = "#cloud-config first {{ name }} {{ ordinal }}\nruncmd: []\n"

    async def converge(self, previous: dict | None = None) -> dict:
        fleet, template, store, hosts = self.objects(
            {
                "image": {"path": "images/linux.img"},
                "memoryMiB": 192,
                "network": NETWORK,
                "cloudInit": {"metaData": {"site": self.ns}},
            },
            # OnDelete: a running guest keeps its seed until restarted (RestartRequired), as this test shows
            {"replicas": 3, "cloudInit": {"userData": self.user_data}, "updateStrategy": {"type": "OnDelete"}},
        )
        return (await reconcile_fleet(self.runtime, fleet, template, store, hosts, previous)).status

    def line(self, vm: str) -> dict[str, str] | None:
        found = LINE.search(self.console(vm))
        return found.groupdict() if found else None


@pytest.fixture
async def site(xfs: Path, tmp_path: Path, network: str, unique: str) -> Iterator[Site]:
    s = Site(xfs, tmp_path, linux_image(tmp_path), unique)
    yield s
    await s.close()


def _user_data(site: Site, status: dict, vm: str) -> list[bytes]:
    """The user data of each seed image of `vm`, newest first."""
    paths = sorted((site.root / status["cloneDirectory"]).glob(f"{vm}.cidata-*.iso"), key=lambda p: -p.stat().st_mtime)
    return [read_files(p.read_bytes())["user-data"] for p in paths]


async def test_each_guest_boots_with_its_own_identity_and_status_says_where_it_is(site: Site, libvirtd: str) -> None:
    t0 = time.monotonic()
    status = await site.converge()
    assert status["readyReplicas"] == 3, status["conditions"]
    vms = {c["name"]: c for c in status["clones"]}
    lines = {vm: wait_for(lambda vm=vm: site.line(vm), 120, f"{vm}'s console line") for vm in vms}
    TIMINGS["identity: 3 Linux guests cloned, seeded and booted to their console line (TCG, parallel)"] = (
        time.monotonic() - t0
    )
    conn = libvirt.open(libvirtd)
    try:
        for vm, line in lines.items():
            c = vms[vm]
            dom = conn.lookupByName(f"{site.ns}.{vm}")
            assert line["hostname"] == vm
            assert line["iid"] == c["uuid"] == dom.UUIDString()
            assert line["mac"] == c["mac"]
            xml = dom.XMLDesc()
            assert f"<mac address='{c['mac']}'/>" in xml
            seed_disk = re.search(
                r"<disk type='file' device='disk'>(?:(?!</disk>).)*cidata(?:(?!</disk>).)*</disk>", xml, re.S
            )
            assert seed_disk and "<readonly/>" in seed_disk.group(0), xml  # the guest cannot write its seed
            assert line["user_data"] == f"#cloud-config first {vm} {c['ordinal']}"
            assert line["ip"].startswith("10.251.7."), line
        assert len({line["mac"] for line in lines.values()}) == len({line["iid"] for line in lines.values()}) == 3

        # The address the guest got from dnsmasq is in status, once the lease is there: where to ssh.
        deadline = time.monotonic() + 60
        while True:
            status = await site.converge(status)
            got = {c["name"]: c.get("addresses", []) for c in status["clones"]}
            if all(got.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        assert got == {vm: [line["ip"]] for vm, line in lines.items()}

        # A change of user data reaches each seed (the guest reads it at its next boot: RestartRequired says so).
        site.user_data = "#cloud-config second {{ name }}\n"
        status = await site.converge(status)
        restart = next(c for c in status["conditions"] if c["type"] == "RestartRequired")
        assert restart["status"] == "True"
        for vm in vms:  # the new seed; the old one stays while the running guest may still read it
            assert _user_data(site, status, vm) == [
                f"#cloud-config second {vm}\n".encode(),
                f"#cloud-config first {vm} {vms[vm]['ordinal']}\nruncmd: []\n".encode(),
            ]
        # ... and a rebooted guest prints it; its identity stays.
        conn.lookupByName(f"{site.ns}.web-1").destroy()
        status = await site.converge(status)  # started again: its console log starts afresh (append="off")
        again = wait_for(
            lambda: (line := site.line("web-1")) and "second" in line["user_data"] and line, 120, "web-1 to boot again"
        )
        assert again["user_data"] == "#cloud-config second web-1"
        assert (again["iid"], again["mac"], again["hostname"]) == (
            lines["web-1"]["iid"],
            lines["web-1"]["mac"],
            "web-1",
        )
        assert len(list((site.root / status["cloneDirectory"]).glob("web-1.*.iso"))) == 1  # the old seed went

        # A VM undefined by hand is made again with the same UUID and MAC.
        dom = conn.lookupByName(f"{site.ns}.web-2")
        uuid, xml = dom.UUIDString(), dom.XMLDesc()
        dom.destroy()
        dom.undefine()
        status = await site.converge(status)
        remade = conn.lookupByName(f"{site.ns}.web-2")
        assert remade.UUIDString() == uuid
        assert re.search(r"<mac address='([^']+)'/>", remade.XMLDesc()).group(1) == re.search(  # type: ignore[union-attr]
            r"<mac address='([^']+)'/>", xml
        ).group(1)  # type: ignore[union-attr]
    finally:
        conn.close()
