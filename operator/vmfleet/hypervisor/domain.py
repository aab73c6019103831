"""Domain XML from a VM's settings, and the vmfleet <metadata> that lets the operator recognise its domains."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields
from typing import Any, assert_never

import libvirt

from ..api.schema import PROFILES
from ..disks import DiskSource, FileDisk

METADATA_NS = "https://vmfleet.io/xmlns/domain/v1alpha1"
METADATA_KEY = "vmfleet"

STATES = {
    0: "Unknown",
    1: "Running",
    2: "Running",  # blocked on I/O: still running
    3: "Paused",
    4: "ShuttingDown",
    5: "Stopped",
    6: "Crashed",
    7: "Suspended",
}
ACTIVE_STATES = {"Running", "Paused", "ShuttingDown", "Suspended"}
# Why a domain stopped, from the reason virDomainGetState gives with VIR_DOMAIN_SHUTOFF ("shutdown": the guest
# powered itself off, or answered the ACPI power button). UNKNOWN, and a reason not listed, read "". A name an
# older libvirt-python lacks is left out, not a crash at import.
STOP_REASONS: dict[int, str] = {
    getattr(libvirt, f"VIR_DOMAIN_SHUTOFF_{name}"): reason
    for name, reason in (
        ("SHUTDOWN", "shutdown"),
        ("DESTROYED", "destroyed"),
        ("CRASHED", "crashed"),
        ("FAILED", "failed"),
        ("SAVED", "saved"),
        ("MIGRATED", "migrated"),
        ("FROM_SNAPSHOT", "snapshot"),
        ("DAEMON", "daemon"),
    )
    if hasattr(libvirt, f"VIR_DOMAIN_SHUTOFF_{name}")
}
# Why an active domain's guest does not run (VIR_DOMAIN_PAUSED's reasons): "user" and "ioerror" wait for a person;
# "starting", "migration", "save", "snapshot", "dump" and "shutting down" end by themselves.
PAUSE_REASONS: dict[int, str] = {
    getattr(libvirt, f"VIR_DOMAIN_PAUSED_{name}"): reason
    for name, reason in (
        ("USER", "user"),
        ("IOERROR", "ioerror"),
        ("WATCHDOG", "watchdog"),
        ("CRASHED", "crashed"),
        ("STARTING_UP", "starting"),
        ("MIGRATION", "migration"),
        ("POSTCOPY", "migration"),
        ("SAVE", "save"),
        ("SNAPSHOT", "snapshot"),
        ("FROM_SNAPSHOT", "snapshot"),
        ("DUMP", "dump"),
        ("SHUTTING_DOWN", "shutting down"),
    )
    if hasattr(libvirt, f"VIR_DOMAIN_PAUSED_{name}")
}


@dataclass(frozen=True)
class Owner:
    """Which fleet VM a domain is: stored in the domain's metadata."""

    fleet_uid: str
    namespace: str
    fleet: str
    ordinal: int
    clone: str
    spec_hash: str
    host: str = ""  # the KvmHost it was placed on: two KvmHosts may be one libvirtd under two URIs
    mac: str | None = None  # its NIC's MAC ("" without a NIC); None: defined before vmfleet chose MACs
    mac_kept: bool = False  # that MAC is the one libvirt gave it before vmfleet chose MACs, kept since
    revision: str = ""  # the fleet revision it was defined for ("" before revisions)


@dataclass(frozen=True)
class DomainSpec:
    name: str
    domain_type: str
    vcpus: int
    memory_mib: int
    profile: str
    machine: str | None
    firmware: str
    disk: DiskSource  # made by the store driver
    network: str | None
    console_log: str | None
    mac: str | None = None  # of the NIC, when there is a network: pinned or derived
    seed: FileDisk | None = None  # the cloud-init seed image, attached read-only
    # Instead of `mac`: the one libvirt gave a domain defined before vmfleet chose MACs. Kept, and not hashed:
    # such a domain's hash is what it was, so an upgrade redefines nothing.
    kept_mac: str | None = None

    def spec_hash(self) -> str:
        """What a domain was defined from, kept in its metadata: a change means redefine (and restart).
        Fields added later hash only when set: an upgrade changes no hash of a domain that does not use them."""
        values: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("disk", "seed", "kept_mac") and not (f.name in _LATER and getattr(self, f.name) is None)
        }
        values.update(_disk_hashed(self.disk))
        if self.seed is not None:
            values["seed"] = self.seed.path
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


_LATER = ("mac",)


def _disk_hashed(disk: DiskSource) -> dict[str, Any]:
    """A file disk hashes as the two fields it replaced in DomainSpec: a domain defined before disk sources
    keeps its hash, so an upgrade neither redefines nor restarts any VM (test_hypervisor pins it)."""
    if isinstance(disk, FileDisk):
        return {"disk_path": disk.path, "disk_format": disk.format}
    assert_never(disk)  # mypy: a new kind of disk needs its case here and in _disk


@dataclass(frozen=True)
class DomainInfo:
    name: str
    state: str
    vcpus: int
    memory_mib: int
    owner: Owner | None  # from the persistent definition
    uuid: str = ""
    live_hash: str = ""  # spec hash of the definition a running domain was started with
    saved: bool = False  # stopped with its memory saved (managedsave): it resumes on its older definition
    kept_mac: str | None = None  # the MAC libvirt gave it before vmfleet chose MACs (Owner.mac_kept)
    live_mac: str | None = None  # the MAC of the definition a running domain was started with
    # Why its guest is not running: STOP_REASONS when off ("crashed" too in the crashed state), PAUSE_REASONS when
    # paused; "" while it runs.
    stop_reason: str = ""
    live_revision: str = ""  # the fleet revision of the definition a running domain was started with

    @property
    def config_hash(self) -> str:
        return self.owner.spec_hash if self.owner else ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class Lease:
    """A DHCP lease of a libvirt network: the address, and when the lease runs out (seconds since the epoch on the
    host's clock; 0 for one that never does). dnsmasq sets the expiry anew at every lease it grants or renews."""

    address: str
    expiry: int = 0


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def owner_xml(owner: Owner) -> str:
    el = ET.Element(
        "instance",
        {
            "fleet-uid": owner.fleet_uid,
            "namespace": owner.namespace,
            "fleet": owner.fleet,
            "ordinal": str(owner.ordinal),
            "clone": owner.clone,
            "spec-hash": owner.spec_hash,
            "host": owner.host,
            **({"mac": owner.mac} if owner.mac is not None else {}),
            **({"mac-kept": "true"} if owner.mac_kept else {}),
            **({"revision": owner.revision} if owner.revision else {}),
        },
    )
    return ET.tostring(el, encoding="unicode")


def parse_owner(xml: str | None) -> Owner | None:
    """The Owner in a domain's vmfleet metadata; None for a domain vmfleet did not make."""
    if not xml:
        return None
    try:
        el = ET.fromstring(xml)
        return Owner(
            el.attrib["fleet-uid"],
            el.attrib["namespace"],
            el.attrib["fleet"],
            int(el.attrib["ordinal"]),
            el.attrib["clone"],
            el.attrib.get("spec-hash", ""),
            el.attrib.get("host", ""),
            el.attrib.get("mac"),
            el.attrib.get("mac-kept") == "true",
            el.attrib.get("revision", ""),
        )
    except (ET.ParseError, KeyError, ValueError):
        return None


def _disk(devices: ET.Element, source: DiskSource) -> ET.Element:
    """The <disk> element of a disk source, up to its <target>."""
    if isinstance(source, FileDisk):
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=source.format, cache="none", discard="unmap")
        _sub(disk, "source", file=source.path)
        return disk
    assert_never(source)


def nic_mac(xml: str) -> str | None:
    """The MAC of a domain's first NIC, from its XML; None without one."""
    el = ET.fromstring(xml).find("devices/interface/mac")
    return el.get("address") if el is not None else None


def domain_xml(spec: DomainSpec, owner: Owner, uuid: str) -> str:
    """`uuid` stays the same for the life of a VM: libvirt redefines a domain in place only under its UUID."""
    profile = PROFILES[spec.profile]
    dom = ET.Element("domain", {"type": spec.domain_type})
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", uuid)
    meta = _sub(dom, "metadata")
    ET.register_namespace(METADATA_KEY, METADATA_NS)
    inst = ET.fromstring(owner_xml(owner))
    inst.tag = f"{{{METADATA_NS}}}instance"
    meta.append(inst)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    os_attrs = {"firmware": "efi"} if spec.firmware == "uefi" else {}
    os_el = _sub(dom, "os", **os_attrs)
    _sub(os_el, "type", "hvm", arch="x86_64", machine=spec.machine or profile["machine"])
    _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(dom, "clock", offset=profile["clock"])
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    disk = _disk(devices, spec.disk)
    _sub(disk, "target", dev=profile["disk_dev"], bus=profile["disk_bus"])
    if spec.seed is not None:
        seed = _sub(devices, "disk", type="file", device=profile["seed_device"])
        _sub(seed, "driver", name="qemu", type="raw")
        _sub(seed, "source", file=spec.seed.path)
        _sub(seed, "target", dev=profile["seed_dev"], bus=profile["seed_bus"])
        _sub(seed, "readonly")
    if spec.network:
        nic = _sub(devices, "interface", type="network")
        if spec.mac or spec.kept_mac:
            _sub(nic, "mac", address=spec.mac or spec.kept_mac or "")
        _sub(nic, "source", network=spec.network)
        _sub(nic, "model", type=profile["nic"])
    serial = _sub(devices, "serial", type="pty")
    if spec.console_log:
        _sub(serial, "log", file=spec.console_log, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    return ET.tostring(dom, encoding="unicode")
