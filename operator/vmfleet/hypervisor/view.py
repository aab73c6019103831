"""A host's domains as last looked at, shared by every fleet and kept current by libvirt's domain events.

Listing every domain with its state and metadata costs calls per domain; every fleet pass looks at every host
it may use, so without this a resync round costs fleets x domains calls (issue 17). Here a host is listed in
full once per `relist_seconds` (or after its connection changed or failed), and in between only the domains
that changed are looked at again: those libvirt reported an event for (started, stopped, defined, undefined,
metadata changed) and those vmfleet itself acted on. A lost event is forgotten at the next full listing, as an
informer's resync does for the apiserver.

Looks are serialized per host: a caller takes every change marked before its call, so it never sees a domain
as it was before a change vmfleet made or libvirt reported before that call.

A fleet's pass asks only for the domains that can concern it, and for the host's usage: both kept as indices as
domains come and go, so a pass costs its own VMs, not every domain of the host (10,000 on a host of 1,000 fleets).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from .domain import DomainInfo

Describe = Callable[[str], DomainInfo | None]  # one domain looked at again by name; None: it is gone


@dataclass(frozen=True)
class FleetKey:
    """Which domains can concern a fleet: those its UID owns, those of an earlier fleet of its namespace and name,
    and those that bear one of its VMs' names."""

    uid: str
    namespace: str
    name: str
    names: Collection[str]


@dataclass(frozen=True)
class Usage:
    """What a host's running domains take: those of no KvmHost, or of the one asking (two KvmHosts may be one
    libvirtd)."""

    vcpus: int = 0
    memory_mib: int = 0


class DomainView:
    def __init__(self, relist_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.relist_seconds = relist_seconds
        self._clock = clock
        self._state = threading.Lock()  # the fields below, also from libvirt's event thread
        self._looking = threading.Lock()  # one look at a time
        self._domains: dict[str, DomainInfo] = {}
        self._order: dict[str, int] = {}  # shown in the order listed, a domain defined since coming last
        self._seen = 0
        self._by_uid: dict[str, set[str]] = {}
        self._by_fleet: dict[tuple[str, str], set[str]] = {}
        self._usage: dict[str, tuple[int, int]] = {}  # the KvmHost a running domain names ("": none) -> its use
        self._changed: set[str] = set()
        self._listed_at: float | None = None
        self._generation = 0  # each forget(): a listing that began before one is not taken for fresh
        self.full_listings = 0  # what the bench and the tests count
        self.domains_looked_at = 0

    def changed(self, name: str) -> None:
        """The domain changed (an event, or vmfleet acted on it): looked at again before it is shown."""
        with self._state:
            self._changed.add(name)

    def forget(self) -> None:
        """Nothing seen so far can be trusted (a new or broken connection, events not delivered): list again."""
        with self._state:
            self._listed_at = None
            self._generation += 1

    def look(
        self, list_all: Callable[[], Iterable[DomainInfo]], describe: Describe, events: bool = True
    ) -> list[DomainInfo]:
        """The host's domains: listed in full when due (always without `events`: nothing would say what changed),
        else as last seen with the changed ones looked at again. Any failure leaves the view to be listed in full
        next time."""
        with self._looking:
            self._refresh(list_all, describe, events)
            with self._state:
                return sorted(self._domains.values(), key=lambda d: self._order[d.name])

    def look_for(
        self,
        fleet: FleetKey,
        host: str,
        list_all: Callable[[], Iterable[DomainInfo]],
        describe: Describe,
        events: bool = True,
    ) -> tuple[list[DomainInfo], Usage]:
        """As `look`, but only the domains that can concern `fleet`, in the order they were seen, and what the
        running domains take of KvmHost `host`."""
        with self._looking:
            self._refresh(list_all, describe, events)
            with self._state:
                names = set(self._by_uid.get(fleet.uid, ()))
                names.update(self._by_fleet.get((fleet.namespace, fleet.name), ()))
                names.update(n for n in fleet.names if n in self._domains)
                found = [self._domains[n] for n in sorted(names, key=self._order.__getitem__)]
                mine, anyone = self._usage.get(host, (0, 0)), self._usage.get("", (0, 0))
                shared = (0, 0) if host == "" else anyone
                return found, Usage(mine[0] + shared[0], mine[1] + shared[1])

    def _refresh(self, list_all: Callable[[], Iterable[DomainInfo]], describe: Describe, events: bool) -> None:
        with self._state:
            due = (
                not events
                or self._listed_at is None
                or self.relist_seconds <= 0
                or self._clock() - self._listed_at >= self.relist_seconds
            )
            todo, self._changed = self._changed, set()
            started, generation = self._clock(), self._generation
        try:
            if due:
                found = list(list_all())
                with self._state:
                    self._domains, self._order, self._by_uid, self._by_fleet, self._usage = {}, {}, {}, {}, {}
                    for listed in found:
                        self._put(listed)
                    self._listed_at = started if generation == self._generation else None
                    self.full_listings += 1
                    self.domains_looked_at += len(found)
            else:
                fresh = {name: describe(name) for name in sorted(todo)}
                with self._state:
                    for name, info in fresh.items():
                        self._drop(name)
                        if info is None:
                            self._order.pop(name, None)  # gone: defined again, it comes last
                        else:
                            self._put(info)
                    self.domains_looked_at += len(fresh)
        except BaseException:
            with self._state:
                self._listed_at = None
            raise

    def _put(self, info: DomainInfo) -> None:
        """Under _state, `info.name` not held: it is, in every index."""
        self._domains[info.name] = info
        if info.name not in self._order:
            self._order[info.name] = self._seen
            self._seen += 1
        if info.owner is not None:
            self._by_uid.setdefault(info.owner.fleet_uid, set()).add(info.name)
            self._by_fleet.setdefault((info.owner.namespace, info.owner.fleet), set()).add(info.name)
        if info.active:
            key = "" if info.owner is None else info.owner.host
            vcpus, memory = self._usage.get(key, (0, 0))
            self._usage[key] = (vcpus + info.vcpus, memory + info.memory_mib)

    def _drop(self, name: str) -> None:
        """Under _state: `name` is in no index (its place in the order is kept: looked at again, it keeps it)."""
        info = self._domains.pop(name, None)
        if info is None:
            return
        if info.owner is not None:
            _discard(self._by_uid, info.owner.fleet_uid, name)
            _discard(self._by_fleet, (info.owner.namespace, info.owner.fleet), name)
        if info.active:
            key = "" if info.owner is None else info.owner.host
            vcpus, memory = self._usage[key]
            self._usage[key] = (vcpus - info.vcpus, memory - info.memory_mib)


def _discard(index: dict[Any, set[str]], key: Any, name: str) -> None:
    names = index.get(key)
    if names is not None:
        names.discard(name)
        if not names:
            del index[key]
