"""Host maintenance (issue 17): a cordoned KvmHost (spec.unschedulable) gets no new VM and keeps the ones it runs."""

from __future__ import annotations

from typing import Any

import pytest

from test_rollout import Site, _doc, conn, site  # noqa: F401
from vmfleet.api import parse
from vmfleet.engine import Runtime, host_status, reconcile_fleet

pytestmark = pytest.mark.hosts


TWO = {"rollingUpdate": {"maxUnavailable": 2}}


def cordoned(site: Site, unschedulable: bool = True) -> Any:
    spec = {"uri": "test:///default", "capacity": {"vcpus": 64, "memoryMiB": 65536}, "unschedulable": unschedulable}
    return parse(_doc("KvmHost", "kvm-a", spec, ns=None))


def condition(status: dict[str, Any], type_: str) -> tuple[str, str]:
    (c,) = [c for c in status["conditions"] if c["type"] == type_]
    return c["status"], c["reason"]


async def test_a_cordoned_host_keeps_its_vms_running_and_takes_no_new_one_until_uncordoned(
    runtime: Runtime, conn: Any, site: Site
) -> None:
    first = await reconcile_fleet(runtime, site.fleet(replicas=2), site.template(), site.store, [site.host])
    assert first.status["readyReplicas"] == 2
    host = cordoned(site)
    # scaled out while the only host is cordoned: web-0 and web-1 run on, web-2 waits, saying why
    more = await reconcile_fleet(
        runtime, site.fleet(replicas=3, updateStrategy=TWO), site.template(), site.store, [host], first.status
    )
    assert sorted(d.name() for d in conn.listAllDomains() if d.name().startswith("prod.web-")) == [
        "prod.web-0",
        "prod.web-1",
    ]
    assert all(conn.lookupByName(f"prod.web-{o}").isActive() for o in (0, 1))
    assert condition(more.status, "Stalled") == ("True", "HostsCordoned")
    assert "every reachable host it may use is cordoned (spec.unschedulable): kvm-a" in str(more.status["conditions"])
    # a change to the VMs already there still reaches them (web-2, not made, counts as unavailable)
    bigger = await reconcile_fleet(
        runtime, site.fleet(replicas=3, updateStrategy=TWO), site.template(memory=96), site.store, [host], more.status
    )
    assert [conn.lookupByName(f"prod.web-{o}").info()[1] for o in (0, 1)] == [96 * 1024] * 2
    assert bigger.status["updatedReplicas"] == 2
    back = await reconcile_fleet(
        runtime,
        site.fleet(replicas=3, updateStrategy=TWO),
        site.template(memory=96),
        site.store,
        [cordoned(site, False)],
        bigger.status,
    )
    assert back.status["readyReplicas"] == 3 and condition(back.status, "Stalled")[0] == "False"


async def test_kubectl_get_kvh_says_a_host_is_cordoned(runtime: Runtime, conn: Any, site: Site) -> None:
    status = await host_status(runtime, cordoned(site), None)
    assert condition(status, "Ready") == ("True", "Connected")
    assert condition(status, "Schedulable") == ("False", "Cordoned")
    status = await host_status(runtime, cordoned(site, False), status)
    assert condition(status, "Schedulable") == ("True", "NotCordoned")
