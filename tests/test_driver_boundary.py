"""Issue 13, a typed driver boundary: when the world under a driver fails (a file system, libvirt, a Secret),
the user sees a condition naming the object, the path or the field, never an escaped exception."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.config import kube_config

from conftest import unavailable
from helpers import open_up, quickstart
from test_cli import VMFLEET
from vmfleet.api import CloneStore, KvmHost, VmFleet, VmTemplate, parse
from vmfleet.cli.standalone import secret_reader
from vmfleet.credentials import no_secrets
from vmfleet.engine import Runtime, host_status, reconcile_fleet
from vmfleet.operator.secrets import ClusterSecrets
from vmfleet.storage import make_driver

pytestmark = pytest.mark.reliability

OPERATOR_UID = 10001  # deploy/deployment.yaml's runAsUser: for it a chmod is a real permission error


def obj(kind: str, name: str, spec: dict[str, Any], **meta: str) -> Any:
    return parse({"apiVersion": "vmfleet.io/v1alpha1", "kind": kind, "metadata": {"name": name, **meta}, "spec": spec})


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def apply_as_operator(manifests: Path, home: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`vmfleet apply` as the operator's user; (the run, each object's status by kind)."""
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={OPERATOR_UID}",
            f"--regid={OPERATOR_UID}",
            "--clear-groups",
            "--",
            VMFLEET,
            "apply",
            "-f",
            str(manifests),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(home)},
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done, {o["kind"]: o["status"] for o in json.loads(done.stdout)}


def give_to_operator(top: Path) -> None:
    open_up(top)
    for where, dirs, files in os.walk(top):
        for name in [where, *(os.path.join(where, n) for n in dirs + files)]:
            os.chown(name, OPERATOR_UID, OPERATOR_UID)


def test_an_unreadable_directory_in_a_local_store_is_a_condition_naming_it(tmp_path: Path, small_image: Path) -> None:
    """The operator's user meets a directory of the store it cannot read: the fleet is StoreUnavailable naming it
    (the template ParentFailed when it is the parents'), nothing escapes; readable again, all converges."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        unavailable("running vmfleet as the operator's user needs root and setpriv (util-linux)")
    manifests = quickstart(tmp_path, small_image, replicas=1)
    store = tmp_path / "store"
    give_to_operator(tmp_path)
    done, status = apply_as_operator(manifests, tmp_path)
    assert done.returncode == 0 and status["VmFleet"]["readyReplicas"] == 1, done.stderr

    clones, parents = store / "vmfleet" / "clones" / "default", store / "vmfleet" / "parents"
    try:
        clones.chmod(0)
        done, status = apply_as_operator(manifests, tmp_path)
        unavailable_there = ("True", "StoreUnavailable", f"CloneStore local: {clones}: Permission denied")
        assert conditions(status["VmFleet"])["Degraded"] == unavailable_there
        assert conditions(status["VmTemplate"])["Ready"][:2] == ("True", "ParentReady")
        assert (
            done.returncode == 3
            and f"StoreUnavailable   VmFleet default/demo: CloneStore local: {clones}: Permission denied" in done.stderr
        )
        clones.chmod(0o755)

        parents.chmod(0)
        done, status = apply_as_operator(manifests, tmp_path)
        assert conditions(status["VmTemplate"])["Degraded"] == ("True", "ParentFailed", f"{parents}: Permission denied")
        assert conditions(status["VmFleet"])["Degraded"] == (
            "True",
            "StoreUnavailable",
            f"CloneStore local: {parents}: Permission denied",
        )
        assert done.returncode == 3
    finally:
        clones.chmod(0o755)
        parents.chmod(0o755)
    done, status = apply_as_operator(manifests, tmp_path)
    assert done.returncode == 0 and conditions(status["VmFleet"])["Ready"][:2] == ("True", "AllReplicasReady")


def gpfs_store() -> CloneStore:
    store: CloneStore = obj(
        "CloneStore",
        "s",
        {
            "driver": "gpfs",
            "root": "/gpfs/fs1/x",
            "ssh": {
                "host": "127.0.0.1",
                "port": 1,
                "user": "u",
                "commandTimeoutSeconds": 7,
                "maxSessions": 4,
                "secretRef": {"name": "s-ssh", "namespace": "vmfleet-system"},
            },
        },
    )
    return store


def libssh_host() -> KvmHost:
    host: KvmHost = obj(
        "KvmHost",
        "b",
        {"uri": "qemu+libssh://root@127.0.0.1:1/system", "secretRef": {"name": "b-ssh", "namespace": "vmfleet-system"}},
    )
    return host


def fleet_on(store: str) -> tuple[VmTemplate, VmFleet]:
    template: VmTemplate = obj(
        "VmTemplate", "t", {"storeRef": {"name": store}, "image": {"path": "i.img"}}, namespace="boundary"
    )
    fleet: VmFleet = obj("VmFleet", "f", {"templateRef": {"name": "t"}, "replicas": 1}, namespace="boundary")
    return template, fleet


async def store_and_host_messages(runtime: Runtime) -> tuple[str, str]:
    """(the fleet's Degraded message on the gpfs store, the KvmHost's) where neither's Secret can be read."""
    template, fleet = fleet_on("s")
    try:
        result = await reconcile_fleet(runtime, fleet, template, gpfs_store(), [])
        host = await host_status(runtime, libssh_host(), None)
    finally:
        await runtime.close()
    degraded, unreachable = conditions(result.status)["Degraded"], conditions(host)["Degraded"]
    assert degraded[:2] == ("True", "StoreUnavailable") and unreachable[:2] == ("True", "Unreachable")
    return degraded[2], unreachable[2]


async def test_each_secret_is_named_with_the_field_that_names_it() -> None:
    """A KvmHost's Secret is its spec.secretRef (it said spec.ssh.secretRef, a CloneStore's field)."""
    store, host = await store_and_host_messages(Runtime(secret_reader({})))
    assert store == "CloneStore s: Secret vmfleet-system/s-ssh (spec.ssh.secretRef) is not in the manifests"
    assert host == "KvmHost b: Secret vmfleet-system/b-ssh (spec.secretRef) is not in the manifests"
    store, host = await store_and_host_messages(Runtime(no_secrets))
    assert store == "CloneStore s: Secret vmfleet-system/s-ssh (spec.ssh.secretRef) is not available here"
    assert host == "KvmHost b: Secret vmfleet-system/b-ssh (spec.secretRef) is not available here"
    store, host = await store_and_host_messages(Runtime(lambda ref: {"known_hosts": "h"}))
    assert store == "CloneStore s: Secret vmfleet-system/s-ssh (spec.ssh.secretRef) has no ssh-privatekey"
    assert host == "KvmHost b: Secret vmfleet-system/b-ssh (spec.secretRef) has no ssh-privatekey"


@pytest.fixture
def dead_kubernetes_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The operator's kubeconfig names an API server that refuses every connection."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "dead",
                "clusters": [
                    {"name": "dead", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
            }
        )
    )
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))  # read from KUBECONFIG at import
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    saved = client.Configuration.get_default_copy()  # load_kube_config sets the process-wide default
    yield
    client.Configuration.set_default(saved)


async def test_a_kubernetes_api_that_does_not_answer_is_a_condition_not_an_escaped_exception(
    dead_kubernetes_api: None,
) -> None:
    """urllib3's MaxRetryError left the store's SSH connection and reconcile_fleet with it."""
    store, host = await store_and_host_messages(Runtime(ClusterSecrets()))
    why = "cannot be read: the Kubernetes API did not answer (MaxRetryError)"
    assert store == f"CloneStore s: Secret vmfleet-system/s-ssh (spec.ssh.secretRef) {why}"
    assert host == f"KvmHost b: Secret vmfleet-system/b-ssh (spec.secretRef) {why}"


async def test_a_host_key_that_cannot_be_written_for_libvirt_makes_the_host_unreachable(
    tmp_path: Path, small_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OSError left the fleet's observation of its hosts, and reconcile_fleet with it."""
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_directory))  # ENOTDIR, for root too
    root = tmp_path / "store"
    root.mkdir()
    shutil.copyfile(small_image, root / "i.img")
    store: CloneStore = obj("CloneStore", "q", {"driver": "qcow2", "root": str(root)})
    template, fleet = fleet_on("q")
    runtime = Runtime(lambda ref: {"ssh-privatekey": "k", "known_hosts": "h"})
    try:
        result = await reconcile_fleet(runtime, fleet, template, store, [libssh_host()])
        host = await host_status(runtime, libssh_host(), None)
    finally:
        await runtime.close()
    assert conditions(host)["Degraded"] == (
        "True",
        "Unreachable",
        f"KvmHost b: cannot write its SSH key for libvirt in {not_a_directory}: Not a directory",
    )
    assert conditions(result.status)["Stalled"] == (
        "True",
        "NoReachableHost",
        "f-0: none of the fleet's hosts is reachable",
    )


def test_a_stores_ssh_endpoint_is_the_one_its_spec_gives() -> None:
    store = gpfs_store()
    runner = make_driver(store, no_secrets).runner  # type: ignore[attr-defined]
    assert runner.endpoint is store.ssh and (runner.timeout, runner.max_sessions) == (7.0, 4)
