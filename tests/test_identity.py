"""Per-VM identity (issue 15): a stable UUID and MAC for each VM, and its own cloud-init seed image in the store
next to its clone, rewritten only when what the guest reads changes. The real-guest proof is in
test_identity_guest.py; here the API, the seed images and `vmfleet apply` on a qcow2 store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import quickstart
from vmfleet.api import InvalidManifest, parse
from vmfleet.api.identity import vm_mac
from vmfleet.api.types import VmFleet, VmTemplate
from vmfleet.disks import FileDisk
from vmfleet.engine.desired import Desired
from vmfleet.seed import label_of, read_files

pytestmark = pytest.mark.identity

VMFLEET = str(Path(sys.executable).parent / "vmfleet")


def _doc(kind: str, name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "vmfleet.io/v1alpha1", "kind": kind, "metadata": {"name": name, **meta}, "spec": spec}


def _template(**spec: Any) -> dict[str, Any]:
    return _doc("VmTemplate", "basic", {"storeRef": {"name": "local"}, "image": {"path": "images/b.img"}, **spec})


def _fleet(**spec: Any) -> dict[str, Any]:
    return _doc(
        "VmFleet", "web", {"templateRef": {"name": "basic"}, "replicas": 3, **spec}, namespace="prod", uid="u-1"
    )


def _desired(template: dict[str, Any], fleet: dict[str, Any], user_data: str | None = None) -> Desired:
    store = parse(_doc("CloneStore", "local", {"driver": "qcow2", "root": "/srv/s"}))
    host = parse(_doc("KvmHost", "kvm-a", {"uri": "test:///default"}))
    t, f = parse(template), parse(fleet)
    assert isinstance(t, VmTemplate) and isinstance(f, VmFleet)
    return Desired(f, t, store, [host], "qcow2", lambda clone, on_host: FileDisk(on_host, "qcow2"), user_data)  # type: ignore[arg-type]


def _refused(doc: dict[str, Any]) -> str:
    with pytest.raises(InvalidManifest) as e:
        parse(doc)
    return str(e.value)


def test_each_vm_has_its_own_stable_locally_administered_unicast_mac() -> None:
    macs = [vm_mac("fleet-uid", o) for o in range(5000)]
    assert len(set(macs)) == 5000
    for mac in macs:
        first = int(mac[:2], 16)
        assert first & 0b10 and not first & 0b01, mac  # locally administered, unicast
    assert macs == [vm_mac("fleet-uid", o) for o in range(5000)]
    assert vm_mac("another-fleet", 0) != macs[0]
    fleet = parse(_fleet(overrides=[{"ordinal": 1, "mac": "02:11:22:33:44:55"}]))
    assert isinstance(fleet, VmFleet)
    assert (fleet.mac(0), fleet.mac(1)) == (vm_mac("u-1", 0), "02:11:22:33:44:55")


def test_a_pinned_mac_that_is_another_vms_is_refused_naming_the_field() -> None:
    taken = vm_mac("u-1", 2)
    said = _refused(_fleet(overrides=[{"ordinal": 0, "mac": taken}]))
    assert "spec.overrides[0].mac" in said and "ordinal 2" in said
    said = _refused(
        _fleet(overrides=[{"ordinal": 0, "mac": "02:00:00:00:00:09"}, {"ordinal": 1, "mac": "02:00:00:00:00:09"}])
    )
    assert "spec.overrides[1].mac" in said and "pinned for ordinal 0" in said
    assert "spec.overrides[0].mac" in _refused(_fleet(overrides=[{"ordinal": 0, "mac": "03:00:00:00:00:01"}]))


def test_an_unknown_variable_or_a_reserved_key_is_refused_naming_the_field() -> None:
    said = _refused(_template(cloudInit={"userData": "#cloud-config\nhostname: {{ hostname }}\n"}))
    assert "spec.cloudInit.userData: unknown variable hostname" in said and "name, ordinal, fleet" in said
    said = _refused(_fleet(cloudInit={"metaData": {"role": "{{ nme }}"}, "networkData": "{{ ip }}"}))
    assert "spec.cloudInit.metaData.role: unknown variable nme" in said
    assert "spec.cloudInit.networkData: unknown variable ip" in said
    assert "spec.cloudInit.metaData" in _refused(_fleet(cloudInit={"metaData": {"instance-id": "mine"}}))
    said = _refused(_fleet(cloudInit={"userData": "x", "userDataSecretRef": {"name": "s"}}))
    assert "userData or userDataSecretRef, not both" in said
    # cloud-init's own jinja is left to cloud-init
    parse(_template(cloudInit={"userData": "## template: jinja\n{{ v1.local_hostname }} {% if x %}{% endif %}"}))


def test_each_vm_gets_its_own_nocloud_seed_with_the_fleets_values_laid_over_the_templates() -> None:
    template = _template(
        network="default",
        cloudInit={
            "userData": "#cloud-config\nfqdn: {{ name }}.{{namespace}}.example.com\n",
            "metaData": {"team": "a", "zone": "z1"},
            "sshAuthorizedKeys": ["ssh-ed25519 AAAA template"],
        },
    )
    fleet = _fleet(cloudInit={"metaData": {"zone": "z2-{{ ordinal }}"}, "sshAuthorizedKeys": ["ssh-ed25519 B me"]})
    desired = _desired(template, fleet)
    images = [desired.seed(o) for o in range(3)]
    assert all(s is not None for s in images)
    files = [read_files(s.image()) for s in images if s]
    for o, got in enumerate(files):
        meta = yaml.safe_load(got["meta-data"])
        assert meta == {
            "instance-id": desired.vm_uuid(o),
            "local-hostname": f"web-{o}",
            "team": "a",
            "zone": f"z2-{o}",
            "public-keys": ["ssh-ed25519 B me"],
        }
        assert got["user-data"] == f"#cloud-config\nfqdn: web-{o}.prod.example.com\n".encode()
        assert "network-config" not in got
    assert len({s.digest for s in images if s}) == 3
    assert all(label_of(s.image()) == "cidata" for s in images if s)
    spec = desired.domain_spec(0, "kvm-a", desired.clone(0, {}))
    assert spec.mac == vm_mac("u-1", 0)
    assert spec.seed is not None and spec.seed.path.endswith(f"/web-0.cidata-{images[0].digest}.iso")  # type: ignore[union-attr]
    assert desired.seed(3) is None  # beyond replicas: none wanted


def test_a_config_drive_seed_for_cloudbase_init_and_user_data_from_a_secret() -> None:
    fleet = _fleet(
        cloudInit={
            "datasource": "ConfigDrive",
            "userDataSecretRef": {"name": "web-user-data"},
            "networkData": '{"links": [{"id": "eth0", "ethernet_mac_address": "{{ mac }}"}]}',
        }
    )
    desired = _desired(_template(cloudInit={"userData": "never used"}), fleet, user_data="#ps1\nhost {{ name }}")
    seed = desired.seed(1)
    assert seed is not None
    image = seed.image()
    got = read_files(image)
    assert label_of(image) == "config-2"
    meta = json.loads(got["openstack/latest/meta_data.json"])
    assert (meta["uuid"], meta["hostname"]) == (desired.vm_uuid(1), "web-1")
    assert got["openstack/latest/user_data"] == b"#ps1\nhost web-1"
    assert json.loads(got["openstack/latest/network_data.json"])["links"][0]["ethernet_mac_address"] == vm_mac("u-1", 1)


def test_no_cloud_init_means_no_seed_and_the_same_domain_as_before() -> None:
    desired = _desired(_template(), _fleet())
    assert desired.seed(0) is None
    spec = desired.domain_spec(0, "kvm-a", desired.clone(0, {}))
    assert spec.seed is None and spec.mac is None


def _site(tmp_path: Path, image: Path) -> tuple[Any, Any]:
    """A qcow2 store under `tmp_path` with the template image, and a KvmHost on libvirt's test driver."""
    root = tmp_path / "store"
    (root / "images").mkdir(parents=True)
    (root / "images" / "b.img").write_bytes(image.read_bytes())
    store = parse(_doc("CloneStore", "local", {"driver": "qcow2", "root": str(root)}))
    host = parse(_doc("KvmHost", "kvm-a", {"uri": "test:///default", "capacity": {"vcpus": 8, "memoryMiB": 32768}}))
    return store, host


# ------------------------------------------------------------------ `vmfleet apply` on a qcow2 store


def apply(manifests: Path) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [VMFLEET, "apply", "-f", str(manifests), "-o", "json"], capture_output=True, text=True, timeout=120
    )
    fleets = [o for o in json.loads(done.stdout or "[]") if o["kind"] == "VmFleet"] if done.stdout else []
    return (fleets[0] if fleets else {}), done.stderr


def _edit(manifests: Path, kind: str, change: Any) -> None:
    for path in manifests.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") == kind:
            change(doc["spec"])
            path.write_text(yaml.safe_dump(doc))


def _seeds(root: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(root.rglob("*.iso"))}


def test_apply_writes_one_seed_per_vm_next_to_its_clone_once_and_counts_it(tmp_path: Path, small_image: Path) -> None:
    manifests = quickstart(tmp_path, small_image, cloudInit={"userData": "#cloud-config\nhostname: {{ name }}\n"})
    fleet, said = apply(manifests)
    status = fleet["status"]
    assert status["readyReplicas"] == 3, said
    assert "SeedsWritten" in said and "wrote cloud-init seeds for 3 VM(s)" in said
    seeds = _seeds(tmp_path / "store")
    assert sorted(n.split(".")[0] for n in seeds) == ["demo-0", "demo-1", "demo-2"]
    directory = tmp_path / "store" / status["cloneDirectory"]
    for c in status["clones"]:
        (seed,) = [p for n, p in seeds.items() if n.startswith(f"{c['name']}.cidata-")]
        assert seed.parent == directory
        got = read_files(seed.read_bytes())
        assert yaml.safe_load(got["meta-data"])["instance-id"] == c["uuid"]
        assert got["user-data"] == f"#cloud-config\nhostname: {c['name']}\n".encode()
        clone = directory / c["file"]
        # the VM's figures count its seed: its logical size is the clone's guest size plus the seed's
        assert c["logicalBytes"] == (64 << 20) + seed.stat().st_size
        assert c["allocatedBytes"] >= seed.stat().st_blocks * 512 > 0
        assert clone.exists()
    before = {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n, p in seeds.items()}
    again, said = apply(manifests)
    assert "SeedsWritten" not in said, said
    assert {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n, p in _seeds(tmp_path / "store").items()} == before
    assert [c["uuid"] for c in again["status"]["clones"]] == [c["uuid"] for c in status["clones"]]

    # a change of user data reaches every seed; the older images go (no domain runs on them here)
    _edit(manifests, "VmFleet", lambda s: s["cloudInit"].update(userData="#cloud-config\nv: 2 {{ uuid }}\n"))
    changed, said = apply(manifests)
    assert "SeedsWritten" in said and "SeedsDeleted" in said, said
    now = _seeds(tmp_path / "store")
    assert len(now) == 3 and not set(now) & set(before)
    for c in changed["status"]["clones"]:
        (seed,) = [p for n, p in now.items() if n.startswith(f"{c['name']}.")]
        assert read_files(seed.read_bytes())["user-data"] == f"#cloud-config\nv: 2 {c['uuid']}\n".encode()

    # scale-in takes the seed with the clone
    _edit(manifests, "VmFleet", lambda s: s.update(replicas=1))
    fleet, said = apply(manifests)
    assert [n.split(".")[0] for n in _seeds(tmp_path / "store")] == ["demo-0"], said


def test_user_data_from_a_secret_never_shows_and_a_missing_one_stops_the_fleet(
    tmp_path: Path, small_image: Path
) -> None:
    secret_text = "#cloud-config\npassword: hunter2-{{ ordinal }}\n"
    manifests = quickstart(tmp_path, small_image, cloudInit={"userDataSecretRef": {"name": "demo-user-data"}})
    fleet, said = apply(manifests)
    assert fleet["status"]["conditions"][0]["status"] == "False"
    stalled = next(c for c in fleet["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "UserDataUnreadable"
    assert "default/demo-user-data" in stalled["message"] and "userDataSecretRef" in stalled["message"]
    assert not list((tmp_path / "store").rglob("*.qcow2")), "nothing is made without the user data"

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "demo-user-data", "namespace": "default"},
        "stringData": {"userdata": secret_text},
    }
    (manifests / "secret.yaml").write_text(yaml.safe_dump(secret))
    fleet, said = apply(manifests)  # an Opaque Secret (an SSH key, a password) never reaches a guest
    stalled = next(c for c in fleet["status"]["conditions"] if c["type"] == "Stalled")
    assert "is of type Opaque" in stalled["message"] and "--type=vmfleet.io/user-data" in stalled["message"]
    assert not list((tmp_path / "store").rglob("*.iso"))
    (manifests / "secret.yaml").write_text(yaml.safe_dump({**secret, "type": "vmfleet.io/user-data"}))
    fleet, said = apply(manifests)
    assert fleet["status"]["readyReplicas"] == 3, said
    for seed in _seeds(tmp_path / "store").values():
        assert b"password: hunter2-" in read_files(seed.read_bytes())["user-data"]
    assert "hunter2" not in json.dumps(fleet) and "hunter2" not in said


# ------------------------------------------------------------------ the planner's seed rules


def _plan(
    domain: Any,
    *,
    missing: bool = True,
    stale: bool = True,
    reachable: bool = True,
    saved: bool = False,
    rolling: bool = False,
) -> Any:
    from vmfleet.planner import HostView, Observation, Update, VmSeen, VmWant, plan_fleet

    seen = Observation(
        parent_exists=True,
        clones=frozenset({0}),
        domains={0: VmSeen(0, "kvm-a", *domain, saved=saved)} if domain else {},
        hosts={"kvm-a": HostView("kvm-a", reachable, vcpus=8, memory_mib=8192, error="" if reachable else "down")},
        recorded={0: "kvm-a"},
        seed_missing=frozenset({0}) if missing else frozenset(),
        stale_seeds=frozenset({0}) if stale else frozenset(),
    )
    update = Update(rolling=rolling)
    return plan_fleet([VmWant(0, "web-0", 1, 256, True)], seen, "spread", lambda o, h: "new", update)


def _ops(plan: Any) -> list[str]:
    return [a.op.value for a in plan.actions]


def test_a_changed_seed_is_written_before_the_redefine_and_the_old_one_kept_while_it_may_be_read() -> None:
    running_old = ("Running", True, "old", "old")
    plan = _plan(running_old)
    assert _ops(plan) == ["write-seed", "define"]
    assert plan.restart_required == [0]  # OnDelete: the guest reads the new seed at its next boot
    # RollingUpdate: it is restarted on it, and the old seed goes once it is off
    assert _ops(_plan(running_old, rolling=True)) == ["write-seed", "stop", "define", "delete-seeds", "start"]
    # defined anew, still running the old definition: the old seed stays
    assert _ops(_plan(("Running", True, "new", "old"), missing=False)) == []
    # restarted on the new definition (or stopped): now the old one goes
    assert _ops(_plan(("Running", True, "new", "new"), missing=False)) == ["delete-seeds"]
    assert _ops(_plan(("Stopped", False, "new", ""), missing=False)) == ["delete-seeds", "start"]


def test_a_vm_saved_with_its_memory_keeps_the_seed_its_saved_definition_reads() -> None:
    """libvirt-guests suspends VMs at a host's shutdown (managedsave): it resumes on the definition it ran."""
    assert _ops(_plan(("Stopped", False, "new", ""), missing=False, saved=True)) == ["start"]


def test_nothing_is_done_to_the_seeds_of_a_vm_whose_host_does_not_answer() -> None:
    assert _ops(_plan(("Running", True, "old", "old"), reachable=False)) == []


async def test_an_upgrade_keeps_the_mac_a_networked_vm_already_has(tmp_path: Path, small_image: Path) -> None:
    """Domains defined before vmfleet chose MACs keep the one libvirt gave them, also when redefined later: no
    guest bound to its MAC (ifcfg HWADDR, a Windows NIC) loses its network to an upgrade."""
    import dataclasses

    import libvirt

    from vmfleet.engine import Runtime, reconcile_fleet
    from vmfleet.engine.fleet import desire
    from vmfleet.hypervisor import domain_xml
    from vmfleet.hypervisor.domain import nic_mac

    store, host = _site(tmp_path, small_image)
    template = parse(_template(network="default", memoryMiB=64))
    fleet = parse(_fleet(replicas=1))
    runtime = Runtime()
    conn = libvirt.open("test:///default")  # the test driver's state lives while a connection is open
    try:
        first = await reconcile_fleet(runtime, fleet, template, store, [host])  # type: ignore[arg-type]
        assert first.status["readyReplicas"] == 1, first.status["conditions"]
        # Make its domain what an older vmfleet defined: no <mac> (libvirt picks one), no mac in the metadata.
        desired = desire(runtime, fleet, template, store, [host])  # type: ignore[arg-type]
        clone = first.status["cloneDirectory"] + "/" + first.status["clones"][0]["file"]
        spec = dataclasses.replace(desired.domain_spec(0, "kvm-a", clone), mac=None)
        owner = dataclasses.replace(desired.owner(0, "kvm-a", clone, spec), mac=None)
        conn.defineXML(domain_xml(spec, owner, desired.vm_uuid(0)))
        dom = conn.lookupByName("prod.web-0")
        old = nic_mac(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert old and old != vm_mac("u-1", 0)

        again = await reconcile_fleet(runtime, fleet, template, store, [host], first.status)  # type: ignore[arg-type]
        # An upgrade alone redefines nothing. (The running domain, defined by this vmfleet, has the MAC vmfleet
        # chose: a rolling update restarts it on the libvirt MAC its definition now keeps.)
        assert "define" not in [a.op.value for a in again.plan.actions], "an upgrade alone redefines nothing"
        assert again.status["clones"][0]["mac"] == old

        bigger = parse(_template(network="default", memoryMiB=96))  # a real change: redefined, MAC kept
        third = await reconcile_fleet(runtime, fleet, bigger, store, [host], again.status)  # type: ignore[arg-type]
        assert "define" in [a.op.value for a in third.plan.actions]
        assert nic_mac(conn.lookupByName("prod.web-0").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == old
        assert third.status["clones"][0]["mac"] == old
        fourth = await reconcile_fleet(runtime, fleet, bigger, store, [host], third.status)  # type: ignore[arg-type]
        assert [a.op.value for a in fourth.plan.actions] == [] and fourth.status["clones"][0]["mac"] == old

        # A pin may not give another VM the MAC this one kept.
        clash = parse(_fleet(replicas=2, overrides=[{"ordinal": 1, "mac": old}]))
        refused = await reconcile_fleet(runtime, clash, bigger, store, [host], fourth.status)  # type: ignore[arg-type]
        stalled = next(c for c in refused.status["conditions"] if c["type"] == "Stalled")
        assert stalled["reason"] == "InvalidSpec" and f"web-0 and web-1 would share MAC {old}" in stalled["message"]
        assert refused.plan.actions == []

        # Pinned, it takes the pin; unpinned again, the derived one (the kept MAC was let go by the pin).
        pinned = parse(_fleet(replicas=1, overrides=[{"ordinal": 0, "mac": "02:aa:bb:cc:dd:ee"}]))
        fifth = await reconcile_fleet(runtime, pinned, bigger, store, [host], fourth.status)  # type: ignore[arg-type]
        assert nic_mac(conn.lookupByName("prod.web-0").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == "02:aa:bb:cc:dd:ee"
        sixth = await reconcile_fleet(runtime, fleet, bigger, store, [host], fifth.status)  # type: ignore[arg-type]
        assert sixth.status["clones"][0]["mac"] == vm_mac("u-1", 0)
        assert nic_mac(conn.lookupByName("prod.web-0").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == vm_mac("u-1", 0)
    finally:
        await runtime.close()
        conn.close()


async def test_status_shows_a_few_addresses_and_stays_valid(
    tmp_path: Path, small_image: Path, monkeypatch: Any
) -> None:
    import jsonschema

    from vmfleet.api.crd import root_schema
    from vmfleet.api.schema import KINDS, MAX_ADDRESSES
    from vmfleet.engine import Runtime, reconcile_fleet
    from vmfleet.hypervisor import LibvirtHost

    async def many(self: LibvirtHost, name: str) -> list[str]:  # ARP on a network full of VIPs
        return [f"10.0.0.{i}" for i in range(17, 0, -1)] + ["fe80::1", "fd00::9", "fd00::10"]

    monkeypatch.setattr(LibvirtHost, "arp_addresses", many)
    store, host = _site(tmp_path, small_image)
    runtime = Runtime()
    try:
        done = await reconcile_fleet(
            runtime,
            parse(_fleet(replicas=1)),
            parse(_template(network="default")),
            store,
            [host],  # type: ignore[arg-type]
        )
    finally:
        await runtime.close()
    assert done.status["clones"][0]["addresses"] == ["10.0.0.1", "fd00::9"]  # an IPv4 and an IPv6, by number
    assert MAX_ADDRESSES == 2
    jsonschema.validate(done.status, root_schema(KINDS["VmFleet"])["properties"]["status"])


def test_networkdata_that_its_datasource_cannot_read_is_refused_naming_the_field() -> None:
    said = _refused(_fleet(cloudInit={"datasource": "ConfigDrive", "networkData": '{"links": [ {{ mac }} ]'}))
    assert "spec.cloudInit.networkData: not valid JSON (network_data.json)" in said
    said = _refused(_template(cloudInit={"datasource": "NoCloud", "networkData": "version: [2"}))
    assert "spec.cloudInit.networkData: not valid YAML (network-config)" in said
    parse(_fleet(cloudInit={"datasource": "ConfigDrive", "networkData": '{"links": [{"mac": "{{ mac }}"}]}'}))


def test_binary_user_data_from_a_secret_reaches_the_seed_unchanged(tmp_path: Path, small_image: Path) -> None:
    import base64
    import gzip

    payload = gzip.compress(b"#cloud-config\nruncmd: [echo {{ name }}]\n")
    manifests = quickstart(tmp_path, small_image, replicas=1, cloudInit={"userDataSecretRef": {"name": "ud"}})
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "ud", "namespace": "default"},
        "type": "vmfleet.io/user-data",
        "data": {"userdata": base64.b64encode(payload).decode()},
    }
    (manifests / "secret.yaml").write_text(yaml.safe_dump(secret))
    fleet, said = apply(manifests)
    assert fleet["status"]["readyReplicas"] == 1, said
    (seed,) = _seeds(tmp_path / "store").values()
    assert read_files(seed.read_bytes())["user-data"] == payload


def _entries(n: int, name: str, host: str = "kvm-a") -> list[dict[str, Any]]:
    return [
        {
            "name": f"{name}-{o}",
            "ordinal": o,
            "host": host,
            "file": f"{name}-{o}.img",
            "state": "Running",
            "logicalBytes": 10 << 30,
            "allocatedBytes": 123456789,
            "uuid": "3b0f8c52-6d1e-4c57-9a0e-2f6b7d8e9c14",
            "mac": "02:11:22:33:04:d2",
            "addresses": ["10.251.117.234", "fd00:251:117::4d2"],
            "revision": "478dc259c9",
        }
        for o in range(n)
    ]


def _size(entries: list[dict[str, Any]]) -> int:
    return len(json.dumps(entries, separators=(",", ":")))


def test_the_biggest_fleets_status_leaves_out_what_it_must_to_stay_inside_etcd() -> None:
    from vmfleet.engine.status import OBJECT_BUDGET, compact

    room = OBJECT_BUDGET - 20_000  # what a status of usual conditions and a small manifest leave
    small = _entries(100, "web")
    assert compact(small, room) == ([], 0) and all("addresses" in c for c in small)
    usual = _entries(4500, "web")
    assert compact(usual, room) == (["addresses"], 0)  # where to ssh goes first
    assert _size(usual) <= room and all("uuid" in c for c in usual)
    most = _entries(10000, "web")  # the most VMs: every VM keeps its host, state and space
    dropped, omitted = compact(most, room)
    assert dropped[:3] == ["addresses", "mac", "uuid"] and omitted == 0 and len(most) == 10000
    assert _size(most) <= room
    assert all({"ordinal", "host", "state", "logicalBytes", "allocatedBytes"} <= set(c) for c in most)
    longest = _entries(10000, "f" * 52)
    assert compact(longest, room)[1] == 0 and _size(longest) <= room


def test_entries_that_cannot_fit_are_left_out_the_vms_that_need_a_look_last() -> None:
    # Found in review: KvmHost names may be 253 characters; 10,000 entries of such a host do not fit whatever
    # field goes, and a status etcd refuses is never written again.
    from vmfleet.engine.status import OBJECT_BUDGET, compact

    entries = _entries(10000, "web", host="h" * 253)
    attention = {3, 9999, 5000}
    dropped, omitted = compact(entries, OBJECT_BUDGET, attention)
    assert dropped == ["addresses", "mac", "uuid", "name", "file", "revision"]
    assert omitted > 0 and len(entries) == 10000 - omitted and _size(entries) <= OBJECT_BUDGET
    listed = [c["ordinal"] for c in entries]
    assert attention <= set(listed) and listed == sorted(listed)
    assert listed[: len(listed) - 2] == list(range(len(listed) - 2))  # the fine VMs of the lowest ordinals stay
    none = _entries(10, "web")
    assert compact(none, -5) == (["addresses", "mac", "uuid", "name", "file", "revision"], 10) and none == []


def test_whole_counts_survive_entries_left_out_and_older_operators() -> None:
    # What keeps a KvmHost or a CloneStore from being deleted is counted over every VM, not over the entries listed;
    # a status an older operator wrote (entries only, or a merge that left stale counts beside its entries) counts
    # the higher of the two.
    from vmfleet.api.status import clone_count, vms_by_host

    status = {
        "clones": [{"ordinal": 0, "host": "a", "file": "web-0.img"}],
        "clonesOmitted": 9,
        "clonesByParent": [{"parent": "p1", "clones": 6}, {"parent": "p2", "clones": 4}],
        "vmsByHost": [{"host": "a", "vms": 7}, {"host": "b", "vms": 3}],
    }
    assert clone_count(status) == 10 and vms_by_host(status) == {"a": 7, "b": 3}
    older = {"clones": [{"ordinal": 0, "host": "a", "file": "web-0.img"}, {"ordinal": 1, "host": "b"}]}
    assert clone_count(older) == 1 and vms_by_host(older) == {"a": 1, "b": 1}
    merged = {**older, "vmsByHost": [{"host": "a", "vms": 1}], "clonesByParent": [{"parent": "p", "clones": 0}]}
    assert clone_count(merged) == 1 and vms_by_host(merged) == {"a": 1, "b": 1}


def test_the_manifest_s_own_bytes_leave_less_room_for_the_entries() -> None:
    # Found in review: 10,000 overrides in the spec (twice more in kubectl's and kopf's annotations) left no room
    # for a status budgeted alone, and etcd refused the object.
    from vmfleet.engine.status import OBJECT_BUDGET

    overrides = [{"ordinal": o, "running": False} for o in range(10000)]
    fleet = parse(_fleet(replicas=10000, overrides=overrides))
    assert isinstance(fleet, VmFleet)
    assert 300_000 < fleet.stored_bytes < OBJECT_BUDGET  # spec and metadata, the status left out
    bare = parse(_fleet())
    assert isinstance(bare, VmFleet) and bare.stored_bytes < 1000


def test_kopfs_record_of_the_spec_in_status_leaves_less_room_for_the_entries() -> None:
    # Found in review: kopf's record of the spec moved from an annotation to status.kopf (operator/records.py), out
    # of what stored_bytes counted: a spec of 370 KB would have taken the object past etcd's limit.
    from vmfleet.api.types import stored_bytes

    doc = _fleet(replicas=10000, overrides=[{"ordinal": o, "running": False} for o in range(10000)])
    spec = len(json.dumps(doc["spec"], separators=(",", ":")))
    assert stored_bytes(doc) > 2 * spec  # the spec itself, and kopf's escaped copy of it
    fleet = parse(doc)
    assert isinstance(fleet, VmFleet) and fleet.stored_bytes > 2 * spec


def _legacy(conn: Any, desired: Any, ordinal: int, clone: str, mac: str) -> None:
    """Define VM `ordinal`'s domain as a vmfleet before MACs would have: libvirt's MAC, none in the metadata."""
    import dataclasses

    from vmfleet.hypervisor import domain_xml

    spec = dataclasses.replace(desired.domain_spec(ordinal, "kvm-a", clone), mac=None, kept_mac=mac)
    owner = dataclasses.replace(desired.owner(ordinal, "kvm-a", clone, spec), mac=None, mac_kept=False)
    conn.defineXML(domain_xml(spec, owner, desired.vm_uuid(ordinal)))


async def test_macs_never_clash_and_an_unread_kept_mac_holds_the_vm(
    tmp_path: Path, small_image: Path, monkeypatch: Any
) -> None:
    import libvirt

    from vmfleet.engine import Runtime, reconcile_fleet
    from vmfleet.engine.fleet import desire
    from vmfleet.hypervisor import HostError, LibvirtHost
    from vmfleet.hypervisor.domain import nic_mac

    store, host = _site(tmp_path, small_image)
    template = parse(_template(network="default", memoryMiB=64))
    runtime = Runtime()
    conn = libvirt.open("test:///default")
    try:
        two = parse(_fleet(replicas=2))
        first = await reconcile_fleet(runtime, two, template, store, [host])  # type: ignore[arg-type]
        assert first.status["readyReplicas"] == 2
        desired = desire(runtime, two, template, store, [host])  # type: ignore[arg-type]
        files = {c["ordinal"]: f"{first.status['cloneDirectory']}/{c['file']}" for c in first.status["clones"]}
        same = "52:54:00:12:34:56"  # libvirt's random MACs can meet: two older VMs with one
        for o in (0, 1):
            _legacy(conn, desired, o, files[o], same)

        # Left as they were (vmfleet did not make them share it): not a reason to stop the fleet.
        kept = await reconcile_fleet(runtime, two, template, store, [host], first.status)  # type: ignore[arg-type]
        assert kept.status["readyReplicas"] == 2, kept.status["conditions"]
        assert [c["mac"] for c in kept.status["clones"]] == [same, same]

        # web-0 runs with `same`; pinning it on a new web-2 would put two running NICs on one MAC.
        pinned = parse(_fleet(replicas=3, overrides=[{"ordinal": 2, "mac": same}]))
        refused = await reconcile_fleet(runtime, pinned, template, store, [host], kept.status)  # type: ignore[arg-type]
        stalled = next(c for c in refused.status["conditions"] if c["type"] == "Stalled")
        assert stalled["reason"] == "InvalidSpec" and "spec.overrides" in stalled["message"], stalled
        assert refused.plan.actions == [] and "prod.web-2" not in [d.name() for d in conn.listAllDomains()]

        # A kept MAC that cannot be read this pass: the VM is held, never redefined with another MAC.
        async def fails(self: LibvirtHost, name: str) -> str | None:
            raise HostError(f"KvmHost {self.name}: reading the NIC of {name} failed: connection dropped")

        monkeypatch.setattr(LibvirtHost, "nic_mac", fails)
        bigger = parse(_template(network="default", memoryMiB=96))
        held = await reconcile_fleet(runtime, two, bigger, store, [host], kept.status)  # type: ignore[arg-type]
        assert "define" not in [a.op.value for a in held.plan.actions]
        assert nic_mac(conn.lookupByName("prod.web-0").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == same
        degraded = next(c for c in held.status["conditions"] if c["type"] == "Degraded")
        assert degraded["reason"] == "HostUnreachable" and "connection dropped" in degraded["message"]
    finally:
        await runtime.close()
        conn.close()


def test_a_mac_moved_between_running_vms_waits_for_the_restart_not_the_whole_fleet() -> None:
    same = "52:54:00:12:34:56"
    moved = "02:aa:bb:cc:dd:ee"
    # web-0 ran pinned to `moved`; the pin now is web-1's: web-1 waits to start until web-0 restarted.
    desired = _desired(_template(network="default"), _fleet(overrides=[{"ordinal": 1, "mac": moved}]))
    desired.keep_macs({}, {0: moved})
    assert desired.duplicate_mac() is None  # nothing wrong with the spec: a matter of order
    assert desired.mac_in_use(1) == 0 and desired.mac_in_use(0) is None and desired.mac_in_use(2) is None
    # Two older VMs that libvirt gave one MAC, both running with it: neither waits for the other.
    older = _desired(_template(network="default"), _fleet())
    older.keep_macs({0: same, 1: same}, {0: same, 1: same})
    assert older.duplicate_mac() is None and older.mac_in_use(0) is None and older.mac_in_use(1) is None
    # In the plan: web-1 is made and defined, its start held (MacInUse); web-0 goes on.
    from vmfleet.engine.record import FleetRecord
    from vmfleet.engine.snapshot import Snapshot
    from vmfleet.planner import HostView, Observation, VmSeen

    seen = Observation(
        parent_exists=True,
        clones=frozenset({0}),
        domains={0: VmSeen(0, "kvm-a", "Running", True, "old", "old", live_mac=moved)},
        hosts={"kvm-a": HostView("kvm-a", True, vcpus=8, memory_mib=8192)},
    )
    plan = Snapshot(desired, seen, FleetRecord("u-1", "prod", "web"), {0: "web-0.qcow2"}).plan()
    assert ("start", 1) not in [(a.op.value, a.ordinal) for a in plan.actions if hasattr(a, "ordinal")]
    assert ("define", 1) in [(a.op.value, a.ordinal) for a in plan.actions if hasattr(a, "ordinal")]
    assert [(p.reason, p.subject) for p in plan.problems] == [("MacInUse", "web-1")]


def test_stopping_one_vm_by_its_override_is_no_new_revision_of_the_fleet() -> None:
    # An override's `running` shapes no VM: were it in the revision, every domain would be redefined and relabelled.
    base = _desired(_template(), _fleet()).revision
    assert _desired(_template(), _fleet(overrides=[{"ordinal": 1, "running": False}])).revision == base
    assert _desired(_template(), _fleet(overrides=[{"ordinal": 1, "vcpus": 4}])).revision != base


def test_only_this_fleets_clones_and_seeds_are_taken_from_a_listing_whatever_else_lies_there() -> None:
    """One pattern serves every fleet (a pattern per fleet overflowed re's cache with 1,000 fleets): another
    fleet whose name ends like this one's, a name ending in a newline, a leading zero are not this fleet's."""
    d = _desired(_template(cloudInit={"userData": "#cloud-config\n"}), _fleet())
    seed = d.seed_path(1)
    assert seed is not None
    names = [
        "web-0.qcow2",
        "web-1.img",
        "web-2.qcow2\n",
        "web-02.qcow2",
        "my-web-2.qcow2",
        "web-web-2.qcow2",
        "web-2.qcow2.partial",
        seed.rsplit("/", 1)[1],
        seed.rsplit("/", 1)[1] + "\n",
        "my-" + seed.rsplit("/", 1)[1],
    ]
    assert d.clone_files(names) == {0: "web-0.qcow2", 1: "web-1.img"}
    assert d.seed_files(names) == {1: frozenset({seed})}
