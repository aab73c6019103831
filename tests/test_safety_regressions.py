"""One regression test per data-loss finding of issue 12 in the engine (1-5, 7, 8 and the suspicions), each
driven through the real engine, a real qcow2 store and libvirt test-driver instances as separate hosts."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import libvirt
import pytest
import yaml

from helpers import a_resync_later, clone_path
from safety_world import World, WorldRuntime, host_doc, store_doc, write_into
from vmfleet.api import parse
from vmfleet.api.crd import root_schema
from vmfleet.api.schema import KINDS
from vmfleet.api.types import HOSTS_LOST_ANNOTATION, CloneStore, KvmHost, VmFleet, VmTemplate
from vmfleet.engine import FleetResult, reconcile_fleet, teardown_fleet
from vmfleet.engine.desired import VM_UUID_NAMESPACE

pytestmark = pytest.mark.safety

A, B, C = "qemu+ssh://a.example.com/system", "qemu+ssh://b.example.com/system", "qemu+ssh://c.example.com/system"


class Site:
    def __init__(self, base: Path, image: Path):
        self.root = base / "store"
        (self.root / "images").mkdir(parents=True)
        (self.root / "images" / "t.img").write_bytes(image.read_bytes())
        self.world = World(base)
        self.runtime = WorldRuntime(self.world)
        self.uris = {"a": A, "b": B}

    def store(self) -> CloneStore:
        s = parse(store_doc("qcow2", self.root))
        assert isinstance(s, CloneStore)
        return s

    def hosts(self) -> list[KvmHost]:
        return [h for h in (parse(host_doc(n, u)) for n, u in sorted(self.uris.items())) if isinstance(h, KvmHost)]

    def template(self, vcpus: int = 1) -> VmTemplate:
        t = parse(
            {
                "apiVersion": "vmfleet.io/v1alpha1",
                "kind": "VmTemplate",
                "metadata": {"name": "t"},
                "spec": {
                    "storeRef": {"name": "store"},
                    "image": {"path": "images/t.img"},
                    "vcpus": vcpus,
                    "memoryMiB": 64,
                },
            }
        )
        assert isinstance(t, VmTemplate)
        return t

    def fleet(
        self,
        replicas: int,
        uid: str = "uid-1",
        policy: str = "Delete",
        lost: str = "",
        running: bool = True,
        update: dict[str, Any] | None = None,
    ) -> VmFleet:
        meta: dict[str, Any] = {"name": "web", "namespace": "default", "uid": uid}
        if lost:
            meta["annotations"] = {HOSTS_LOST_ANNOTATION: lost}
        f = parse(
            {
                "apiVersion": "vmfleet.io/v1alpha1",
                "kind": "VmFleet",
                "metadata": meta,
                "spec": {
                    "templateRef": {"name": "t"},
                    "replicas": replicas,
                    "deletionPolicy": policy,
                    "running": running,
                    "updateStrategy": update or {},
                },
            }
        )
        assert isinstance(f, VmFleet)
        return f

    async def converge(self, fleet: VmFleet, template: VmTemplate | None = None) -> FleetResult:
        return await reconcile_fleet(self.runtime, fleet, template or self.template(), self.store(), self.hosts())

    def clones(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("web-*.qcow2"))

    def running(self, name: str) -> list[str]:
        """The URIs where a domain of that name is active."""
        return sorted(d.uri for d in self.world.domains() if d.name == name and d.active)


@pytest.fixture
async def site(tmp_path: Path, small_image: Path) -> AsyncIterator[Site]:
    s = Site(tmp_path, small_image)
    yield s
    await s.runtime.close()
    s.world.close()


def ops(result: FleetResult) -> list[tuple[str, int | None, str | None]]:
    return [(a.op.value, getattr(a, "ordinal", None), getattr(a, "host", None)) for a in result.plan.actions]


async def test_finding_1_scale_in_and_teardown_wait_for_an_unreachable_host(site: Site) -> None:
    assert (await site.converge(site.fleet(2))).status["readyReplicas"] == 2
    assert site.running("default.web-1") == [B]
    site.world.down.add(B)
    scaled = await site.converge(site.fleet(1))
    assert ("delete-clone", 1, None) not in ops(scaled), "deleted the disk of a VM running on an unreachable host"
    assert len(site.clones()) == 2
    degraded = next(c for c in scaled.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "HostUnreachable"
    gone = await teardown_fleet(site.runtime, site.fleet(1), [site.store()], site.hosts())
    assert not gone.complete, "teardown said complete while web-1 still runs on b"
    assert [c.rsplit("/", 1)[1] for c in site.clones()] == ["web-1.qcow2"] and site.running("default.web-1") == [B]
    site.world.down.discard(B)
    assert (await teardown_fleet(site.runtime, site.fleet(1), [site.store()], site.hosts())).complete
    assert site.clones() == [] and site.running("default.web-1") == []


async def test_finding_2_a_host_whose_uri_changes_or_that_goes_does_not_get_its_vms_started_twice(site: Site) -> None:
    await site.converge(site.fleet(2))
    site.uris["b"] = C  # KvmHost b edited to another libvirtd
    moved = await site.converge(site.fleet(2))
    assert [op for op in ops(moved) if op[1] == 1] == [] and site.running("default.web-1") == [B]
    assert "may still run at " + B in str(moved.status["conditions"])
    del site.uris["b"]  # KvmHost b deleted (or now invalid)
    dropped = await site.converge(site.fleet(2))
    assert [op for op in ops(dropped) if op[1] == 1] == [] and site.running("default.web-1") == [B]
    assert {c["name"]: c["state"] for c in dropped.status["clones"]}["web-1"] == "Unknown"


async def test_a_host_declared_lost_releases_its_vms_and_says_so(site: Site) -> None:
    await site.converge(site.fleet(2))
    site.world.power_loss(B)
    site.world.down.add(B)
    waiting = await site.converge(site.fleet(2))
    assert site.running("default.web-1") == []
    assert [op for op in ops(waiting) if op[1] == 1] == []
    forced = await site.converge(site.fleet(2, lost="b"))
    assert site.running("default.web-1") == [A]
    assert "HostDeclaredLost" in [e.reason for e in forced.events]
    site.world.down.discard(B)  # b comes back with the stale definition: it is undefined, never started
    back = await site.converge(site.fleet(2))
    assert site.running("default.web-1") == [A] and back.status["readyReplicas"] == 2
    assert [d.uri for d in site.world.domains() if d.name == "default.web-1"] == [A]


async def test_finding_3_retained_clones_are_never_touched_by_a_later_fleet_of_the_same_name(site: Site) -> None:
    await site.converge(site.fleet(3, policy="Retain"))
    assert (await teardown_fleet(site.runtime, site.fleet(3, policy="Retain"), [site.store()], site.hosts())).complete
    kept = site.clones()
    assert len(kept) == 3
    for path in kept:
        write_into(site.root / path, "qcow2", 0, 65536)  # the users' data
    new = await site.converge(site.fleet(1, uid="uid-2"))
    assert not [op for op in ops(new) if op[0] == "delete-clone"]
    assert set(kept) <= set(site.clones()) and len(site.clones()) == 4
    assert clone_path(new.status, new.status["clones"][0]).startswith("vmfleet/clones/default/web/uid-2/")
    await teardown_fleet(site.runtime, site.fleet(1, uid="uid-2"), [site.store()], site.hosts())
    assert site.clones() == kept


def test_finding_4_duplicate_objects_in_the_manifests_are_rejected(tmp_path: Path) -> None:
    fleet = {
        "apiVersion": "vmfleet.io/v1alpha1",
        "kind": "VmFleet",
        "metadata": {"name": "demo"},
        "spec": {"templateRef": {"name": "t"}, "replicas": 3},
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(fleet))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**fleet, "spec": {**fleet["spec"], "replicas": 1}}))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "vmfleet"), "apply", "-f", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "VmFleet default/demo: metadata.name: defined twice" in done.stderr
    assert "a.yaml#1" in done.stderr and "b.yaml#1" in done.stderr


async def test_finding_5_every_spec_change_redefines_in_place_and_a_running_vm_says_it_needs_a_restart(
    site: Site,
) -> None:
    on_delete = {"type": "OnDelete"}  # RollingUpdate would restart them itself (test_rollout)
    first = await site.converge(site.fleet(2, update=on_delete))
    uuids = {d.name: d.uuid for d in site.world.domains()}
    changed = await site.converge(site.fleet(2, update=on_delete), site.template(vcpus=2))
    assert [o for o in changed.outcomes if not o.ok] == []
    assert {d.name: d.uuid for d in site.world.domains()} == uuids
    restart = next(c for c in changed.status["conditions"] if c["type"] == "RestartRequired")
    assert restart["status"] == "True" and "web-0, web-1" in restart["message"]
    assert all(c.get("restartRequired") for c in changed.status["clones"])
    assert first.status["conditions"][0]["status"] == changed.status["conditions"][0]["status"] == "True"
    conn = site.world.conn(A)
    conn.lookupByName("default.web-0").destroy()  # the person restarts web-0
    site.world.changed(A, "default.web-0")
    again = await site.converge(site.fleet(2, update=on_delete), site.template(vcpus=2))
    assert {c["name"]: c.get("restartRequired", False) for c in again.status["clones"]} == {
        "web-0": False,
        "web-1": True,
    }
    assert conn.lookupByName("default.web-0").info()[3] == 2  # it came back with 2 vCPUs


async def test_finding_8_saved_bytes_never_go_negative(site: Site) -> None:
    await site.converge(site.fleet(1))
    (clone,) = site.clones()
    write_into(site.root / clone, "qcow2", 0, 64 << 20)  # the whole disk: the overlay outgrows it
    a_resync_later(site.runtime)
    result = await site.converge(site.fleet(1))
    assert result.status["allocatedBytes"] > result.status["logicalBytes"]
    assert result.status["savedBytes"] == 0 and result.status["savingsRatio"] == 0.0
    jsonschema.validate(result.status, root_schema(KINDS["VmFleet"])["properties"]["status"])


async def test_a_clone_made_in_another_format_stays_the_vms_disk(site: Site) -> None:
    """A change of driver or image format must not hide existing clones (they would leak, and their VMs
    would get new empty disks)."""
    await site.converge(site.fleet(1))
    (clone,) = site.clones()
    raw = site.root / clone.replace(".qcow2", ".img")
    (site.root / clone).rename(raw)  # as a reflink store would have made it
    result = await site.converge(site.fleet(1))
    assert result.status["clones"][0]["file"] == "web-0.img"
    assert not [op for op in ops(result) if op[0] == "create-clone"]
    xml = site.world.conn(A).lookupByName("default.web-0").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "web-0.img" in xml and "type='raw'" in xml


async def test_a_crash_between_announcing_and_cloning_is_not_a_lost_clone(site: Site) -> None:
    """The record is written before the clone is made: a VM announced but never cloned is made, not 'lost'."""
    fleet = site.fleet(1)
    result = await site.converge(fleet)
    (clone,) = site.clones()
    (site.root / clone).unlink()
    domain = site.world.conn(A).lookupByName("default.web-0")
    domain.destroy()
    domain.undefine()
    site.world.changed(A, "default.web-0")
    record = next(site.root.rglob("fleet.json"))
    record.write_text(record.read_text().replace('"placed"', '"creating"'))
    again = await site.converge(fleet)
    assert again.status["readyReplicas"] == 1 and result.status["readyReplicas"] == 1
    (site.root / site.clones()[0]).unlink()  # now lost for real: reported, not recreated empty
    lost = await site.converge(fleet)
    assert {c["name"]: c["state"] for c in lost.status["clones"]} == {"web-0": "Lost"}


async def test_the_record_survives_a_lost_status(site: Site) -> None:
    """Placement is known from the store, not the Kubernetes status: a fresh runtime with no status still
    waits for an unreachable host."""
    await site.converge(site.fleet(2))
    await site.runtime.close()
    site.runtime = WorldRuntime(site.world)
    site.world.down.add(B)
    result = await reconcile_fleet(
        site.runtime, site.fleet(1), site.template(), site.store(), site.hosts(), previous_status=None
    )
    assert ("delete-clone", 1, None) not in ops(result) and len(site.clones()) == 2


async def test_a_clone_nobody_recorded_is_not_started_while_a_host_is_silent(site: Site) -> None:
    await site.converge(site.fleet(2))
    next(site.root.rglob("fleet.json")).unlink()  # no record (made before records existed, or removed)
    site.world.conn(B).lookupByName("default.web-1")  # still there, running
    site.world.down.add(B)
    result = await site.converge(site.fleet(2))
    assert [op for op in ops(result) if op[1] == 1] == [] and site.running("default.web-1") == [B]


async def test_finding_7_a_fleet_whose_template_is_gone_is_torn_down_by_its_uid(site: Site) -> None:
    from vmfleet.operator import passes

    fleet = site.fleet(2)
    await site.converge(fleet)
    body = {
        "apiVersion": "vmfleet.io/v1alpha1",
        "kind": "VmFleet",
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-1"},
        "spec": {"templateRef": {"name": "t"}, "replicas": 2},
    }
    catalog = passes.Catalog(
        stores={"store": store_doc("qcow2", site.root)},
        hosts=[host_doc(n, u) for n, u in site.uris.items()],
        templates={},
    )
    done = await passes.fleet_delete_pass(site.runtime, body, catalog)
    assert done.complete and site.clones() == [] and site.running("default.web-0") == []
    nothing = await passes.fleet_delete_pass(
        site.runtime, {**body, "metadata": {**body["metadata"], "uid": "x"}}, passes.Catalog()
    )
    assert nothing.complete and nothing.events == []


def test_a_golden_image_replaced_in_place_is_reported_not_ignored(tmp_path: Path, small_image: Path) -> None:
    from helpers import quickstart

    manifests = quickstart(tmp_path, small_image)
    vmfleet = str(Path(sys.executable).parent / "vmfleet")
    first = subprocess.run([vmfleet, "apply", "-f", str(manifests), "-o", "json"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    image = next((tmp_path / "store" / "images").iterdir())
    with open(image, "r+b") as f:  # a new release written over the old file
        f.write(b"new golden image")
    second = subprocess.run([vmfleet, "apply", "-f", str(manifests), "-o", "json"], capture_output=True, text=True)
    template = next(o for o in json.loads(second.stdout) if o["kind"] == "VmTemplate")
    changed = next(c for c in template["status"]["conditions"] if c["type"] == "ImageChanged")
    assert changed["status"] == "True" and "changed since" in changed["message"]
    assert "ImageChanged" in second.stderr
    assert not any(
        c["type"] == "ImageChanged"
        for c in next(o for o in json.loads(first.stdout) if o["kind"] == "VmTemplate")["status"]["conditions"]
    )


async def test_a_fleet_that_switched_templates_keeps_its_old_parent_alive(site: Site) -> None:
    """Suspicion: the parent's clone count followed each fleet's current templateRef."""
    from vmfleet.api.status import clones_by_parent
    from vmfleet.operator import passes

    (site.root / "images" / "new.img").write_bytes((site.root / "images" / "t.img").read_bytes())
    old = site.template()
    keep = {"diskPolicy": "Keep"}  # the disks stay on the old image (Reimage would replace them: test_rollout)
    await site.converge(site.fleet(1, update=keep), old)
    new_doc = {
        "apiVersion": "vmfleet.io/v1alpha1",
        "kind": "VmTemplate",
        "metadata": {"name": "t"},
        "spec": {"storeRef": {"name": "store"}, "image": {"path": "images/new.img"}, "memoryMiB": 64},
    }
    new = parse(new_doc)
    assert isinstance(new, VmTemplate)
    switched = await site.converge(site.fleet(2, update=keep), new)  # web-0 keeps its clone of the old image
    counts = clones_by_parent(switched.status)
    assert sorted(counts.values()) == [1, 1] and len(counts) == 2
    old_doc = {
        **new_doc,
        "metadata": {"name": "old", "namespace": "default"},
        "spec": {**new_doc["spec"], "image": {"path": "images/t.img"}},
    }
    catalog = passes.Catalog(
        stores={"store": store_doc("qcow2", site.root)},
        templates={("default", "old"): old_doc},
        clones_by_parent={("store", k): v for k, v in counts.items()},
    )
    released, (event,) = await passes.template_delete_pass(site.runtime, old_doc, catalog)
    assert not released and event.reason == "ParentInUse"
    assert (site.root / switched.status["clonesByParent"][0]["parent"]).exists()


async def test_a_stale_domain_does_not_stand_for_a_vm_placed_on_a_host_out_of_sight(site: Site) -> None:
    """Found by the property test: web-1 moved to a (b declared lost), b came back with its old definition,
    then a was deleted as a KvmHost: teardown saw only b's stale, stopped definition and deleted the clone
    under the VM still running on a."""
    await site.converge(site.fleet(2))
    site.world.power_loss(B)
    site.world.down.add(B)
    await site.converge(site.fleet(2, lost="b"))  # web-1 now runs on a
    site.world.down.discard(B)
    site.uris = {"b": B}  # KvmHost a deleted while it runs web-0 and web-1
    gone = await teardown_fleet(site.runtime, site.fleet(2), [site.store()], site.hosts())
    assert not gone.complete and len(site.clones()) == 2
    assert site.running("default.web-1") == [A] and site.running("default.web-0") == [A]


async def test_a_definition_left_by_an_earlier_fleet_of_the_name_is_undefined_not_a_conflict(site: Site) -> None:
    """Found by the property test: a fleet torn down while a host was declared lost left a stopped definition
    there; when the host came back, a new fleet of the same name was Stalled on NameConflict forever."""
    await site.converge(site.fleet(1))
    site.world.power_loss(A)
    site.world.down.add(A)
    assert (await teardown_fleet(site.runtime, site.fleet(1, lost="a"), [site.store()], site.hosts())).complete
    site.world.down.discard(A)
    new = await site.converge(site.fleet(1, uid="uid-2"))
    assert new.status["readyReplicas"] == 1, new.status["conditions"]
    assert [d.uuid for d in site.world.domains() if d.name == "default.web-0"] == [
        str(uuid.uuid5(uuid.UUID(VM_UUID_NAMESPACE), "uid-2/0"))
    ]


# ---------------------------------------------------------------- found by the hostile review


async def test_a_host_still_declared_lost_gets_no_new_vms_and_releases_none_placed_later(site: Site) -> None:
    await site.converge(site.fleet(2))
    site.world.power_loss(B)
    site.world.down.add(B)
    await site.converge(site.fleet(2, lost="b"))  # web-1 moves to a
    site.world.down.discard(B)  # b repaired; the annotation is still there
    await site.converge(site.fleet(4, lost="b"))
    assert [d.uri for d in site.world.domains() if d.active and d.uri == B] == [], "placed on a host declared lost"
    site.world.down.add(B)
    await site.converge(site.fleet(4, lost="b"))
    for n in range(4):
        assert len(site.running(f"default.web-{n}")) == 1, n


async def test_a_vm_is_not_started_while_another_domain_runs_on_its_clone(site: Site) -> None:
    await site.converge(site.fleet(2))
    site.world.down.add(B)  # cut off, web-1 still running there; a person declares b lost anyway
    await site.converge(site.fleet(2, lost="b"))
    site.world.down.discard(B)
    assert site.running("default.web-1") == [A, B]  # the person's mistake: reported as DuplicateDomain
    site.world.conn(A).lookupByName("default.web-1").destroy()  # they keep b's copy
    site.world.changed(A, "default.web-1")
    result = await site.converge(site.fleet(2))
    assert ("start", 1, "a") not in ops(result) and site.running("default.web-1") == [B]
    assert "DuplicateDomain" in [p.reason for p in result.plan.problems]


async def test_a_renamed_kvmhost_keeps_its_vms_and_forcing_the_old_name_deletes_nothing(site: Site) -> None:
    await site.converge(site.fleet(2))
    site.uris = {"a": A, "b2": B}  # KvmHost b deleted, the same machine added back as b2
    renamed = await site.converge(site.fleet(2))
    assert renamed.status["readyReplicas"] == 2, renamed.status["conditions"]
    assert {c["name"]: c["host"] for c in renamed.status["clones"]} == {"web-0": "a", "web-1": "b2"}
    scaled = await site.converge(site.fleet(1, lost="b"))
    assert ("stop", 1, "b2") in ops(scaled) and site.running("default.web-1") == []


async def test_status_stays_valid_with_clones_of_many_parents(site: Site) -> None:
    for i in range(70):  # a rollout of a new image path per VM
        (site.root / "images" / f"r{i}.img").write_bytes(b"\0" * 65536)
    for i in range(70):
        t = parse(
            {
                "apiVersion": "vmfleet.io/v1alpha1",
                "kind": "VmTemplate",
                "metadata": {"name": "t"},
                "spec": {"storeRef": {"name": "store"}, "image": {"path": f"images/r{i}.img"}, "memoryMiB": 64},
            }
        )
        assert isinstance(t, VmTemplate)
        result = await site.converge(site.fleet(i + 1, running=False, update={"diskPolicy": "Keep"}), t)
    assert len(result.status["clonesByParent"]) == 70
    jsonschema.validate(result.status, root_schema(KINDS["VmFleet"])["properties"]["status"])


async def test_a_crash_between_announcing_and_preparing_the_parent_costs_no_failed_pass(site: Site) -> None:
    await site.converge(site.fleet(1))
    (clone,) = site.clones()
    (site.root / clone).unlink()
    for d in site.world.domains():
        dom = site.world.conn(d.uri).lookupByName(d.name)
        dom.destroy()
        dom.undefine()
        site.world.changed(d.uri, d.name)
    for parent in (site.root / "vmfleet" / "parents").iterdir():
        parent.unlink()
    record = next(site.root.rglob("fleet.json"))
    record.write_text(record.read_text().replace('"placed"', '"creating"'))
    result = await site.converge(site.fleet(1))
    assert [o for o in result.outcomes if not o.ok] == [] and result.status["readyReplicas"] == 1


async def test_a_fleet_moved_to_another_store_is_stalled_not_lost_and_its_teardown_finds_both(
    site: Site, tmp_path: Path
) -> None:
    first = await site.converge(site.fleet(2))
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "images" / "t.img").write_bytes((site.root / "images" / "t.img").read_bytes())
    store2 = parse({**store_doc("qcow2", other), "metadata": {"name": "store2"}})
    t2 = parse(
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmTemplate",
            "metadata": {"name": "t2"},
            "spec": {"storeRef": {"name": "store2"}, "image": {"path": "images/t.img"}, "memoryMiB": 64},
        }
    )
    assert isinstance(store2, CloneStore) and isinstance(t2, VmTemplate)
    moved = await reconcile_fleet(site.runtime, site.fleet(2), t2, store2, site.hosts(), first.status)
    stalled = next(c for c in moved.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "StoreChanged", moved.status["conditions"]
    assert not ops(moved) and len(site.clones()) == 2
    from vmfleet.operator import passes

    body = {
        "apiVersion": "vmfleet.io/v1alpha1",
        "kind": "VmFleet",
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-1"},
        "spec": {"templateRef": {"name": "t2"}, "replicas": 2},
    }
    t2_doc = {
        "apiVersion": "vmfleet.io/v1alpha1",
        "kind": "VmTemplate",
        "metadata": {"name": "t2", "namespace": "default"},
        "spec": {"storeRef": {"name": "store2"}, "image": {"path": "images/t.img"}, "memoryMiB": 64},
    }
    catalog = passes.Catalog(
        stores={
            "store": store_doc("qcow2", site.root),
            "store2": {**store_doc("qcow2", other), "metadata": {"name": "store2"}},
        },
        hosts=[host_doc(n, u) for n, u in site.uris.items()],
        templates={("default", "t2"): t2_doc},
    )
    done = await passes.fleet_delete_pass(site.runtime, body, catalog)
    assert done.complete and site.clones() == [] and not list(site.root.rglob("fleet.json"))


async def test_a_live_fleet_of_the_same_name_elsewhere_keeps_its_stopped_domains(site: Site) -> None:
    """Two fleets named web at once (the operator and `vmfleet apply`, or two clusters) must not undefine each
    other's domains: only a definition whose clone is gone is an earlier fleet's leftover."""
    other = parse(
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmFleet",
            "metadata": {"name": "web", "namespace": "default", "uid": "uid-other"},
            "spec": {"templateRef": {"name": "t"}, "replicas": 1, "running": False},
        }
    )
    assert isinstance(other, VmFleet)
    await site.converge(other)
    mine = await site.converge(site.fleet(1))
    assert not [op for op in ops(mine) if op[0] == "undefine"]
    assert "NameConflict" in [p.reason for p in mine.plan.problems]


async def test_a_template_image_backed_by_a_file_outside_the_store_is_refused(site: Site, tmp_path: Path) -> None:
    """I6: a qcow2 overlay as golden image made every clone read its backing file, wherever it was."""
    outside = tmp_path / "outside.img"
    outside.write_bytes(b"host secret\n" + b"\0" * 65524)
    image = site.root / "images" / "t.img"
    image.unlink()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(outside), "-F", "raw", str(image)], check=True)
    result = await site.converge(site.fleet(1))
    assert site.clones() == [] and not list((site.root / "vmfleet").rglob("parents/*"))
    failed = [o.error for o in result.outcomes if not o.ok]
    assert failed and "backing file" in failed[0] and "self-contained" in failed[0]
