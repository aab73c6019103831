"""A hung mount fails only its own store: a real FUSE mount (bindfs) whose daemon is stopped, so every call on
it blocks in the kernel as on a stopped NFS server. Its calls time out with StoreTimeout in the store's own
threads; the event loop's default executor (libvirt's calls), another store and the operator stay responsive."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster
from conftest import TIMINGS, FuseMount
from helpers import wait_for
from kubefleet import apply, store_root
from operator_process import OperatorProcess
from vmfleet.api import CloneStore
from vmfleet.engine import Runtime, store_status
from vmfleet.errors import StoreError, StoreTimeout
from vmfleet.settings import Settings
from vmfleet.storage.local import CALL_THREADS
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
    fuse_mount: FuseMount, tmp_path: Path, small_image: Path
) -> None:
    settings = Settings(store_timeout_seconds=TIMEOUT)
    with_image(fuse_mount.source, small_image)
    hung = await made(Qcow2Store(str(fuse_mount.path), settings=settings))
    other = await made(Qcow2Store(str(with_image(tmp_path / "other", small_image)), settings=settings))
    clone = f"{CLONES}/web-0.qcow2"
    fuse_mount.freeze()

    # More calls than the old default executor had threads; the delete and the writes queue behind the store's
    # threads, all stuck by then.
    started = time.monotonic()
    calls = [
        hung.list_dir(CLONES),
        hung.exists(clone),
        hung.measure([clone]),
        hung.read_text(f"{CLONES}/fleet.json"),
        *(hung.fingerprint(clone) for _ in range(max(CALL_THREADS, OLD_DEFAULT_THREADS))),
        hung.delete(clone),
        hung.write_text(f"{CLONES}/fleet.json", "{}"),
        hung.create_clone(PARENT, "raw", f"{CLONES}/web-1.qcow2"),
    ]
    outstanding = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0.2)
    assert len(outstanding) > OLD_DEFAULT_THREADS and not any(t.done() for t in outstanding)

    # Meanwhile the default executor and the other store answer at once.
    await asyncio.wait_for(
        asyncio.gather(
            *(asyncio.to_thread(time.sleep, 0.01) for _ in range(OLD_DEFAULT_THREADS)),
            other.list_dir(CLONES),
            other.measure([clone]),
            other.create_clone(PARENT, "raw", f"{CLONES}/web-1.qcow2"),
        ),
        TIMEOUT / 2,
    )
    assert not any(t.done() for t in outstanding), "the hung store answered: it was not frozen"

    results = await asyncio.gather(*outstanding, return_exceptions=True)
    waited = time.monotonic() - started
    assert all(isinstance(r, StoreTimeout) for r in results), results
    assert TIMEOUT - 0.1 < waited < TIMEOUT + 2, waited
    assert str(results[0]) == f"listing {fuse_mount.path}/{CLONES} did not answer within 2 s (a hung mount?)"
    assert str(results[-3]) == f"deleting {fuse_mount.path}/{clone} did not answer within 2 s (a hung mount?)"

    # Calls that had started are still stuck and may yet change the store: later calls are refused at once,
    # the probe too, until they return.
    t0 = time.monotonic()
    with pytest.raises(StoreTimeout, match=f"opening the store root {fuse_mount.path}: refused while an earlier call"):
        await hung.probe()
    assert time.monotonic() - t0 < 0.5
    store = CloneStore.parse(
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "CloneStore",
            "metadata": {"name": "s"},
            "spec": {"driver": "qcow2", "root": str(fuse_mount.path), "maxCloneDepth": 0, "concurrency": 8},
        }
    )
    runtime = Runtime(settings=settings)
    try:
        ready = (await store_status(runtime, store, None))["conditions"][0]
        assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "Unreachable")
        # A driver made again for the same root refuses what the first one left running.
        assert "refused while an earlier call" in ready["message"], ready["message"]
        driver = runtime.store_driver(store)  # the first driver's calls are still stuck: every call is refused at once
        t0 = time.monotonic()
        refused = await asyncio.gather(*(driver.list_dir(CLONES) for _ in range(CALL_THREADS)), return_exceptions=True)
        assert time.monotonic() - t0 < 0.5
        assert all(isinstance(r, StoreTimeout) and "refused while an earlier call" in str(r) for r in refused), refused
        t0 = time.monotonic()
        await runtime.close()  # its threads are stuck on the mount: not waited for
        assert time.monotonic() - t0 < 0.5
        with pytest.raises(StoreError, match="the store is closed"):
            await driver.probe()
    finally:
        await runtime.close()

    # Once the mount answers, the stuck calls finish and the store works again. The calls given up on while
    # they queued never ran: the delete among them did not delete the clone.
    fuse_mount.thaw()
    deadline = time.monotonic() + 5
    while True:  # the stuck calls return, then the store is used again
        try:
            listed = await hung.list_dir(CLONES)
            break
        except StoreTimeout:
            assert time.monotonic() < deadline, "the store refused calls after its stuck calls returned"
            await asyncio.sleep(0.1)
    assert listed == ["web-0.qcow2"]
    assert await hung.probe() == f"{fuse_mount.path} is reachable"
    assert (fuse_mount.source / clone).exists() and not (fuse_mount.source / f"{CLONES}/fleet.json").exists()
    await hung.close()
    await other.close()


# ---------------------------------------------------------------------- through the real apiserver and operator

RESYNC = 2.0
STUCK_TOO = [f"also-{i}" for i in range(OLD_DEFAULT_THREADS - 1)]  # more fleets on the hung store


@pytest.fixture
def hung_operator(
    kube: Cluster, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OperatorProcess]:
    """The operator as its own process (as conftest's `operator`), with a short store timeout and resync."""
    d = tmp_path_factory.mktemp("operator")
    sa = kube.service_account_kubeconfig("vmfleet-system", "vmfleet-operator", d / "sa.kubeconfig")
    op = OperatorProcess(sa, d / "operator.log", resync_seconds=RESYNC)
    monkeypatch.setenv("VMFLEET_STORE_TIMEOUT_SECONDS", f"{TIMEOUT:g}")
    op.start()
    try:
        yield op
    finally:
        op.stop()


class HealthPoller(threading.Thread):
    """GETs the operator's liveness endpoint (kopf's /healthz) every 0.2 s until stopped; keeps each answer."""

    def __init__(self, op: OperatorProcess):
        super().__init__(daemon=True)
        assert op.proc is not None and isinstance(op.proc.args, list)  # the port is on its command line only
        self.url = next(str(a).split("=", 1)[1] for a in op.proc.args if str(a).startswith("--liveness="))
        self.answers: list[int | str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            try:
                self.answers.append(urllib.request.urlopen(self.url, timeout=2).status)
            except OSError as e:
                self.answers.append(repr(e))


def manifests(ns: str, unique: str, hung: Path, other: Path) -> list[dict[str, Any]]:
    """A KvmHost (libvirt's test driver) and two CloneStores, each with a template. On the other store, fleet `web`
    (2 VMs); on the hung one, fleet `stuck` (2 VMs) and enough 1-VM fleets that the objects on it outnumber the
    threads of the old default executor (each of them held one on a hung mount)."""

    def doc(kind: str, name: str, spec: dict[str, Any], namespaced: bool = True) -> dict[str, Any]:
        meta = {"name": name, "namespace": ns} if namespaced else {"name": name, "labels": {"test": f"h-{unique}"}}
        return {"apiVersion": "vmfleet.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}

    def fleet(name: str, template: str, replicas: int) -> dict[str, Any]:
        return doc(
            "VmFleet",
            name,
            {
                "templateRef": {"name": template},
                "replicas": replicas,
                "hostSelector": {"matchLabels": {"test": f"h-{unique}"}},
            },
        )

    docs = [
        doc(
            "KvmHost",
            f"h-{unique}",
            {"uri": "test:///default", "domainType": "qemu", "capacity": {"vcpus": 256, "memoryMiB": 65536}},
            namespaced=False,
        )
    ]
    for name, root in (("stuck", hung), ("web", other)):
        docs += [
            doc("CloneStore", f"{name}-{unique}", {"driver": "qcow2", "root": str(root)}, namespaced=False),
            doc(
                "VmTemplate",
                name,
                {"storeRef": {"name": f"{name}-{unique}"}, "image": {"path": "images/t.img"}, "memoryMiB": 64},
            ),
            fleet(name, name, 2),
        ]
    return docs + [fleet(name, "stuck", 1) for name in STUCK_TOO]


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})


def inodes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_ino for p in (root / "vmfleet" / "clones").rglob("*.qcow2")}


def store_ready(kube: Cluster, name: str, reason: str) -> dict[str, Any] | None:
    condition = ready(kube.get(f"clonestore/{name}"))
    return condition if condition.get("reason") == reason else None


@pytest.mark.kube
def test_a_hung_mount_degrades_only_its_own_fleet_and_the_operator_stays_live(
    fuse_mount: FuseMount, hung_operator: OperatorProcess, kube: Cluster, tmp_path: Path, small_image: Path, unique: str
) -> None:
    ns, stuck_store = f"h-{unique}", f"stuck-{unique}"
    kube.kubectl("create", "namespace", ns)
    with_image(fuse_mount.source, small_image)
    apply(kube, manifests(ns, unique, fuse_mount.path, store_root(tmp_path, small_image)))
    try:
        kube.kubectl("wait", "--for=condition=Ready", "vmfleets", "--all", "-n", ns, "--timeout=120s")
        clones = inodes(fuse_mount.source)  # not through the mount
        assert len(clones) == 2 + len(STUCK_TOO)
        health = HealthPoller(hung_operator)
        health.start()
        try:
            fuse_mount.freeze()
            frozen = time.monotonic()

            # (c) the fleets on the hung store say so, within a resync and a timeout or two
            def unavailable() -> dict[str, dict[str, Any]] | None:
                conditions = {f["metadata"]["name"]: ready(f) for f in kube.get("vmfleets", "-n", ns)["items"]}
                stuck = {n: c for n, c in conditions.items() if n != "web"}
                return stuck if all(c.get("reason") == "StoreUnavailable" for c in stuck.values()) else None

            conditions = wait_for(unavailable, 4 * (RESYNC + TIMEOUT), "the fleets on the frozen mount to say so")
            TIMINGS["fleets on a frozen mount reported StoreUnavailable"] = time.monotonic() - frozen
            assert {c["status"] for c in conditions.values()} == {"False"}
            message = conditions["stuck"]["message"]
            assert f"did not answer within {TIMEOUT:g} s (a hung mount?)" in message, message
            store = wait_for(
                lambda: store_ready(kube, stuck_store, "Unreachable"),
                4 * (RESYNC + TIMEOUT),
                "the CloneStore on the frozen mount to be Unreachable",
            )
            # Its own probe timed out, or was refused behind a fleet's call that had: either way it says what hangs.
            assert f"opening the store root {fuse_mount.path}" in store["message"], store
            assert f"did not answer within {TIMEOUT:g} s (a hung mount?)" in store["message"], store

            # (a) meanwhile the other fleet converges: neither its store nor the libvirt host is held up. Every
            # object on the hung store has called it since the freeze (they all said so): before the fix, each
            # held a thread of the default executor for good, all of them, and this waited forever.
            kube.kubectl("scale", "vmfleet/web", "-n", ns, "--replicas=3")
            kube.kubectl("wait", "--for=jsonpath={.status.readyReplicas}=3", "vmfleet/web", "-n", ns, "--timeout=60s")
            kube.kubectl("wait", "--for=condition=Ready", "vmfleet/web", "-n", ns, "--timeout=60s")
            assert ready(kube.get("vmfleet/stuck", "-n", ns))["status"] == "False"
            assert fuse_mount.frozen
        finally:
            fuse_mount.thaw()
            health.done.set()
            health.join()

        # (b) the liveness endpoint answered every time while the mount was frozen
        assert len(health.answers) >= 10 and set(health.answers) == {200}, health.answers

        # (d) thawed, the fleets are Ready again with the clones they had
        kube.kubectl("wait", "--for=condition=Ready", "vmfleets", "--all", "-n", ns, "--timeout=60s")
        assert kube.get("vmfleet/stuck", "-n", ns)["status"]["readyReplicas"] == 2
        assert inodes(fuse_mount.path) == clones
        wait_for(lambda: store_ready(kube, stuck_store, "Reachable"), 30, "the CloneStore to be Reachable again")
    finally:
        fuse_mount.thaw()
        # By kind and label: the category `vmfleet` also names the cluster-scoped kinds, every test's.
        kube.kubectl("delete", "vmfleets,vmtemplates", "--all", "-n", ns, "--timeout=60s", check=False)
        kube.kubectl("delete", "clonestores,kvmhosts", "-l", f"test=h-{unique}", "--timeout=60s", check=False)
    assert inodes(fuse_mount.source) == {}
