"""One libvirt endpoint: a single connection, reopened when it dies, every call run off the event loop.

Every call runs in the host's own threads (threads.py) and waits at most `timeout` seconds: libvirt's open on a
daemon that accepts and never answers never returns, and keepalive only starts once a connection is open. A
call given up on before it was sent (queued, or waiting for the connection) is dropped, never sent later: a
start long after could follow a person's forced move of the VM. One already sent may still land: as a person
acting on the host meanwhile, which every pass allows for (libvirt's events tell the view, and what takes a disk
away looks at the domain again first)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from .. import metrics
from ..api.types import Capacity
from ..credentials import KeyReader
from ..errors import CredentialsError, HostError, HostTimeout
from ..threads import CallPool
from .domain import METADATA_NS, PAUSE_REASONS, STATES, STOP_REASONS, DomainInfo, Lease, Owner, nic_mac, parse_owner
from .view import Describe, DomainView, FleetKey, Usage

T = TypeVar("T")

_POLL_SECONDS = 0.25  # how often shutdown() looks whether the guest has powered off
CALL_THREADS = 8  # a host's calls at once: a store's default concurrency
MIGRATION_THREADS = 4  # live migrations take minutes: they never hold up the short calls
_CLOSE_SECONDS = 5.0

# libvirt prints every error to stderr by default; the exceptions carry the same text.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _run_events() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


# Domain events (and keepalive) need an event loop registered before connections open: one thread runs it.
libvirt.virEventRegisterDefaultImpl()
threading.Thread(target=_run_events, name="libvirt-events", daemon=True).start()


class LibvirtHost:
    """Every fault of the host, of its Secret or of the files its key is handed to libvirt in is a HostError."""

    def __init__(
        self,
        name: str,
        uri: str,
        credentials: KeyReader | None = None,
        secret: object = None,
        relist_seconds: float = 0,
        timeout: float = 60.0,
        migration_timeout: float = 3600.0,
    ) -> None:
        """`timeout`: seconds a call may take, queueing and connecting included; `migration_timeout`, a live
        migration (0: no limit)."""
        self.name = name
        self.uri = uri
        self.timeout, self.migration_timeout = timeout, migration_timeout
        self._calls = CallPool(f"libvirt {name}", CALL_THREADS, self._timed_out, self._closed)
        self._migrations = CallPool(f"libvirt {name} migrations", MIGRATION_THREADS, self._timed_out, self._closed)
        self.secret = secret  # which Secret the credentials come from: a new one means a new connection
        self._credentials = credentials
        self._files: str | None = None  # a private directory holding the key and known_hosts
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        # Its domains as last seen (0: listed in full at every look); kept current by the events of the
        # connection it watches.
        self.view = DomainView(relist_seconds)
        self._watched: tuple[libvirt.virConnect, list[int]] | None = None
        self._watching = threading.Lock()
        self._events = False  # the watched connection delivers domain events: the view may be trusted between listings

    def _connect_uri(self) -> str:
        if self._credentials is None:
            return self.uri
        try:
            key, known_hosts = self._credentials()  # at every connection: a rotated Secret takes effect
        except CredentialsError as e:
            raise HostError(f"KvmHost {self.name}: {e}") from None
        try:
            if self._files is None:
                self._files = tempfile.mkdtemp(prefix="vmfleet-host-")
            for name, text in (("key", key), ("known_hosts", known_hosts)):
                fd = os.open(os.path.join(self._files, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text if text.endswith("\n") else text + "\n")
        except OSError as e:
            where = self._files or tempfile.gettempdir()  # not mkdtemp's name: a new one at every try
            raise HostError(
                f"KvmHost {self.name}: cannot write its SSH key for libvirt in {where}: {e.strerror or e}"
            ) from None
        params = urllib.parse.urlencode(
            {
                "keyfile": os.path.join(self._files, "key"),
                "sshauth": "privkey",
                "known_hosts": os.path.join(self._files, "known_hosts"),
            }
        )
        return f"{self.uri}{'&' if '?' in self.uri else '?'}{params}"

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self.drop()
            uri = self._connect_uri()
            try:
                self._conn = libvirt.open(uri)
            except libvirt.libvirtError as e:
                metrics.LIBVIRT_ERRORS.labels(self.name, "connect").inc()
                raise HostError(f"KvmHost {self.name}: cannot connect to {self.uri}: {e}") from e
            try:  # a libvirtd that stops answering is found out in about 20 s: the view is then listed again
                self._conn.setKeepAlive(5, 3)
            except libvirt.libvirtError:
                pass  # a local driver (test:///): nothing to keep alive
            return self._conn

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        self.view.forget()
        if self._watched is not None and self._watched[0] is conn:
            for i in self._watched[1]:
                try:
                    conn.domainEventDeregisterAny(i)
                except libvirt.libvirtError:
                    pass
            self._watched = None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def in_flight(self) -> int:
        """The calls running or queued in the host's threads."""
        return self._calls.in_flight() + self._migrations.in_flight()

    def _timed_out(self, what: str, seconds: float) -> HostTimeout:
        return HostTimeout(f"KvmHost {self.name}: {what} did not answer within {seconds:g} s")

    def _closed(self, what: str) -> HostError:
        return HostError(f"KvmHost {self.name}: {what}: closed")

    async def _call(
        self,
        operation: str,
        what: str,
        fn: Callable[[libvirt.virConnect], T],
        touches: str | None = None,
        pool: CallPool | None = None,
        limit: float | None = None,
    ) -> T:
        """`fn` on the connection, in the host's threads within its timeout; `touches`: the domain it may change,
        looked at again before the view shows it, whether or not `fn` succeeded or returned in time."""

        abandoned = threading.Event()  # its caller gave up: it may no longer be wanted, or even safe

        def run() -> T:
            try:
                conn = self._connection()
            except HostError:
                self.view.forget()  # silent for a while: what it said before may be old
                raise
            if abandoned.is_set():  # given up on while connecting: a start now could follow a forced move
                raise HostTimeout(f"KvmHost {self.name}: {what}: given up on before it was sent")
            self._watch(conn)
            try:
                return fn(conn)
            except libvirt.libvirtError as e:
                metrics.LIBVIRT_ERRORS.labels(self.name, operation).inc()
                raise HostError(f"KvmHost {self.name}: {what} failed: {e}") from e
            finally:
                if touches is not None:
                    self.view.changed(touches)

        try:
            return await (pool or self._calls).run(run, self.timeout if limit is None else limit, what)
        except HostTimeout:
            # Not sent yet: dropped. Sent: what it does late, libvirt's events and the run's `changed` tell the
            # view (a listing it began still counts once done).
            abandoned.set()
            metrics.LIBVIRT_ERRORS.labels(self.name, operation).inc()
            if touches is not None:
                self.view.changed(touches)
            raise

    def _watch(self, conn: libvirt.virConnect) -> None:
        """Listen to a new connection's domain events; without them, every look lists the host in full."""
        with self._watching:
            if self._watched is not None and self._watched[0] is conn:
                return
            self.view.forget()  # events of an earlier connection may have been missed
            view = self.view
            ids: list[int] = []
            try:
                for event in (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE):
                    ids.append(
                        conn.domainEventRegisterAny(None, event, lambda _c, dom, *_: view.changed(dom.name()), None)
                    )
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
            self._watched, self._events = (conn, ids), len(ids) == 2

    async def capacity(self) -> Capacity:
        info = await self._call("capacity", "getInfo", lambda c: c.getInfo())
        return Capacity(vcpus=int(info[2]), memory_mib=int(info[1]))

    async def list_domains(self) -> list[DomainInfo]:
        """Every domain of the host with its state and vmfleet's metadata, through the view: listed in full when
        due, else only the domains that changed since looked at again."""
        return await self._look(lambda list_all, describe, events: self.view.look(list_all, describe, events))

    async def fleet_domains(self, fleet: FleetKey) -> tuple[list[DomainInfo], Usage]:
        """As list_domains, but only the domains that can concern `fleet`, and what the running domains take of
        this KvmHost: a fleet's look costs its own VMs, not the host's."""
        return await self._look(
            lambda list_all, describe, events: self.view.look_for(fleet, self.name, list_all, describe, events)
        )

    async def _look(self, look: Callable[[Callable[[], list[DomainInfo]], Describe, bool], T]) -> T:
        def collect(conn: libvirt.virConnect) -> T:
            def describe_by_name(name: str) -> DomainInfo | None:
                dom = _lookup(conn, name)
                return None if dom is None else _described(dom)

            def list_all() -> list[DomainInfo]:
                found = (_described(dom) for dom in conn.listAllDomains(0))
                return [d for d in found if d is not None]

            # One round trip whatever the view holds: a host that stopped answering says so now, not at the next
            # full listing (a dropped SSH session can leave the connection looking alive).
            conn.getLibVersion()
            return look(list_all, describe_by_name, self._events)

        return await self._call("list", "listing domains", collect)

    async def leases(self, network: str) -> dict[str, list[Lease]]:
        """MAC -> its leases, from the DHCP leases of a libvirt network on this host, in one call; {} where it
        has none (no such network, no DHCP, a driver without the call). HostError when the host does not answer."""

        def ask(conn: libvirt.virConnect) -> dict[str, list[Lease]]:
            out: dict[str, list[Lease]] = {}
            try:
                leases = conn.networkLookupByName(network).DHCPLeases()
            except libvirt.libvirtError as e:
                if e.get_error_code() in _NOT_THERE:
                    return out  # no such network here, or a driver without leases: not a fault of the host
                raise
            for lease in leases:
                if lease.get("mac") and lease.get("ipaddr"):
                    expiry = int(lease.get("expirytime") or 0)
                    out.setdefault(str(lease["mac"]).lower(), []).append(Lease(str(lease["ipaddr"]), expiry))
            return out

        return await self._call("addresses", f"reading the DHCP leases of network {network}", ask)

    async def arp_addresses(self, name: str) -> list[str]:
        """The IP addresses the host's ARP table has for a running domain's NICs; [] when none or no such call."""

        def ask(conn: libvirt.virConnect) -> list[str]:
            try:
                found = conn.lookupByName(name).interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP)
            except libvirt.libvirtError as e:
                if e.get_error_code() in _NOT_THERE:
                    return []
                raise
            return [a["addr"] for nic in (found or {}).values() for a in (nic.get("addrs") or []) if a.get("addr")]

        try:
            return await self._call("addresses", f"reading the addresses of {name}", ask)
        except HostError:
            return []

    async def nic_mac(self, name: str) -> str | None:
        """The MAC of a domain's first NIC in its persistent definition; None without a NIC or a domain."""

        def read(conn: libvirt.virConnect) -> str | None:
            try:
                return nic_mac(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return await self._call("list", f"reading the NIC of {name}", read)

    async def define(self, xml: str) -> None:
        await self._call("define", "defining a domain", lambda c: self.view.changed(c.defineXML(xml).name()))

    async def start(self, name: str) -> None:
        await self._call("start", f"starting {name}", lambda c: c.lookupByName(name).create(), touches=name)

    async def stop(self, name: str) -> None:
        def destroy(conn: libvirt.virConnect) -> None:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()

        await self._call("stop", f"stopping {name}", destroy, touches=name)

    async def shutdown(self, name: str, grace_seconds: float, paused: bool = True) -> bool:
        """Stop a domain as its guest expects: press the ACPI power button, give the guest `grace_seconds` from the
        press to power itself off, then destroy it. True when it stopped by itself (or was not running, or is gone);
        False when it was destroyed (at once with `grace_seconds` <= 0, or when its guest is paused or asleep and
        cannot hear the button). `paused` False: it ran when this stop was decided, and a guest paused since (by a
        person, or by QEMU on an I/O error) is left alone: a HostError says so, and the next pass decides."""
        what = f"shutting down {name}"

        def press(conn: libvirt.virConnect) -> str:  # "off", "wait" (for the guest), "destroy" or "held"
            try:
                dom = conn.lookupByName(name)
                if not dom.isActive():
                    return "off"
                state = dom.state()[0]
                if state == libvirt.VIR_DOMAIN_SHUTDOWN:
                    return "wait" if grace_seconds > 0 else "destroy"  # its guest is powering off already
                if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
                    return "destroy" if paused else "held"  # QEMU refuses the button of a guest that does not run
                if grace_seconds <= 0:
                    return "destroy"
                try:
                    dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                except libvirt.libvirtError as e:
                    if e.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                        raise
                    dom.shutdown()  # a driver without the flag (the test driver): its default method
                return "wait"
            except libvirt.libvirtError as e:
                stopped_meanwhile(e, conn)  # raises unless it stopped
                return "off"

        def stopped(conn: libvirt.virConnect) -> bool:
            try:
                return not conn.lookupByName(name).isActive()
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return True
                raise

        def destroy(conn: libvirt.virConnect) -> bool:  # True: it stopped by itself after all
            try:
                conn.lookupByName(name).destroy()
                return False
            except libvirt.libvirtError as e:
                return stopped_meanwhile(e, conn)

        def stopped_meanwhile(e: libvirt.libvirtError, conn: libvirt.virConnect) -> bool:
            """A domain gone, or no longer running, since it was looked up: stopped. Any other fault raises."""
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return True
            if e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and stopped(conn):  # "domain is not running"
                return True
            raise e

        left = await self._call("shutdown", what, press, touches=name)
        if left == "off":
            return True
        if left == "held":
            raise HostError(f"KvmHost {self.name}: {what}: paused since this stop was decided: left alone")
        if left == "wait":
            deadline = time.monotonic() + grace_seconds
            while True:  # each look its own short call: the event loop and the connection stay free in between
                if await self._call("shutdown", what, stopped):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(_POLL_SECONDS, remaining))
        return await self._call("shutdown", f"destroying {name}", destroy, touches=name)

    async def ensure_off(self, name: str) -> None:
        """A HostError unless the domain is off with no saved memory (or gone): its disk may be replaced."""

        def check(conn: libvirt.virConnect) -> None:
            dom = _lookup(conn, name)
            if dom is None:
                return
            if dom.isActive():
                raise HostError(f"KvmHost {self.name}: {name} is running (started since it was looked at)")
            if dom.hasManagedSaveImage(0):
                raise HostError(
                    f"KvmHost {self.name}: {name} has saved memory (managedsave) that would resume on another disk"
                )

        await self._call("list", f"looking at {name}", check, touches=name)

    async def migrate(self, name: str, target_uri: str, persist_xml: str, address: str | None) -> None:
        """Live-migrate a running domain, peer to peer (this host's libvirtd connects to `target_uri`), its disks on
        shared storage (libvirt refuses when it does not count them as shared: nothing is copied). It is defined
        there as `persist_xml` and undefined here. HostError when refused: it still runs here. HostTimeout past
        `migration_timeout`: aborted if libvirt still answers, else where it runs is for the next look to say."""
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        )
        params = {libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: persist_xml}
        if address:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = address
        try:
            await self._call(
                "migrate",
                f"migrating {name} to {target_uri}",
                lambda c: c.lookupByName(name).migrateToURI3(target_uri, params, flags),
                touches=name,
                pool=self._migrations,
                limit=self.migration_timeout,
            )
        except HostTimeout:
            with contextlib.suppress(HostError):
                await self._call("migrate", f"aborting the migration of {name}", lambda c: _abort(c, name), name)
            raise

    async def undefine(self, name: str) -> None:
        def undefine(conn: libvirt.virConnect) -> None:
            dom = _lookup(conn, name)
            if dom is None:
                return
            if dom.isActive():  # vmfleet stops before it undefines: running, it was started after it was looked at
                raise HostError(
                    f"KvmHost {self.name}: {name} is running (started since it was looked at): not undefined"
                )
            try:  # UEFI guests have an NVRAM file that must go with them
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except libvirt.libvirtError as e:
                if e.get_error_code() not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
                    raise
                dom.undefine()
            if _lookup(conn, name) is not None:  # started between the look and the undefine: it runs on, transient
                raise HostError(f"KvmHost {self.name}: {name} was started as it was undefined: it runs on, transient")

        await self._call("undefine", f"undefining {name}", undefine, touches=name)

    async def close(self) -> None:
        with contextlib.suppress(HostError):  # a host that does not answer is not waited for
            await self._calls.run(self.drop, min(self.timeout, _CLOSE_SECONDS) or _CLOSE_SECONDS, "closing")
        self._calls.close()
        self._migrations.close()
        if self._files is not None:
            shutil.rmtree(self._files, ignore_errors=True)
            self._files = None


def _describe(dom: libvirt.virDomain) -> DomainInfo:
    state, reason = dom.state()  # with why it stopped, in the same call
    _state, max_kib, _mem, vcpus, _cpu = dom.info()
    active = state != libvirt.VIR_DOMAIN_SHUTOFF  # as isActive() answers, without a call of its own
    owner = parse_owner(_metadata(dom, libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    live = parse_owner(_metadata(dom, libvirt.VIR_DOMAIN_AFFECT_LIVE)) if active and owner else None
    saved = bool(owner and not active and dom.hasManagedSaveImage(0))
    kept = _kept_mac(owner)
    return DomainInfo(
        dom.name(),
        STATES.get(state, "Unknown"),
        vcpus,
        max_kib // 1024,
        owner,
        dom.UUIDString(),
        live.spec_hash if live else "",
        saved,
        kept,
        (live.mac or kept) if live else None,
        _stop_reason(state, reason),
        live.revision if live else "",
    )


def _abort(conn: libvirt.virConnect, name: str) -> None:
    dom = _lookup(conn, name)
    if dom is not None:
        dom.abortJob()


def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _described(dom: libvirt.virDomain) -> DomainInfo | None:
    """The domain as _describe says, None once it is gone."""
    for again in (False, True):
        try:
            return _describe(dom)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:  # undefined while we looked
                return None
            # "domain is not running": it stopped while we looked (a guest that powered off, another fleet's VM):
            # looked at again, not the whole host taken for unreachable
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or again:
                raise
    raise AssertionError("unreachable")


# Answers that say "nothing to find here", not "the host failed": no errors counted, no alert.
_NOT_THERE = frozenset(
    {
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_NO_NETWORK,
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_OPERATION_INVALID,
    }
)


def _stop_reason(state: int, reason: int) -> str:
    """Why a domain's guest is not running, from virDomainGetState: "" while it runs."""
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return "crashed"
    if state == libvirt.VIR_DOMAIN_PAUSED:
        return PAUSE_REASONS.get(reason, "")
    return STOP_REASONS.get(reason, "") if state == libvirt.VIR_DOMAIN_SHUTOFF else ""


def _kept_mac(owner: Owner | None) -> str | None:
    """The MAC libvirt gave a domain of ours before vmfleet chose MACs, as its metadata keeps it."""
    return owner.mac if owner is not None and owner.mac_kept else None


def _metadata(dom: Any, flags: int) -> str | None:
    try:
        xml: str = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, flags)
        return xml
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise


__all__ = ["HostError", "LibvirtHost"]
