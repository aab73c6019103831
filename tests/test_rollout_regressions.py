"""Issue 16's hostile review (F1-F8): each way it found to reimage a disk twice or when not asked, to take more
than maxUnavailable down, or to report a rollout falsely, as a regression test on the test driver."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from test_operator_passes import docs, live, one_vm_then_patched  # noqa: F401
from test_rollout import Dnsmasq, Site, _written, conn, site  # noqa: F401
from vmfleet.engine import Runtime, reconcile_fleet
from vmfleet.errors import HostError, StoreError
from vmfleet.hypervisor import LibvirtHost
from vmfleet.operator import passes
from vmfleet.storage.qcow2 import Qcow2Store


@contextlib.contextmanager
def host_stops_answering(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every stop fails as on a host that stopped answering, until the block ends."""

    async def failing(host: Any, name: str, grace: float, paused: bool = True) -> bool:
        raise HostError(f"{name}: host stopped answering")

    with monkeypatch.context() as m:
        m.setattr(LibvirtHost, "shutdown", failing)
        yield


async def image_change_whose_stop_fails(
    runtime: Runtime, site: Site, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any]:
    """A one-VM fleet, then its template moved to another image while its host stops answering: the reimage is
    announced and its stop fails. The two passes' results."""
    first = await reconcile_fleet(runtime, site.fleet(replicas=1), site.template(), site.store, [site.host])
    with host_stops_answering(monkeypatch):
        second = await reconcile_fleet(
            runtime, site.fleet(replicas=1), site.template("b.img"), site.store, [site.host], first.status
        )
    return first, second


def _count_creates(monkeypatch: pytest.MonkeyPatch, fail: set[str] | None = None) -> Counter[str]:
    made: Counter[str] = Counter()
    create = Qcow2Store.create_clone

    async def counted(driver: Any, parent: str, fmt: str, target: str) -> None:
        name = Path(target).name
        if fail and any(f in name for f in fail):
            fail.clear()
            raise StoreError(f"injected failure making {name}")
        made[name] += 1
        await create(driver, parent, fmt, target)

    monkeypatch.setattr(Qcow2Store, "create_clone", counted)
    return made


def _scribble(site: Site, status: dict[str, Any]) -> dict[str, Path]:
    d = site.root / status["cloneDirectory"]
    out = {}
    for c in status["clones"]:
        if "file" not in c:
            continue
        subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(d / c["file"])], check=True, capture_output=True)
        out[c["name"]] = d / c["file"]
    return out


async def test_F1_reimage_annotation_during_a_rollout_reimages_the_same_vm_once_per_wave(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await reconcile_fleet(runtime, site.fleet(), site.template(), site.store, [site.host])
    made = _count_creates(monkeypatch)
    fleet = site.fleet(annotations={"vmfleet.io/reimage": "0"})
    second = await reconcile_fleet(runtime, fleet, site.template(memory=96), site.store, [site.host], first.status)
    print("creates:", dict(made))
    print("reimage events:", [e.message for e in second.events if e.reason == "Reimaged"])
    assert made["web-0.qcow2"] == 1, made


async def test_F2_a_partly_failed_reimage_annotation_reimages_the_done_vm_again_next_pass(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await reconcile_fleet(runtime, site.fleet(replicas=2), site.template(), site.store, [site.host])
    fleet = site.fleet(replicas=2, annotations={"vmfleet.io/reimage": "0,1"})
    made = _count_creates(monkeypatch, fail={"web-1"})
    second = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host], first.status)
    print("pass 1 creates:", dict(made), "left:", second.reimage_left)
    clones = _scribble(site, second.status)  # the user works on web-0's fresh disk
    third = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host], second.status)
    print("pass 2 creates:", dict(made), "left:", third.reimage_left)
    assert _written(clones["web-0"]), "web-0 was reimaged a second time: the user's writes since are gone"


@pytest.mark.parametrize("edit", ["rollback", "keep"])
async def test_F3_a_reimage_whose_stop_failed_goes_ahead_after_the_template_is_rolled_back(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    first = await reconcile_fleet(runtime, site.fleet(replicas=1), site.template(), site.store, [site.host])
    clones = _scribble(site, first.status)
    with host_stops_answering(monkeypatch):
        second = await reconcile_fleet(
            runtime, site.fleet(replicas=1), site.template("b.img"), site.store, [site.host], first.status
        )
        print("pass 1:", [(o.action.op.value, o.ok) for o in second.outcomes])
        record = json.loads((clones["web-0"].parent / "fleet.json").read_text())["vms"]["0"]
        print("record after the failed stop:", record)
    if edit == "rollback":  # the person rolls the image back: web-0's disk is on it already
        fleet, template = site.fleet(replicas=1), site.template()
    else:  # or keeps disks from now on
        fleet, template = site.fleet(replicas=1, updateStrategy={"diskPolicy": "Keep"}), site.template("b.img")
    third = await reconcile_fleet(runtime, fleet, template, site.store, [site.host], second.status)
    print(
        "pass 2:",
        [(o.action.op.value, o.action.reason if hasattr(o.action, "reason") else "", o.ok) for o in third.outcomes],
    )
    assert _written(clones["web-0"]), "web-0 was reimaged although the spec no longer asks for it"


async def test_F2b_a_reimage_annotation_naming_a_saved_vm_reimages_the_others_on_every_pass(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await reconcile_fleet(runtime, site.fleet(replicas=2), site.template(), site.store, [site.host])
    conn.lookupByName("prod.web-1").managedSave(0)  # libvirt-guests at a host's shutdown
    fleet = site.fleet(replicas=2, runStrategy="Manual", annotations={"vmfleet.io/reimage": "0,1"})
    made = _count_creates(monkeypatch)
    status = first.status
    for i in range(3):
        r = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host], status)
        status = r.status
        print(f"pass {i}: creates {dict(made)} left: {r.reimage_left}")
    assert made["web-0.qcow2"] <= 1, made


async def test_F3b_a_reimage_whose_stop_failed_goes_ahead_under_a_saved_domain(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    _first, second = await image_change_whose_stop_fails(runtime, site, monkeypatch)
    conn.lookupByName("prod.web-0").managedSave(0)  # libvirt-guests at the host's shutdown
    runtime.host(site.host).view.changed("prod.web-0")  # its event, delivered before the pass
    third = await reconcile_fleet(
        runtime, site.fleet(replicas=1), site.template("b.img"), site.store, [site.host], second.status
    )
    ops = [(o.action.op.value, o.ok) for o in third.outcomes]
    print("pass 2 with web-0 saved:", ops)
    # Its saved memory resumes on its own disk first; only then is it stopped and reimaged.
    assert ops.index(("start", True)) < ops.index(("stop", True)) < ops.index(("reimage", True)), ops


async def test_F5_current_revision_after_a_second_edit_mid_rollout_names_a_revision_almost_no_vm_runs(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jsonschema

    import vmfleet.engine.fleet as engine_fleet
    from vmfleet.api.crd import root_schema
    from vmfleet.api.schema import KINDS
    from vmfleet.engine.observe import Addresses

    schema = root_schema(KINDS["VmFleet"])["properties"]["status"]

    async def addresses(desired: Any, domains: Any, endpoints: Any) -> Addresses:
        up = {o for o, vm in domains.items() if vm.active}
        booted = [o for o in up if conn.lookupByName(f"prod.web-{o}").info()[1] == 64 * 1024]
        return Addresses({o: ("10.0.0.9",) for o in booted}, {})

    monkeypatch.setattr(engine_fleet, "observe_addresses", addresses)
    net = {"network": "default"}
    fleet = site.fleet(readiness="Address", updateStrategy={"rollingUpdate": {"maxUnavailable": 1}})
    a = await reconcile_fleet(runtime, fleet, site.template(**net), site.store, [site.host])
    b = await reconcile_fleet(runtime, fleet, site.template(memory=96, **net), site.store, [site.host], a.status)
    c = await reconcile_fleet(runtime, fleet, site.template(memory=128, **net), site.store, [site.host], b.status)
    for r in (a, b, c):
        jsonschema.validate(r.status, schema)
    rev = lambda s: [x.get("revision") for x in s["clones"]]
    print("A", a.status["updateRevision"], "B", b.status["updateRevision"], "C", c.status["updateRevision"])
    print("after C: currentRevision", c.status["currentRevision"], "per VM", rev(c.status))
    runs = Counter(rev(c.status))
    assert c.status["currentRevision"] == runs.most_common(1)[0][0], runs


def test_F2c_standalone_apply_of_a_manifest_carrying_the_annotation_reimages_on_every_apply(
    tmp_path: Path, small_image: Path
) -> None:
    import sys

    import yaml

    from helpers import quickstart

    vmfleet = str(Path(sys.executable).parent / "vmfleet")
    manifests = quickstart(tmp_path, small_image)
    files = sorted(Path(manifests).glob("*.y*ml")) if Path(manifests).is_dir() else [Path(manifests)]
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text()))
        for d in docs:
            if d and d.get("kind") == "VmFleet":
                d["metadata"].setdefault("annotations", {})["vmfleet.io/reimage"] = "0"
        f.write_text(yaml.safe_dump_all(docs))
    for i in range(3):
        done = subprocess.run([vmfleet, "apply", "-f", str(manifests), "-o", "json"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        said = [line for line in done.stderr.splitlines() if "eimage" in line]
        print(f"apply {i}:", said)
        assert i < 2 or not said, "the same one-shot request reimaged demo-0 again"


def test_F6_read_only_commands_with_a_pending_reimage_change_nothing(tmp_path: Path, small_image: Path) -> None:
    import sys

    from helpers import quickstart

    vmfleet = str(Path(sys.executable).parent / "vmfleet")
    manifests = quickstart(tmp_path, small_image)
    done = subprocess.run([vmfleet, "apply", "-f", str(manifests), "-o", "json"], capture_output=True, text=True)
    assert done.returncode == 0
    store = tmp_path / "store"
    snap = lambda: sorted((str(p), p.stat().st_ino, p.stat().st_mtime_ns) for p in store.rglob("*") if p.is_file())
    before = snap()
    fleet = next(o for o in json.loads(done.stdout) if o["kind"] == "VmFleet")
    fleet["metadata"]["name"]
    for cmd in (["status", "-f", str(manifests)], ["apply", "--dry-run", "-f", str(manifests)]):
        r = subprocess.run([vmfleet, *cmd], capture_output=True, text=True)
        print(cmd[0], r.returncode, r.stderr[-300:])
    assert snap() == before


@pytest.mark.parametrize("where", ["define", "start"])
async def test_F7_rerun_on_failure_vm_that_vmfleet_stopped_for_an_update_stays_off_for_good(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    fleet = site.fleet(replicas=2, runStrategy="RerunOnFailure")
    first = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host])
    real = getattr(LibvirtHost, where)
    failed: list[str] = []

    async def failing(host: Any, *a: Any, **kw: Any) -> Any:
        if not failed:
            failed.append(where)
            raise HostError(f"injected: {where} failed")
        return await real(host, *a, **kw)

    monkeypatch.setattr(LibvirtHost, where, failing)
    second = await reconcile_fleet(runtime, fleet, site.template(memory=96), site.store, [site.host], first.status)
    print("pass 1:", [(o.action.op.value, o.action.ordinal, o.ok) for o in second.outcomes])
    monkeypatch.setattr(LibvirtHost, where, real)
    status = second.status
    for i in range(2):
        r = await reconcile_fleet(runtime, fleet, site.template(memory=96), site.store, [site.host], status)
        status = r.status
        print(f"pass {i + 2}:", [(o.action.op.value, o.action.ordinal, o.ok) for o in r.outcomes])
    state = {o: conn.lookupByName(f"prod.web-{o}").isActive() for o in range(2)}
    print("active:", state, "readyReplicas:", status["readyReplicas"])
    assert all(state.values()), "vmfleet took it down for the update and never brought it back"


async def test_F8_a_cut_short_reimage_of_a_vm_that_kept_writing_is_reported_done_on_the_new_image(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = site.fleet(replicas=1)
    first = await reconcile_fleet(runtime, fleet, site.template(), site.store, [site.host])
    with host_stops_answering(monkeypatch):
        second = await reconcile_fleet(runtime, fleet, site.template("b.img"), site.store, [site.host], first.status)
    _scribble(site, second.status)  # the guest, still running on its old disk, writes to it
    third = await reconcile_fleet(runtime, fleet, site.template("b.img"), site.store, [site.host], second.status)
    print("pass 2:", [(o.action.op.value, o.ok) for o in third.outcomes])
    print("status: updatedReplicas", third.status["updatedReplicas"], "clonesByParent", third.status["clonesByParent"])
    print("backing file really:", site.backing(third.status))
    conds = {c["type"]: (c["status"], c["reason"]) for c in third.status["conditions"]}
    print("Updated:", conds["Updated"], "Ready:", conds["Ready"])
    assert site.backing(third.status)["web-0"] == third.status["parent"], "reported on the new image, still on the old"


async def test_F8b_old_parent_release_is_attempted_while_a_clone_still_backs_on_it(
    runtime: Any, docs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, template = docs["VmFleet"], docs["VmTemplate"]
    root, old, _new = await one_vm_then_patched(runtime, docs)

    with host_stops_answering(monkeypatch):
        fleet["status"] = (await passes.fleet_pass(runtime, fleet, live(docs, [fleet]))).status
    d = root / fleet["status"]["cloneDirectory"]
    for c in fleet["status"]["clones"]:  # the guest still runs on it and writes
        subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(d / c["file"])], check=True, capture_output=True)
    fleet["status"] = (await passes.fleet_pass(runtime, fleet, live(docs, [fleet]))).status
    print("fleet clonesByParent:", fleet["status"]["clonesByParent"], "old parent:", old)
    assert [p["parent"] for p in fleet["status"]["clonesByParent"]] == [template["status"]["parent"]["path"]]
    r = await passes.template_pass(runtime, template, live(docs, [fleet]))
    print("template events:", [(e.reason, e.message[:160]) for e in r.events])
    print("retiredParents:", r.status["retiredParents"])
    # The reimage cut short (its stop failed) was not taken for done: the clone kept counting for the old parent,
    # and the next pass, whose stop worked, reimaged it. Only then does the old parent go.
    backing = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(next(d.glob("*-0.qcow2")))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(json.loads(backing.stdout)["backing-filename"]).name == Path(template["status"]["parent"]["path"]).name
    assert not any(e.reason == "RetiredParentFailed" for e in r.events), "vmfleet's own count let it try"


# ------------------------------------------------------------------ the second review (G1, G4)


async def test_G1_the_same_vms_asked_again_with_a_new_request_are_reimaged_again(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request is its whole value: `vmfleet reimage` writes a time after the ordinals, so asking again for web-0
    is a new request even before a pass saw the first one's annotation go; the same value is one request."""
    first = await reconcile_fleet(runtime, site.fleet(replicas=1), site.template(), site.store, [site.host])
    asked = site.fleet(replicas=1, annotations={"vmfleet.io/reimage": "0;20261201T230000.000001Z"})
    second = await reconcile_fleet(runtime, asked, site.template(), site.store, [site.host], first.status)
    assert second.reimage_left == frozenset()
    clones = _scribble(site, second.status)  # the guest writes, breaks; the person asks again for web-0
    again = await reconcile_fleet(runtime, asked, site.template(), site.store, [site.host], second.status)
    assert _written(clones["web-0"]) and not again.outcomes  # the same request: done already
    anew = site.fleet(replicas=1, annotations={"vmfleet.io/reimage": "0;20261201T230100.000001Z"})
    third = await reconcile_fleet(runtime, anew, site.template(), site.store, [site.host], again.status)
    assert not _written(clones["web-0"]) and third.reimage_left == frozenset()


async def test_G4_a_clone_lost_while_a_reimage_no_longer_asked_for_was_announced_is_reported_not_made_empty(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await image_change_whose_stop_fails(runtime, site, monkeypatch)
    clones = _scribble(site, second.status)
    record_path = clones["web-0"].parent / "fleet.json"
    record = json.loads(record_path.read_text())
    # the operator was killed while web-0 shut down gracefully for its reimage: the record says reimaging
    record["vms"]["0"].update(state="reimaging", parent=second.status["parent"], was=first.status["parent"])
    record_path.write_text(json.dumps(record))
    clones["web-0"].unlink()  # lost some other way (a person, a store restore, ...)
    made = _count_creates(monkeypatch)  # and the template is rolled back: nothing asks for a reimage any more
    third = await reconcile_fleet(
        runtime, site.fleet(replicas=1), site.template(), site.store, [site.host], second.status
    )
    assert not made, "a lost clone was made again empty"
    assert "CloneLost" in [e.reason for e in third.events]


def test_G1b_vmfleet_reimage_over_manifests_twice_reimages_twice(tmp_path: Path, small_image: Path) -> None:
    from helpers import quickstart

    vmfleet = str(Path(sys.executable).parent / "vmfleet")
    manifests = quickstart(tmp_path, small_image)
    done = subprocess.run([vmfleet, "apply", "-f", str(manifests), "-o", "json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    said = []
    for _ in range(2):
        again = subprocess.run([vmfleet, "reimage", "-f", str(manifests), "demo", "0"], capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        said.append([line for line in again.stderr.splitlines() if "reimaged 1 VM(s): demo-0" in line])
    assert all(said), said


def test_G6_a_reimage_asked_again_while_a_pass_ran_is_not_removed_with_the_request_it_carried_out() -> None:
    """The operator removes the annotation once the VMs it names were reimaged, unless a person asked again
    meanwhile. The body a handler got is from before its pass (which can take minutes in a rolling update): the
    removal must be judged on the object as it is when written, under its resourceVersion, not on that copy."""
    import kopf

    from vmfleet.operator import handlers

    def fleet(value: str, version: str) -> dict[str, Any]:
        annotations = {"vmfleet.io/reimage": value, "team": "web"}
        return {"metadata": {"name": "web", "namespace": "ns", "resourceVersion": version, "annotations": annotations}}

    def written(patch: kopf.Patch, fresh: dict[str, Any]) -> list[Any]:
        """What kopf writes to the object's metadata, given the object as it is then."""
        return [op for op in patch.as_json_patch(fresh) if op["path"].startswith("/metadata")]

    done = passes.PassResult({"conditions": []}, [], reimaged="0;20261202T010000.000000Z")
    old = fleet("0;20261202T010000.000000Z", "7")
    patch = kopf.Patch(body=kopf.Body(old))
    handlers.report(kopf.Body(old), patch, kopf.Memo(), done)
    # the same value when written: it goes
    assert written(patch, fleet("0;20261202T010000.000000Z", "8")) == [
        {"op": "remove", "path": "/metadata/annotations/vmfleet.io~1reimage"}
    ]
    # `vmfleet reimage web 3` while the pass ran: the new request stays
    assert written(patch, fleet("3;20261202T010005.000000Z", "9")) == []


# ---------------------------------------------------------------- the third review: readiness Address and leases

NET = {"network": "default"}


def no_arp(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real host's ARP table has nothing for a guest that never booted (the test driver makes addresses up)."""

    async def arp(host: LibvirtHost, name: str) -> list[str]:
        return []

    monkeypatch.setattr(LibvirtHost, "arp_addresses", arp)


def memory(conn: Any) -> dict[int, int]:
    return {o: conn.lookupByName(f"prod.web-{o}").info()[1] // 1024 for o in range(6)}


async def test_H1_leases_unreadable_as_a_wave_is_planned_do_not_let_a_revision_that_never_boots_through(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leases were read (and recorded) from the observation a wave was planned from; when that read failed,
    each VM recorded no lease and the one dnsmasq kept from before the restart counted: all six restarted on a
    revision that never boots and the update said RolloutComplete."""
    Dnsmasq(monkeypatch)
    no_arp(monkeypatch)
    fleet = site.fleet(readiness="Address", updateStrategy={"rollingUpdate": {"maxUnavailable": 2}})
    first = await reconcile_fleet(runtime, fleet, site.template(**NET), site.store, [site.host])
    real, calls = libvirt.virNetwork.DHCPLeases, [0]

    def first_fails(net: Any, mac: Any = None, flags: int = 0) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise libvirt.libvirtError("Timed out during operation: cannot acquire state change lock")
        return real(net, mac, flags)

    monkeypatch.setattr(libvirt.virNetwork, "DHCPLeases", first_fails)
    second = await reconcile_fleet(
        runtime, fleet, site.template(memory=96, **NET), site.store, [site.host], first.status
    )
    assert (second.status["updatedReplicas"], second.status["readyReplicas"]) == (2, 4)
    assert memory(conn) == {0: 64, 1: 64, 2: 64, 3: 64, 4: 96, 5: 96}


async def test_H2_a_lease_renewed_while_the_guest_shuts_down_is_not_taken_for_one_after_the_restart(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest renews its lease (at half its time) during the grace period of its stop: that lease, granted
    before the restart, made it ready after it, and the update went through every VM."""
    dnsmasq = Dnsmasq(monkeypatch)
    no_arp(monkeypatch)
    fleet = site.fleet(readiness="Address", updateStrategy={"rollingUpdate": {"maxUnavailable": 2}})
    first = await reconcile_fleet(runtime, fleet, site.template(**NET), site.store, [site.host])
    shutdown = LibvirtHost.shutdown

    async def renews_first(host: LibvirtHost, name: str, grace: float, paused: bool = True) -> bool:
        mac = re.search(r"<mac address='([^']+)'/>", conn.lookupByName(name).XMLDesc()).group(1)  # type: ignore[union-attr]
        dnsmasq.clock += 1
        dnsmasq.leases[mac]["expirytime"] = dnsmasq.clock + 3600
        return await shutdown(host, name, grace, paused)

    monkeypatch.setattr(LibvirtHost, "shutdown", renews_first)
    second = await reconcile_fleet(
        runtime, fleet, site.template(memory=96, **NET), site.store, [site.host], first.status
    )
    assert (second.status["updatedReplicas"], second.status["readyReplicas"]) == (2, 4)


async def test_H3_a_vm_scaled_in_and_out_again_does_not_count_the_lease_its_mac_kept(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VM with no domain when its pass looked recorded no lease; the one its MAC (fleet UID and ordinal) kept
    from before the scale-in counted, so a second VM went down on a revision that never boots (maxUnavailable 1)."""
    Dnsmasq(monkeypatch)
    no_arp(monkeypatch)
    spec: dict[str, Any] = {"readiness": "Address", "updateStrategy": {"rollingUpdate": {"maxUnavailable": 1}}}
    first = await reconcile_fleet(runtime, site.fleet(**spec), site.template(**NET), site.store, [site.host])
    five = await reconcile_fleet(
        runtime, site.fleet(replicas=5, **spec), site.template(**NET), site.store, [site.host], first.status
    )
    again = await reconcile_fleet(
        runtime, site.fleet(**spec), site.template(memory=96, **NET), site.store, [site.host], five.status
    )
    assert again.status["readyReplicas"] == 5 and memory(conn)[4] == 64, memory(conn)


async def test_H4_a_lease_table_reset_under_running_guests_does_not_let_a_rollout_take_them_all_down(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a rollout the network's leases are lost (dnsmasq restarted with a fresh lease file); the guests run on
    and answer ARP. They looked not ready, a VM not ready is updated without waiting its turn, and the next
    rollout stopped all six at once with maxUnavailable 1."""
    from test_rollout import Downs

    dnsmasq = Dnsmasq(monkeypatch)

    async def arp(host: LibvirtHost, name: str) -> list[str]:
        return ["192.168.122.2"] if conn.lookupByName(name).isActive() else []

    monkeypatch.setattr(LibvirtHost, "arp_addresses", arp)
    spec: dict[str, Any] = {"readiness": "Address", "updateStrategy": {"rollingUpdate": {"maxUnavailable": 1}}}
    first = await reconcile_fleet(runtime, site.fleet(**spec), site.template(**NET), site.store, [site.host])
    second = await reconcile_fleet(
        runtime, site.fleet(**spec), site.template(vcpus=2, **NET), site.store, [site.host], first.status
    )
    assert second.status["updatedReplicas"] == 6
    dnsmasq.leases.clear()
    third = await reconcile_fleet(
        runtime, site.fleet(**spec), site.template(vcpus=2, **NET), site.store, [site.host], second.status
    )
    assert third.status["readyReplicas"] == 6
    downs = Downs(monkeypatch)
    await reconcile_fleet(
        runtime, site.fleet(**spec), site.template(vcpus=3, **NET), site.store, [site.host], third.status
    )
    assert downs.most == 1, downs.stops


async def test_H5_current_revision_stays_what_the_vms_below_a_partition_run_through_a_second_canary(
    runtime: Runtime, conn: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """currentRevision took the first canary's revision when a second canary started, while four VMs ran the
    revision from before both."""
    Dnsmasq(monkeypatch)
    no_arp(monkeypatch)
    canary = {"readiness": "Address", "updateStrategy": {"rollingUpdate": {"partition": 4}}}
    first = await reconcile_fleet(runtime, site.fleet(**canary), site.template(**NET), site.store, [site.host])
    a = first.status["updateRevision"]
    b = await reconcile_fleet(
        runtime, site.fleet(**canary), site.template(vcpus=2, **NET), site.store, [site.host], first.status
    )
    assert b.status["currentRevision"] == a != b.status["updateRevision"]
    never_boots = site.template(memory=96, **NET)
    c = await reconcile_fleet(runtime, site.fleet(**canary), never_boots, site.store, [site.host], b.status)
    c = await reconcile_fleet(runtime, site.fleet(**canary), never_boots, site.store, [site.host], c.status)
    assert [x["reason"] for x in c.status["conditions"] if x["type"] == "Updated"] == ["Updating"]
    assert c.status["currentRevision"] == a, (a, b.status["updateRevision"], c.status["currentRevision"])
