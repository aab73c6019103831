"""The reflink driver on a real XFS loop file system, the qcow2 driver with the real qemu-img."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import unavailable
from helpers import SEED, SEED_BYTES, SEED_DIR, SEED_NAME, tmpfs_at, xfs_io_exclusive
from vmfleet.storage import Space, StoreError
from vmfleet.storage.local import LocalStore
from vmfleet.storage.qcow2 import Qcow2Store
from vmfleet.storage.reflink import ReflinkStore

MIB = 1 << 20
PARENT = "vmfleet/parents/template.img"


def write(path: Path, offset: int, size: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())


@pytest.fixture
def reflink_store(xfs: Path, small_image: Path, unique: str) -> ReflinkStore:
    root = xfs / unique
    (root / "images").mkdir(parents=True)
    shutil.copyfile(small_image, root / "images" / "t.img")
    return ReflinkStore(str(root))


async def test_reflink_clones_own_nothing_until_written_and_only_the_writer_grows(reflink_store: ReflinkStore) -> None:
    store, root = reflink_store, Path(reflink_store.base)
    await store.prepare_parent("images/t.img", "raw", PARENT)
    assert not os.access(root / PARENT, os.W_OK) or os.geteuid() == 0
    assert (root / PARENT).stat().st_mode & 0o777 == 0o444
    clones = [f"vmfleet/clones/ns/web/web-{i}.img" for i in range(3)]
    for c in clones:
        await store.create_clone(PARENT, "raw", c)
    before = await store.measure(clones)
    assert [before[c].allocated for c in clones] == [0, 0, 0]
    assert before[clones[0]].logical == 64 * MIB

    write(root / clones[1], 4 * MIB, 3 * MIB)  # inside a shared data chunk: copy-on-write, st_blocks unchanged
    after = await store.measure(clones)
    grown = after[clones[1]].allocated - before[clones[1]].allocated
    assert grown == xfs_io_exclusive(root / clones[1]) == 3 * MIB
    assert after[clones[0]].allocated == after[clones[2]].allocated == 0


def fs_used(path: Path) -> int:
    """Bytes in use on the file system, once XFS's deferred inode work has settled."""
    last = -1
    for _ in range(50):
        os.sync()
        st = os.statvfs(path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        if used == last:
            return used
        last = used
        time.sleep(0.2)
    return last


async def test_allocated_bytes_leave_out_the_transient_xfs_cow_preallocation(reflink_store: ReflinkStore) -> None:
    """allocatedBytes is FIEMAP's unshared data (docs/reliability.md): XFS also holds up to cowextsize
    (128 KiB) per region written until its background scan trims it, which no ioctl shows."""
    store, root = reflink_store, Path(reflink_store.base)
    await store.prepare_parent("images/t.img", "raw", PARENT)
    clone = "vmfleet/clones/ns/web/uid/web-0.img"
    await store.create_clone(PARENT, "raw", clone)
    before = fs_used(root)
    write(root / clone, 4 * MIB, 4096)
    grew = fs_used(root) - before
    allocated = (await store.measure([clone]))[clone].allocated
    print(f"4 KiB overwrite: allocatedBytes {allocated}, file system used grew by {grew}")
    assert allocated == xfs_io_exclusive(root / clone) == 4096
    assert grew >= allocated


async def test_reflink_clone_refuses_an_existing_target_and_leaves_no_partial(reflink_store: ReflinkStore) -> None:
    store, root = reflink_store, Path(reflink_store.base)
    await store.prepare_parent("images/t.img", "raw", PARENT)
    await store.create_clone(PARENT, "raw", "vmfleet/clones/ns/web/web-0.img")
    write(root / "vmfleet/clones/ns/web/web-0.img", 0, MIB)
    with pytest.raises(StoreError, match="already exists"):
        await store.create_clone(PARENT, "raw", "vmfleet/clones/ns/web/web-0.img")
    assert xfs_io_exclusive(root / "vmfleet/clones/ns/web/web-0.img") == MIB, "the existing clone was touched"
    stale = root / "vmfleet/clones/ns/web/web-1.img.0123456789abcdef.partial"
    stale.write_bytes(b"x")  # a crash mid-clone: nobody holds its lock
    assert await store.list_dir("vmfleet/clones/ns/web") == ["web-0.img"]
    assert stale.exists(), "listing changed the store"
    await store.create_clone(PARENT, "raw", "vmfleet/clones/ns/web/web-1.img")  # the next maker cleans up
    assert sorted(os.listdir(root / "vmfleet/clones/ns/web")) == ["web-0.img", "web-1.img"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Path:
    """A file system that certainly has no reflinks."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(tmp_path)], check=True)
    yield tmp_path
    subprocess.run(["umount", str(tmp_path)], check=False)


async def test_reflink_on_a_file_system_without_reflinks_says_so(tmpfs: Path, small_image: Path) -> None:
    tmp_path = tmpfs
    (tmp_path / "images").mkdir()
    shutil.copyfile(small_image, tmp_path / "images" / "t.img")
    store = ReflinkStore(str(tmp_path))
    await store.prepare_parent("images/t.img", "raw", PARENT)  # a sparse copy where reflinks are missing
    with pytest.raises(StoreError, match="needs XFS with reflink=1 or btrfs"):
        await store.create_clone(PARENT, "raw", "vmfleet/clones/ns/web/web-0.img")
    assert await store.list_dir("vmfleet/clones/ns/web") == []


@pytest.mark.parametrize("bad", ["../etc/passwd", "/etc/passwd", "a/../../b", "a b;rm", ""])
async def test_paths_outside_the_store_never_reach_the_file_system(tmp_path: Path, bad: str) -> None:
    store = Qcow2Store(str(tmp_path))
    with pytest.raises(StoreError, match="not a plain relative path"):
        await store.delete(bad)


def qemu_img_info(path: Path) -> dict:
    return json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True, check=True
        ).stdout
    )


async def test_qcow2_overlays_are_backed_by_the_parent_through_a_relative_path(
    tmp_path: Path, small_image: Path
) -> None:
    (tmp_path / "images").mkdir()
    shutil.copyfile(small_image, tmp_path / "images" / "t.img")
    store = Qcow2Store(str(tmp_path))
    await store.prepare_parent("images/t.img", "raw", PARENT)
    clones = ["vmfleet/clones/ns/web/web-0.qcow2", "vmfleet/clones/ns/web/web-1.qcow2"]
    for c in clones:
        await store.create_clone(PARENT, "raw", c)
    info = qemu_img_info(tmp_path / clones[0])
    assert info["backing-filename"] == "../../../parents/template.img"
    assert info["virtual-size"] == 64 * MIB
    before = await store.measure(clones)
    assert before[clones[0]].logical == 64 * MIB
    assert before[clones[0]].allocated == info["actual-size"] < MIB

    # The overlay still opens after the whole store moves: what a KVM host with another mount point sees.
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.copytree(tmp_path, moved)
    before = await Qcow2Store(str(moved)).measure(clones)  # a copy may allocate a sparse tail: measure it there
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 8M", str(moved / clones[0])], check=True, capture_output=True
    )
    after = await Qcow2Store(str(moved)).measure(clones)
    assert after[clones[0]].allocated - before[clones[0]].allocated >= 8 * MIB
    assert after[clones[1]].allocated == before[clones[1]].allocated
    shutil.rmtree(moved)


async def test_qcow2_clone_of_a_missing_parent_fails_cleanly(tmp_path: Path) -> None:
    store = Qcow2Store(str(tmp_path))
    with pytest.raises(StoreError, match="clone parent 'vmfleet/parents/template.img' does not exist"):
        await store.create_clone(PARENT, "raw", "vmfleet/clones/ns/web/web-0.qcow2")
    with pytest.raises(StoreError, match="template image 'images/none.img' not found"):
        await store.prepare_parent("images/none.img", "raw", PARENT)


# ---------------------------------------------------------------------- small binary files (issue 15: seed images)

KIB = 1 << 10


@pytest.fixture(params=["reflink", "qcow2"])
def local_store(request: pytest.FixtureRequest, xfs: Path, unique: str) -> LocalStore:
    root = xfs / f"{unique}-{request.param}"
    root.mkdir()
    return ReflinkStore(str(root)) if request.param == "reflink" else Qcow2Store(str(root))


async def test_a_binary_file_round_trips_byte_exact_and_is_listed_measured_and_deleted(local_store: LocalStore) -> None:
    store, root = local_store, Path(local_store.base)
    await store.write_file(SEED, SEED_BYTES)
    assert (root / SEED).read_bytes() == SEED_BYTES
    assert (root / SEED).stat().st_mode & 0o777 == 0o644
    small, data = f"{SEED_DIR}/web-1.cidata-0123456789ab.iso", os.urandom(64 * KIB)
    await store.write_file(small, data)
    assert await store.list_dir(SEED_DIR) == [SEED_NAME, "web-1.cidata-0123456789ab.iso"]
    space = await store.measure([SEED, small])
    assert space[small] == Space(64 * KIB, 64 * KIB), space
    assert space[SEED].logical == len(SEED_BYTES) and space[SEED].allocated >= len(SEED_BYTES), space
    await store.write_text(f"{SEED_DIR}/fleet.json", "{}")  # a thin call of write_file: the same file calls
    assert (root / SEED_DIR / "fleet.json").read_bytes() == b"{}"
    await store.delete(SEED)
    await store.delete(small)
    assert await store.list_dir(SEED_DIR) == ["fleet.json"]
    assert not (root / SEED).exists() and not (root / small).exists()


async def test_a_rewrite_replaces_the_file_whole_never_in_place(local_store: LocalStore) -> None:
    store, root = local_store, Path(local_store.base)
    old = b"old seed\0\xff" * 6000
    await store.write_file(SEED, old)
    with open(root / SEED, "rb") as before:  # a reader of the old file (QEMU has the seed open, say)
        await store.write_file(SEED, SEED_BYTES)
        assert before.read() == old, "the old file was overwritten in place"
    assert (root / SEED).read_bytes() == SEED_BYTES
    assert os.listdir(root / SEED_DIR) == [SEED_NAME], "a partial was left"

    seen: set[bytes] = set()
    stop = threading.Event()

    def read_all_the_time() -> None:
        while not stop.is_set():
            seen.add((root / SEED).read_bytes())

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        for i in range(10):
            await store.write_file(SEED, old if i % 2 else SEED_BYTES)
    finally:
        stop.set()
        reader.join()
    assert seen <= {old, SEED_BYTES} and seen, [len(s) for s in seen]  # never a mix, never a short file
    assert os.listdir(root / SEED_DIR) == [SEED_NAME]


async def test_a_write_that_fails_leaves_the_old_file_and_no_partial(local_store: LocalStore) -> None:
    store, root = local_store, Path(local_store.base)
    with tmpfs_at(root / SEED_DIR, "256k"):  # root writes to a read-only directory: a full file system stops it
        old = os.urandom(64 * KIB)
        await store.write_file(SEED, old)
        with pytest.raises(StoreError, match=f"{SEED}.*No space left on device"):
            await store.write_file(SEED, SEED_BYTES)
        assert (root / SEED).read_bytes() == old
        assert os.listdir(root / SEED_DIR) == [SEED_NAME]
        assert await store.list_dir(SEED_DIR) == [SEED_NAME]


@pytest.mark.parametrize("bad", ["../seed.iso", "/etc/seed.iso", "vmfleet/../../seed.iso", "a/./b.iso", ""])
async def test_a_binary_file_is_never_written_outside_the_store(local_store: LocalStore, bad: str) -> None:
    with pytest.raises(StoreError, match="not a plain relative path"):
        await local_store.write_file(bad, SEED_BYTES)


async def test_a_binary_file_is_never_written_through_a_symbolic_link(local_store: LocalStore, tmp_path: Path) -> None:
    root = Path(local_store.base)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "vmfleet" / "clones" / "ns").mkdir(parents=True)
    (root / "vmfleet" / "clones" / "ns" / "web").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="vmfleet/clones/ns/web is a symbolic link"):
        await local_store.write_file(SEED, SEED_BYTES)
    assert list(outside.iterdir()) == []
    (root / "vmfleet" / "clones" / "ns" / "web").unlink()
    (root / SEED_DIR).mkdir(parents=True)
    (root / SEED).symlink_to(outside / "target.iso")
    with pytest.raises(StoreError, match=f"{SEED} is a symbolic link"):
        await local_store.write_file(SEED, SEED_BYTES)
    assert list(outside.iterdir()) == [] and (root / SEED).is_symlink()
