"""A host's domains as last looked at, shared by every fleet and kept current by libvirt's domain events.

Listing every domain with its state and metadata costs calls per domain; every fleet pass looks at every host
it may use, so without this a resync round costs fleets x domains calls (issue 17). Here a host is listed in
full once per `relist_seconds` (or after its connection changed or failed), and in between only the domains
that changed are looked at again: those libvirt reported an event for (started, stopped, defined, undefined,
metadata changed) and those vmfleet itself acted on. A lost event is forgotten at the next full listing, as an
informer's resync does for the apiserver.

Looks are serialized per host: a caller takes every change marked before its call, so it never sees a domain
as it was before a change vmfleet made or libvirt reported before that call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from .domain import DomainInfo

Describe = Callable[[str], DomainInfo | None]  # one domain looked at again by name; None: it is gone


class DomainView:
    def __init__(self, relist_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.relist_seconds = relist_seconds
        self._clock = clock
        self._state = threading.Lock()  # the fields below, also from libvirt's event thread
        self._looking = threading.Lock()  # one look at a time
        self._domains: dict[str, DomainInfo] = {}
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
                    found = {d.name: d for d in list_all()}
                    with self._state:
                        self._domains = found
                        self._listed_at = started if generation == self._generation else None
                        self.full_listings += 1
                        self.domains_looked_at += len(found)
                else:
                    fresh = {name: describe(name) for name in sorted(todo)}
                    with self._state:
                        for name, info in fresh.items():
                            if info is None:
                                self._domains.pop(name, None)
                            else:
                                self._domains[name] = info
                        self.domains_looked_at += len(fresh)
            except BaseException:
                with self._state:
                    self._listed_at = None
                raise
            with self._state:
                return list(self._domains.values())
