"""The safety invariants I1-I6 (docs/reliability.md), checked after every step of random sequences of real
operations: the real engine, a real store (qcow2 overlays; reflinks on a real XFS), real libvirt test-driver
instances as KvmHosts, with hosts that stop answering, change URI, disappear or lose power, fleets deleted with
Delete or Retain and made again under the same name, operator crashes with the status kept or lost, guests
writing into their disks, store calls that hang past their timeout and land later, dry runs and duplicate
manifests.

CI runs a fixed seed with VMFLEET_SAFETY_EXAMPLES (default 300) examples per store; `python -m bench soak`
runs longer.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from helpers import xfs_io_exclusive
from safety_world import SlowCall, World, WorldRuntime, files, host_doc, store_doc, write_into
from vmfleet.api import InvalidManifest, parse
from vmfleet.api.crd import root_schema
from vmfleet.api.schema import KINDS
from vmfleet.api.status import clone_path
from vmfleet.api.types import HOSTS_LOST_ANNOTATION, CloneStore, KvmHost, VmFleet, VmTemplate
from vmfleet.cli.manifests import load
from vmfleet.engine import reconcile_fleet, teardown_fleet
from vmfleet.engine.desired import VM_UUID_NAMESPACE as VM_UUIDS
from vmfleet.seed import read_files
from vmfleet.settings import Settings
from vmfleet.storage.base import disk_format_of

pytestmark = pytest.mark.safety

HOSTS = ("a", "b", "c")
EXAMPLES = int(os.environ.get("VMFLEET_SAFETY_EXAMPLES", "300"))
STEPS = int(os.environ.get("VMFLEET_SAFETY_STEPS", "25"))
# Short: a store call that hangs (rule a_store_call_hangs) is given up on quickly.
SETTINGS = Settings(store_timeout_seconds=0.3)
STATUS_SCHEMA = root_schema(KINDS["VmFleet"])["properties"]["status"]
STATS = {"examples": 0, "steps": 0, "hung calls": 0, "late calls": 0}


def uri(host: str, generation: int = 0) -> str:
    return f"qemu+ssh://{host}{'-' + str(generation) if generation else ''}.example.com/system"


@dataclass
class FleetState:
    uid: str
    replicas: int = 2
    policy: str = "Delete"
    overrides: dict[int, bool] = field(default_factory=dict)  # ordinal -> running
    lost: set[str] = field(default_factory=set)  # hosts declared lost by annotation
    status: dict[str, Any] | None = None
    deleting: bool = False


class Violation(AssertionError):
    pass


class FleetSafety(RuleBasedStateMachine):
    root: Path  # set per store by the test
    driver: str

    def __init__(self) -> None:
        super().__init__()
        STATS["examples"] += 1
        self.base = self.root / uuid.uuid4().hex[:8]
        self.store_root = self.base / "store"
        (self.store_root / "images").mkdir(parents=True)
        shutil.copyfile(TEMPLATE_IMAGE, self.store_root / "images" / "t.img")
        self.outside = self.base / "outside"
        self.outside.mkdir()
        (self.outside / "precious").write_bytes(b"not the store's\n")
        # A symlink inside the store that leads out: nothing may follow it (I6).
        os.symlink(self.outside / "precious", self.store_root / "images" / "link.img")
        self.world = World(self.base)
        self.loop = asyncio.new_event_loop()
        self.runtime = WorldRuntime(self.world, SETTINGS)
        self.hung: SlowCall | None = None
        self.host_uris = {h: uri(h) for h in HOSTS}
        self.present = set(HOSTS)
        self.dead: set[str] = set()
        self.vcpus, self.memory = 1, 64
        self.user_data: str | None = None  # the template's spec.cloudInit.userData; no cloud-init while None
        self.fleet: FleetState | None = FleetState(str(uuid.uuid4()))
        self.retained: dict[str, str] = {}  # clone path -> uid of the fleet that kept it
        self.last_outcomes: list[Any] = []

    def teardown(self) -> None:
        try:
            if self.hung is not None:
                self.hung.land(self.store_root)
        finally:
            self.loop.run_until_complete(self.runtime.close())
            self.loop.close()
            self.world.close()
            shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------------ the objects

    def store(self) -> CloneStore:
        s = parse(store_doc(self.driver, self.store_root))
        assert isinstance(s, CloneStore)
        return s

    def hosts(self) -> list[KvmHost]:
        return [
            h for h in (parse(host_doc(n, self.host_uris[n])) for n in sorted(self.present)) if isinstance(h, KvmHost)
        ]

    def template(self) -> VmTemplate:
        t = parse(
            {
                "apiVersion": "vmfleet.io/v1alpha1",
                "kind": "VmTemplate",
                "metadata": {"name": "t", "namespace": "ns"},
                "spec": {
                    "storeRef": {"name": "store"},
                    "image": {"path": "images/t.img"},
                    "vcpus": self.vcpus,
                    "memoryMiB": self.memory,
                    **({"cloudInit": {"userData": self.user_data}} if self.user_data is not None else {}),
                },
            }
        )
        assert isinstance(t, VmTemplate)
        return t

    def fleet_doc(self, f: FleetState) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": "web", "namespace": "ns", "uid": f.uid}
        if f.lost:
            meta["annotations"] = {HOSTS_LOST_ANNOTATION: ",".join(sorted(f.lost))}
        return {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmFleet",
            "metadata": meta,
            "spec": {
                "templateRef": {"name": "t"},
                "replicas": f.replicas,
                "deletionPolicy": f.policy,
                "overrides": [{"ordinal": o, "running": r} for o, r in sorted(f.overrides.items())],
            },
        }

    def vm_fleet(self, f: FleetState) -> VmFleet:
        v = parse(self.fleet_doc(f))
        assert isinstance(v, VmFleet)
        return v

    # ------------------------------------------------------------------ what a user calls their data

    def clones(self) -> dict[str, tuple[int, int, int]]:
        return {
            p: v
            for p, v in files(self.store_root).items()
            if p.startswith("vmfleet/clones/") and (p.endswith(".img") or p.endswith(".qcow2"))
        }

    def in_use(self) -> dict[str, list[str]]:
        """Clone path (relative to the store) -> the URIs where an active domain has it as its disk."""
        out: dict[str, list[str]] = {}
        prefix = str(self.store_root) + "/"
        for d in self.world.domains():
            if d.active and d.disk.startswith(prefix):
                out.setdefault(d.disk[len(prefix) :], []).append(d.uri)
        return out

    def step(self, what: str, run: Any) -> Any:
        """Run one engine call; check that every clone it removed was the acting fleet's to remove (I1, I3)."""
        STATS["steps"] += 1
        before = self.clones()
        outside = files(self.outside)
        result = self.loop.run_until_complete(run)
        gone = set(before) - set(self.clones())
        used = self.in_use()
        for path in sorted(gone):
            self.check_removed(what, path, used, wanted=True)
        if files(self.outside) != outside:
            raise Violation(f"{what}: changed a file outside the store (I6)")
        return result

    def check_removed(self, what: str, path: str, used: dict[str, list[str]], wanted: bool) -> None:
        owner = path.split("/")[4]
        if path in self.retained:
            raise Violation(f"{what}: deleted {path}, retained by fleet {self.retained[path]} (I3)")
        if self.fleet is None or owner != self.fleet.uid:
            raise Violation(f"{what}: deleted {path} of fleet {owner}, not the acting one's (I3)")
        ordinal = int(path.rsplit("-", 1)[1].split(".")[0])
        if wanted and not self.fleet.deleting and ordinal < self.fleet.replicas:
            raise Violation(f"{what}: deleted {path}, which fleet {owner} still wants (I1)")
        if path in used:
            raise Violation(f"{what}: deleted {path} while a domain runs on it at {used[path]} (I1)")

    # ------------------------------------------------------------------ rules: the operator

    @initialize(replicas=st.integers(1, 4))
    def a_fleet_runs(self, replicas: int) -> None:
        """Every sequence starts from a converged fleet: what is at stake is its disks."""
        assert self.fleet is not None
        self.fleet.replicas = replicas
        self.reconcile(False)

    @precondition(lambda self: self.fleet is not None)
    @rule(dry_run=st.booleans())
    def reconcile(self, dry_run: bool) -> None:
        f = self.fleet
        assert f is not None
        if f.deleting:
            done = self.step("teardown", teardown_fleet(self.runtime, self.vm_fleet(f), [self.store()], self.hosts()))
            if done.complete:
                self.check_torn_down(f)
                self.fleet = None
            return
        before = (self.clones(), self.world.domains(), files(self.store_root)) if dry_run else None
        result = self.step(
            "reconcile",
            reconcile_fleet(
                self.runtime,
                self.vm_fleet(f),
                self.template(),
                self.store(),
                self.hosts(),
                previous_status=f.status,
                dry_run=dry_run,
            ),
        )
        jsonschema.validate(result.status, STATUS_SCHEMA)  # I5
        if dry_run:
            after = (self.clones(), self.world.domains(), files(self.store_root))
            if after != before:
                raise Violation("a dry run changed the store or a host (I6)")
            return
        f.status = {**(f.status or {}), **result.status}
        self.last_outcomes = result.outcomes
        failed = [o for o in result.outcomes if not o.ok]
        if failed and self.hung is None:  # a hung store call fails its action: that is its point
            raise Violation(f"actions failed on reachable hosts: {[(o.action, o.error) for o in failed]} (I4)")
        if "clones" in result.status or self.hung is None:  # a store that refused the pass reports no space
            self.check_space(result.status)
        if self.healthy():
            ready = next(c for c in result.status["conditions"] if c["type"] == "Ready")
            if ready["status"] != "True":
                raise Violation(f"a healthy world did not converge: {ready} (I4)")
            self.check_seeds(f, result.status)

    def seeds(self) -> dict[str, bytes]:
        return {p: (self.store_root / p).read_bytes() for p in files(self.store_root) if p.endswith(".iso")}

    def check_seeds(self, f: FleetState, status: dict[str, Any]) -> None:
        """Converged: each VM has one seed, of the user data now in the spec; the VMs gone have none."""
        mine = {p: data for p, data in self.seeds().items() if p.split("/")[4] == f.uid}
        by_vm: dict[str, list[bytes]] = {}
        for p, data in mine.items():
            by_vm.setdefault(p.rsplit("/", 1)[1].split(".")[0], []).append(data)
        for c in status["clones"]:
            found = by_vm.get(c["name"], [])
            want = None if self.user_data is None else self.user_data.replace("{{ name }}", c["name"]).encode()
            current = [d for d in found if read_files(d)["user-data"] == want]
            # An older seed stays only while the VM still runs the definition that reads it.
            if len(current) != (want is not None) or (len(found) > len(current) and not c.get("restartRequired")):
                raise Violation(f"{c['name']}: {len(found)} seed(s), {len(current)} of the spec's user data (I4)")
        if set(by_vm) - {c["name"] for c in status["clones"]}:
            raise Violation(f"seeds of VMs the fleet no longer has: {sorted(set(by_vm))} (I1)")

    def then(self, then_pass: bool) -> None:
        """The operator reacts to a change at once (a watch event), or not before later changes pile up."""
        if then_pass and self.fleet is not None:
            self.reconcile(False)

    def healthy(self) -> bool:
        """Every host answers under its URI and none of the fleet's domains is where no KvmHost points: the
        fleet must then converge (else a person has to act first, and vmfleet must wait for them)."""
        current = {self.host_uris[h] for h in self.present}
        uid = self.fleet.uid if self.fleet else ""
        return (
            self.hung is None
            and self.present == set(HOSTS)
            and not self.world.down
            and not self.dead
            and not any(d.fleet_uid == uid and d.uri not in current for d in self.world.domains())
        )

    def check_space(self, status: dict[str, Any]) -> None:
        clones = [c for c in status["clones"] if "allocatedBytes" in c]
        assert status["logicalBytes"] == sum(c["logicalBytes"] for c in clones)
        assert status["allocatedBytes"] == sum(c["allocatedBytes"] for c in clones)
        assert status["savedBytes"] == max(0, status["logicalBytes"] - status["allocatedBytes"])
        for c in clones:
            path = self.store_root / clone_path(status, c)
            seeds = [p for p in path.parent.glob(f"{c['name']}.*.iso")]
            assert c["logicalBytes"] == (64 << 20) + sum(p.stat().st_size for p in seeds), c
            own = xfs_io_exclusive(path) if self.driver == "reflink" else path.stat().st_blocks * 512
            own += sum(p.stat().st_blocks * 512 for p in seeds)
            assert abs(c["allocatedBytes"] - own) <= 4096, (c, own)

    def check_torn_down(self, f: FleetState) -> None:
        # Active anywhere, or defined where a KvmHost still points (an inactive definition on a host that is no
        # longer a KvmHost is out of vmfleet's sight, and harmless: its disk is gone or retained).
        present = {self.host_uris[h] for h in self.present if h not in self.dead}
        left = [d for d in self.world.domains() if d.fleet_uid == f.uid and (d.active or d.uri in present)]
        if left:
            raise Violation(f"teardown of {f.uid} said complete with domains left: {left} (I1)")
        mine = [p for p in self.clones() if p.split("/")[4] == f.uid]
        if f.policy == "Delete" and mine:
            raise Violation(f"teardown with Delete left clones {mine}")
        for p in mine:
            self.retained[p] = f.uid

    @rule(keep_status=st.booleans())
    def crash(self, keep_status: bool) -> None:
        """The operator is killed and starts again: new connections; the status survives or is lost. A call
        hung in the kernel has landed or not by the time a new process looks (here: landed)."""
        if self.hung is not None:
            self.the_hung_call_lands(None, False)
        self.loop.run_until_complete(self.runtime.close())
        self.runtime = WorldRuntime(self.world, SETTINGS)
        if self.fleet is not None and not keep_status:
            self.fleet.status = None

    # ------------------------------------------------------------------ rules: people

    @precondition(lambda self: self.fleet is not None and not self.fleet.deleting)
    @rule(replicas=st.integers(0, 4), then_pass=st.booleans())
    def scale(self, replicas: int, then_pass: bool) -> None:
        assert self.fleet is not None
        self.fleet.replicas = replicas
        self.then(then_pass)

    @precondition(lambda self: self.hung is None and self.fleet is not None and not self.fleet.deleting)
    @rule(kind=st.sampled_from(sorted(SlowCall.KINDS)), replicas=st.integers(0, 4))
    def a_store_call_hangs(self, kind: str, replicas: int) -> None:
        """The next such call on the store (in the store's threads) blocks on a slow mount: the engine gives it
        up after its timeout and goes on; it lands when the_hung_call_lands lets it. A scale and a pass follow
        at once, so that the call is likely made."""
        self.hung = SlowCall.of_kind(kind).install()
        STATS["hung calls"] += 1
        self.scale(replicas, True)

    @rule(vcpus=st.integers(1, 2), memory=st.sampled_from([64, 128]), then_pass=st.booleans())
    def edit_template(self, vcpus: int, memory: int, then_pass: bool) -> None:
        self.vcpus, self.memory = vcpus, memory
        self.then(then_pass)

    @rule(version=st.none() | st.integers(0, 2), then_pass=st.booleans())
    def edit_cloud_init(self, version: int | None, then_pass: bool) -> None:
        """The template's user data changes (or cloud-init is turned off): each VM's seed is rewritten."""
        self.user_data = None if version is None else f"#cloud-config\nversion: {version} of {{{{ name }}}}\n"
        self.then(then_pass)

    @precondition(lambda self: self.fleet is not None and not self.fleet.deleting)
    @rule(ordinal=st.integers(0, 3), running=st.none() | st.booleans(), then_pass=st.booleans())
    def override(self, ordinal: int, running: bool | None, then_pass: bool) -> None:
        assert self.fleet is not None
        if running is None:
            self.fleet.overrides.pop(ordinal, None)
        else:
            self.fleet.overrides[ordinal] = running
        self.then(then_pass)

    @precondition(lambda self: self.fleet is not None and not self.fleet.deleting)
    @rule(retain=st.booleans(), then_pass=st.booleans())
    def delete_fleet(self, retain: bool, then_pass: bool) -> None:
        assert self.fleet is not None
        self.fleet.deleting = True
        self.fleet.policy = "Retain" if retain else "Delete"
        self.then(then_pass)

    @precondition(lambda self: self.fleet is None)
    @rule(then_pass=st.booleans())
    def create_fleet(self, then_pass: bool) -> None:
        self.fleet = FleetState(str(uuid.uuid4()))
        self.then(then_pass)

    @rule(host=st.sampled_from(HOSTS))
    def host_stops_answering(self, host: str) -> None:
        self.world.down.add(self.host_uris[host])

    @precondition(lambda self: any(self.host_uris[h] in self.world.down and h not in self.dead for h in HOSTS))
    @rule(data=st.data())
    def host_answers_again(self, data: st.DataObject) -> None:
        host = data.draw(
            st.sampled_from([h for h in HOSTS if self.host_uris[h] in self.world.down and h not in self.dead])
        )
        self.world.down.discard(self.host_uris[host])

    @rule(host=st.sampled_from(HOSTS), generation=st.integers(0, 1), then_pass=st.booleans())
    def change_uri(self, host: str, generation: int, then_pass: bool) -> None:
        """A KvmHost edited to another URI: another libvirtd, or the same one under another name."""
        self.host_uris[host] = uri(host, generation)
        self.then(then_pass)

    @precondition(lambda self: len(self.present) > 1)
    @rule(host=st.sampled_from(HOSTS), then_pass=st.booleans())
    def delete_host(self, host: str, then_pass: bool) -> None:
        self.present.discard(host)
        self.then(then_pass)

    @rule(host=st.sampled_from(HOSTS), then_pass=st.booleans())
    def restore_host(self, host: str, then_pass: bool) -> None:
        self.present.add(host)
        self.then(then_pass)

    @precondition(lambda self: len(self.dead) < len(HOSTS) - 1)
    @rule(host=st.sampled_from(HOSTS))
    def host_loses_power(self, host: str) -> None:
        """The machine stops, under every URI it was known by: its VMs stop; it stays silent until a person
        declares it lost (or it comes back)."""
        for generation in (0, 1):
            self.world.power_loss(uri(host, generation))
            self.world.down.add(uri(host, generation))
        self.dead.add(host)

    @precondition(lambda self: bool(self.dead) and self.fleet is not None)
    @rule(data=st.data())
    def declare_lost(self, data: st.DataObject) -> None:
        """A person, knowing the host is dead, annotates the fleet so its VMs may run elsewhere."""
        assert self.fleet is not None
        self.fleet.lost.add(data.draw(st.sampled_from(sorted(self.dead))))
        self.then(data.draw(st.booleans()))

    @precondition(lambda self: bool(self.dead))
    @rule(data=st.data())
    def dead_host_returns(self, data: st.DataObject) -> None:
        host = data.draw(st.sampled_from(sorted(self.dead)))
        self.dead.discard(host)
        for generation in (0, 1):
            self.world.down.discard(uri(host, generation))
        if self.fleet is not None:
            self.fleet.lost.discard(host)

    @precondition(lambda self: self.hung is not None)
    @rule(meanwhile=st.none() | st.integers(0, 4), then_pass=st.booleans())
    def the_hung_call_lands(self, meanwhile: int | None, then_pass: bool) -> None:
        """Before it lands, the fleet may be scaled again and a pass run: on what it may yet change."""
        if meanwhile is not None and self.fleet is not None and not self.fleet.deleting:
            self.scale(meanwhile, True)
        hung, self.hung = self.hung, None
        assert hung is not None
        before, used = self.clones(), self.in_use()
        STATS["late calls"] += hung.land(self.store_root)
        after = self.clones()
        what = f"a late call ({hung.kind})"
        for path in sorted(set(before) - set(after)):
            # Decided by a pass before the fleet may have changed: whether it is wanted again is not the
            # question, whether anything ran on it since is.
            self.check_removed(what, path, used, wanted=False)
        for path in sorted(set(after) - set(before)):
            owner = path.split("/")[4]
            if self.fleet is None or owner != self.fleet.uid:
                raise Violation(f"{what}: {path} appeared for fleet {owner}, which was torn down (I3)")
        self.then(then_pass)

    @precondition(lambda self: bool(self.clones()))
    @rule(data=st.data(), blocks=st.integers(1, 64))
    def guest_writes(self, data: st.DataObject, blocks: int) -> None:
        path = data.draw(st.sampled_from(sorted(self.clones())))
        write_into(
            self.store_root / path, disk_format_of(path), data.draw(st.integers(0, 255)) * (256 << 10), blocks * 4096
        )

    @precondition(lambda self: self.fleet is not None)
    @rule(replicas=st.integers(0, 4))
    def duplicate_manifests(self, replicas: int) -> None:
        """Two copies of one fleet in the manifests: rejected before anything runs."""
        assert self.fleet is not None
        d = self.base / "manifests"
        d.mkdir(exist_ok=True)
        doc = self.fleet_doc(self.fleet)
        (d / "a.yaml").write_text(yaml.safe_dump(doc))
        (d / "b.yaml").write_text(yaml.safe_dump({**doc, "spec": {**doc["spec"], "replicas": replicas}}))
        with pytest.raises(InvalidManifest, match="defined twice"):
            load([str(d)])

    # ------------------------------------------------------------------ invariants after every step

    @invariant()
    def one_active_domain_per_clone(self) -> None:  # I2
        for path, where in self.in_use().items():
            if len(where) > 1 and not path.startswith("images/"):
                raise Violation(f"{path} is the disk of {len(where)} active domains: {where} (I2)")

    @invariant()
    def a_vm_keeps_its_uuid(self) -> None:  # I4: redefined in place, wherever and whenever
        for d in self.world.domains():
            if d.fleet_uid:
                ordinal = int(d.name.rsplit("-", 1)[1])
                assert d.uuid == str(uuid.uuid5(uuid.UUID(VM_UUIDS), f"{d.fleet_uid}/{ordinal}")), d

    @invariant()
    def a_seed_is_never_deleted_while_a_running_domain_may_read_it(self) -> None:  # I1, for seeds
        for d in self.world.domains():
            gone = [p for p in d.seeds if d.active and not Path(p).exists()]
            if gone:
                raise Violation(f"{d.name} runs with seed {gone}, deleted (I1)")

    @invariant()
    def retained_clones_stay(self) -> None:  # I3
        missing = [p for p in self.retained if p not in self.clones()]
        if missing:
            raise Violation(f"retained clones disappeared: {missing} (I3)")

    @invariant()
    def nothing_outside_the_store_changed(self) -> None:  # I6
        assert (self.outside / "precious").read_bytes() == b"not the store's\n"


TEMPLATE_IMAGE = ""


def run_machine(root: Path, driver: str, image: Path, examples: int, steps: int, seed: bool = True) -> None:
    global TEMPLATE_IMAGE
    TEMPLATE_IMAGE = str(image)
    FleetSafety.root, FleetSafety.driver = root, driver
    run_state_machine_as_test(
        FleetSafety,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            derandomize=seed,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_safety_invariants_hold_on_a_qcow2_store(tmp_path: Path, small_image: Path) -> None:
    run_machine(tmp_path, "qcow2", small_image, EXAMPLES, STEPS)


def test_safety_invariants_hold_on_a_reflink_store_on_xfs(xfs: Path, small_image: Path) -> None:
    root = xfs / f"safety-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    try:
        run_machine(root, "reflink", small_image, EXAMPLES, STEPS)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _report_counts() -> Any:
    before = dict(STATS)
    yield
    from conftest import TIMINGS  # noqa: F401 - the summary printer lives there

    print(
        f"\nsafety: {STATS['examples'] - before['examples']} sequences, "
        f"{STATS['steps'] - before['steps']} engine steps, "
        f"{STATS['hung calls'] - before['hung calls']} store calls hung, "
        f"{STATS['late calls'] - before['late calls']} of them made and landed late"
    )


def test_an_announcement_that_landed_late_holds_no_vm_that_was_never_made(tmp_path: Path, small_image: Path) -> None:
    """Found by the state machine: a scale-out's announced record (VMs 'creating' on their hosts) that lands after
    its pass gave up keeps saying so for VMs never made; once a KvmHost's URI changes, such a VM was held as
    'may still run at the old URI' (HostUnreachable) for good, and a healthy world never converged."""
    global TEMPLATE_IMAGE
    TEMPLATE_IMAGE = str(small_image)
    FleetSafety.root, FleetSafety.driver = tmp_path, "qcow2"
    machine = FleetSafety()
    try:
        machine.a_fleet_runs(1)
        machine.scale(0, True)
        machine.a_store_call_hangs("write the record", 4)  # the announcement for 4 new VMs hangs: nothing made
        assert machine.hung is not None and machine.hung.entered.is_set()
        machine.the_hung_call_lands(None, False)
        for host in HOSTS:
            machine.change_uri(host, 1, False)
        machine.reconcile(False)  # raises Violation when the healthy world does not converge
    finally:
        machine.teardown()
