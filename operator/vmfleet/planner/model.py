"""What the planner reads and what it returns. Plain data: no I/O anywhere in planner/."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Mapping


@dataclass(frozen=True)
class VmWant:
    """One VM as the spec wants it."""

    ordinal: int
    name: str
    vcpus: int
    memory_mib: int
    running: bool


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


@dataclass(frozen=True)
class VmSeen:
    """A domain of this fleet found on a host (by its vmfleet metadata)."""

    ordinal: int
    host: str
    state: str
    active: bool
    spec_hash: str


@dataclass(frozen=True)
class Observation:
    parent_exists: bool
    clones: frozenset[int]
    domains: Mapping[int, VmSeen]
    hosts: Mapping[str, HostView]
    # Ordinals whose domain name is taken by a domain vmfleet did not make for this fleet.
    conflicts: Mapping[int, str] = field(default_factory=dict)
    # Ordinal -> host, from the last status: which VMs had a clone and where they ran.
    recorded: Mapping[int, str] = field(default_factory=dict)


class Op(enum.Enum):
    PREPARE_PARENT = "prepare-parent"
    CREATE_CLONE = "create-clone"
    DEFINE = "define"
    START = "start"
    STOP = "stop"
    UNDEFINE = "undefine"
    DELETE_CLONE = "delete-clone"


@dataclass(frozen=True)
class Action:
    op: Op
    ordinal: int | None = None
    host: str | None = None
    why: str = ""


class Severity(enum.Enum):
    STALLED = "Stalled"  # cannot progress until someone changes something
    DEGRADED = "Degraded"  # something exists but is not as it should be


@dataclass(frozen=True)
class Problem:
    severity: Severity
    reason: str
    message: str
    ordinal: int | None = None


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    placement: dict[int, str] = field(default_factory=dict)

    def parent_actions(self) -> list[Action]:
        return [a for a in self.actions if a.ordinal is None]

    def chains(self) -> dict[int, list[Action]]:
        """Each VM's actions in order; different VMs' chains may run side by side."""
        out: dict[int, list[Action]] = {}
        for a in self.actions:
            if a.ordinal is not None:
                out.setdefault(a.ordinal, []).append(a)
        return out


SpecHash = Callable[[int, str], str]
"""(ordinal, host) -> the hash of the domain definition vmfleet would write there."""
