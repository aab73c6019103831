"""A hung mount fails only its own store: a real FUSE mount (bindfs) whose daemon is stopped, so every call on
it blocks in the kernel as on a stopped NFS server. Its calls time out with StoreTimeout in the store's own
threads; the event loop's default executor (libvirt's calls), another store and the operator stay responsive."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import FuseMount

from vmfleet.api import CloneStore
from vmfleet.engine import Runtime, store_status
from vmfleet.errors import StoreError, StoreTimeout
from vmfleet.settings import Settings
from vmfleet.storage.qcow2 import Qcow2Store

pytestmark = pytest.mark.reliability

PARENT = "vmfleet/parents/t.img"
CLONES = "vmfleet/clones/ns/web/uid"
TIMEOUT = 2.0
OLD_DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)  # what asyncio.to_thread had for every store


def with_image(root: Path, image: Path) -> Path:
    (root / "images").mkdir(parents=True)
    shutil.copyfile(image, root / "images" / "t.img")
    return root


async def made(store: Qcow2Store) -> Qcow2Store:
    await store.prepare_parent("images/t.img", "raw", PARENT)
    await store.create_clone(PARENT, "raw", f"{CLONES}/web-0.qcow2")
    return store


async def test_a_hung_mount_times_out_in_its_own_threads_and_nothing_else_waits(
        fuse_mount: FuseMount, tmp_path: Path, small_image: Path) -> None:
    settings = Settings(store_timeout_seconds=TIMEOUT)
    with_image(fuse_mount.source, small_image)
    hung = await made(Qcow2Store(str(fuse_mount.path), settings=settings))
    other = await made(Qcow2Store(str(with_image(tmp_path / "other", small_image)), settings=settings))
    clone = f"{CLONES}/web-0.qcow2"
    fuse_mount.freeze()

    # More calls than the old default executor had threads; the deletes and the write queue behind the rest.
    started = time.monotonic()
    calls = [hung.list_dir(CLONES), hung.exists(clone), hung.measure([clone]), hung.read_text(f"{CLONES}/fleet.json"),
             *(hung.fingerprint(clone) for _ in range(OLD_DEFAULT_THREADS)), hung.delete(clone),
             hung.write_text(f"{CLONES}/fleet.json", "{}"), hung.create_clone(PARENT, "raw", f"{CLONES}/web-1.qcow2")]
    outstanding = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0.2)
    assert len(outstanding) > OLD_DEFAULT_THREADS and not any(t.done() for t in outstanding)

    # Meanwhile the default executor and the other store answer at once.
    await asyncio.wait_for(asyncio.gather(*(asyncio.to_thread(time.sleep, 0.01) for _ in range(OLD_DEFAULT_THREADS)),
                                          other.list_dir(CLONES), other.measure([clone]),
                                          other.create_clone(PARENT, "raw", f"{CLONES}/web-1.qcow2")), TIMEOUT / 2)
    assert not any(t.done() for t in outstanding), "the hung store answered: it was not frozen"

    results = await asyncio.gather(*outstanding, return_exceptions=True)
    waited = time.monotonic() - started
    assert all(isinstance(r, StoreTimeout) for r in results), results
    assert TIMEOUT - 0.1 < waited < TIMEOUT + 2, waited
    assert str(results[0]) == f"listing {fuse_mount.path}/{CLONES} did not answer within 2 s (a hung mount?)"
    assert str(results[-3]) == f"deleting {fuse_mount.path}/{clone} did not answer within 2 s (a hung mount?)"

    # Its threads are still stuck: later calls queue behind them and time out too, and so does the probe.
    with pytest.raises(StoreTimeout, match=f"opening the store root {fuse_mount.path} did not answer within 2 s"):
        await hung.probe()
    store = CloneStore.parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": "CloneStore", "metadata": {"name": "s"},
                              "spec": {"driver": "qcow2", "root": str(fuse_mount.path), "maxCloneDepth": 0,
                                       "concurrency": 8}})
    runtime = Runtime(settings=settings)
    try:
        ready = (await store_status(runtime, store, None))["conditions"][0]
        assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "Unreachable")
        assert "did not answer within 2 s (a hung mount?)" in ready["message"]
        driver = runtime.store_driver(store)
        t0 = time.monotonic()
        await runtime.close()  # its store has a thread stuck on the mount: not waited for
        assert time.monotonic() - t0 < 0.5
        with pytest.raises(StoreError, match="the store is closed"):
            await driver.probe()
    finally:
        await runtime.close()

    # Once the mount answers, the stuck calls finish and the store works again. The calls given up on while
    # they queued never ran: the delete among them did not delete the clone.
    fuse_mount.thaw()
    assert await hung.list_dir(CLONES) == ["web-0.qcow2"]
    assert await hung.probe() == f"{fuse_mount.path} is reachable"
    assert (fuse_mount.source / clone).exists() and not (fuse_mount.source / f"{CLONES}/fleet.json").exists()
    await hung.close()
    await other.close()
