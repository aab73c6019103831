"""Long-lived connections shared by every reconcile: one store driver and one measurer per CloneStore, one
libvirt connection per KvmHost, one lock per fleet so two passes over a fleet never overlap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..api.types import CloneStore, KvmHost
from ..credentials import KeyReader, SecretReader, no_secrets, ssh_keys
from ..hypervisor import LibvirtHost
from ..settings import Settings
from ..storage import StoreDriver, make_driver
from .measure import StoreMeasurer


class Runtime:
    def __init__(
        self,
        read_secret: SecretReader = no_secrets,
        settings: Settings = Settings(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read_secret, self.settings, self.clock = read_secret, settings, clock  # clock: the measurers'
        self._stores: dict[str, tuple[CloneStore, StoreDriver]] = {}
        self._hosts: dict[str, LibvirtHost] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._measurers: dict[str, StoreMeasurer] = {}
        self._retired: list[StoreDriver] = []
        self._closing: set[asyncio.Task[None]] = set()

    def store_driver(self, store: CloneStore) -> StoreDriver:
        known = self._stores.get(store.meta.name)
        if known is None or known[0] != store:
            if known is not None:
                self._retired.append(known[1])  # its connection is closed with the runtime
            self._stores[store.meta.name] = (store, make_driver(store, self.read_secret, self.settings))
        return self._stores[store.meta.name][1]

    def measurer(self, store: CloneStore) -> StoreMeasurer:
        """The space measurements every fleet of the store shares (measure.py)."""
        driver = self.store_driver(store)
        known = self._measurers.get(store.meta.name)
        if known is None or known.driver is not driver:
            known = StoreMeasurer(driver, self.settings.resync_seconds, lambda: self.clock())
            self._measurers[store.meta.name] = known
        return known

    def host(self, host: KvmHost) -> LibvirtHost:
        known = self._hosts.get(host.meta.name)
        if known is None or (known.uri, known.secret) != (host.uri, host.secret):
            if known is not None:
                self._close_later(known)
            # Listed in full once per relist period; in between, the domains events say changed (hypervisor/view.py).
            known = self._hosts[host.meta.name] = LibvirtHost(
                host.meta.name,
                host.uri,
                self._credentials(host),
                host.secret,
                self.settings.host_relist_seconds,
                self.settings.libvirt_timeout_seconds,
                self.settings.migration_timeout_seconds,
            )
        return known

    def _close_later(self, host: LibvirtHost) -> None:
        """A host replaced (its URI or Secret edited) is closed off the event loop: closing its connection is a
        round trip to a libvirtd that may not answer. Its key files go with it."""
        try:
            task = asyncio.get_running_loop().create_task(host.close())
        except RuntimeError:  # no loop: nothing waits on it
            host.drop()
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _credentials(self, host: KvmHost) -> KeyReader | None:
        return None if host.secret is None else ssh_keys(host.secret, self.read_secret, "spec.secretRef")

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def parent_lock(self, store: CloneStore, parent: str) -> asyncio.Lock:
        """A template and each of its fleets may all find the parent missing at once: one makes it."""
        return self.lock(f"parent\0{store.meta.name}\0{parent}")

    async def close(self) -> None:
        for driver in [d for _, d in self._stores.values()] + self._retired:
            await driver.close()
        self._retired.clear()
        for host in self._hosts.values():
            await host.close()
        await asyncio.gather(*self._closing)
        self._stores.clear()
        self._measurers.clear()
        self._hosts.clear()
