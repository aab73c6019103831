"""What the planner reads and what it returns. Plain data: no I/O anywhere in planner/."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VmWant:
    """One VM as the spec wants it."""

    ordinal: int
    name: str
    vcpus: int
    memory_mib: int
    running: bool  # started when made (runStrategy Always or RerunOnFailure)
    strategy: str = ""  # Always, Halted, Manual, RerunOnFailure; "" says it by `running` (Always or Halted)

    @property
    def run(self) -> str:
        return self.strategy or ("Always" if self.running else "Halted")


@dataclass(frozen=True)
class HostView:
    """A KvmHost the fleet may use, as observed: `used` counts every active domain on it, ours included."""

    name: str
    reachable: bool
    eligible: bool = True  # selected by the fleet's hostSelector; others are watched, not placed on
    vcpus: int = 0
    memory_mib: int = 0
    used_vcpus: int = 0
    used_memory_mib: int = 0
    error: str = ""
    cordoned: bool = False  # KvmHost spec.unschedulable (or drained): no new VM is placed on it
    draining: bool = False  # KvmHost annotation vmfleet.io/drain: its VMs move to other hosts
    uri: str = ""  # the libvirt endpoint: two KvmHosts of one URI are one host, nothing moves between them


PAUSED_FOR_A_WHILE = frozenset({"starting", "migration", "save", "snapshot", "dump", "shutting down"})


@dataclass(frozen=True)
class VmSeen:
    """A domain of this fleet found on a host (by its vmfleet metadata)."""

    ordinal: int
    host: str
    state: str
    active: bool
    spec_hash: str  # of the persistent definition
    live_hash: str = ""  # of the definition the running domain started with ("" when inactive)
    uuid: str = ""
    saved: bool = False  # stopped with a managed save: it resumes on the definition it ran
    kept_mac: str | None = None  # the MAC libvirt gave it before vmfleet chose MACs, kept
    live_mac: str | None = None  # the MAC it runs with (until it restarts)
    # Why its guest does not run: off, shutdown (by the guest), destroyed, crashed, ...; paused, user, ioerror,
    # starting, migration, ... ("" while it runs).
    stop_reason: str = ""
    revision: str = ""  # the fleet revision it was defined for ("" when defined before revisions)
    live_revision: str = ""  # ... and the one it runs (until restarted), while active

    @property
    def running(self) -> bool:
        """Its guest runs: not paused (by a person, or still starting: libvirt starts QEMU paused and resumes it
        at the end of a start that a crash may have cut short), not shutting down or suspended."""
        return self.active and self.state == "Running"

    @property
    def held(self) -> bool:
        """Active, its guest stopped where it was until someone lets it go on (`virsh suspend`, QEMU after an I/O
        error, a guest asleep): vmfleet neither resumes it nor destroys it for an update (its memory would be
        lost). Paused only for a while (starting, migrating, saving) it is not held."""
        if self.state == "Suspended":
            return self.active
        return self.active and self.state == "Paused" and self.stop_reason not in PAUSED_FOR_A_WHILE

    @property
    def ran_and_stopped(self) -> bool:
        """It ran and is off now, by the guest's doing or a crash (not a domain only defined, or saved)."""
        return not self.active and not self.saved and self.stop_reason in ("shutdown", "crashed", "failed", "destroyed")


@dataclass(frozen=True)
class Observation:
    parent_exists: bool
    clones: frozenset[int]
    domains: Mapping[int, VmSeen]
    hosts: Mapping[str, HostView]
    # Ordinals whose domain name is taken by a domain vmfleet did not make for this fleet.
    conflicts: Mapping[int, str] = field(default_factory=dict)
    # Ordinal -> host, from the fleet's record in the store: where each VM was placed (written before acting).
    recorded: Mapping[int, str] = field(default_factory=dict)
    # Ordinals recorded while their clone was being made or deleted: a missing clone is not lost.
    settling: frozenset[int] = frozenset()
    # Ordinal -> why the host recorded for it cannot be observed although it answers under that name
    # (the KvmHost is gone, or its URI changed and the domain is not at the new one): it may still run there.
    elsewhere: Mapping[int, str] = field(default_factory=dict)
    # Further domains of one VM (only after a person declared a host lost and it came back).
    duplicates: tuple[VmSeen, ...] = ()
    # cloud-init seeds: VMs that need one and lack it, and VMs with seed images they no longer need.
    seed_missing: frozenset[int] = frozenset()
    stale_seeds: frozenset[int] = frozenset()
    # Ordinal -> the clone parent its clone was made from, where the record says ("" or absent: not known).
    parents: Mapping[int, str] = field(default_factory=dict)
    # Clones in a file of another format than a new one would be (the template's image format changed).
    reformatted: frozenset[int] = frozenset()
    # VMs with an IP address seen on their NIC; None when readiness does not ask for one.
    addressed: frozenset[int] | None = None
    # VMs vmfleet stopped itself (the record says so): RerunOnFailure starts them again.
    stopped: frozenset[int] = frozenset()
    # VMs whose record announces a reimage (reimaging): the old clone untouched, or deleted by a reimage cut short.
    reimaging: frozenset[int] = frozenset()
    # VMs whose guest had powered itself off when a drain moved them (the record says so): as if libvirt said so.
    finished: frozenset[int] = frozenset()

    def unobservable(self) -> list[str]:
        """Hosts that may hold a domain nobody can see now."""
        return sorted(name for name, view in self.hosts.items() if not view.reachable)


@dataclass(frozen=True)
class Update:
    """How VMs that exist take a new revision of the fleet (spec.updateStrategy and what it refers to)."""

    rolling: bool = True  # RollingUpdate; False: OnDelete
    budget: int = 1  # maxUnavailable, as a number of VMs
    partition: int = 0  # only ordinals at or above it are updated
    revision: str = ""  # the fleet's revision now
    parent: str = ""  # the clone parent VMs should come from ("" : images are not compared)
    reimage_on_image_change: bool = True  # diskPolicy Reimage; Keep leaves disks as they are
    ephemeral: bool = False  # a VM that stopped by itself is reimaged and started again
    reimage: frozenset[int] = frozenset()  # asked for by a person (annotation, `vmfleet reimage`)


class Op(enum.Enum):
    """What the planner may ask for. How each is carried out, and the reasons it reports, are defined once,
    in engine/operations.py."""

    PREPARE_PARENT = "prepare-parent"
    CREATE_CLONE = "create-clone"
    DEFINE = "define"
    START = "start"
    STOP = "stop"
    UNDEFINE = "undefine"
    DELETE_CLONE = "delete-clone"
    WRITE_SEED = "write-seed"
    DELETE_SEEDS = "delete-seeds"
    REIMAGE = "reimage"
    MIGRATE = "migrate"  # a running VM to another host (a drain): live, else cold


PARENT_OPS = frozenset({Op.PREPARE_PARENT})
CLONE_OPS = frozenset({Op.CREATE_CLONE, Op.DELETE_CLONE, Op.WRITE_SEED, Op.DELETE_SEEDS, Op.REIMAGE})
DOMAIN_OPS = frozenset({Op.DEFINE, Op.START, Op.STOP, Op.UNDEFINE, Op.MIGRATE})


@dataclass(frozen=True)
class ParentAction:
    """On the fleet's clone parent: before any VM's chain runs."""

    op: Op
    why: str = ""

    def __post_init__(self) -> None:
        assert self.op in PARENT_OPS, self.op


@dataclass(frozen=True)
class CloneAction:
    """On one VM's clone in the store."""

    op: Op
    ordinal: int
    why: str = ""

    def __post_init__(self) -> None:
        assert self.op in CLONE_OPS, self.op


@dataclass(frozen=True)
class DomainAction:
    """On one VM's domain, on one host (MIGRATE: the host it goes to)."""

    op: Op
    ordinal: int
    host: str
    why: str = ""

    def __post_init__(self) -> None:
        assert self.op in DOMAIN_OPS, self.op


VmAction = CloneAction | DomainAction
Action = ParentAction | VmAction


class Severity(enum.Enum):
    STALLED = "Stalled"  # cannot progress until someone changes something
    DEGRADED = "Degraded"  # something exists but is not as it should be


@dataclass(frozen=True)
class Problem:
    severity: Severity
    reason: str
    message: str  # what is wrong, without the VM's name: VMs with the same problem are reported together
    ordinal: int | None = None
    subject: str = ""  # the VM's name
    vm_state: str = "Pending"  # what the VM's status entry says while it has this problem


def listing(names: list[str], shown: int = 5) -> str:
    """'a, b, c, d, e and 3 more': names in a message that stays short for a fleet of thousands."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def summarise(problems: list[Problem]) -> list[tuple[Problem, str]]:
    """One line per distinct problem, naming the VMs that have it: 'web-0, web-1: host kvm-a is unreachable'."""
    groups: dict[tuple[Severity, str, str], list[Problem]] = {}
    for p in problems:
        groups.setdefault((p.severity, p.reason, p.message), []).append(p)
    out = []
    for same in groups.values():
        who = listing([p.subject for p in same if p.subject])
        out.append((same[0], f"{who}: {same[0].message}" if who else same[0].message))
    return out


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    placement: dict[int, str] = field(default_factory=dict)
    # Running VMs whose definition changed: they run the old one until restarted.
    restart_required: list[int] = field(default_factory=list)
    # VMs on the fleet's revision now (its definition, and the image their clone came from), and VMs the update
    # still has to reach (at or above the partition, not yet there).
    updated: set[int] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)
    # Of those, the VMs running that vmfleet does not take down to update: they wait for a person to stop them
    # (updateStrategy OnDelete, runStrategy Manual).
    waiting: set[int] = field(default_factory=set)
    held: set[int] = field(default_factory=set)  # paused by a person or by QEMU: down until someone resumes them
    ready: set[int] = field(default_factory=set)
    # VMs on a draining host: moved this pass, and waiting (for maxUnavailable, or for a host to take them).
    moving: set[int] = field(default_factory=set)
    stranded: set[int] = field(default_factory=set)

    def observed(self, after: Plan) -> None:
        """What this plan reports, once it has run, is what the plan of the state it left says."""
        self.problems, self.restart_required = after.problems, after.restart_required
        self.updated, self.pending, self.ready = after.updated, after.pending, after.ready
        self.waiting, self.moving, self.stranded = after.waiting, after.moving, after.stranded
        self.held = after.held

    def parent_actions(self) -> list[ParentAction]:
        return [a for a in self.actions if isinstance(a, ParentAction)]

    def chains(self) -> dict[int, list[VmAction]]:
        """Each VM's actions in order; different VMs' chains may run side by side."""
        out: dict[int, list[VmAction]] = {}
        for a in self.actions:
            if not isinstance(a, ParentAction):
                out.setdefault(a.ordinal, []).append(a)
        return out


SpecHash = Callable[[int, str], str]
"""(ordinal, host) -> the hash of the domain definition vmfleet would write there."""
