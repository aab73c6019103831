"""The reconcile entry points the kopf handlers call, with the objects as the API would hand them over."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import kopf
import pytest
import yaml

from helpers import REPO, quickstart
from vmfleet.engine import Runtime
from vmfleet.operator import passes
from vmfleet.storage import parent_path


def load(manifests: Path) -> dict[str, dict]:
    docs = {}
    for path in manifests.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        doc["metadata"].update(uid=f"uid-{doc['kind'].lower()}", generation=1)
        docs[doc["kind"]] = doc
    return docs


def catalog(docs: dict[str, dict], clones: int = 0, hosts: list[dict] | None = None) -> passes.Catalog:
    t = docs["VmTemplate"]
    return passes.Catalog(
        stores={docs["CloneStore"]["metadata"]["name"]: docs["CloneStore"]},
        hosts=hosts if hosts is not None else [docs["KvmHost"]],
        templates={("default", t["metadata"]["name"]): t},
        clones_by_parent={
            (
                t["spec"]["storeRef"]["name"],
                parent_path(t["spec"]["image"]["path"], t["spec"]["image"].get("format", "raw")),
            ): clones
        },
        images_by_template={("default", "basic"): ("local", "images/basic.img", "raw")},
    )


@pytest.fixture
def docs(tmp_path: Path, small_image: Path) -> dict[str, dict]:
    return load(quickstart(tmp_path, small_image))


def reasons(events) -> list[str]:
    return [e.reason for e in events]


async def test_a_fleet_pass_converges_and_a_second_pass_is_quiet(runtime: Runtime, docs: dict) -> None:
    fleet = docs["VmFleet"]
    first = await passes.fleet_pass(runtime, fleet, catalog(docs))
    assert first.status["readyReplicas"] == 3 and first.status["observedGeneration"] == 1
    assert reasons(first.events) == ["ParentPrepared", "ClonesCreated", "DomainsDefined", "DomainsStarted"]
    fleet["status"] = first.status
    second = await passes.fleet_pass(runtime, fleet, catalog(docs))
    assert second.events == []
    assert second.status["clones"] == first.status["clones"]
    ready = next(c for c in second.status["conditions"] if c["type"] == "Ready")
    first_ready = next(c for c in first.status["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == first_ready["lastTransitionTime"]


async def test_a_host_that_goes_away_degrades_the_fleet_and_its_vms_stay_put(runtime: Runtime, docs: dict) -> None:
    fleet = docs["VmFleet"]
    fleet["status"] = (await passes.fleet_pass(runtime, fleet, catalog(docs))).status
    gone = copy.deepcopy(docs["KvmHost"])
    gone["spec"]["uri"] = "qemu+tcp://127.0.0.1:1/system"
    result = await passes.fleet_pass(runtime, fleet, catalog(docs, hosts=[gone]))
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "HostUnreachable"
    assert {c["state"] for c in result.status["clones"]} == {"Unknown"}
    assert {c["host"] for c in result.status["clones"]} == {"local"}
    assert "HostUnreachable" in reasons(result.events)
    assert len(list((Path(docs["CloneStore"]["spec"]["root"])).rglob("demo-*.qcow2"))) == 3


async def test_a_missing_template_is_waited_for_with_the_field_named(runtime: Runtime, docs: dict) -> None:
    empty = passes.Catalog(stores={}, hosts=[docs["KvmHost"]])
    result = await passes.fleet_pass(runtime, docs["VmFleet"], empty)
    state = {c["type"]: (c["status"], c["reason"]) for c in result.status["conditions"]}
    # In progress, not Stalled: applied together, the template may be on its way (and Flux fails fast on Stalled).
    assert state == {
        "Ready": ("False", "TemplateNotFound"),
        "Reconciling": ("True", "TemplateNotFound"),
        "Stalled": ("False", "NotStalled"),
        "Degraded": ("False", "NotDegraded"),
    }
    assert "spec.templateRef.name" in result.status["conditions"][0]["message"]
    assert result.waiting  # the handler retries in seconds
    assert reasons(result.events) == ["TemplateNotFound"]
    again = await passes.fleet_pass(runtime, {**docs["VmFleet"], "status": result.status}, empty)
    assert again.waiting and again.events == []  # said once, not at every retry


async def test_an_invalid_spec_stalls_the_fleet(runtime: Runtime, docs: dict) -> None:
    fleet = copy.deepcopy(docs["VmFleet"])
    fleet["spec"]["replicas"] = -1  # the API refuses this; an old object or a CRD without validation may not
    result = await passes.fleet_pass(runtime, fleet, catalog(docs))
    stalled = next(c for c in result.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec" and "spec.replicas" in stalled["message"]
    assert not result.waiting


async def test_a_resync_queued_behind_a_teardown_does_not_build_the_fleet_again(runtime: Runtime, docs: dict) -> None:
    fleet = docs["VmFleet"]
    fleet["status"] = (await passes.fleet_pass(runtime, fleet, catalog(docs))).status
    uid = passes.resolve_fleet(fleet, catalog(docs))[0].meta.uid
    deleting = True  # metadata.deletionTimestamp is set before the delete handler runs
    teardown = asyncio.create_task(passes.fleet_delete_pass(runtime, fleet, catalog(docs)))
    while not runtime.lock(uid).locked():
        await asyncio.sleep(0)
    # A resync timer fires now and waits for the fleet's lock behind the teardown (asyncio locks are FIFO).
    resync = asyncio.create_task(passes.fleet_pass(runtime, fleet, catalog(docs), wanted=lambda: not deleting))
    assert (await teardown).complete
    assert (await resync).events == []
    assert list(Path(docs["CloneStore"]["spec"]["root"]).rglob("demo-*.qcow2")) == []  # nothing built again
    host = runtime.host(catalog(docs).valid_hosts()[0])
    assert not [d for d in await host.list_domains() if d.owner is not None]


@pytest.mark.parametrize("policy,kept", [("Delete", 0), ("Retain", 3)])
async def test_deleting_a_fleet_honours_its_deletion_policy(
    runtime: Runtime, docs: dict, policy: str, kept: int
) -> None:
    fleet = docs["VmFleet"]
    fleet["spec"]["deletionPolicy"] = policy
    await passes.fleet_pass(runtime, fleet, catalog(docs))
    result = await passes.fleet_delete_pass(runtime, fleet, catalog(docs))
    assert result.complete
    root = Path(docs["CloneStore"]["spec"]["root"])
    assert len(list(root.rglob("demo-*.qcow2"))) == kept
    host = runtime.host(catalog(docs).valid_hosts()[0])
    assert not [d for d in await host.list_domains() if d.owner is not None]
    assert ("ClonesRetained" in reasons(result.events)) == (policy == "Retain")


async def test_a_template_keeps_its_parent_while_clones_refer_to_it(runtime: Runtime, docs: dict) -> None:
    template = docs["VmTemplate"]
    made = await passes.template_pass(runtime, template, catalog(docs, clones=2))
    parent = Path(docs["CloneStore"]["spec"]["root"]) / made.status["parent"]["path"]
    assert parent.exists() and made.status["parent"]["clones"] == 2
    released, event = await passes.template_delete_pass(runtime, template, catalog(docs, clones=2))
    assert not released and event.reason == "ParentInUse" and parent.exists()
    released, event = await passes.template_delete_pass(runtime, template, catalog(docs, clones=0))
    assert released and event.reason == "ParentDeleted" and not parent.exists()


def test_the_handlers_register_with_kopf_for_every_fleet_and_template_event() -> None:
    from vmfleet.operator import handlers
    from vmfleet.settings import Settings

    before = len(kopf.get_default_registry()._changing.get_all_handlers())
    registry = handlers.registry(Settings(resync_seconds=7))
    names = {h.id for h in registry._changing.get_all_handlers()}
    assert {"reconcile_vmfleet", "delete_vmfleet", "reconcile_vmtemplate", "delete_vmtemplate"} <= {
        n.split("/")[0] for n in names
    }
    assert {(h.id, h.interval, h.initial_delay) for h in registry._spawning.get_all_handlers()} == {
        (name, 7, 7) for name in ("reconcile_vmfleet", "reconcile_vmtemplate", "probe_clonestore", "probe_kvmhost")
    }
    assert len(kopf.get_default_registry()._changing.get_all_handlers()) == before  # nothing registered at import
    # Every index handlers.catalog reads, fleet_parents among them (which parent each fleet may still clone from).
    assert [h.id for h in registry._indexing.get_all_handlers()] == [
        *("clonestores", "kvmhosts", "vmtemplates"),
        *("fleet_clones", "fleet_hosts", "fleet_stores", "fleet_parents"),
    ]
    assert (REPO / "crds" / "vmfleets.vmfleet.io.yaml").exists()


async def test_a_parent_that_retained_qcow2_clones_still_use_is_kept(runtime: Runtime, docs: dict) -> None:
    fleet = docs["VmFleet"]
    fleet["spec"]["deletionPolicy"] = "Retain"
    await passes.fleet_pass(runtime, fleet, catalog(docs))
    assert (await passes.fleet_delete_pass(runtime, fleet, catalog(docs))).complete
    released, event = await passes.template_delete_pass(runtime, docs["VmTemplate"], catalog(docs, clones=0))
    assert not released and event.reason == "ParentInUse"
    assert "3 clone(s) still use vmfleet/parents/" in event.message
    root = Path(docs["CloneStore"]["spec"]["root"])
    assert len(list(root.glob("vmfleet/parents/*.img"))) == 1


def test_a_store_or_host_in_use_is_not_released() -> None:
    in_use = passes.Catalog(
        images_by_template={("ns", "basic"): ("local", "images/basic.img", "raw")}, vms_by_host={"kvm-a": 3}
    )
    assert passes.store_delete_pass("local", in_use)[1].reason == "StoreInUse"
    assert passes.store_delete_pass("other", in_use)[0]
    moved_away = passes.Catalog(clones_by_store={"old": 2})  # a fleet's template moved to another store
    released, event = passes.store_delete_pass("old", moved_away)
    assert not released and "2 clone(s) in CloneStore old" in event.message
    released, event = passes.host_delete_pass("kvm-a", in_use)
    assert not released and event.message.startswith("3 VM(s) are placed on KvmHost kvm-a")
    assert passes.host_delete_pass("kvm-b", in_use)[0]


async def test_clones_of_the_same_image_path_in_another_store_do_not_hold_this_parent(
    runtime: Runtime, docs: dict
) -> None:
    """Parent paths repeat across stores (one image path, one hash): counts are per store (found by the kube
    tests, whose stores all hold images/t.img: a template waited for clones in other stores)."""
    from vmfleet.operator import handlers

    template = docs["VmTemplate"]
    image = template["spec"]["image"]
    other = {
        "store": "another-store",
        "clonesByParent": [{"parent": parent_path(image["path"], image.get("format", "raw")), "clones": 3}],
    }
    elsewhere = catalog(docs)
    elsewhere.clones_by_parent = handlers.fleet_clones(status=other)  # what the index holds for that fleet
    made = await passes.template_pass(runtime, template, elsewhere)
    assert made.status["parent"]["clones"] == 0
    released, event = await passes.template_delete_pass(runtime, template, elsewhere)
    assert released and event.reason == "ParentDeleted"
