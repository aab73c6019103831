"""`vmfleet apply`, as a user runs it: manifests in, VMs and status out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import clone_path, quickstart

VMFLEET = str(Path(sys.executable).parent / "vmfleet")


def apply(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VMFLEET, "apply", *args], capture_output=True, text=True, timeout=120)


def fleet_of(out: str) -> dict:
    return next(o for o in json.loads(out) if o["kind"] == "VmFleet")


def test_quickstart_gives_ready_vms_with_their_own_bytes(tmp_path: Path, small_image: Path) -> None:
    manifests = quickstart(tmp_path, small_image)
    done = apply("-f", str(manifests), "-o", "json")
    assert done.returncode == 0, done.stderr
    fleet = fleet_of(done.stdout)
    status = fleet["status"]
    assert status["readyReplicas"] == fleet["spec"]["replicas"] == 3
    assert [c["name"] for c in status["clones"]] == ["demo-0", "demo-1", "demo-2"]
    for c in status["clones"]:
        assert isinstance(c["logicalBytes"], int) and c["logicalBytes"] == 64 << 20
        assert isinstance(c["allocatedBytes"], int) and 0 < c["allocatedBytes"] < c["logicalBytes"] // 100
        assert (tmp_path / "store" / clone_path(status, c)).exists()
    assert status["savedBytes"] == status["logicalBytes"] - status["allocatedBytes"]
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "Degraded": "False",
        "Updated": "True",
    }
    assert status["updatedReplicas"] == 3 and status["updateRevision"] == status["currentRevision"]
    assert {c["revision"] for c in status["clones"]} == {status["updateRevision"]}
    assert "ClonesCreated" in done.stderr and "created clone(s) for 3 VM(s)" in done.stderr
    objects = json.loads(done.stdout)
    assert {o["kind"] for o in objects} == {"CloneStore", "KvmHost", "VmTemplate", "VmFleet"}
    assert all({"apiVersion", "kind", "metadata", "spec", "status"} <= set(o) for o in objects)
    template = next(o for o in objects if o["kind"] == "VmTemplate")
    assert template["status"]["parent"]["clones"] == 3


def test_a_second_run_makes_no_clone_and_reports_the_same_paths(tmp_path: Path, small_image: Path) -> None:
    manifests = quickstart(tmp_path, small_image)
    first = fleet_of(apply("-f", str(manifests), "-o", "json").stdout)
    clones = sorted((tmp_path / "store").rglob("demo-*.qcow2"))
    identity = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in clones]
    second_run = apply("-f", str(manifests), "-o", "json")
    second = fleet_of(second_run.stdout)
    assert "ClonesCreated" not in second_run.stderr and "ParentPrepared" not in second_run.stderr
    assert [clone_path(second["status"], c) for c in second["status"]["clones"]] == [
        clone_path(first["status"], c) for c in first["status"]["clones"]
    ]
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in clones] == identity


def test_scaling_in_through_the_manifest_removes_the_highest_ordinals(tmp_path: Path, small_image: Path) -> None:
    apply("-f", str(quickstart(tmp_path, small_image, replicas=4)))
    done = apply("-f", str(quickstart(tmp_path, small_image, replicas=2)), "-o", "json")
    assert [c["name"] for c in fleet_of(done.stdout)["status"]["clones"]] == ["demo-0", "demo-1"]
    assert sorted(p.name for p in (tmp_path / "store").rglob("demo-*.qcow2")) == ["demo-0.qcow2", "demo-1.qcow2"]
    assert "deleted clone(s) of 2 VM(s): demo-3, demo-2" in done.stderr


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path, small_image: Path) -> None:
    done = apply("-f", str(quickstart(tmp_path, small_image)), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "prepare-parent" in done.stdout and done.stdout.count("create-clone") == 3
    assert not (tmp_path / "store" / "vmfleet").exists()


def test_table_output_shows_each_clone_the_savings_and_a_summary(tmp_path: Path, small_image: Path) -> None:
    done = apply("-f", str(quickstart(tmp_path, small_image)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("VmFleet default/demo: 3/3 ready (AllReplicasReady)")
    assert lines[1].split() == ["NAME", "HOST", "STATE", "LOGICAL", "ALLOCATED", "CLONE"]
    assert [line.split()[:3] for line in lines[2:5]] == [[f"demo-{i}", "local", "Running"] for i in range(3)]
    assert lines[-2].split() == ["NAMESPACE", "NAME", "READY", "CLONES", "LOGICAL", "ALLOCATED", "SAVED", "STATUS"]
    assert lines[-1].split()[:4] == ["default", "demo", "3/3", "3"] and lines[-1].endswith("AllReplicasReady")


def test_long_work_shows_progress_and_quiet_does_not(tmp_path: Path, small_image: Path) -> None:
    done = apply("-f", str(quickstart(tmp_path, small_image, replicas=12)))
    assert done.returncode == 0, done.stderr
    # 1 parent + 12 x (clone, define, start) = 37 actions; not a terminal: one line per tenth, the last at 100 %.
    progress = [line for line in done.stderr.splitlines() if line.startswith("demo: ") and "actions" in line]
    counts = [int(line.split()[1].split("/")[0]) for line in progress]
    assert counts == sorted(counts) and len(counts) == 10 and progress[-1].startswith("demo: 37/37 actions (100%)")
    assert "last: start demo-" in progress[-1]
    quiet = apply("-f", str(quickstart(tmp_path, small_image, replicas=14)), "-q")
    assert quiet.returncode == 0 and "actions (" not in quiet.stderr


def test_status_looks_at_manifests_without_changing_anything(tmp_path: Path, small_image: Path) -> None:
    manifests = quickstart(tmp_path, small_image, replicas=2)
    apply("-f", str(manifests))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.qcow2")}
    done = subprocess.run([VMFLEET, "status", "-f", str(manifests)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split()[:4] == ["NAMESPACE", "NAME", "READY", "CLONES"] and row.split()[:2] == ["default", "demo"]
    assert row.split()[3] == "2"  # the clones are there; libvirt's test driver forgets its domains between runs
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.qcow2")} == before


def test_status_without_a_cluster_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    done = subprocess.run([VMFLEET, "status"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    assert "set KUBECONFIG, or look at standalone manifests with `vmfleet status -f DIR`" in done.stderr


def test_a_bad_manifest_is_rejected_naming_the_field_and_nothing_is_made(tmp_path: Path, small_image: Path) -> None:
    manifests = quickstart(tmp_path, small_image)
    fleet = yaml.safe_load((manifests / "fleet.yaml").read_text())
    fleet["spec"]["replicas"] = "three"
    fleet["spec"]["placement"] = "everywhere"
    (manifests / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    done = apply("-f", str(manifests))
    assert done.returncode == 1
    assert "spec.replicas: must be of type integer" in done.stderr
    assert "spec.placement: must be one of: spread, pack" in done.stderr
    assert not (tmp_path / "store" / "vmfleet").exists()


def test_a_missing_reference_is_named(tmp_path: Path, small_image: Path) -> None:
    manifests = quickstart(tmp_path, small_image)
    (manifests / "template.yaml").unlink()
    done = apply("-f", str(manifests))
    assert done.returncode == 1
    assert "VmFleet default/demo: spec.templateRef.name: VmTemplate 'basic' is not defined" in done.stderr


def test_every_missing_reference_is_named_at_once(tmp_path: Path, small_image: Path) -> None:
    manifests = quickstart(tmp_path, small_image)
    (manifests / "store.yaml").unlink()
    fleet = yaml.safe_load((manifests / "fleet.yaml").read_text())
    (manifests / "other.yaml").write_text(yaml.safe_dump({**fleet, "metadata": {"name": "other", "namespace": "ci"}}))
    done = apply("-f", str(manifests))
    assert done.returncode == 1
    assert "VmTemplate default/basic: spec.storeRef.name: CloneStore 'local' is not defined" in done.stderr
    assert "VmFleet ci/other: spec.templateRef.name: VmTemplate 'basic' is not defined in namespace ci" in done.stderr
    assert "VmFleet default/demo" not in done.stderr


def test_run_refuses_a_setting_that_is_not_a_number() -> None:
    env = {**os.environ, "VMFLEET_RESYNC_SECONDS": "soon"}
    done = subprocess.run([VMFLEET, "run"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    assert "VMFLEET_RESYNC_SECONDS='soon' is not a number" in done.stderr


def test_apply_names_a_setting_that_is_not_a_finite_number_and_changes_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "VMFLEET_STORE_TIMEOUT_SECONDS": "nan"}
    done = subprocess.run([VMFLEET, "apply", "-f", str(tmp_path)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "VMFLEET_STORE_TIMEOUT_SECONDS='nan' must be a finite number" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_fleet_that_does_not_fit_is_reported_and_exits_non_zero(tmp_path: Path, small_image: Path) -> None:
    done = apply("-f", str(quickstart(tmp_path, small_image, replicas=200)), "-o", "json")
    assert done.returncode == 3
    status = fleet_of(done.stdout)["status"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InsufficientCapacity"
    # 16 vCPU minus the test driver's own 2-vCPU domain: 14 one-vCPU VMs fit, the rest wait.
    assert status["readyReplicas"] == 14


def test_a_problem_in_the_table_comes_with_what_to_do(tmp_path: Path, small_image: Path) -> None:
    done = apply("-f", str(quickstart(tmp_path, small_image, replicas=16)), "-q")
    assert done.returncode == 3
    assert "Stalled (InsufficientCapacity): demo-14, demo-15: no host has 1 vCPU and 256 MiB free" in done.stdout
    assert "hint: add a KvmHost, raise spec.capacity of one, or lower spec.replicas" in done.stdout
