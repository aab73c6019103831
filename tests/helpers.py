"""Small helpers shared by the tests."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import libvirt
import yaml

REPO = Path(__file__).resolve().parent.parent


def open_up(path: Path) -> None:
    """Let QEMU (user libvirt-qemu) walk down to `path`: pytest's temporary directories are 0700."""
    for p in [path, *path.parents]:
        if p == Path("/"):
            break
        os.chmod(p, os.stat(p).st_mode | 0o755)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def quickstart(tmp: Path, image: Path, **fleet_spec: Any) -> Path:
    """The quickstart manifests with the store moved under `tmp`; returns the manifest directory."""
    out = tmp / "manifests"
    out.mkdir(exist_ok=True)
    root = tmp / "store"
    (root / "images").mkdir(parents=True, exist_ok=True)
    if not (root / "images" / "basic.img").exists():
        shutil.copyfile(image, root / "images" / "basic.img")
    for src in sorted((REPO / "examples" / "quickstart").glob("*.yaml")):
        doc = yaml.safe_load(src.read_text())
        if doc["kind"] == "CloneStore":
            doc["spec"]["root"] = str(root)
        if doc["kind"] == "VmFleet":
            doc["spec"].update(fleet_spec)
        (out / src.name).write_text(yaml.safe_dump(doc))
    return out


def xfs_io_exclusive(path: Path) -> int:
    """Bytes without the shared flag, as xfs_io's own FIEMAP reader prints them: an independent reading."""
    out = subprocess.run(
        ["xfs_io", "-r", "-c", "fiemap -v", str(path)], capture_output=True, text=True, check=True
    ).stdout
    total = 0
    for line in out.splitlines()[2:]:
        cols = line.split()
        if len(cols) >= 5 and cols[2] != "hole" and not int(cols[4], 16) & 0x2000:
            total += int(cols[3]) * 512
    return total


# A VM's cloud-init seed image as the store drivers see it: any bytes. 1 MiB + 7, every byte value (NUL, CR, LF,
# 0xff), random bytes that no chunking could reorder unnoticed, and a tail that is not UTF-8.
SEED_DIR = "vmfleet/clones/ns/web/uid"
SEED_NAME = "web-0.cidata-0123456789ab.iso"
SEED = f"{SEED_DIR}/{SEED_NAME}"
SEED_BYTES = bytes(range(256)) * 16 + random.Random(15).randbytes((1 << 20) - 4096) + b"\xc3\x28\x80\xfe\xff\x00\n"
assert len(SEED_BYTES) == (1 << 20) + 7 and set(SEED_BYTES) == set(range(256))


@contextlib.contextmanager
def tmpfs_at(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted on `path` (root only): a directory whose file system fills up (ENOSPC)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


FORWARDING = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")


@contextlib.contextmanager
def dhcp_network(uri: str, name: str, bridge: str, subnet: str) -> Iterator[str]:
    """A libvirt network `name` with DHCP on `subnet`.0/24 (libvirt's dnsmasq serves leases from .100 to .199) in
    forward mode 'open': libvirt adds no firewall rule for it, so the host's firewall is as it was. It turns
    forwarding on, which is put back, and the network is gone afterwards (one left over from a killed run first)."""
    forwarding = {p: Path(p).read_text() for p in FORWARDING}
    conn = libvirt.open(uri)
    try:
        old = conn.networkLookupByName(name)
        if old.isActive():
            old.destroy()
        old.undefine()
    except libvirt.libvirtError:
        pass
    # dnsmasq pings an address before it first offers it and, for up to 3 s a ping, answers no other DHCP packet:
    # guests that all boot at once would wait in line longer than the guest's DHCP client tries (10 s). Nothing
    # else is on this network to answer a ping: no-ping.
    net = conn.networkDefineXML(
        f"<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'><name>{name}</name>"
        f"<forward mode='open'/><bridge name='{bridge}' stp='off'/>"
        f"<ip address='{subnet}.1' netmask='255.255.255.0'>"
        f"<dhcp><range start='{subnet}.100' end='{subnet}.199'/></dhcp></ip>"
        "<dnsmasq:options><dnsmasq:option value='no-ping'/></dnsmasq:options></network>"
    )
    try:
        net.create()
        yield name
    finally:
        if net.isActive():
            net.destroy()
        net.undefine()
        conn.close()
        for p, value in forwarding.items():
            Path(p).write_text(value)


class GuestSite:
    """Where a test's Linux guests run through the engine on the real libvirtd: a reflink store on XFS under
    `root` holding `images` (name -> file, as images/<name>), a directory for the guests' console logs, a
    namespace of the test's own and a Runtime. `objects` makes the four resources from a template's and a
    fleet's spec; `close` deletes the fleet (its domains and clones) and closes the Runtime."""

    def __init__(self, root: Path, logs: Path, images: Mapping[str, Path], ns: str):
        from vmfleet.engine import Runtime

        self.root, self.logs, self.ns = root, logs, ns
        (root / "images").mkdir(parents=True)
        for name, image in images.items():
            subprocess.run(["cp", "--reflink=auto", str(image), str(root / "images" / name)], check=True)
        logs.mkdir()
        for p in (root, logs):
            open_up(p)
        self.runtime = Runtime()

    @staticmethod
    def _parse(kind: str, name: str, spec: Mapping[str, Any], **meta: Any) -> Any:
        from vmfleet.api import parse

        return parse(
            {"apiVersion": "vmfleet.io/v1alpha1", "kind": kind, "metadata": {"name": name, **meta}, "spec": spec}
        )

    def objects(
        self, template: Mapping[str, Any], fleet: Mapping[str, Any], annotations: Mapping[str, str] | None = None
    ) -> tuple[Any, Any, Any, list[Any]]:
        """(VmFleet web, VmTemplate linux, CloneStore xfs, [KvmHost kvm-a]), `template` and `fleet` laid over what
        every such site has."""
        return (
            self.fleet(fleet, annotations),
            self._parse("VmTemplate", "linux", {"storeRef": {"name": "xfs"}, **template}, namespace=self.ns),
            *self.places(),
        )

    def fleet(self, spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None) -> Any:
        spec = {"templateRef": {"name": "linux"}, "hostSelector": {"matchLabels": {"site": self.ns}}, **spec}
        return self._parse("VmFleet", "web", spec, namespace=self.ns, annotations=dict(annotations or {}))

    def places(self) -> tuple[Any, list[Any]]:
        """The store and the one KvmHost: the libvirtd on this machine, QEMU under TCG, consoles logged here. Its
        capacity counts every domain running on it, other tests' too: room enough that they never crowd these out."""
        host = {
            "uri": "qemu:///system",
            "domainType": "qemu",
            "consoleLogDir": str(self.logs),
            "capacity": {"vcpus": 64, "memoryMiB": 16384},
        }
        return (
            self._parse("CloneStore", "xfs", {"driver": "reflink", "root": str(self.root)}),
            [self._parse("KvmHost", "kvm-a", host, labels={"site": self.ns})],
        )

    def console(self, vm: str) -> str:
        """What VM `vm` printed on its serial console since it last started ("" before it ever did)."""
        path = self.logs / f"{self.ns}.{vm}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def close(self) -> None:
        from vmfleet.engine import teardown_fleet

        store, hosts = self.places()
        try:
            # Cleaning up, no guest's data to keep: a guest still booting (no acpid yet to hear the button) would
            # hold the teardown for the whole default grace period.
            fleet = self.fleet({"replicas": 0, "shutdown": {"gracePeriodSeconds": 0}})
            await teardown_fleet(self.runtime, fleet, [store], hosts)
        finally:
            await self.runtime.close()


_linux_image_lock = threading.Lock()
_linux_image: Path | None = None


def linux_image(tmp: Path) -> Path:
    """A copy in `tmp` of the Linux guest image, built once per test process by `vmfleet image --linux` (as the
    demo builds it, its Debian packages cached where that keeps them) and reused."""
    global _linux_image
    from conftest import TIMINGS
    from vmfleet.cli import main

    with _linux_image_lock:
        if _linux_image is None:
            where = tempfile.mkdtemp(prefix="vmfleet-linux-image-")
            atexit.register(shutil.rmtree, where, ignore_errors=True)
            t0 = time.monotonic()
            if main(["image", "--linux", os.path.join(where, "linux.img")]) != 0:
                raise AssertionError("vmfleet image --linux failed: its error is in the captured stderr")
            TIMINGS["Linux guest image built"] = time.monotonic() - t0
            _linux_image = Path(where) / "linux.img"
    copy = tmp / "linux.img"
    shutil.copyfile(_linux_image, copy)
    return copy


_event_loop_lock = threading.Lock()
_event_loop: threading.Thread | None = None


def libvirt_event_loop() -> None:
    """libvirt's default event loop, registered and run on a daemon thread, once per test process and for the
    rest of it: every connection opened after the registration keeps itself alive through that loop."""
    global _event_loop
    with _event_loop_lock:
        if _event_loop is None:
            libvirt.virEventRegisterDefaultImpl()

            def run() -> None:
                while True:
                    libvirt.virEventRunDefaultImpl()

            _event_loop = threading.Thread(target=run, name="libvirt-events", daemon=True)
            _event_loop.start()


class LifecycleEvents:
    """The lifecycle events libvirt sends for every domain of `uri` (its own connection), each recorded as
    (time.monotonic() on arrival, event, detail) under the domain's name."""

    def __init__(self, uri: str):
        libvirt_event_loop()
        self.conn = libvirt.open(uri)
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[float, int, int]]] = {}
        self._callback = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._record, None
        )

    def _record(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, _opaque: Any) -> None:
        with self._lock:
            self._events.setdefault(dom.name(), []).append((time.monotonic(), event, detail))

    def of(self, name: str) -> list[tuple[float, int, int]]:
        with self._lock:
            return list(self._events.get(name, []))

    def wait(self, name: str, event: int, timeout: float = 30) -> tuple[float, int, int]:
        """The first `event` of domain `name` (the time it came, the event, its detail)."""
        found: tuple[float, int, int] = wait_for(
            lambda: next((e for e in self.of(name) if e[1] == event), None), timeout, f"event {event} of {name}"
        )
        return found

    def close(self) -> None:
        self.conn.domainEventDeregisterAny(self._callback)
        self.conn.close()


class DirectoryWatch:
    """How many times each file name was made in one directory (inotify IN_CREATE and IN_MOVED_TO): a file made
    through a partial and a rename counts once per make, whatever its inode number (XFS reuses them)."""

    # Deletions are watched too, only so that two makes of one name are never adjacent: inotify merges an event
    # identical to the one before it that is still unread.
    _CREATE, _MOVED_TO, _DELETE = 0x100, 0x80, 0x200
    _EVENT = struct.Struct("iIII")

    def __init__(self, path: Path):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or self._watch(path) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")
        self._made: Counter[str] = Counter()

    def _watch(self, path: Path) -> int:
        return int(
            self._libc.inotify_add_watch(self.fd, os.fsencode(path), self._CREATE | self._MOVED_TO | self._DELETE)
        )

    def made(self) -> Counter[str]:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return Counter(self._made)
            at = 0
            while at < len(data):
                _wd, mask, _cookie, length = self._EVENT.unpack_from(data, at)
                name = data[at + self._EVENT.size : at + self._EVENT.size + length].rstrip(b"\0").decode()
                if mask & (self._CREATE | self._MOVED_TO):
                    self._made[name] += 1
                at += self._EVENT.size + length

    def close(self) -> None:
        os.close(self.fd)


def a_resync_later(runtime: Any) -> None:
    """A store's space figures are read again once a resync old (engine/measure.py): let a resync pass."""
    clock = runtime.clock
    runtime.clock = lambda: clock() + runtime.settings.resync_seconds


def clone_path(status: dict[str, Any], entry: dict[str, Any]) -> str:
    """Where a clone of a status entry is, relative to the store's root (entries of small fleets keep their file)."""
    return f"{status['cloneDirectory']}/{entry['file']}"
