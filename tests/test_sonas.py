"""The sonas and gpfs drivers over real SSH against the simulator, on XFS reflinks."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncssh
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from conftest import unavailable
from helpers import a_resync_later
from simulator import MOUNT, OpenSshSim, SimEnv, fleet, host, template
from vmfleet.api import VmTemplate
from vmfleet.engine import Runtime, reconcile_fleet
from vmfleet.images import make_template_image
from vmfleet.sim import server as sim
from vmfleet.sim.cli import unquoted_metacharacters
from vmfleet.storage import StoreError, make_driver
from vmfleet.storage import commands as cmd

pytestmark = pytest.mark.sonas
MIB, GIB = 1 << 20, 1 << 30

MakeEnv = Callable[..., Awaitable[SimEnv]]


@pytest.fixture
async def make_env(
    xfs: Path, unique: str, small_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MakeEnv]:
    made: list[SimEnv] = []

    async def make(
        personality: str,
        image: Path | None = None,
        openssh: bool = False,
        latency: float = 0.0,
        max_sessions: int = 10,
        **faults: object,
    ) -> SimEnv:
        """`openssh`: OpenSSH's sshd in front of the simulator instead of its asyncssh server (no faults)."""
        directory = xfs / f"gpfs-{unique}-{len(made)}"
        (directory / "frank" / "image" / "linux").mkdir(parents=True)
        target = directory / "frank" / "image" / "linux" / "basic.img"
        if image is None:
            shutil.copyfile(small_image, target)
        else:
            os.rename(image, target)
        if openssh:
            assert not faults
            if not os.path.exists("/usr/sbin/sshd"):
                unavailable("openssh-server is missing (apt-get install openssh-server)")
            server = OpenSshSim(tmp_path_factory.mktemp("sshd"), directory, personality, latency, max_sessions)
            env = SimEnv(server, directory, server.client_key, Runtime(), user="root")
        else:
            client = asyncssh.generate_private_key("ssh-ed25519")
            s = await sim.start(
                str(directory),
                MOUNT,
                personality,
                client.export_public_key().decode(),
                faults=sim.Faults(latency=latency, **faults),  # type: ignore[arg-type]
                max_sessions=max_sessions,
            )
            env = SimEnv(s, directory, client, Runtime())
        env.runtime.read_secret = env.read_secret
        made.append(env)
        return env

    yield make
    for env in made:
        await env.runtime.close()
        await env.sim.stop()


def clones(status: dict) -> dict[str, dict]:
    return {c["name"]: c for c in status["clones"]}


def clone_path(status: dict, index: int) -> str:
    """A clone's path under the store's root, from the fleet's status."""
    return f"{status['cloneDirectory']}/{status['clones'][index]['file']}"


async def test_the_seed_transcript_zero_byte_clones_until_written(make_env: MakeEnv, xfs: Path, unique: str) -> None:
    """mkclone of a 10 GiB template holding 1 GiB of data: clones of 0 bytes; 100 MiB written into one."""
    image = xfs / f"seed-{unique}.img"
    make_template_image(str(image), 10 * GIB, 1 * GIB)
    env = await make_env("sonas", image)
    store, t, f = env.store(), template(), fleet(3)
    result = await reconcile_fleet(env.runtime, f, t, store, [host()])
    status = result.status
    assert status["readyReplicas"] == 3, status["conditions"]
    for c in status["clones"]:
        assert c["logicalBytes"] == 10 * GIB  # `ls -al`: 10737418240, as the original
        assert c["allocatedBytes"] == 0  # `du -sh`: 0
    assert env.sim.count("mkclone -p") == 1 and env.sim.count("mkclone -s") == 3

    with open(env.directory / "frank" / f"{status['cloneDirectory']}/{clones(status)['web-1']['file']}", "r+b") as disk:
        disk.seek(512 * MIB)
        for _ in range(100):
            disk.write(os.urandom(MIB))
        os.fsync(disk.fileno())
    a_resync_later(env.runtime)
    after = (await reconcile_fleet(env.runtime, f, t, store, [host()], status)).status
    by_name = clones(after)
    assert abs(by_name["web-1"]["allocatedBytes"] - 100 * MIB) <= 4096
    assert by_name["web-0"]["allocatedBytes"] == by_name["web-2"]["allocatedBytes"] == 0
    assert after["allocatedBytes"] == sum(c["allocatedBytes"] for c in after["clones"])
    assert after["logicalBytes"] == 3 * 10 * GIB
    assert after["savedBytes"] == after["logicalBytes"] - after["allocatedBytes"]


async def test_lsclone_shows_the_parent_and_its_clones_as_gpfs_does(make_env: MakeEnv) -> None:
    env = await make_env("sonas")
    status = (await reconcile_fleet(env.runtime, fleet(2), template(), env.store(), [host()])).status
    driver = env.runtime.store_driver(env.store())
    parent = cmd.server_path(f"{MOUNT}/frank", status["parent"])
    clone = cmd.server_path(f"{MOUNT}/frank", clone_path(status, 0))
    reply = await driver.runner.run(cmd.lsclone([parent, clone]))  # type: ignore[attr-defined]
    assert reply.stdout.splitlines()[0] == "Parent  Depth   Parent inode   File name"
    assert reply.stdout.rstrip().endswith("EFSSG1000I The command completed successfully.")
    rows = cmd.clone_rows(cmd.sonas_output("lsclone", reply.exit_status, reply.stdout, reply.stderr), [parent, clone])
    assert (rows[0].is_parent, rows[0].depth, rows[0].parent_inode) == (True, 0, None)
    assert (rows[1].is_parent, rows[1].depth) == (False, 1)
    assert rows[1].parent_inode == (env.directory / "frank" / status["parent"]).stat().st_ino


@pytest.mark.parametrize("personality", ["sonas", "gpfs"])
async def test_200_clones_over_two_connections_and_a_refresh_that_does_not_grow(
    make_env: MakeEnv, personality: str
) -> None:
    env = await make_env(personality)
    store = env.store(concurrency=16)
    small = (await reconcile_fleet(env.runtime, fleet(20, "small"), template(), store, [host()])).status
    assert small["readyReplicas"] == 20
    big = (await reconcile_fleet(env.runtime, fleet(200, "big"), template(), store, [host()])).status
    assert big["readyReplicas"] == 200, big["conditions"]
    assert env.sim.connections == 2 and env.sim.refused == 0  # 16 at once, MaxSessions 10 per connection
    copies = env.sim.count("mkclone -s") + env.sim.count(f"{cmd.MMCLONE} copy")
    assert copies == 220

    def refresh_cost(status: dict, f) -> Awaitable[int]:
        async def run() -> int:
            before = len(env.sim.commands)
            result = await reconcile_fleet(env.runtime, f, template(), store, [host()], status)
            assert result.status["readyReplicas"] == f.replicas and not result.plan.actions
            return len(env.sim.commands) - before

        return run()

    small_cost = await refresh_cost(small, fleet(20, "small"))
    big_cost = await refresh_cost(big, fleet(200, "big"))
    # parent, clones, record, sizes; gpfs also asks that no link leads to the clones or the record
    assert big_cost == small_cost <= (6 if personality == "gpfs" else 4), (personality, small_cost, big_cost)


async def test_gpfs_measures_all_clones_with_one_stat(make_env: MakeEnv) -> None:
    env = await make_env("gpfs")
    status = (await reconcile_fleet(env.runtime, fleet(5), template(), env.store(), [host()])).status
    clone = env.directory / "frank" / clone_path(status, 2)
    with open(clone, "r+b") as disk:
        disk.write(os.urandom(3 * MIB))
        os.fsync(disk.fileno())
    before = len(env.sim.commands)
    a_resync_later(env.runtime)
    after = (await reconcile_fleet(env.runtime, fleet(5), template(), env.store(), [host()], status)).status
    assert [c["allocatedBytes"] for c in after["clones"]] == [0, 0, 3 * MIB, 0, 0]
    refresh = env.sim.commands[before:]
    # parent, (no link on the way to) the clones and the record, clones, record, sizes
    assert sorted(c.split()[0] for c in refresh) == ["head", "ls", "realpath", "realpath", "stat", "xargs"]
    os.unlink(clone)  # a clone deleted by hand: the others are still measured
    lost = (await reconcile_fleet(env.runtime, fleet(5), template(), env.store(), [host()], after)).status
    assert [c.get("allocatedBytes") for c in lost["clones"]] == [0, 0, None, 0, 0]
    assert next(c for c in lost["clones"] if c["name"] == "web-2")["state"] == "Lost"


async def test_the_fleets_of_a_store_share_one_measurement_per_resync_each_told_only_its_own(
    make_env: MakeEnv,
) -> None:
    env = await make_env("gpfs")
    store, now = env.store(), [0.0]
    env.runtime.clock = lambda: now[0]
    fleets = [fleet(2, f"f{i}") for i in range(6)]
    status = {f.meta.name: (await reconcile_fleet(env.runtime, f, template(), store, [host()])).status for f in fleets}

    async def a_resync_round() -> list[str]:
        now[0] += env.runtime.settings.resync_seconds
        before = len(env.sim.commands)
        for f in fleets:  # the fleets' resync timers, spread over the period
            result = await reconcile_fleet(env.runtime, f, template(), store, [host()], status[f.meta.name])
            status[f.meta.name] = result.status
            now[0] += 1
        return env.sim.commands[before:]

    for _ in range(3):
        done = await a_resync_round()
        assert sum(c.startswith("xargs -0 stat") for c in done) == 1, done  # one for 6 fleets, not 6
        assert {c.split()[0] for c in done} <= {"realpath", "ls", "head", "stat", "xargs"}, done  # read-only
    assert [c["allocatedBytes"] for s in status.values() for c in s["clones"]] == [0] * 12
    clone = env.directory / "frank" / clone_path(status["f1"], 1)
    with open(clone, "r+b") as disk:
        disk.write(os.urandom(3 * MIB))
        os.fsync(disk.fileno())
    os.unlink(env.directory / "frank" / clone_path(status["f2"], 0))  # deleted by hand
    await a_resync_round()
    told = {(f, c["name"]): c.get("allocatedBytes") for f, s in status.items() for c in s["clones"]}
    assert told == {
        **{(f"f{i}", f"f{i}-{o}"): 0 for i in range(6) for o in range(2)},
        ("f1", "f1-1"): 3 * MIB,
        ("f2", "f2-0"): None,  # Lost: the figures of a file that is gone are not told
    }


async def test_a_failed_clone_leaves_nothing_and_the_next_pass_converges(make_env: MakeEnv) -> None:
    env = await make_env("sonas", fail={3, 5})
    store = env.store()
    first = await reconcile_fleet(env.runtime, fleet(4), template(), store, [host()])
    failed = [e for e in first.events if e.reason == "CreateCloneFailed"]
    assert len(failed) == 2 and "EFSSG0632C Command execution aborted." in failed[0].message
    degraded = next(c for c in first.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert len(list((env.directory / "frank").rglob("web-*.img"))) == 2
    second = await reconcile_fleet(env.runtime, fleet(4), template(), store, [host()], first.status)
    assert second.status["readyReplicas"] == 4
    assert sorted(p.name for p in (env.directory / "frank").rglob("web-*.img")) == [f"web-{i}.img" for i in range(4)]


async def test_a_dropped_connection_is_reconnected(make_env: MakeEnv) -> None:
    env = await make_env("gpfs", drop={4})
    first = await reconcile_fleet(env.runtime, fleet(3), template(), env.store(), [host()])
    second = await reconcile_fleet(env.runtime, fleet(3), template(), env.store(), [host()], first.status)
    assert second.status["readyReplicas"] == 3
    assert env.sim.connections == 2
    assert ssh_errors(env, "dropped") >= 1  # each command in flight on the dropped connection counts


def ssh_errors(env: SimEnv, error: str) -> float:
    """What /metrics says of this simulator (each listens on a port of its own)."""
    value = REGISTRY.get_sample_value(
        "vmfleet_ssh_errors_total", {"target": f"vmfleet@127.0.0.1:{env.sim.port}", "error": error}
    )
    return value or 0.0


async def test_a_hanging_command_times_out_with_a_clear_error(make_env: MakeEnv) -> None:
    env = await make_env("sonas", hang={1})
    result = await reconcile_fleet(env.runtime, fleet(1), template(), env.store(timeout=1), [host()])
    assert any(
        "mkclone on vmfleet@127.0.0.1" in e.message and "took longer than 1 s" in e.message for e in result.events
    ), result.events
    assert ssh_errors(env, "timeout") == 1
    assert not list((env.directory / "frank").rglob("web-*.img"))


async def test_truncated_output_is_an_error_not_a_success(make_env: MakeEnv) -> None:
    env = await make_env("sonas", truncate={1})
    result = await reconcile_fleet(env.runtime, fleet(1), template(), env.store(), [host()])
    assert any("truncated" in e.message for e in result.events), result.events
    again = await reconcile_fleet(env.runtime, fleet(1), template(), env.store(), [host()], result.status)
    assert again.status["readyReplicas"] == 1


async def test_an_unknown_host_key_is_refused(make_env: MakeEnv) -> None:
    env = await make_env("sonas")
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    env.known_hosts = f"[127.0.0.1]:{env.sim.port} {other}"
    result = await reconcile_fleet(env.runtime, fleet(1), template(), env.store(), [host()])
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "PrepareParentFailed"
    assert "host key of vmfleet@127.0.0.1" in degraded["message"] and "refusing to connect" in degraded["message"]
    assert env.sim.commands == []
    assert ssh_errors(env, "hostkey") >= 1
    gpfs = await make_env("gpfs")  # the gpfs driver observes over SSH: the whole store is unavailable
    gpfs.known_hosts = f"[127.0.0.1]:{gpfs.sim.port} {other}"
    result = await reconcile_fleet(gpfs.runtime, fleet(1), template(), gpfs.store(), [host()])
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "StoreUnavailable" and "refusing to connect" in degraded["message"]


async def test_a_wrong_key_is_refused_and_the_key_never_appears(make_env: MakeEnv) -> None:
    env = await make_env("gpfs")
    env.client_key = asyncssh.generate_private_key("ssh-ed25519")
    result = await reconcile_fleet(env.runtime, fleet(1), template(), env.store(), [host()])
    text = repr(result.status) + repr(result.events)
    assert "refused the store's SSH key" in text
    assert "PRIVATE KEY" not in text and env.client_key.export_private_key().decode()[40:80] not in text
    assert env.sim.commands == []


async def test_a_rotated_secret_takes_effect_at_the_next_connection(make_env: MakeEnv) -> None:
    env = await make_env("gpfs")
    right = env.client_key
    env.client_key = asyncssh.generate_private_key("ssh-ed25519")  # the Secret holds a key the store refuses
    store = env.store()
    refused = await reconcile_fleet(env.runtime, fleet(1), template(), store, [host()])
    assert "refused the store's SSH key" in repr(refused.status)
    env.client_key = right  # the Secret is fixed; the same runtime and store object, no operator restart
    fixed = await reconcile_fleet(env.runtime, fleet(1), template(), store, [host()], refused.status)
    assert fixed.status["readyReplicas"] == 1


@pytest.mark.parametrize(
    "bad", ["../etc/passwd", "/etc/passwd", "a/../../b", "a;rm -rf /", "a$(reboot)", "x" * 256, "a b"]
)
def test_bad_paths_never_become_commands(bad: str) -> None:
    with pytest.raises(StoreError):
        cmd.server_path(f"{MOUNT}/frank", bad)


async def test_a_secret_without_the_key_is_named(make_env: MakeEnv) -> None:
    env = await make_env("sonas")
    driver = make_driver(env.store(), lambda ref: {"known_hosts": env.sim.known_hosts})
    with pytest.raises(StoreError, match="Secret vmfleet-system/ssh .spec.ssh.secretRef. has no ssh-privatekey"):
        await driver.prepare_parent("image/linux/basic.img", "raw", "vmfleet/parents/p.img")
    assert env.sim.commands == []


_segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=40
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_segment, min_size=1, max_size=4))
def test_every_command_quotes_every_path_it_accepts(parts: list[str]) -> None:
    relative = "/".join(parts)
    try:
        path = cmd.server_path(f"{MOUNT}/frank", relative)
    except StoreError:
        return
    for built in (
        cmd.mkclone(path, path),
        cmd.mkclone_with_parent(path, path, path),
        cmd.lsclone([path]),
        cmd.mmclone_copy(path, path),
        cmd.stat([path, path]),
        cmd.rm_f(path),
        cmd.ls(path),
        cmd.mmclone_split(path),
        cmd.mmclone_redirect(path),
        cmd.mmclone_show([path]),
        cmd.stat_links([path, path]),
        cmd.head(path),
        cmd.realpath([path]),
        cmd.mv_f(path, path),
        cmd.mkdir_p(path),
    ):
        assert unquoted_metacharacters(built) == set()
        assert path in shlex.split(built)
    dd = cmd.dd_stdin_to(path)
    assert unquoted_metacharacters(dd) == set() and f"of={path}" in shlex.split(dd)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(-1, 3))
def test_parsers_reject_garbage_with_a_store_error_only(text: str, exit_status: int) -> None:
    for parse in (
        lambda: cmd.clone_rows(text),
        lambda: cmd.stat_rows(text, ["/x"]),
        lambda: cmd.sonas_output("lsclone x", exit_status, text, ""),
        lambda: cmd.stat_links_rows(text),
        lambda: cmd.header_rows(text, text, ["/x", "/y"]),
    ):
        try:
            parse()
        except StoreError:
            pass


@pytest.mark.parametrize("personality", ["gpfs", "sonas"])
async def test_the_depth_limit_is_enforced_on_a_template_that_is_itself_a_clone(
    make_env: MakeEnv, personality: str
) -> None:
    env = await make_env(personality)
    image = f"{MOUNT}/frank/image/linux/basic.img"
    env.sim.fs.snap(image, f"{MOUNT}/frank/image/linux/gold.parent")  # basic.img is now a clone, depth 1
    store = env.store(maxCloneDepth=1)
    result = await reconcile_fleet(env.runtime, fleet(1), template(), store, [host()])
    parent = f"{MOUNT}/frank/{result.status['parent']}"
    if personality == "gpfs":
        assert result.status["readyReplicas"] == 1
        assert env.sim.count(f"{cmd.MMCLONE} redirect") == 1
        assert env.sim.fs.info(parent).parent_inode is None  # no longer chained to gold.parent
    else:
        degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
        assert "over the store's maxCloneDepth 1" in degraded["message"]
        assert not (env.directory / "frank" / result.status["parent"]).exists()
        again = await reconcile_fleet(env.runtime, fleet(1), template(), store, [host()], result.status)
        assert again.status["readyReplicas"] == 0 and env.sim.count("mkclone -s") == 0


async def test_a_template_and_its_fleets_preparing_the_parent_at_once_make_it_once(make_env: MakeEnv) -> None:
    from vmfleet.engine import reconcile_template

    env = await make_env("sonas")
    store = env.store()
    results = await asyncio.gather(
        reconcile_template(env.runtime, template(), store, 0, None),
        reconcile_fleet(env.runtime, fleet(2, "a"), template(), store, [host()]),
        reconcile_fleet(env.runtime, fleet(2, "b"), template(), store, [host()]),
    )
    assert results[1].status["readyReplicas"] == results[2].status["readyReplicas"] == 2
    assert env.sim.count("mkclone -p") == 1 and env.sim.connections == 1


async def test_the_simulator_reports_errors_instead_of_dropping_the_connection(make_env: MakeEnv) -> None:
    env = await make_env("sonas")
    runner = env.runtime.store_driver(env.store()).runner  # type: ignore[attr-defined]
    source = f"{MOUNT}/frank/image/linux/basic.img"
    first, second = await asyncio.gather(
        runner.run(cmd.mkclone_with_parent(f"{MOUNT}/frank/p.img", source, f"{MOUNT}/frank/c1.img")),
        runner.run(cmd.mkclone_with_parent(f"{MOUNT}/frank/p.img", source, f"{MOUNT}/frank/c2.img")),
    )
    assert sorted([first.exit_status, second.exit_status]) == [0, 1]
    assert env.sim.connections == 1


@pytest.mark.parametrize("personality", ["sonas", "gpfs"])
async def test_a_golden_image_rewritten_on_the_store_is_reported(make_env: MakeEnv, personality: str) -> None:
    from vmfleet.engine import reconcile_template

    env = await make_env(personality)
    store = env.store()
    first, _ = await reconcile_template(env.runtime, template(), store, 0, None)
    again, _ = await reconcile_template(env.runtime, template(), store, 0, first)
    assert [c["type"] for c in again["conditions"]] == ["Ready", "Reconciling", "Stalled", "Degraded"]
    image = env.directory / "frank" / "image" / "linux" / "basic.img"
    os.utime(image, (1, 1))  # a new release copied over it keeps nothing of the old file's times
    changed, events = await reconcile_template(env.runtime, template(), store, 0, again)
    condition = next(c for c in changed["conditions"] if c["type"] == "ImageChanged")
    assert condition["status"] == "True" and "image/linux/basic.img changed since" in condition["message"]
    assert [e.reason for e in events] == ["ImageChanged"]
    assert changed["conditions"][0]["status"] == "True"  # the parent itself is still fine


async def test_gpfs_deletes_an_old_parent_once_no_clone_uses_it_and_keeps_the_old_image(make_env: MakeEnv) -> None:
    """Issue 16 the GPFS way: a template moved to a patched image keeps the old parent while a clone of it is
    left; once none is, the next pass splits the old image off that parent and removes it (rm alone would
    fail: the image is its clone, mmclone snap made it one)."""
    from vmfleet.api.status import clones_by_store_and_parent, parent_in_use
    from vmfleet.engine import reconcile_template
    from vmfleet.engine.catalog import Catalog, FleetParents

    env = await make_env("gpfs")
    store = env.store()
    images = env.directory / "frank" / "image" / "linux"
    shutil.copyfile(images / "basic.img", images / "patched.img")
    old_bytes = (images / "basic.img").read_bytes()

    def catalog(fleet_status: dict, t: VmTemplate) -> Catalog:
        where, parent, counted = parent_in_use(fleet_status)
        return Catalog(
            stores={"sim": store},
            clones_by_parent=clones_by_store_and_parent(fleet_status),
            images_by_template={("seed", "basic"): ("sim", t.image_path, t.image_format)},
            fleets={("seed", "web"): FleetParents(where, parent, counted, "basic")},
        )

    web = await reconcile_fleet(env.runtime, fleet(1), template(), store, [host()])
    status, _ = await reconcile_template(env.runtime, template(), store, 1, None, catalog(web.status, template()))
    old = status["parent"]["path"]
    new = template("image/linux/patched.img")
    status, events = await reconcile_template(env.runtime, new, store, 0, status, catalog(web.status, new))
    assert [(e["path"], e["clones"]) for e in status["retiredParents"]] == [(old, 1)]
    assert [e.reason for e in events] == ["ParentPrepared", "ParentRetired"]
    assert (env.directory / "frank" / old).exists() and env.sim.count(f"{cmd.MMCLONE} split") == 0

    web = await reconcile_fleet(env.runtime, fleet(0), new, store, [host()], web.status)
    status, events = await reconcile_template(env.runtime, new, store, 0, status, catalog(web.status, new))
    assert [e.reason for e in events] == ["ParentDeleted"] and status["retiredParents"] == []
    assert not (env.directory / "frank" / old).exists() and env.sim.count(f"{cmd.MMCLONE} split") == 1
    assert (images / "basic.img").read_bytes() == old_bytes  # the old image is whole, a file of its own again
    assert (env.directory / "frank" / status["parent"]["path"]).exists()


@pytest.mark.parametrize("personality", ["sonas", "gpfs"])
async def test_a_template_image_with_a_backing_file_is_refused(
    make_env: MakeEnv, personality: str, tmp_path: Path
) -> None:
    import subprocess

    env = await make_env(personality)
    image = env.directory / "frank" / "image" / "linux" / "basic.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(image)], check=True
    )
    result = await reconcile_fleet(
        env.runtime, fleet(1), template("image/linux/basic.qcow2", "qcow2"), env.store(), [host()]
    )
    failed = [o.error for o in result.outcomes if not o.ok]
    assert failed and "backing file" in failed[0]
    assert not list((env.directory / "frank" / "vmfleet").rglob("parents/*"))


async def test_gpfs_follows_no_symbolic_link_out_of_the_store(make_env: MakeEnv, tmp_path: Path) -> None:
    """I6 (hostile review): a shell on the GPFS node follows links; vmfleet must refuse paths through one."""
    env = await make_env("gpfs")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "fleet.json").write_text('{"secret": "outside the store"}')
    (outside / "web-0.img").write_bytes(b"someone else's disk")
    uid = fleet(1).meta.uid
    fleet_dir = env.directory / "frank" / "vmfleet" / "clones" / "seed" / "web"
    fleet_dir.mkdir(parents=True)
    os.symlink(outside, fleet_dir / uid)
    result = await reconcile_fleet(env.runtime, fleet(0), template(), env.store(), [host()])
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "StoreUnavailable" and "symbolic link" in degraded["message"]
    assert sorted(p.name for p in outside.iterdir()) == ["fleet.json", "web-0.img"]
    assert (outside / "fleet.json").read_text() == '{"secret": "outside the store"}'
    driver = env.runtime.store_driver(env.store())
    with pytest.raises(StoreError, match="symbolic link"):
        await driver.delete(f"vmfleet/clones/seed/web/{uid}/web-0.img")
    assert (outside / "web-0.img").exists()


async def test_gpfs_refuses_a_record_too_big_to_be_vmfleets(make_env: MakeEnv) -> None:
    env = await make_env("gpfs")
    uid = fleet(1).meta.uid
    record = env.directory / "frank" / "vmfleet" / "clones" / "seed" / "web" / uid / "fleet.json"
    record.parent.mkdir(parents=True)
    with open(record, "wb") as f:
        f.truncate(cmd.MAX_TEXT + 10)
    result = await reconcile_fleet(env.runtime, fleet(1), template(), env.store(), [host()])
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert "larger than" in degraded["message"]


@pytest.mark.identity
@pytest.mark.parametrize("personality", ["gpfs", "sonas"])
async def test_each_vm_gets_its_seed_through_the_store_driver(make_env: MakeEnv, personality: str) -> None:
    """gpfs: written over SSH (OpenSSH's sshd: dd of a partial, then mv -T); sonas: over its NFS localPath. The
    seeds are in the fleet's directory, counted in each VM's space, written once, and go with their VMs."""
    import dataclasses

    from vmfleet.api.types import CloudInit
    from vmfleet.seed import read_files

    env = await make_env(personality, openssh=personality == "gpfs")
    f = dataclasses.replace(fleet(3), cloud_init=CloudInit(user_data="#cloud-config\nhostname: {{ name }}\n"))
    status = (await reconcile_fleet(env.runtime, f, template(), env.store(), [host()])).status
    assert status["readyReplicas"] == 3, status["conditions"]
    directory = env.directory / "frank" / status["cloneDirectory"]
    seeds = sorted(directory.glob("web-*.cidata-*.iso"))
    assert [p.name.split(".")[0] for p in seeds] == ["web-0", "web-1", "web-2"]
    for c, seed in zip(status["clones"], seeds, strict=True):
        assert read_files(seed.read_bytes())["user-data"] == f"#cloud-config\nhostname: {c['name']}\n".encode()
        assert c["logicalBytes"] == os.path.getsize(directory / c["file"]) + seed.stat().st_size
    before = len(env.sim.commands) if personality == "gpfs" else 0
    again = (await reconcile_fleet(env.runtime, f, template(), env.store(), [host()], status)).status
    if personality == "gpfs":
        assert not [c for c in env.sim.commands[before:] if c.startswith(("dd ", "mv "))], "rewritten unchanged"
    smaller = dataclasses.replace(f, replicas=1)
    await reconcile_fleet(env.runtime, smaller, template(), env.store(), [host()], again)
    assert [p.name.split(".")[0] for p in directory.glob("web-*.iso")] == ["web-0"]
