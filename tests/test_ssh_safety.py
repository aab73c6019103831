"""Issue 12, the storage side: findings 16 (OpenSSH's MaxSessions), 6 (a gpfs template's parent can be
released) and 9 for gpfs (a qcow2 clone's logical size is the disk the guest sees).

The SSH tests run against OpenSSH's own sshd (ForceCommand hands each command to the simulator's
interpreter) and against the simulator's asyncssh server, which must behave the same way.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest
from prometheus_client import REGISTRY

from conftest import TIMINGS
from helpers import SEED, SEED_BYTES, SEED_DIR, SEED_NAME, a_resync_later, tmpfs_at, wait_for
from simulator import MOUNT, OpenSshSim, SimEnv, fleet, host, template
from test_sonas import MakeEnv, clone_path, make_env  # noqa: F401 - the simulator fixture
from vmfleet.api import CloneStore, InvalidManifest, parse
from vmfleet.engine import reconcile_fleet
from vmfleet.storage import Space, StoreError, parent_path
from vmfleet.storage import commands as cmd
from vmfleet.storage.remote import GpfsStore

pytestmark = [pytest.mark.safety, pytest.mark.sonas]
MIB = 1 << 20
SERVERS = ["openssh", "asyncssh-sim"]


def ssh_errors(env: SimEnv, error: str) -> float:
    value = REGISTRY.get_sample_value(
        "vmfleet_ssh_errors_total", {"target": f"{env.user}@127.0.0.1:{env.sim.port}", "error": error}
    )
    return value or 0.0


async def _raw_connection(env: SimEnv) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        env.sim.port,
        username=env.user,
        client_keys=[env.client_key],
        known_hosts=asyncssh.import_known_hosts(env.sim.known_hosts),
        agent_path=None,
        config=None,
    )


# ---------------------------------------------------------------- finding 16: MaxSessions


@pytest.mark.parametrize("server", SERVERS)
async def test_the_server_refuses_the_11th_session_of_one_connection(make_env: MakeEnv, server: str) -> None:
    """What the issue measured with OpenSSH: 16 commands at once on one connection, 10 run, 6 are refused;
    the simulator refuses the same ones the same way."""
    env = await make_env("gpfs", openssh=server == "openssh", latency=1.0)
    conn = await _raw_connection(env)
    try:
        results = await asyncio.gather(
            *(conn.run(cmd.ls(f"{MOUNT}/frank"), check=False) for _ in range(16)), return_exceptions=True
        )
    finally:
        conn.close()
    ok = [r for r in results if isinstance(r, asyncssh.SSHCompletedProcess) and r.exit_status == 0]
    refused = [r for r in results if isinstance(r, asyncssh.ChannelOpenError)]
    assert (len(ok), len(refused)) == (10, 6), results
    assert {(r.code, r.reason) for r in refused} == {(asyncssh.OPEN_CONNECT_FAILED, "open failed")}


def test_a_forced_command_loads_only_the_simulator_interpreter(tmp_path: Path) -> None:
    """sshd starts the interpreter once per command: when it loaded the product too (0.8 s of CPU each),
    16 commands of 1 s at once took 10 s on 2 cores and CI's timed out. A real mmclone starts in
    milliseconds."""
    (tmp_path / "frank").mkdir()
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": cmd.ls(f"{MOUNT}/frank"), "PYTHONPATH": os.pathsep.join(sys.path)}
    cmdline = ["-m", "vmfleet.sim", "--exec", "--dir", str(tmp_path), "--mount-point", MOUNT, "--personality", "gpfs"]
    run = subprocess.run([sys.executable, "-X", "importtime", *cmdline], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "vmfleet.sim.cli" in loaded
    heavy = sorted(m for m in loaded if m.split(".")[0] in {"asyncssh", "pydantic", "prometheus_client", "asyncio"})
    product = sorted(m for m in loaded if m.startswith("vmfleet.") and m.split(".")[1] not in {"sim", "extents"})
    assert (heavy, product) == ([], []), (heavy, product)


@pytest.mark.parametrize("server", SERVERS)
async def test_16_commands_at_once_all_run_on_a_server_with_max_sessions_10(make_env: MakeEnv, server: str) -> None:
    """concurrency 16, maxSessions 10 (the default): two connections, no channel refused, none dropped."""
    env = await make_env("gpfs", openssh=server == "openssh", latency=1.0)
    runner = env.runtime.store_driver(env.store(concurrency=16)).runner  # type: ignore[attr-defined]
    t0 = time.monotonic()
    replies = await asyncio.gather(*(runner.run(cmd.ls(f"{MOUNT}/frank")) for _ in range(16)), return_exceptions=True)
    seconds = time.monotonic() - t0
    assert [getattr(r, "exit_status", r) for r in replies] == [0] * 16
    assert env.sim.connections == 2 and runner.channels_refused == 0
    assert ssh_errors(env, "dropped") == 0
    assert seconds < 12, seconds  # at once: 16 in a row take 16 s or more
    TIMINGS[f"ssh: 16 commands of 1 s at once through {server}, MaxSessions 10"] = seconds


@pytest.mark.parametrize("server", SERVERS)
async def test_a_refused_channel_is_retried_and_the_others_go_on(make_env: MakeEnv, server: str) -> None:
    """maxSessions set above the server's: the channels it refuses are opened again once others close, for
    commands that are not safe to repeat too (a refused command never started); no connection is dropped."""
    env = await make_env("gpfs", openssh=server == "openssh", latency=0.5)
    store = env.store(concurrency=16, ssh={"maxSessions": 16})
    runner = env.runtime.store_driver(store).runner  # type: ignore[attr-defined]
    (env.directory / "frank" / "gone").mkdir()
    replies = await asyncio.gather(
        *(runner.run(cmd.rm_f(f"{MOUNT}/frank/gone/{i}")) for i in range(16)), return_exceptions=True
    )
    assert [getattr(r, "exit_status", r) for r in replies] == [0] * 16
    assert runner.channels_refused >= 6 and ssh_errors(env, "refused") >= 6
    assert env.sim.connections == 1 and ssh_errors(env, "dropped") == 0
    assert env.sim.count("rm ") == 16  # each ran once


@pytest.mark.parametrize("server", SERVERS)
async def test_a_session_is_not_reopened_before_the_server_has_freed_it(make_env: MakeEnv, server: str) -> None:
    """sshd frees a session only once its loop collects the closed channel: a channel opened right behind
    the client's close is refused ("no more sessions" in the server's log), 38 of 60 here before the fix."""
    env = await make_env("gpfs", openssh=server == "openssh")
    runner = env.runtime.store_driver(env.store(concurrency=10)).runner  # type: ignore[attr-defined]
    replies = await asyncio.gather(*(runner.run(cmd.ls(f"{MOUNT}/frank")) for _ in range(60)))
    assert [r.exit_status for r in replies] == [0] * 60, [r for r in replies if r.exit_status]
    # sshd's loop runs when the scheduler lets it: on a loaded 2-core machine a few slots still come free later
    # than 10 ms (each refusal is retried); before the fix most of them did.
    assert runner.channels_refused <= 6 and env.sim.connections == 1, runner.channels_refused


async def test_a_server_that_never_frees_a_session_is_a_clear_error(make_env: MakeEnv) -> None:
    env = await make_env("gpfs", max_sessions=1, hang={1})
    store = env.store(timeout=1, ssh={"maxSessions": 2}, concurrency=2)
    runner = env.runtime.store_driver(store).runner  # type: ignore[attr-defined]
    errors = await asyncio.gather(
        runner.run(cmd.ls(f"{MOUNT}/frank")), runner.run(cmd.ls(f"{MOUNT}/frank")), return_exceptions=True
    )
    assert all(isinstance(e, StoreError) for e in errors), errors
    hung, refused = sorted(errors, key=lambda e: "took longer" not in str(e))
    assert "ls on root@127.0.0.1" not in str(hung) and "took longer than 1 s" in str(hung)
    assert "above the server's MaxSessions" in str(refused) and "open failed" in str(refused)


async def test_the_pool_opens_a_connection_only_when_the_others_are_full(make_env: MakeEnv) -> None:
    env = await make_env("gpfs", latency=0.3)
    runner = env.runtime.store_driver(env.store(concurrency=25)).runner  # type: ignore[attr-defined]
    await runner.run(cmd.ls(f"{MOUNT}/frank"))
    await asyncio.gather(*(runner.run(cmd.ls(f"{MOUNT}/frank")) for _ in range(8)))
    assert env.sim.connections == 1
    await asyncio.gather(*(runner.run(cmd.ls(f"{MOUNT}/frank")) for _ in range(25)))
    assert env.sim.connections == 3 and env.sim.refused == 0


def _store(ssh: dict) -> CloneStore:
    s = parse(
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "CloneStore",
            "metadata": {"name": "s"},
            "spec": {
                "driver": "gpfs",
                "root": "/gpfs",
                "ssh": {"host": "h", "user": "u", "secretRef": {"name": "k", "namespace": "n"}, **ssh},
            },
        }
    )
    assert isinstance(s, CloneStore)
    return s


def test_max_sessions_defaults_to_openssh_s_10_and_is_bounded() -> None:
    assert _store({}).ssh.max_sessions == 10  # type: ignore[union-attr]
    assert _store({"maxSessions": 1000}).ssh.max_sessions == 1000  # type: ignore[union-attr]
    for bad in (0, 1001):
        with pytest.raises(InvalidManifest, match="maxSessions"):
            _store({"maxSessions": bad})


@pytest.mark.parametrize("personality", ["gpfs", "sonas"])
async def test_the_driver_through_openssh_16_clones_at_once(make_env: MakeEnv, personality: str) -> None:
    """The driver end to end through OpenSSH's sshd: a parent, 16 clones at once (concurrency 16), a
    refresh that measures a written clone, then the fleet and the parent deleted."""
    env = await make_env(personality, openssh=True)
    store = env.store(concurrency=16, timeout=30)
    t0 = time.monotonic()
    first = await reconcile_fleet(env.runtime, fleet(16), template(), store, [host()])
    seconds = time.monotonic() - t0
    assert first.status["readyReplicas"] == 16, first.status["conditions"]
    copies = env.sim.count("mkclone -s") + env.sim.count(f"{cmd.MMCLONE} copy")
    assert copies == 16 and env.sim.connections == 2
    assert not [e for e in first.events if e.type == "Warning"], first.events
    TIMINGS[f"ssh: 16 {personality} clones at once through OpenSSH (MaxSessions 10)"] = seconds

    written = env.directory / "frank" / clone_path(first.status, 3)
    with open(written, "r+b") as disk:
        disk.write(b"\1" * MIB)
    subprocess.run(["sync", str(written)], check=True)
    a_resync_later(env.runtime)
    again = await reconcile_fleet(env.runtime, fleet(16), template(), store, [host()], first.status)
    assert [c["allocatedBytes"] for c in again.status["clones"]] == [0, 0, 0, MIB] + [0] * 12
    down = await reconcile_fleet(env.runtime, fleet(0), template(), store, [host()], again.status)
    assert not down.status.get("clones") and not list((env.directory / "frank").rglob("web-*"))
    parent = parent_path("image/linux/basic.img", "raw")
    driver = env.runtime.store_driver(store)
    await driver.delete_parent(parent, "image/linux/basic.img")
    assert not (env.directory / "frank" / parent).exists()
    assert (env.directory / "frank" / "image/linux/basic.img").exists()
    assert ssh_errors(env, "dropped") == 0
    # sshd frees a closed session a moment after the client sees it closed (SshRunner.SESSION_FREE_DELAY): on a
    # loaded machine one channel now and then is refused and sent again (ci13 saw one). A client that opened
    # more than MaxSessions would be refused at every burst of 16.
    assert ssh_errors(env, "refused") <= 2


# ---------------------------------------------------------------- finding 6: a gpfs template's parent can go


IMAGE = "image/linux/basic.img"


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_gpfs_parent_is_refused_while_clones_remain_and_deleted_once_its_fleets_are_gone(
    make_env: MakeEnv,
) -> None:
    env = await make_env("gpfs")
    store = env.store()
    driver = env.runtime.store_driver(store)
    up = await reconcile_fleet(env.runtime, fleet(2), template(), store, [host()])
    assert up.status["readyReplicas"] == 2
    parent, image = parent_path(IMAGE, "raw"), env.directory / "frank" / IMAGE
    server_parent, server_image = f"{MOUNT}/frank/{parent}", f"{MOUNT}/frank/{IMAGE}"
    before = _digest(image)
    parent_inode = (env.directory / "frank" / parent).stat().st_ino
    assert env.sim.fs.info(server_image).parent_inode == parent_inode  # `mmclone snap` made the image a clone
    assert env.sim.fs.links(server_parent) == 1 + 3  # GPFS counts a link per clone: the image and two VMs

    with pytest.raises(StoreError, match=r"2 clone\(s\) still depend on vmfleet/parents/basic-"):
        await driver.delete_parent(parent, IMAGE)
    assert (env.directory / "frank" / parent).exists()
    assert env.sim.count(f"{cmd.MMCLONE} split") == env.sim.count(f"{cmd.MMCLONE} redirect") == 0
    assert env.sim.fs.info(server_image).parent_inode == parent_inode  # not split for nothing

    down = await reconcile_fleet(env.runtime, fleet(0), template(), store, [host()], up.status)
    assert not down.status.get("clones") and not list((env.directory / "frank").rglob("web-*"))
    await driver.delete_parent(parent, IMAGE)
    assert not (env.directory / "frank" / parent).exists()
    assert env.sim.fs.info(server_image) is None  # a regular file again
    assert _digest(image) == before
    assert env.sim.count(f"{cmd.MMCLONE} split") == 1
    await driver.delete_parent(parent, IMAGE)  # gone already: nothing to do


async def test_when_gpfs_link_counts_do_not_count_clones_rm_still_refuses_and_nothing_is_lost(
    make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Link counts per clone are inferred from one IBM example: without them the image is split in vain
    (space), rm fails with EROFS and that is ParentInUse; the clone and its data stay."""
    env = await make_env("gpfs")
    monkeypatch.setattr(env.sim.fs, "links", lambda path: 1)
    store = env.store()
    up = await reconcile_fleet(env.runtime, fleet(1), template(), store, [host()])
    clone = env.directory / "frank" / clone_path(up.status, 0)
    with open(clone, "r+b") as disk:
        disk.write(b"vm data")
    before = _digest(clone)
    parent = parent_path(IMAGE, "raw")
    with pytest.raises(StoreError, match=r"GPFS refuses to delete .* \(Read-only file system\): clones still"):
        await env.runtime.store_driver(store).delete_parent(parent, IMAGE)
    assert (env.directory / "frank" / parent).exists() and _digest(clone) == before
    assert env.sim.fs.info(f"{MOUNT}/frank/{IMAGE}") is None  # split: it owns its blocks now, correct


async def test_an_image_that_is_itself_a_clone_is_redirected_and_keeps_sharing_with_its_own_parent(
    make_env: MakeEnv,
) -> None:
    env = await make_env("gpfs")
    gold = f"{MOUNT}/frank/image/linux/gold.parent"
    env.sim.fs.snap(f"{MOUNT}/frank/{IMAGE}", gold)  # the template image is a clone of gold.parent
    store = env.store()
    driver = env.runtime.store_driver(store)
    await driver.prepare_parent(IMAGE, "raw", parent_path(IMAGE, "raw"))
    await driver.delete_parent(parent_path(IMAGE, "raw"), IMAGE)
    assert not (env.directory / "frank" / parent_path(IMAGE, "raw")).exists()
    assert env.sim.count(f"{cmd.MMCLONE} redirect") == 1 and env.sim.count(f"{cmd.MMCLONE} split") == 0
    info = env.sim.fs.info(f"{MOUNT}/frank/{IMAGE}")
    assert info is not None and info.parent_inode == (env.directory / "frank/image/linux/gold.parent").stat().st_ino


def test_the_simulator_keeps_gpfs_rules_for_parents_split_and_links(xfs: Path, unique: str) -> None:
    from vmfleet.extents import exclusive_and_shared
    from vmfleet.sim.fs import SimFs

    d = xfs / f"rules-{unique}"
    d.mkdir()
    with open(d / "a.img", "wb") as f:
        f.write(os.urandom(MIB))
    fs = SimFs(str(d), MOUNT)
    a, p, c = f"{MOUNT}/a.img", f"{MOUNT}/p.img", f"{MOUNT}/c.img"
    fs.snap(a, p)
    fs.copy(p, c)
    assert fs.links(p) == 3 and fs.info(a).depth == fs.info(c).depth == 1  # type: ignore[union-attr]
    with pytest.raises(OSError) as refused:
        fs.remove(p)
    assert refused.value.errno == errno.EROFS
    assert exclusive_and_shared(str(d / "a.img"))[1] == MIB  # shares every block with the parent
    fs.split(a)
    assert fs.info(a) is None and fs.links(p) == 2
    assert exclusive_and_shared(str(d / "a.img")) == (MIB, 0)  # its own blocks now
    assert fs.charged_blocks(a) * 512 == MIB
    fs.remove(c)
    fs.remove(p)  # childless: rm succeeds
    assert not (d / "p.img").exists() and (d / "a.img").stat().st_size == MIB


# ---------------------------------------------------------------- finding 9, gpfs: qcow2 logical size


def _qcow2(path: Path, size: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)


async def test_gpfs_logical_bytes_of_a_qcow2_clone_is_the_disk_the_guest_sees(make_env: MakeEnv) -> None:
    env = await make_env("gpfs")
    image = "image/linux/basic.qcow2"
    _qcow2(env.directory / "frank" / image, "32M")
    store = env.store()
    first = await reconcile_fleet(env.runtime, fleet(3), template(image, "qcow2"), store, [host()])
    assert first.status["readyReplicas"] == 3, first.status["conditions"]
    assert [c["logicalBytes"] for c in first.status["clones"]] == [32 * MIB] * 3
    resized = env.directory / "frank" / clone_path(first.status, 1)
    subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(resized), "64M"], check=True)
    before = len(env.sim.commands)
    a_resync_later(env.runtime)
    again = await reconcile_fleet(env.runtime, fleet(3), template(image, "qcow2"), store, [host()], first.status)
    assert [c["logicalBytes"] for c in again.status["clones"]] == [32 * MIB, 64 * MIB, 32 * MIB]
    assert again.status["logicalBytes"] == 128 * MIB
    refresh = [c.split()[:4] for c in env.sim.commands[before:]]
    assert sum(1 for c in refresh if "od" in c) == 1  # one more command per refresh, whatever the fleet's size


def test_the_simulator_s_od_prints_what_gnu_od_prints(tmp_path: Path) -> None:
    from vmfleet.sim.cli import execute
    from vmfleet.sim.fs import SimFs

    _qcow2(tmp_path / "a.qcow2", "32M")
    (tmp_path / "short").write_bytes(b"ab")
    fs = SimFs(str(tmp_path), "/g")
    for names in (["a.qcow2"], ["short"], ["a.qcow2", "missing", "short"]):
        stdin = cmd.stat_input([f"/g/{n}" for n in names])
        sim = execute(fs, "gpfs", cmd.headers_stdin(), stdin)
        real = subprocess.run(
            ["sh", "-c", cmd.headers_stdin()],
            input=cmd.stat_input([str(tmp_path / n) for n in names]),
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert (sim[0], sim[1]) == (real.returncode, real.stdout), names
        assert sim[2].replace("/g/", "") == real.stderr.replace(f"{tmp_path}/", ""), names


def test_the_simulator_s_dd_does_what_gnu_dd_does(tmp_path: Path) -> None:
    """`dd of=FILE conv=fsync status=none` with binary stdin: the bytes written, the status, what it prints; a
    longer old file truncated; a missing directory, a directory, a full file system (what was written stays)."""
    from vmfleet.sim.cli import execute
    from vmfleet.sim.fs import SimFs

    fs = SimFs(str(tmp_path), "/g")
    (tmp_path / "d").mkdir()
    cases = [("new", SEED_BYTES), ("new", b"short\0\xff"), ("none/x", b"x"), ("d", b"x"), ("full/x", SEED_BYTES)]
    with tmpfs_at(tmp_path / "full", "64k"):
        for name, data in cases:
            file = tmp_path / name
            before = file.read_bytes() if file.is_file() else None  # the second "new": 1 MiB, to be truncated
            sim = execute(fs, "gpfs", cmd.dd_stdin_to(f"/g/{name}"), data)
            simulated = file.read_bytes() if file.is_file() else None
            if before is not None:
                file.write_bytes(before)
            elif file.is_file():
                file.unlink()
            real = subprocess.run(
                ["sh", "-c", cmd.dd_stdin_to(str(tmp_path / name))], input=data, capture_output=True, cwd=tmp_path
            )
            written = file.read_bytes() if file.is_file() else None
            assert (sim[0], sim[1]) == (real.returncode, real.stdout.decode()), name
            assert sim[2].replace("/g/", "") == real.stderr.decode().replace(f"{tmp_path}/", ""), name
            assert simulated == written, name
    assert written is not None and 0 < len(written) < len(SEED_BYTES)  # the full one: what fitted stays


def test_headers_are_matched_to_their_files_or_not_at_all() -> None:
    header = " 51 46 49 fb" + " 00" * 28 + "\n"
    assert cmd.header_rows(header * 2, "", ["/a", "/b"]) == {"/a": bytes.fromhex(header), "/b": bytes.fromhex(header)}
    vanished = cmd.header_rows(header, "od: /a: No such file or directory\n", ["/a", "/b"])
    assert list(vanished) == ["/b"]
    assert cmd.header_rows(header, "", ["/a", "/b"]) == {}  # one printed nothing (emptied): whose line is it?
    with pytest.raises(StoreError, match="unexpected od output"):
        cmd.header_rows("garbage\n", "", ["/a"])


# ---------------------------------------------------------------- issue 15: small binary files (seed images)

KIB = 1 << 10
# gpfs through either SSH server; sonas writes through its NFS export (LocalStore's calls), checked here once more.
WRITERS = [("gpfs", "openssh"), ("gpfs", "asyncssh-sim"), ("sonas", "asyncssh-sim")]


@pytest.mark.parametrize(("personality", "server"), WRITERS)
async def test_a_binary_seed_image_round_trips_byte_exact_and_is_listed_measured_and_deleted(
    make_env: MakeEnv, personality: str, server: str
) -> None:
    env = await make_env(personality, openssh=server == "openssh")
    driver = env.runtime.store_driver(env.store())
    frank = env.directory / "frank"
    await driver.write_file(SEED, SEED_BYTES)
    assert (frank / SEED).read_bytes() == SEED_BYTES
    small, data = f"{SEED_DIR}/web-1.cidata-0123456789ab.iso", os.urandom(64 * KIB)
    await driver.write_file(small, data)
    assert (frank / small).read_bytes() == data
    assert await driver.list_dir(SEED_DIR) == [SEED_NAME, "web-1.cidata-0123456789ab.iso"]
    space = await driver.measure([SEED, small])  # gpfs: through the node's stat
    assert space[small] == Space(64 * KIB, 64 * KIB), space
    assert space[SEED].logical == len(SEED_BYTES) and space[SEED].allocated >= len(SEED_BYTES), space
    await driver.delete(SEED)
    await driver.delete(small)
    assert await driver.list_dir(SEED_DIR) == []
    assert not (frank / SEED).exists() and not (frank / small).exists()


@pytest.mark.parametrize("server", SERVERS)
async def test_gpfs_rewrites_a_seed_image_whole_never_in_place(make_env: MakeEnv, server: str) -> None:
    env = await make_env("gpfs", openssh=server == "openssh")
    driver = env.runtime.store_driver(env.store())
    target = env.directory / "frank" / SEED
    old = b"old seed\0\xff" * 6000
    await driver.write_file(SEED, old)
    with open(target, "rb") as before:  # a reader of the old file
        await driver.write_file(SEED, SEED_BYTES)
        assert before.read() == old, "the old file was overwritten in place"
    assert target.read_bytes() == SEED_BYTES
    assert os.listdir(target.parent) == [SEED_NAME], "a partial was left"
    if not isinstance(env.sim, OpenSshSim):
        return
    # Midway: dd has written the partial beside the target and is held from answering; mv has not run.
    env.sim.hold_replies("dd ")
    try:
        writing = asyncio.create_task(driver.write_file(SEED, old))
        partial = await asyncio.to_thread(
            wait_for,
            lambda: [
                p for p in target.parent.iterdir() if p.name.endswith(".partial") and p.stat().st_size == len(old)
            ],
            20,
            "dd to write the partial",
        )
        assert partial[0].name.startswith(f"{SEED_NAME}.")
        assert target.read_bytes() == SEED_BYTES, "the target changed before the rename"
        assert await driver.list_dir(SEED_DIR) == [SEED_NAME]  # a partial is never listed
    finally:
        env.sim.hold_replies(None)
    await writing
    assert target.read_bytes() == old and os.listdir(target.parent) == [SEED_NAME]


@pytest.mark.parametrize(("personality", "server"), WRITERS)
async def test_a_seed_image_write_that_fails_leaves_the_old_file_and_no_partial(
    make_env: MakeEnv, personality: str, server: str
) -> None:
    """The store fills up while dd writes (GNU dd leaves what it wrote): the driver removes the partial."""
    env = await make_env(personality, openssh=server == "openssh")
    driver = env.runtime.store_driver(env.store())
    directory = env.directory / "frank" / SEED_DIR
    with tmpfs_at(directory, "256k"):
        old = os.urandom(64 * KIB)
        await driver.write_file(SEED, old)
        with pytest.raises(StoreError, match="No space left on device"):
            await driver.write_file(SEED, SEED_BYTES)
        assert (directory / SEED_NAME).read_bytes() == old
        assert os.listdir(directory) == [SEED_NAME]


async def test_a_gpfs_rename_that_fails_removes_the_written_partial(make_env: MakeEnv) -> None:
    """realpath, mkdir, dd, mv for the first write; realpath, dd, mv (fails: command 7), rm for the second."""
    env = await make_env("gpfs", fail={7})
    driver = env.runtime.store_driver(env.store())
    target = env.directory / "frank" / SEED
    await driver.write_file(SEED, b"old")
    with pytest.raises(StoreError, match="simulated failure"):
        await driver.write_file(SEED, SEED_BYTES)
    assert [c.split()[0] for c in env.sim.commands[4:]] == ["realpath", "dd", "mv", "rm"]
    assert env.sim.commands[7] == cmd.rm_f(env.sim.commands[5].split()[1].removeprefix("of="))
    assert target.read_bytes() == b"old" and os.listdir(target.parent) == [SEED_NAME]


@pytest.mark.parametrize("server", SERVERS)
async def test_gpfs_never_writes_a_seed_image_outside_the_store(make_env: MakeEnv, server: str, tmp_path: Path) -> None:
    env = await make_env("gpfs", openssh=server == "openssh")
    driver = env.runtime.store_driver(env.store())
    assert isinstance(driver, GpfsStore)
    for bad in ("../seed.iso", "/etc/seed.iso", "vmfleet/../../seed.iso", ""):
        with pytest.raises(StoreError, match="not a plain relative path"):
            await driver.write_file(bad, SEED_BYTES)
    assert env.sim.commands == []
    outside = tmp_path / "outside"
    outside.mkdir()
    (env.directory / "frank" / "vmfleet" / "clones" / "ns").mkdir(parents=True)
    (env.directory / "frank" / "vmfleet" / "clones" / "ns" / "web").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="symbolic link"):
        await driver.write_file(SEED, SEED_BYTES)
    (outside / "uid").mkdir()
    with pytest.raises(StoreError, match="symbolic link"):
        await driver.write_file(SEED, SEED_BYTES)
    assert [p.name for p in outside.rglob("*")] == ["uid"]
    assert [c.split()[0] for c in env.sim.commands] == ["realpath", "realpath"]  # nothing but the look


@pytest.mark.parametrize("server", SERVERS)
async def test_gpfs_refuses_to_write_a_seed_image_over_a_directory(make_env: MakeEnv, server: str) -> None:
    """`mv -T`: GNU mv would otherwise move the new file into a directory that has the target's name."""
    env = await make_env("gpfs", openssh=server == "openssh")
    driver = env.runtime.store_driver(env.store())
    (env.directory / "frank" / SEED).mkdir(parents=True)
    with pytest.raises(StoreError, match="cannot overwrite directory"):
        await driver.write_file(SEED, SEED_BYTES)
    assert list((env.directory / "frank" / SEED).iterdir()) == []
    assert os.listdir(env.directory / "frank" / SEED_DIR) == [SEED_NAME]
