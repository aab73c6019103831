"""A small fleet (qcow2 store, one KvmHost, a template, a fleet) driven through kubectl, for the kube tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from cluster import Cluster
from helpers import open_up


def objects(
    root: Path,
    ns: str,
    uri: str,
    replicas: int,
    name: str,
    policy: str = "Delete",
    *,
    driver: str = "qcow2",
    concurrency: int | None = None,
    capacity: tuple[int, int] = (16, 16384),
    template: str = "tiny",
    fleet: str = "web",
) -> list[dict]:
    """A CloneStore and a KvmHost named `name`, a VmTemplate and a VmFleet in `ns`: as kubectl takes them."""
    store: dict = {"driver": driver, "root": str(root)}
    if concurrency is not None:
        store["concurrency"] = concurrency
    return [
        {"apiVersion": "vmfleet.io/v1alpha1", "kind": "CloneStore", "metadata": {"name": name}, "spec": store},
        # libvirt's test driver always runs its own 8 GiB domain "test".
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "KvmHost",
            "metadata": {"name": name, "labels": {"test": name}},
            "spec": {
                "uri": uri,
                "domainType": "qemu",
                "capacity": {"vcpus": capacity[0], "memoryMiB": capacity[1]},
            },
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmTemplate",
            "metadata": {"name": template, "namespace": ns},
            "spec": {"storeRef": {"name": name}, "image": {"path": "images/t.img"}, "memoryMiB": 64},
        },
        {
            "apiVersion": "vmfleet.io/v1alpha1",
            "kind": "VmFleet",
            "metadata": {"name": fleet, "namespace": ns},
            "spec": {
                "templateRef": {"name": template},
                "replicas": replicas,
                "deletionPolicy": policy,
                "hostSelector": {"matchLabels": {"test": name}},
                "shutdown": {"gracePeriodSeconds": 0},  # the boot-sector guest ignores the ACPI button
            },
        },
    ]


def apply(kube: Cluster, docs: list[dict]) -> None:
    kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def store_root(tmp_path: Path, image: Path) -> Path:
    root = tmp_path / "store"
    (root / "images").mkdir(parents=True)
    shutil.copyfile(image, root / "images" / "t.img")
    open_up(root)
    return root


def ready_fleet(kube: Cluster, prefix: str, unique: str, tmp_path: Path, image: Path) -> tuple[str, str, Path]:
    """A 2-VM fleet on the test driver in its own namespace, Ready: namespace, name of its store and host, root."""
    ns = name = f"{prefix}-{unique}"
    kube.kubectl("create", "namespace", ns)
    root = store_root(tmp_path, image)
    apply(kube, objects(root, ns, "test:///default", 2, name))
    wait_ready(kube, ns)
    return ns, name, root


def fleet(kube: Cluster, ns: str) -> dict:
    return kube.get("vmfleets", "web", "-n", ns)


def wait_ready(kube: Cluster, ns: str, timeout: int = 90) -> None:
    done = kube.kubectl("wait", "--for=condition=Ready", "vmfleet/web", "-n", ns, f"--timeout={timeout}s", check=False)
    if done.returncode != 0:
        conditions = fleet(kube, ns).get("status", {}).get("conditions")
        raise AssertionError(f"vmfleet/web in {ns} not Ready: {json.dumps(conditions, indent=1)}")
