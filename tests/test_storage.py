"""The reflink driver on a real XFS loop file system, the qcow2 driver with the real qemu-img."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import unavailable
from helpers import xfs_io_exclusive
from vmfleet.storage import StoreError
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
