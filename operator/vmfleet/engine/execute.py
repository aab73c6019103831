"""Running a plan: the parent first, then each VM's chain of actions, many VMs at once but bounded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..errors import VmfleetError
from ..planner import Action, Plan


@dataclass(frozen=True)
class Outcome:
    action: Action
    error: str | None = None
    note: str | None = None  # done, another way than planned: a Warning Event says how (a migration gone cold)

    @property
    def ok(self) -> bool:
        return self.error is None


log = logging.getLogger(__name__)

Actuator = Callable[[Action], Awaitable[str | None]]
Progress = Callable[[Outcome, int, int], None]
"""Told of each action as it ends: (its outcome, actions ended so far, actions planned)."""


async def execute(plan: Plan, actuate: Actuator, concurrency: int, progress: Progress | None = None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    total, ended = len(plan.actions), 0

    async def attempt(action: Action) -> Outcome:
        nonlocal ended
        outcome = await _attempt(actuate, action)
        ended += 1
        if progress is not None:
            progress(outcome, ended, total)
        return outcome

    for action in plan.parent_actions():
        outcome = await attempt(action)
        outcomes.append(outcome)
        if not outcome.ok:  # no parent, no clones: the VM chains would only fail the same way
            return outcomes
    limit = asyncio.Semaphore(concurrency)

    async def chain(actions: Sequence[Action]) -> list[Outcome]:
        done = []
        async with limit:
            for action in actions:
                outcome = await attempt(action)
                done.append(outcome)
                if not outcome.ok:
                    break
        return done

    for chain_outcomes in await asyncio.gather(*(chain(c) for c in plan.chains().values())):
        outcomes.extend(chain_outcomes)
    return outcomes


async def _attempt(actuate: Actuator, action: Action) -> Outcome:
    try:
        note = await actuate(action)
    except VmfleetError as e:  # the drivers' errors: what the world refused, said in the driver's words
        return Outcome(action, str(e) or type(e).__name__)
    except Exception as e:
        # A bug, not a fault of the world: still one failed action (the other VMs' chains go on), but logged
        # with its traceback and said to be unexpected.
        log.exception("%s failed unexpectedly", action)
        return Outcome(action, f"unexpected {type(e).__name__}: {e} (a vmfleet bug: please report it)")
    return Outcome(action, note=note)
