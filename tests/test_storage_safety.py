"""I6 for the local drivers (reflink, qcow2, the NFS side of sonas): nothing outside the store's root is
read, written or deleted whatever the store holds; looking changes nothing; no input ends in a traceback.
Regression tests of issue 12, findings 9, 10, 13 and 14 and the `.partial` suspicion."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from conftest import unavailable
from helpers import quickstart
from vmfleet.api import CloneStore
from vmfleet.engine import Runtime, store_status
from vmfleet.storage import StoreError
from vmfleet.storage.local import LocalStore
from vmfleet.storage.qcow2 import Qcow2Store
from vmfleet.storage.reflink import ReflinkStore
from vmfleet.storage.remote import SonasStore

pytestmark = pytest.mark.safety

MIB = 1 << 20
PARENT = "vmfleet/parents/template.img"
CLONES = "vmfleet/clones/ns/web/uid"
LINK = "is a symbolic link; vmfleet follows none inside a store"
VMFLEET = str(Path(sys.executable).parent / "vmfleet")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the store: it must stay exactly as it is."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_bytes(b"not the store's\n")
    return d


@pytest.fixture(params=["reflink", "qcow2"])
def store(request: pytest.FixtureRequest, xfs: Path, small_image: Path, unique: str) -> LocalStore:
    root = xfs / f"{unique}-{request.param}"
    (root / "images").mkdir(parents=True)
    shutil.copyfile(small_image, root / "images" / "t.img")
    return ReflinkStore(str(root)) if request.param == "reflink" else Qcow2Store(str(root))


def ext(store: LocalStore) -> str:
    return ".qcow2" if isinstance(store, Qcow2Store) else ".img"


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- finding 10: symbolic links


async def test_a_symlinked_template_image_never_becomes_a_parent(store: LocalStore, outside: Path) -> None:
    root = Path(store.base)
    (root / "images" / "evil.img").symlink_to(outside / "secret")
    with pytest.raises(StoreError, match=f"images/evil.img {LINK}"):
        await store.prepare_parent("images/evil.img", "raw", PARENT)
    assert not (root / PARENT).exists()
    (root / "images" / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match=f"images/sub {LINK}"):
        await store.prepare_parent("images/sub/secret", "raw", PARENT)
    assert not (root / PARENT).exists()


async def test_no_clone_is_made_through_a_symlinked_directory(store: LocalStore, outside: Path) -> None:
    root = Path(store.base)
    await store.prepare_parent("images/t.img", "raw", PARENT)
    (root / "vmfleet" / "clones").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    with pytest.raises(StoreError, match=f"vmfleet/clones {LINK}"):
        await store.create_clone(PARENT, "raw", f"{CLONES}/web-0{ext(store)}")
    with pytest.raises(StoreError, match=f"vmfleet/clones {LINK}"):
        await store.list_dir(CLONES)
    with pytest.raises(StoreError, match=f"vmfleet/clones {LINK}"):
        await store.write_text(f"{CLONES}/fleet.json", "{}")
    assert snapshot(outside) == before


async def test_a_symlinked_parent_is_neither_cloned_nor_deleted(store: LocalStore, outside: Path) -> None:
    root = Path(store.base)
    (root / "vmfleet" / "parents").mkdir(parents=True)
    (root / PARENT).symlink_to(outside / "secret")
    with pytest.raises(StoreError, match=f"{PARENT} {LINK}"):
        await store.exists(PARENT)
    with pytest.raises(StoreError, match=f"{PARENT} {LINK}"):
        await store.create_clone(PARENT, "raw", f"{CLONES}/web-0{ext(store)}")
    with pytest.raises(StoreError, match=f"{PARENT} {LINK}"):
        await store.delete_parent(PARENT, "images/t.img")
    assert (root / PARENT).is_symlink() and (outside / "secret").read_bytes() == b"not the store's\n"


async def test_a_symlinked_clone_is_not_measured_nor_deleted(store: LocalStore, outside: Path) -> None:
    root = Path(store.base)
    (root / CLONES).mkdir(parents=True)
    clone = f"{CLONES}/web-0{ext(store)}"
    (root / clone).symlink_to(outside / "secret")
    with pytest.raises(StoreError, match=f"{clone} {LINK}"):
        await store.measure([clone])
    with pytest.raises(StoreError, match=f"{clone} {LINK}"):
        await store.delete(clone)
    assert (root / clone).is_symlink() and (outside / "secret").exists()


async def test_delete_does_not_follow_a_symlinked_directory(store: LocalStore, outside: Path) -> None:
    root = Path(store.base)
    (root / "vmfleet" / "clones" / "ns").mkdir(parents=True)
    (root / "vmfleet" / "clones" / "ns" / "web").symlink_to(outside, target_is_directory=True)
    (outside / "uid").mkdir()
    victim = outside / "uid" / f"web-0{ext(store)}"
    victim.write_bytes(b"a disk that is not ours")
    with pytest.raises(StoreError, match=f"vmfleet/clones/ns/web {LINK}"):
        await store.delete(f"{CLONES}/web-0{ext(store)}")
    assert victim.read_bytes() == b"a disk that is not ours"


async def test_the_qcow2_backing_scan_follows_no_link(tmp_path: Path, small_image: Path, outside: Path) -> None:
    root = tmp_path / "store"
    (root / "images").mkdir(parents=True)
    shutil.copyfile(small_image, root / "images" / "t.img")
    store = Qcow2Store(str(root))
    await store.prepare_parent("images/t.img", "raw", PARENT)
    (root / "vmfleet" / "clones" / "ns").mkdir(parents=True)
    # An overlay outside the root, reached through a link inside it: it must not be opened.
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "../../../parents/template.img",
            "-F",
            "raw",
            str(outside / "o.qcow2"),
            "64M",
        ],
        check=True,
    )
    (root / "vmfleet" / "clones" / "ns" / "o.qcow2").symlink_to(outside / "o.qcow2")
    with pytest.raises(StoreError, match=f"vmfleet/clones/ns/o.qcow2 {LINK}"):
        await store.delete_parent(PARENT, "images/t.img")
    assert (root / PARENT).exists()
    (root / "vmfleet" / "clones" / "ns" / "o.qcow2").unlink()
    await store.delete_parent(PARENT, "images/t.img")  # no overlay left: it goes
    assert not (root / PARENT).exists()


async def test_a_fifo_in_the_store_is_refused_without_hanging(store: LocalStore) -> None:
    root = Path(store.base)
    (root / CLONES).mkdir(parents=True)
    fifo = root / CLONES / f"web-0{ext(store)}"
    os.mkfifo(fifo)
    try:
        with pytest.raises(StoreError, match="is not a regular file"):
            await asyncio.wait_for(store.measure([f"{CLONES}/web-0{ext(store)}"]), 10)
    finally:
        try:  # unblock a reader stuck in open() so the test run can end
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


# ---------------------------------------------------------------------- finding 13: looking changes nothing


HOLDER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("holding", flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def maker() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Another process making a clone: it holds the flock on its partial file until told to stop."""
    procs: list[subprocess.Popen[str]] = []

    def start(partial: Path) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(partial)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert p.stdout is not None and p.stdout.readline() == "holding\n"
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.communicate("", timeout=10)


async def test_a_live_partial_survives_a_listing_and_a_second_maker(
    store: LocalStore, maker: Callable[[Path], subprocess.Popen[str]]
) -> None:
    root = Path(store.base)
    await store.prepare_parent("images/t.img", "raw", PARENT)
    (root / CLONES).mkdir(parents=True)
    target = f"{CLONES}/web-0{ext(store)}"
    live = root / f"{target}.partial"  # the name older vmfleet versions use, held by a maker at work
    holder = maker(live)
    assert await store.list_dir(CLONES) == []
    assert live.exists(), "listing removed a clone another process is making"
    await store.create_clone(PARENT, "raw", target)  # a second maker of the same target
    assert live.exists(), "a second maker removed the partial of a live one"
    assert await store.list_dir(CLONES) == [f"web-0{ext(store)}"]
    holder.communicate("", timeout=10)  # its maker is gone: the partial is stale now
    await store.delete(target)  # the next maker or delete of that target removes it
    assert not live.exists() and not (root / CLONES).exists()


async def test_two_stores_on_one_root_make_clones_at_once(store: LocalStore) -> None:
    """`vmfleet apply` and the operator on one store: each keeps its own partial, no clone is lost."""
    other = type(store)(store.base)
    await store.prepare_parent("images/t.img", "raw", PARENT)
    targets = [f"{CLONES}/web-{i}{ext(store)}" for i in range(8)]
    results = await asyncio.gather(
        *(s.create_clone(PARENT, "raw", t) for t in targets for s in (store, other)), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, StoreError) and "already exists" in str(r) for r in failures), failures
    assert len(failures) == len(targets)  # one of each pair made it, the other was told
    assert sorted(os.listdir(Path(store.base) / CLONES)) == sorted(t.rsplit("/", 1)[1] for t in targets)


# ---------------------------------------------------------------------- finding 14: a root that is a file


@pytest.mark.parametrize("driver", [ReflinkStore, Qcow2Store])
async def test_a_root_that_is_a_file_is_an_error_naming_spec_root(driver: type[LocalStore]) -> None:
    store = driver("/etc/shadow")
    message = r"the store root /etc/shadow \(spec.root\) is not a directory"
    calls = [
        lambda: store.list_dir(CLONES),
        lambda: store.exists(PARENT),
        lambda: store.measure([f"{CLONES}/web-0.img"]),
        lambda: store.delete(f"{CLONES}/web-0.img"),
        lambda: store.prepare_parent("images/t.img", "raw", PARENT),
        lambda: store.create_clone(PARENT, "raw", f"{CLONES}/web-0.img"),
        lambda: store.read_text(f"{CLONES}/fleet.json"),
    ]
    for call in calls:
        with pytest.raises(StoreError, match=message):
            await call()


async def test_a_missing_root_and_a_sonas_export_that_is_a_file_name_their_field(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=rf"the store root {tmp_path}/none \(spec.root\) does not exist"):
        await ReflinkStore(str(tmp_path / "none")).list_dir(CLONES)
    sonas = SonasStore("/gpfs/fs1", "/etc/shadow", runner=None, max_depth=0)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match=r"/etc/shadow \(spec.localPath\) is not a directory"):
        await sonas.list_dir(CLONES)


async def test_every_os_error_is_a_store_error_naming_the_path(tmp_path: Path, small_image: Path) -> None:
    root = tmp_path / "store"
    (root / "images").mkdir(parents=True)
    shutil.copyfile(small_image, root / "images" / "t.img")
    store = Qcow2Store(str(root))
    await store.prepare_parent("images/t.img", "raw", PARENT)
    long_name = f"{CLONES}/{'w' * 240}.qcow2"  # valid, but its partial's name is too long
    with pytest.raises(StoreError, match="File name too long"):
        await store.create_clone(PARENT, "raw", long_name)
    (root / "vmfleet" / "clones" / "db").write_bytes(b"")  # a file where a directory belongs
    with pytest.raises(StoreError, match="vmfleet/clones/db is not a directory"):
        await store.create_clone(PARENT, "raw", "vmfleet/clones/db/uid/db-0.qcow2")
    with pytest.raises(StoreError, match="vmfleet/clones/db is not a directory"):
        await store.list_dir("vmfleet/clones/db/uid")
    if os.geteuid() != 0:
        unavailable("a read-only bind mount needs root")
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
        with pytest.raises(StoreError, match=f"{root}/vmfleet/clones/app: Read-only file system"):
            await store.create_clone(PARENT, "raw", "vmfleet/clones/app/uid/app-0.qcow2")
    finally:
        subprocess.run(["umount", str(root)], check=False)


def clone_store(root: str) -> CloneStore:
    return CloneStore.parse(
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "CloneStore",
            "metadata": {"name": "s"},
            "spec": {"driver": "reflink", "root": root, "maxCloneDepth": 0, "concurrency": 4},
        }
    )


async def test_the_store_probe_says_a_root_that_is_a_file_is_not_a_directory(runtime: Runtime) -> None:
    status = await store_status(runtime, clone_store("/etc/shadow"), None)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RootMissing")
    assert ready["message"] == "spec.root /etc/shadow is not a directory"


def test_vmfleet_apply_on_a_root_that_is_a_file_says_so_without_a_traceback(tmp_path: Path, small_image: Path) -> None:
    manifests = quickstart(tmp_path, small_image)
    doc = yaml.safe_load((manifests / "store.yaml").read_text())
    doc["spec"]["root"] = "/etc/shadow"
    (manifests / "store.yaml").write_text(yaml.safe_dump(doc))
    for args in (["apply", "-f", str(manifests)], ["apply", "--dry-run", "-f", str(manifests)]):
        done = subprocess.run([VMFLEET, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 or "--dry-run" in args, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout, done.stderr
        assert "the store root /etc/shadow (spec.root) is not a directory" in done.stderr + done.stdout


# ---------------------------------------------------------------------- finding 9: qcow2 logical size


def qcow2_image(path: Path, virtual: int, data: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(virtual)], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data}", str(path)], check=True, capture_output=True
    )


async def test_a_qcow2_clone_on_reflink_reports_the_disk_the_guest_sees(xfs: Path, unique: str) -> None:
    root = xfs / unique
    (root / "images").mkdir(parents=True)
    qcow2_image(root / "images" / "t.qcow2", 32 * MIB, 8 * MIB)
    store = ReflinkStore(str(root))
    parent = "vmfleet/parents/template.qcow2"
    await store.prepare_parent("images/t.qcow2", "qcow2", parent)
    clone = f"{CLONES}/web-0.qcow2"
    await store.create_clone(parent, "qcow2", clone)
    assert (root / clone).stat().st_size < 9 * MIB
    space = (await store.measure([clone]))[clone]
    assert space.logical == 32 * MIB
    assert space.allocated == 0


async def test_a_qcow2_clone_on_sonas_reports_the_disk_the_guest_sees(tmp_path: Path) -> None:
    (tmp_path / CLONES).mkdir(parents=True)
    qcow2_image(tmp_path / CLONES / "web-0.qcow2", 32 * MIB, 8 * MIB)
    sonas = SonasStore("/gpfs/fs1", str(tmp_path), runner=None, max_depth=0)  # type: ignore[arg-type]
    space = (await sonas.measure([f"{CLONES}/web-0.qcow2"]))[f"{CLONES}/web-0.qcow2"]
    assert space.logical == 32 * MIB
