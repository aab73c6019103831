"""A small world for the safety property test: one store (qcow2 or reflink), KvmHosts each backed by its own
libvirt test-driver instance, faults a test can switch on and off, and a snapshot of everything a user would
call their data (clone files, domains on every instance, a sentinel file outside the store).

The engine talks to libvirt through its real LibvirtHost; only `_connection` is steered: a KvmHost's URI
selects which libvirt instance answers, and a URI that is "down" refuses, as a host that stopped answering.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import libvirt

from vmfleet.api import CloneStore, KvmHost
from vmfleet.engine import Runtime
from vmfleet.hypervisor import HostError, LibvirtHost
from vmfleet.hypervisor.domain import METADATA_NS, parse_owner
from vmfleet.settings import Settings
from vmfleet.storage import StoreDriver
from vmfleet.storage.local import LocalStore, Pending

NODE_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>8</cores><threads>1</threads><active>8</active>
       <mhz>2000</mhz><model>vmfleet</model></cpu>
  <memory>16777216</memory>
</node>
"""


@dataclass(frozen=True)
class Domain:
    uri: str
    name: str
    uuid: str
    active: bool
    disk: str
    fleet_uid: str
    seeds: tuple[str, ...] = ()  # the other (read-only) disks: cloud-init seed images
    paused: bool = False  # active, its guest not running (`virsh suspend`, or a start libvirt has not finished)


class World:
    """Libvirt instances by URI (created on first use, kept across operator crashes), and which are down."""

    def __init__(self, base: Path):
        self.base = base
        self.node = base / "node.xml"
        self.node.write_text(NODE_XML)
        self.conns: dict[str, libvirt.virConnect] = {}
        self.down: set[str] = set()
        self.hosts: list[WorldHost] = []  # every endpoint the operators made: told of changes made behind them
        self.stores: list[LocalStore] = []  # every store driver the operators made: whose threads may be busy
        # What a test watches while the engine acts: a domain about to be taken down or just started (op "stop" or
        # "start", the URI, the domain's name), and a store file about to be deleted (its path in the store).
        self.on_power: Callable[[str, str, str], None] | None = None
        self.on_delete: Callable[[str], None] | None = None
        self.on_define: Callable[[str, str], None] | None = None  # (the URI, the domain's name) before a define
        self.on_undefine: Callable[[str, str], None] | None = None  # ... before an undefine

    def conn(self, uri: str) -> libvirt.virConnect:
        if uri not in self.conns:
            self.conns[uri] = libvirt.open(f"test://{self.node}")  # a private instance per URI
        return self.conns[uri]

    def domains(self) -> list[Domain]:
        out = []
        for uri, conn in self.conns.items():
            for dom in conn.listAllDomains(0):
                try:
                    out.append(self._domain(uri, dom))
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    # undefined since it was listed (the engine acts in other threads while a test looks)
        return out

    @staticmethod
    def _domain(uri: str, dom: Any) -> Domain:
        xml = ET.fromstring(dom.XMLDesc(0))
        source = xml.find("devices/disk/source")
        others = tuple(e.get("file", "") for e in xml.findall("devices/disk/source")[1:])
        try:
            owner = parse_owner(
                dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            )
        except libvirt.libvirtError:
            owner = None
        return Domain(
            uri,
            dom.name(),
            dom.UUIDString(),
            bool(dom.isActive()),
            source.get("file", "") if source is not None else "",
            owner.fleet_uid if owner else "",
            others,
            dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED,
        )

    def power_loss(self, uri: str) -> None:
        """The machine behind `uri` lost power: its VMs stopped; the definitions stay."""
        for dom in self.conn(uri).listAllDomains(0):
            if dom.isActive():
                dom.destroy()
                self.changed(uri, dom.name())

    def changed(self, uri: str, name: str) -> None:
        """A domain changed behind the operator: its event, delivered before the next pass."""
        for host in self.hosts:
            if host.uri == uri:
                host.view.changed(name)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


class WorldHost(LibvirtHost):
    def __init__(self, world: World, name: str, uri: str, relist_seconds: float):
        super().__init__(name, uri, relist_seconds=relist_seconds)
        self.world = world
        world.hosts.append(self)

    def _connection(self) -> libvirt.virConnect:
        if self.uri in self.world.down:
            raise HostError(f"KvmHost {self.name}: cannot connect to {self.uri}: Connection refused")
        return self.world.conn(self.uri)

    def drop(self) -> None:
        return None  # the instance outlives the operator: it is the host

    def _watch(self, conn: libvirt.virConnect) -> None:
        """No libvirt events here: the world tells the views of its changes itself (World.changed), or loses them,
        at a point every run of a case agrees on; libvirt's event thread would deliver them at a time of its own."""
        if self._watched is None or self._watched[0] is not conn:
            self.view.forget()
            self._watched, self._events = (conn, []), True

    def _power(self, op: str, name: str) -> None:
        if self.world.on_power is not None:
            self.world.on_power(op, self.uri, name)

    async def shutdown(self, name: str, grace_seconds: float, paused: bool = True) -> bool:
        self._power("stop", name)  # down from the moment it is asked to go
        return await super().shutdown(name, grace_seconds, paused)

    async def stop(self, name: str) -> None:
        self._power("stop", name)
        await super().stop(name)

    async def start(self, name: str) -> None:
        await super().start(name)
        self._power("start", name)  # up once it started

    async def define(self, xml: str) -> None:
        if self.world.on_define is not None:
            self.world.on_define(self.uri, ET.fromstring(xml).findtext("name") or "")
        await super().define(xml)

    async def undefine(self, name: str) -> None:
        if self.world.on_undefine is not None:
            self.world.on_undefine(self.uri, name)
        await super().undefine(name)


class WorldRuntime(Runtime):
    """The operator's runtime, its libvirt endpoints steered by the world."""

    def __init__(self, world: World, settings: Settings = Settings(), clock: Callable[[], float] = time.monotonic):
        super().__init__(settings=settings, clock=clock)
        self.world = world
        self._watched: set[int] = set()

    def store_driver(self, store: CloneStore) -> StoreDriver:
        return self._watch(super().store_driver(store))

    def _watch(self, driver: StoreDriver) -> StoreDriver:
        """The real driver, its deletions told to the world before they are made."""
        if id(driver) not in self._watched:
            self._watched.add(id(driver))
            if isinstance(driver, LocalStore):
                self.world.stores.append(driver)
            real = driver.delete

            async def delete(path: str) -> None:
                if self.world.on_delete is not None:
                    self.world.on_delete(path)
                await real(path)

            driver.delete = delete  # type: ignore[method-assign]
        return driver

    def host(self, host: KvmHost) -> LibvirtHost:
        known = self._hosts.get(host.meta.name)
        if known is None or known.uri != host.uri:
            # Listed in full only when the world says a resync passed (or a look must be fresh), never by the
            # wall clock: a slow example would otherwise list where a fast one did not, and hypothesis needs every
            # run of a case to see the same.
            known = self._hosts[host.meta.name] = WorldHost(self.world, host.meta.name, host.uri, math.inf)
        return known


def files(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under `root` (no symlink followed): path -> (inode, size, mtime_ns)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def write_into(path: Path, disk_format: str, offset: int, length: int) -> None:
    """What a guest does to its disk: write data (through qemu-io for a qcow2 overlay)."""
    if disk_format == "qcow2":
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {offset} {length}", str(path)],
            check=True,
            capture_output=True,
        )
    else:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"\x5a" * length, offset)
            os.fsync(fd)
        finally:
            os.close(fd)


def store_doc(driver: str, root: Path) -> dict[str, Any]:
    return {
        "apiVersion": "vmfleet.io/v1alpha1",
        "kind": "CloneStore",
        "metadata": {"name": "store"},
        "spec": {"driver": driver, "root": str(root), "concurrency": 4},
    }


def host_doc(name: str, uri: str, unschedulable: bool = False, drain: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "vmfleet.io/v1alpha1",
        "kind": "KvmHost",
        "metadata": {"name": name, **({"annotations": {"vmfleet.io/drain": "true"}} if drain else {})},
        "spec": {"uri": uri, "capacity": {"vcpus": 8, "memoryMiB": 4096}, "unschedulable": unschedulable},
    }


__all__ = ["CloneStore", "Domain", "World", "WorldRuntime", "files", "host_doc", "store_doc", "write_into"]


def store_settled(root: Path | str, timeout: float = 30) -> None:
    """Wait until no call given up on is still running in the store at `root` (it refuses calls until then)."""
    pending = Pending(Pending.root(str(root)))
    deadline = time.monotonic() + timeout
    while pending.running():
        assert time.monotonic() < deadline, f"store calls still running after {timeout} s: {pending.running()}"
        time.sleep(0.01)


def is_clone_file(name: str) -> bool:
    return name.endswith((".img", ".qcow2"))


def _partial_clone(fd: int, *_: Any) -> str | None:
    """fchmod of a clone's partial, just made (the clone is not published yet): its path."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if "/vmfleet/clones/" in target and target.endswith(".partial") and ".json." not in target:  # not the record
        return target
    return None


class SlowCall:
    """One call of os.<name> made in a store's thread with matching arguments blocks until released, then runs as
    it would have: a call on a slow mount that the engine gave up on (StoreTimeout) and that lands later.

    Which call: the `nth` that matches; or, given `when_idle` (a SteppedLoop's `nudge`, called as a call starts to
    wait so that the loop looks again), the first by its match (a path) of those the code made until nothing else
    could happen (`choose`, called by the loop), the others let go on. Threads race
    to a call; the order of paths does not, so every replay of a sequence hangs the same VM's call."""

    KINDS: ClassVar[dict[str, tuple[str, Callable[..., Any]]]] = {
        "delete a clone": ("unlink", lambda name, *_, **__: str(name) if is_clone_file(str(name)) else None),
        "write the record": ("rename", lambda _src, dst, *_, **__: str(dst) == "fleet.json"),
        "make a clone": ("fchmod", _partial_clone),
    }

    def __init__(
        self,
        name: str,
        match: Callable[..., Any],
        nth: int = 1,
        kind: str = "",
        when_idle: Callable[[], None] | None = None,
    ):
        self.name, self.match, self.nth, self.kind, self.when_idle = name, match, nth, kind or name, when_idle
        self.real = getattr(os, name)
        self.entered, self.released, self.finished = threading.Event(), threading.Event(), threading.Event()
        self.armed, self.seen = True, 0
        self._lock = threading.Lock()
        self._waiting: list[tuple[str, threading.Event]] = []  # when_idle: the calls that may be the one
        self._chosen: threading.Event | None = None

    @classmethod
    def of_kind(cls, kind: str, when_idle: Callable[[], None] | None = None) -> SlowCall:
        name, match = cls.KINDS[kind]
        return cls(name, match, kind=kind, when_idle=when_idle)

    def install(self) -> SlowCall:
        setattr(os, self.name, self)
        return self

    def _take(self, *args: Any, **kw: Any) -> bool:
        if not self.armed or threading.current_thread() is threading.main_thread():
            return False
        key = self.match(*args, **kw)
        if not key:
            return False
        if self.when_idle is not None:
            return self._wait_for_choice(str(key), self.when_idle)
        with self._lock:
            self.seen += 1
            taken = self.armed and self.seen == self.nth
            if taken:
                self.armed = False
        if taken:
            self.entered.set()
        return taken

    def _wait_for_choice(self, key: str, nudge: Callable[[], None]) -> bool:
        me = threading.Event()
        with self._lock:
            if not self.armed:
                return False
            self._waiting.append((key, me))
        nudge()  # this thread no longer counts as busy: the loop may be idle now, and waits for no result of it
        me.wait(60)
        return self._chosen is me

    def choose(self) -> bool:
        """The first waiting call by its path hangs, the others go on; whether any was waiting."""
        with self._lock:
            if not self._waiting:
                return False
            self.armed = False
            self._chosen = min(self._waiting, key=lambda w: w[0])[1]
            self.entered.set()
            for _, call in self._waiting:
                call.set()
            self._waiting.clear()
        return True

    def holding(self) -> int:
        """The threads it holds: calls waiting to be chosen, and the one that hangs until it lands."""
        with self._lock:
            return len(self._waiting) + (self.entered.is_set() and not self.finished.is_set())

    def __call__(self, *args: Any, **kw: Any) -> Any:
        if self._take(*args, **kw):
            self.released.wait(60)
            try:
                return self.real(*args, **kw)
            finally:
                self.finished.set()
        return self.real(*args, **kw)

    def land(self, store_root: Path | str) -> bool:
        """Let the call run (if it was made at all), wait until the store takes calls again (the call is over,
        a clone published), and take the patch off; whether it ran."""
        with self._lock:
            self.armed = False
            for _, call in self._waiting:
                call.set()
            self._waiting.clear()
        self.released.set()
        try:
            if self.entered.is_set():
                assert self.finished.wait(30), f"the slow call ({self.kind}) never returned"
                store_settled(store_root)
        finally:
            setattr(os, self.name, self.real)
        return self.entered.is_set()
