"""Standalone mode on the real parts: a reflink store on XFS and QEMU guests under the real libvirtd."""

from __future__ import annotations

import shutil
from pathlib import Path

import libvirt
import yaml

from helpers import open_up, wait_for
from test_cli import apply, fleet_of


def manifests(tmp: Path, root: Path, logs: Path, fleet: str, replicas: int) -> Path:
    docs = [
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "CloneStore",
            "metadata": {"name": "xfs"},
            "spec": {"driver": "reflink", "root": str(root)},
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "KvmHost",
            "metadata": {"name": "kvm1"},
            "spec": {
                "uri": "qemu:///system",
                "domainType": "qemu",
                "consoleLogDir": str(logs),
                "capacity": {"vcpus": 8, "memoryMiB": 4096},
            },
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmTemplate",
            "metadata": {"name": "tiny", "namespace": "e2e"},
            "spec": {"storeRef": {"name": "xfs"}, "image": {"path": "images/t.img"}, "memoryMiB": 64},
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmFleet",
            "metadata": {"name": fleet, "namespace": "e2e"},
            # The boot-sector guest ignores the ACPI button: its plug is pulled at once.
            "spec": {"templateRef": {"name": "tiny"}, "replicas": replicas, "shutdown": {"gracePeriodSeconds": 0}},
        },
    ]
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def test_a_fleet_boots_from_its_clones_and_a_second_run_changes_nothing(
    libvirtd: str, xfs: Path, small_image: Path, tmp_path: Path, unique: str
) -> None:
    root, logs, fleet = xfs / f"e2e-{unique}", xfs / f"logs-{unique}", f"e2e-{unique}"
    (root / "images").mkdir(parents=True)
    logs.mkdir()
    shutil.copyfile(small_image, root / "images" / "t.img")
    open_up(logs)
    open_up(root)
    conn = libvirt.open(libvirtd)
    try:
        first = apply("-f", str(manifests(tmp_path, root, logs, fleet, 2)), "-o", "json")
        assert first.returncode == 0, first.stderr
        status = fleet_of(first.stdout)["status"]
        assert status["readyReplicas"] == 2 and status["allocatedBytes"] == 0
        for i in range(2):
            log = logs / f"e2e.{fleet}-{i}.log"
            wait_for(
                lambda: log.exists() and "VMFLEET-BOOT-OK" in log.read_text(errors="replace"),
                30,
                f"the boot marker of {fleet}-{i}",
            )
        uuids = {n: conn.lookupByName(f"e2e.{fleet}-{n}").UUIDString() for n in range(2)}

        second = apply("-f", str(manifests(tmp_path, root, logs, fleet, 2)), "-o", "json")
        assert second.returncode == 0, second.stderr
        assert "Defined" not in second.stderr and "Created" not in second.stderr
        assert {n: conn.lookupByName(f"e2e.{fleet}-{n}").UUIDString() for n in range(2)} == uuids

        conn.lookupByName(f"e2e.{fleet}-1").destroy()  # drift: a VM stopped by hand
        repaired = apply("-f", str(manifests(tmp_path, root, logs, fleet, 2)), "-o", "json")
        assert "started 1 VM(s)" in repaired.stderr
        assert conn.lookupByName(f"e2e.{fleet}-1").isActive()
    finally:
        done = apply("-f", str(manifests(tmp_path, root, logs, fleet, 0)), "-o", "json")
        names = {d.name() for d in conn.listAllDomains()}
        conn.close()
    assert done.returncode == 0, done.stderr
    assert not {f"e2e.{fleet}-0", f"e2e.{fleet}-1"} & names
    assert list((root / "vmfleet/clones/e2e").rglob("*.img")) == []
