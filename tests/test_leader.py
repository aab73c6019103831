"""Leader election on a Lease (vmfleet.operator.leader), without a cluster: one fake Lease API with the
apiserver's optimistic concurrency (a write names the resourceVersion it read; 409 otherwise) and hand-moved
clocks, one per replica, so that no test waits for a lease to run out."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vmfleet.operator.leader import Elector, Holding, claim
from vmfleet.settings import Settings

pytestmark = pytest.mark.ha


class FakeLeases:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False  # the apiserver does not answer
        self.slow: tuple[Clock, float] | None = None  # each call takes this long on that clock

    def _check(self, timeout: float) -> None:
        if self.slow is not None:
            clock, seconds = self.slow
            clock.t += min(seconds, timeout)
            if seconds > timeout:
                raise TimeoutError(f"no answer in {timeout} s")
        if self.down:
            raise ConnectionError("apiserver unreachable")

    def get(self, timeout: float) -> dict[str, Any] | None:
        self._check(timeout)
        return copy.deepcopy(self.lease)

    def create(self, spec: dict[str, Any], timeout: float) -> bool:
        self._check(timeout)
        if self.lease is not None:
            return False
        return self._write(spec)

    def replace(self, version: str, spec: dict[str, Any], timeout: float) -> bool:
        self._check(timeout)
        if self.lease is None or self.lease["metadata"]["resourceVersion"] != version:
            return False
        return self._write(spec)

    def _write(self, spec: dict[str, Any]) -> bool:
        self.version += 1
        self.lease = {"metadata": {"resourceVersion": str(self.version)}, "spec": dict(spec)}
        return True

    @property
    def holder(self) -> str:
        return (self.lease or {}).get("spec", {}).get("holderIdentity", "")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def elector(leases: FakeLeases, name: str, clock: Clock) -> Elector:
    return Elector(leases, name, lease_seconds=15, renew_deadline_seconds=10, retry_seconds=2, clock=clock)


def test_one_replica_holds_the_lease_while_it_renews_and_the_other_takes_it_only_after_it_stopped() -> None:
    leases, ca, cb = FakeLeases(), Clock(), Clock()
    a, b = elector(leases, "a", ca), elector(leases, "b", cb)
    assert a.try_once() and leases.holder == "a"
    for _ in range(20):  # a renews every 2 s for 40 s: b never gets it
        ca.t += 2
        cb.t += 2
        assert a.try_once()
        assert not b.try_once()
    assert leases.holder == "a"
    # a dies: b has seen the same record for 14 s, then for 15
    renewed = leases.lease["spec"]["renewTime"]  # type: ignore[index]
    cb.t += 14
    assert not b.try_once()
    cb.t += 1
    assert b.try_once()
    assert leases.holder == "b"
    spec = leases.lease["spec"]  # type: ignore[index]
    assert spec["leaseTransitions"] == 1 and spec["acquireTime"] == spec["renewTime"] >= renewed


def test_another_replicas_clock_is_never_compared_with_ours() -> None:
    """b's clock is far ahead of the renewTime a wrote: b still waits a whole lease from when it saw it change."""
    leases, ca, cb = FakeLeases(), Clock(), Clock()
    a, b = elector(leases, "a", ca), elector(leases, "b", cb)
    a.try_once()
    cb.t += 10_000
    assert not b.try_once()  # first sight of the record: its age is 0 to b
    cb.t += 14.9
    assert not b.try_once()


def test_two_replicas_that_claim_a_free_lease_at_once_do_not_both_win() -> None:
    leases = FakeLeases()
    a, b = elector(leases, "a", Clock()), elector(leases, "b", Clock())
    # both read "no lease", then both create: the apiserver keeps the first
    assert [a.try_once(), b.try_once()] == [True, False]
    # both read the same expired lease, then both replace it under that version: one wins
    expired = {"holderIdentity": "c", "leaseDurationSeconds": 1, "leaseTransitions": 4}
    leases._write(expired)
    current = Holding.of(leases.lease)  # type: ignore[arg-type]
    spec_a = claim(current, 5, "a", 15, "t")
    spec_b = claim(current, 5, "b", 15, "t")
    assert spec_a and spec_b
    assert [leases.replace(current.version, spec_a, 5), leases.replace(current.version, spec_b, 5)] == [
        True,
        False,
    ]
    assert leases.holder == "a" and leases.lease["spec"]["leaseTransitions"] == 5  # type: ignore[index]


def test_a_holder_that_cannot_renew_stops_before_any_other_replica_may_take_over() -> None:
    leases, ca, cb = FakeLeases(), Clock(), Clock()
    a, b = elector(leases, "a", ca), elector(leases, "b", cb)
    a.try_once()
    b.try_once()  # b sees a's record now
    stopped_at: list[float] = []

    def lost() -> None:
        stopped_at.append(ca.t)

    def sleep(seconds: float) -> None:  # a's renewals, with both clocks moving
        ca.t += seconds
        cb.t += seconds

    a.sleep = sleep
    leases.down = True  # a cannot renew from now on
    a.keep(lost)
    (t,) = stopped_at
    assert 10 <= t - 1000 < 15  # a stopped after its renew deadline...
    leases.down = False
    assert not b.try_once()  # ...while b still waits: there was never a moment with two leaders
    cb.t = 1000 + 15
    assert b.try_once()


def test_a_holder_whose_apiserver_hangs_stops_at_its_deadline_not_when_a_call_returns() -> None:
    """Each Lease call is given up when the renew deadline comes: a call hanging for 30 s does not let the holder
    act past its deadline, and a renewal counts from when it was sent."""
    leases, ca, cb = FakeLeases(), Clock(), Clock()
    a, b = elector(leases, "a", ca), elector(leases, "b", cb)
    a.try_once()
    b.try_once()
    stopped_at: list[float] = []

    def sleep(seconds: float) -> None:
        ca.t += seconds

    a.sleep = sleep
    leases.slow = (ca, 30.0)
    a.keep(lambda: stopped_at.append(ca.t))
    (t,) = stopped_at
    assert 10 <= t - 1000 <= 10.5, t - 1000  # the deadline (10 s), not 30 s calls later
    cb.t = 1000 + 15  # b, having seen a's last renewal at once, takes over only after a stopped
    leases.slow = None
    assert b.try_once()


def test_the_apiserver_down_is_not_the_lease_lost_until_the_deadline() -> None:
    leases, clock = FakeLeases(), Clock()
    a = elector(leases, "a", clock)
    a.try_once()
    leases.down = True
    assert not a._attempt(5)  # logged and waited out, not raised
    leases.down = False
    clock.t += 9
    assert a.try_once() and leases.holder == "a"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VMFLEET_LEASE": "vmfleet-system"}, "must be NAMESPACE/NAME"),
        ({"VMFLEET_LEASE": "Kube/x"}, "must be NAMESPACE/NAME"),
        ({"VMFLEET_LEASE": "a/b c"}, "must be NAMESPACE/NAME"),
        ({"VMFLEET_LEASE": "a/b", "VMFLEET_LEASE_RENEW_DEADLINE_SECONDS": "15"}, "below VMFLEET_LEASE_SECONDS"),
        ({"VMFLEET_LEASE": "a/b", "VMFLEET_LEASE_SECONDS": "x"}, "VMFLEET_LEASE_SECONDS='x' is not a number"),
        (
            {"VMFLEET_LEASE": "a/b", "VMFLEET_LEASE_SECONDS": "0.9", "VMFLEET_LEASE_RENEW_DEADLINE_SECONDS": "0.5"},
            "at least 1",
        ),
    ],
)
def test_a_lease_setting_that_cannot_work_is_an_error_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_lease_settings_are_read_from_the_environment() -> None:
    env = {"VMFLEET_LEASE": "vmfleet-system/vmfleet-operator", "VMFLEET_LEASE_SECONDS": "4"}
    s = Settings.from_env({**env, "VMFLEET_LEASE_RENEW_DEADLINE_SECONDS": "3"})
    assert s.lease_name() == ("vmfleet-system", "vmfleet-operator")
    assert (s.lease_seconds, s.lease_renew_deadline_seconds) == (4.0, 3.0)
    assert Settings.from_env({}).lease_name() is None
