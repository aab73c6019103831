"""The path every user takes, on a real single-node cluster (kubelet, containerd, kube-proxy): the image that
hack/build-image.sh builds, installed from deploy/ with the README's own commands, running as a pod, driven
only through kubectl. The pod reaches a quickstart store through a hostPath, and the GPFS simulator and the
real libvirtd (qemu+libssh) over SSH on the node's address."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
import yaml

from conftest import REPO, TIMINGS, Sshd
from helpers import open_up, wait_for
from node_cluster import API_PORT, NODE_IP, STORAGE_IP, NodeCluster
from simulator import MOUNT, OpenSshSim
from vmfleet.images import make_template_image

pytestmark = pytest.mark.cluster

IMAGE = "localhost/vmfleet"
QUICKSTART_ROOT = "/tmp/vmfleet-quickstart"  # the quickstart CloneStore's root, as the pod sees it
OPERATOR = ("-n", "vmfleet-system")
MMCLONE = "/usr/lpp/mmfs/bin/mmclone"
COPY = f"{MMCLONE} copy "
# What the gpfs driver runs to look (tests/simulator.py logs every command the simulator serves).
READ_ONLY = ("realpath ", "ls ", "stat ", "head ", "xargs -0 stat ", f"{MMCLONE} show ")
BASIC_READY = 'vmfleet_fleet_ready_replicas{fleet="basic",namespace="default"} 3.0'


def readme_install_steps() -> str:
    """The shell block of the README's "Installing on a cluster": the test runs it as it is."""
    section = (REPO / "README.md").read_text().split("## Installing on a cluster", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the README's 'Installing on a cluster' must hold exactly one sh block: its steps"
    return blocks[0]


@dataclass
class Install:
    cluster: NodeCluster
    work: Path  # the directory the README's commands run in
    quickstart: Path  # the host directory the pod mounts at QUICKSTART_ROOT
    sim: OpenSshSim
    store: Path  # what the simulated GPFS file system holds
    conn: libvirt.virConnect

    def sh(self, script: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
        """A shell in the user's seat: kubectl and vmfleet on PATH, the admin kubeconfig."""
        env = {**self.cluster.env(), "PATH": f"{self.cluster.bin}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
        try:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=self.work,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,  # above the script's own kubectl timeouts: they say what they waited for
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{script}\ntook more than {timeout} s\n{self.diagnose()}") from None
        assert done.returncode == 0, (
            f"{script}\nfailed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{self.diagnose()}"
        )
        return done

    def diagnose(self) -> str:
        """What a person would look at: the objects' conditions and the operator's last words."""
        seen = self.kubectl(
            "get",
            "vmfleets,vmtemplates,clonestores,kvmhosts",
            "-A",
            "-o",
            "custom-columns=KIND:.kind,NAME:.metadata.name,CONDITIONS:.status.conditions[*].message",
            check=False,
        ).stdout
        logs = self.kubectl("logs", *OPERATOR, "deploy/vmfleet-operator", "--tail=40", check=False)
        return f"{seen}\n--- operator log\n{logs.stdout}{logs.stderr}"

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, **kw)

    def pods(self) -> list[dict[str, Any]]:
        """The operator's pods that are not going away."""
        return [
            p
            for p in self.cluster.get("pods", *OPERATOR, "-l", "app.kubernetes.io/name=vmfleet-operator")["items"]
            if not p["metadata"].get("deletionTimestamp")
        ]

    def leader(self) -> dict[str, Any] | None:
        """The operator pod that holds the leader Lease (the Lease names its hostname, the pod's name, then a
        suffix for the container's start), Ready."""
        holder = self.holder()
        pods = [p for p in self.pods() if holder.rpartition("_")[0] == p["metadata"]["name"]]
        conditions = {c["type"]: c["status"] for c in (pods[0]["status"].get("conditions") or [])} if pods else {}
        return pods[0] if conditions.get("Ready") == "True" else None

    def holder(self) -> str:
        lease = self.kubectl("get", "lease", *OPERATOR, "vmfleet-operator", "-o", "json", check=False)
        return (json.loads(lease.stdout)["spec"].get("holderIdentity") or "") if lease.returncode == 0 else ""

    def running(self, container: str) -> bool:
        """Whether containerd still runs this container's task (`ctr tasks ls`: TASK PID STATUS)."""
        listed = self.cluster.ctr("tasks", "ls", check=False).stdout.decode().splitlines()[1:]
        return any(line.split()[:1] == [container] and "RUNNING" in line.split() for line in listed)

    def pod(self) -> dict[str, Any]:
        """The pod that reconciles: the leader."""
        leader: dict[str, Any] = wait_for(self.leader, 120, "an operator pod holding the lease")
        return leader

    def new_pod(self, old: str) -> dict[str, Any]:
        """Wait for a leader that is not `old`, Ready."""

        def other() -> dict[str, Any] | None:
            pod = self.leader()
            return pod if pod and pod["metadata"]["name"] != old else None

        found: dict[str, Any] = wait_for(other, 180, f"an operator pod other than {old} to lead, Ready")
        return found

    def metrics(self) -> str:
        """Scraped from the pod's metrics port through the apiserver's pod proxy."""
        name = self.pod()["metadata"]["name"]
        path = f"/api/v1/namespaces/vmfleet-system/pods/{name}:9090/proxy/metrics"
        return self.kubectl("get", "--raw", path, check=False).stdout

    def fleet(self, name: str) -> dict[str, Any]:
        return self.cluster.get("vmf", name, "-n", "default")

    def copies(self, since: int = 0) -> Counter[str]:
        """How many times each clone file was made on the GPFS simulator (`mmclone copy SOURCE TARGET`), from
        its `since`th command on."""
        return Counter(c.split()[-1] for c in self.sim.commands[since:] if c.startswith(COPY))

    def domains(self) -> dict[str, tuple[str, int]]:
        """The gpfs fleet's domains on the real libvirtd: name -> (UUID, runtime ID: changes if restarted)."""
        return {
            d.name(): (d.UUIDString(), d.ID())
            for d in self.conn.listAllDomains()
            if d.name().startswith("default.basic-")
        }


def _operator_overlay(work: Path, quickstart: Path) -> None:
    """my-operator/: examples/operator-nfs adapted as the README says, with the quickstart store's directory
    where the NFS export would be (a hostPath: a single node), and the image where containerd has it."""
    overlay = yaml.safe_load((REPO / "examples" / "operator-nfs" / "kustomization.yaml").read_text())
    (work / "my-operator").mkdir()
    overlay["resources"] = [os.path.relpath(REPO / "deploy", work / "my-operator")]
    overlay["images"] = [{"name": "vmfleet", "newName": IMAGE, "newTag": "0.1.0"}]
    patch = yaml.safe_load(overlay["patches"][0]["patch"])
    assert [op["path"] for op in patch] == [
        "/spec/template/spec/volumes/-",
        "/spec/template/spec/containers/0/volumeMounts/-",
    ], "examples/operator-nfs changed shape: adapt this test's copy of it"
    patch[0]["value"] = {"name": "quickstart", "hostPath": {"path": str(quickstart), "type": "Directory"}}
    patch[1]["value"] = {"name": "quickstart", "mountPath": QUICKSTART_ROOT}
    overlay["patches"][0]["patch"] = yaml.safe_dump(patch)
    (work / "my-operator" / "kustomization.yaml").write_text(yaml.safe_dump(overlay))


def _fleet_manifests(work: Path, sim: OpenSshSim, kvm: Sshd, kvm_view: Path) -> None:
    """my-fleet/: examples/gpfs/store.yaml and the sonas template and fleet, pointed at the simulator and at
    this machine's libvirtd over qemu+libssh, both on the node's address."""
    (work / "my-fleet").mkdir()
    store, host = yaml.safe_load_all((REPO / "examples" / "gpfs" / "store.yaml").read_text())
    store["spec"]["root"] = f"{MOUNT}/frank"
    store["spec"]["ssh"].update(host=STORAGE_IP, port=sim.port, user="root")
    host["spec"].update(
        uri=f"qemu+libssh://root@{NODE_IP}/system",
        domainType="qemu",
        capacity={"vcpus": 8, "memoryMiB": 1024},
        storeMounts=[{"store": "gpfs0", "path": str(kvm_view)}],
    )
    (work / "my-fleet" / "store.yaml").write_text(yaml.safe_dump_all([store, host]))
    template = yaml.safe_load((REPO / "examples" / "sonas" / "template.yaml").read_text())
    template["spec"]["storeRef"]["name"] = "gpfs0"
    template["spec"]["memoryMiB"] = 32
    (work / "my-fleet" / "template.yaml").write_text(yaml.safe_dump(template))
    fleet = yaml.safe_load((REPO / "examples" / "sonas" / "fleet.yaml").read_text())
    fleet["spec"]["hostSelector"] = {"matchLabels": host["metadata"]["labels"]}  # not the quickstart's host
    fleet["spec"]["shutdown"] = {"gracePeriodSeconds": 0}  # its boot-sector guests ignore the ACPI button
    (work / "my-fleet" / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    (work / "quickstart").mkdir()
    for src in (REPO / "examples" / "quickstart").glob("*.yaml"):
        doc = yaml.safe_load(src.read_text())
        if doc["kind"] == "VmFleet":  # two hosts here: the quickstart's sees its store, kvm-b does not
            doc["spec"]["hostSelector"] = {"matchLabels": {"zone": "a"}}
        (work / "quickstart" / src.name).write_text(yaml.safe_dump(doc))
    for name, text in (
        ("gpfs.key", sim.sshd.private_key),
        ("gpfs.known_hosts", sim.known_hosts),
        ("kvm-b.key", kvm.private_key),
        ("kvm-b.known_hosts", kvm.known_hosts),
    ):
        (work / name).write_text(text)


@pytest.fixture(scope="module")
def install(
    node_cluster: NodeCluster,
    libvirtd: str,
    xfs: Path,
    small_image: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Install]:
    work = tmp_path_factory.mktemp("user")
    quickstart = tmp_path_factory.mktemp("quickstart-store")
    (quickstart / "images").mkdir()
    make_template_image(str(quickstart / "images" / "basic.img"), 64 << 20, 1 << 20)
    for p in (quickstart, quickstart / "images", quickstart / "images" / "basic.img"):
        os.chown(p, 10001, 10001)  # the operator's uid: it writes the clones there
    open_up(quickstart)
    store = xfs / "cluster-gpfs"
    (store / "frank" / "image" / "linux").mkdir(parents=True)
    shutil.copyfile(small_image, store / "frank" / "image" / "linux" / "basic.img")
    open_up(store / "frank" / "image" / "linux")
    with contextlib.ExitStack() as undo:  # in reverse, each whatever the others do
        # port 22, which deploy/networkpolicy.yaml allows: the addresses are the node fixture's own
        # in the cluster's directory: `node_cluster.py --sweep` stops them too after a killed run
        hosts = node_cluster.dir / "hosts"
        (hosts / "gpfs").mkdir(parents=True)
        (hosts / "kvm").mkdir()
        sim = OpenSshSim(hosts / "gpfs", store, "gpfs", address=STORAGE_IP, port=22)
        undo.callback(sim.sshd.stop)
        kvm = Sshd(hosts / "kvm", address=NODE_IP, port=22)
        undo.callback(kvm.stop)
        kvm.start()
        _operator_overlay(work, quickstart)
        _fleet_manifests(work, sim, kvm, store / "frank")
        conn = libvirt.open(libvirtd)
        undo.callback(conn.close)
        undo.callback(_undefine_fleet_domains, conn)
        kubectl = node_cluster.kubectl
        undo.callback(
            kubectl, "delete", "-k", str(work / "my-operator"), "--ignore-not-found", "--timeout=120s", check=False
        )
        # while the operator runs: each of these holds a finalizer that it removes
        for kinds in ("clonestores,kvmhosts", "vmtemplates", "vmfleets"):
            undo.callback(kubectl, "delete", kinds, "--all", "-A", "--timeout=120s", check=False)
        yield Install(node_cluster, work, quickstart, sim, store, conn)


def _undefine_fleet_domains(conn: libvirt.virConnect) -> None:
    for d in conn.listAllDomains():
        if d.name().startswith("default.basic-"):
            if d.isActive():
                d.destroy()
            d.undefine()


def test_the_readme_installs_the_operator_as_a_pod_that_makes_a_gpfs_fleet_ready(install: Install) -> None:
    t0 = time.monotonic()
    done = install.sh(readme_install_steps())
    print(f"README install steps: {time.monotonic() - t0:.1f} s")
    assert 'deployment "vmfleet-operator" successfully rolled out' in done.stdout
    # `vmfleet status basic` on the user's machine, reading the status the pod wrote
    for ordinal in range(3):
        assert re.search(rf"^basic-{ordinal}\s+kvm-b\s+Running\s", done.stdout, re.M), done.stdout
    fleet = install.fleet("basic")
    assert fleet["status"]["readyReplicas"] == 3
    assert sorted(install.domains()) == [f"default.basic-{i}" for i in range(3)]
    assert all(install.conn.lookupByName(n).isActive() for n in install.domains())
    assert sorted(install.copies().values()) == [1, 1, 1]


def test_the_pod_runs_as_uid_10001_read_only_without_capabilities_and_passes_its_probes(install: Install) -> None:
    pods = install.pods()
    assert len(pods) == 2  # deploy/'s two replicas: the leader, and one waiting on the Lease to take over
    for p in pods:  # the waiting one answers its probes too
        assert p["spec"]["nodeName"] == "vmfleet-node"
        ready = {c["type"]: c["status"] for c in p["status"]["conditions"]}
        assert ready["Ready"] == "True" and ready["ContainersReady"] == "True"  # the readiness probe answers
        assert p["status"]["containerStatuses"][0]["restartCount"] == 0  # and the liveness probe never failed
    name = install.pod()["metadata"]["name"]
    # the operator's own process (PID 1 of its container), not the one exec starts
    status = install.kubectl("exec", *OPERATOR, name, "--", "cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[:2] == ["10001", "10001"], fields["Uid"]
    for caps in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(fields[caps], 16) == 0, f"{caps}: {fields[caps]}"
    assert fields["NoNewPrivs"].strip() == "1"  # allowPrivilegeEscalation: false
    assert fields["Seccomp"].strip() == "2"  # RuntimeDefault: a filter
    written = install.kubectl("exec", *OPERATOR, name, "--", "touch", "/opt/vmfleet/x", check=False)
    assert written.returncode and "Read-only file system" in written.stderr, written.stderr


def test_every_port_the_pod_uses_is_one_its_network_policy_allows(install: Install) -> None:
    """The bridge CNI does not enforce NetworkPolicy: what can be checked is that the policy names each port."""
    policy = yaml.safe_load((REPO / "deploy" / "networkpolicy.yaml").read_text())["spec"]
    egress = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    ingress = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    endpoints = install.cluster.get("endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes")
    api = {p["port"] for s in endpoints["items"] for p in s["ports"]}
    service = {p["port"] for p in install.cluster.get("service", "kubernetes", "-n", "default")["spec"]["ports"]}
    # the ports the pod dials: as the objects it reads say them
    store_port = install.cluster.get("clonestore", "gpfs0")["spec"]["ssh"].get("port", 22)
    host_port = urllib.parse.urlsplit(install.cluster.get("kvmhost", "kvm-b")["spec"]["uri"]).port or 22
    ssh = {store_port, host_port}
    assert api == {API_PORT} and service == {443} and ssh == {22}, (api, service, ssh)
    assert api | service | ssh <= egress, egress
    probes = install.pod()["spec"]["containers"][0]
    assert {8080, 9090} == {p["containerPort"] for p in probes["ports"]} <= ingress


def test_the_quickstart_fleet_becomes_ready_scales_and_is_cleaned_up_through_kubectl(install: Install) -> None:
    install.sh("kubectl apply -f quickstart/ && kubectl wait --for=condition=Ready vmf/demo --timeout=3m")
    clones = install.quickstart / "vmfleet" / "clones" / "default" / "demo"

    def files() -> list[str]:
        return sorted(p.name for p in clones.rglob("*.qcow2"))

    assert files() == ["demo-0.qcow2", "demo-1.qcow2", "demo-2.qcow2"]
    assert all(p.stat().st_uid == 10001 for p in clones.rglob("*.qcow2"))  # made by the pod, as uid 10001
    install.sh(
        "kubectl scale vmf/demo --replicas=5\n"
        "kubectl wait --for=jsonpath='{.status.readyReplicas}'=5 vmf/demo --timeout=3m\n"
        "kubectl wait --for=condition=Ready vmf/demo --timeout=3m"
    )
    assert files() == [f"demo-{i}.qcow2" for i in range(5)]
    install.sh(
        "kubectl scale vmf/demo --replicas=1\nkubectl wait --for=jsonpath='{.status.replicas}'=1 vmf/demo --timeout=3m"
    )
    wait_for(lambda: files() == ["demo-0.qcow2"], 60, "scale-in to delete the clones of demo-1..4")
    status = install.sh("vmfleet status demo").stdout
    assert re.search(r"^demo-0\s+local\s+Running\s", status, re.M) and "demo-1" not in status, status
    install.sh("kubectl delete vmf/demo --timeout=2m")
    assert files() == []
    install.sh("kubectl delete -f quickstart/ --ignore-not-found --timeout=2m")  # nothing holds them now
    assert sorted(install.domains()) == [f"default.basic-{i}" for i in range(3)]  # the other fleet untouched


def test_metrics_are_scraped_from_the_pods_port_and_hosts_count_their_domains(install: Install) -> None:
    def hosts() -> list[str]:
        columns = "custom-columns=NAME:.metadata.name,DOMAINS:.status.domains"
        return install.kubectl("get", "kvh", "-o", columns).stdout.split()[2:]

    # a host's count is as fresh as its last probe (every VMFLEET_RESYNC_SECONDS): usually already so
    wait_for(lambda: hosts() == ["kvm-b", "3"], 90, "`kubectl get kvh` to count kvm-b's 3 domains")
    metrics = install.metrics()
    assert BASIC_READY in metrics
    assert "vmfleet_ssh_command_seconds_count" in metrics


def test_a_deleted_operator_pod_comes_back_and_adopts_everything_without_making_anything_again(
    install: Install,
) -> None:
    old = install.pod()["metadata"]["name"]
    # from here on both pods' commands count: the Deployment makes the new pod while the old one terminates
    domains, copies, issued = install.domains(), install.copies(), len(install.sim.commands)
    install.kubectl("delete", "pod", *OPERATOR, old, "--timeout=120s")
    install.sh("kubectl -n vmfleet-system rollout status deploy/vmfleet-operator --timeout=3m")
    install.new_pod(old)
    wait_for(lambda: BASIC_READY in install.metrics(), 120, "the new pod to have reconciled the fleet")
    assert install.domains() == domains  # same UUIDs, same runtime IDs: nothing redefined or restarted
    assert install.copies() == copies  # no clone made again
    # and nothing written to the store at all, by either: they only looked
    since = install.sim.commands[issued:]
    assert since, "no pod reached the store"
    written = [c for c in since if not c.startswith(READ_ONLY)]
    assert not written, written
    assert install.fleet("basic")["status"]["readyReplicas"] == 3


@pytest.mark.ha
@pytest.mark.parametrize("kill", ["kubectl delete --force", "containerd SIGKILL"])
def test_the_standby_pod_finishes_a_scale_out_whose_leader_was_killed_making_nothing_twice(
    install: Install, kill: str
) -> None:
    """deploy/'s two replicas and its 15 s Lease. The leader is killed while it makes a clone (the store made it
    and holds its answer): by force-deleting its pod, or by killing its container through containerd (the kubelet
    restarts it, under a new identity that waits). The other pod takes the lease over once it runs out and
    finishes the scale-out, finding the clone rather than making it again."""
    domains, issued = install.domains(), len(install.sim.commands)
    old = install.pod()
    old_holder = install.holder()
    n = len(domains) + 1
    container = old["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    install.sim.hold_replies(COPY)
    try:
        install.sh(f"kubectl scale vmf/basic --replicas={n}")
        wait_for(lambda: install.copies(issued), 60, "the leader to start making the clone")
        killed = time.monotonic()
        if kill.startswith("kubectl"):
            install.kubectl("delete", "pod", *OPERATOR, old["metadata"]["name"], "--grace-period=0", "--force")
        else:
            install.cluster.ctr("tasks", "kill", "--signal", "SIGKILL", container)
        # A force-deleted pod's container runs on until the kubelet gets to it: the store answers only once the
        # leader is gone, or it finishes the scale-out itself and nothing is taken over.
        wait_for(lambda: not install.running(container), 60, "the killed leader's container to stop")
    finally:
        install.sim.hold_replies(None)
    install.sh(f"kubectl wait --for=jsonpath='{{.status.readyReplicas}}'={n} vmf/basic --timeout=3m")
    took = time.monotonic() - killed
    TIMINGS[f"ha: a scale-out finished by the other replica after its leader was killed ({kill})"] = took
    assert install.holder() not in ("", old_holder)
    assert took < 90, f"{took:.0f} s: more than the 15 s lease, a retry and a few passes"
    assert list(install.copies(issued).values()) == [1]  # the held clone found, not made again
    now = install.domains()
    assert sorted(now) == [f"default.basic-{i}" for i in range(n)]  # no orphan, no duplicate
    assert {k: now[k] for k in domains} == domains  # the others untouched: same UUIDs, not restarted
    if kill.startswith("containerd"):
        install.sh(
            "kubectl scale vmf/basic --replicas=3\n"
            "kubectl wait --for=jsonpath='{.status.replicas}'=3 vmf/basic --timeout=3m"
        )
        wait_for(lambda: sorted(install.domains()) == [f"default.basic-{i}" for i in range(3)], 60, "scale-in to 3")


def test_an_upgrade_rolled_out_while_the_fleet_scales_converges(install: Install) -> None:
    """A second image tag with `kubectl set image` while the fleet scales out from 3 to 6. The store holds its
    replies to clone copies meanwhile (each copy is made, then waits to answer), so the old pod is stopped with
    its copies done but unanswered, and the new one must take the scaling over from there."""
    install.cluster.ctr("images", "tag", "--force", f"{IMAGE}:0.1.0", f"{IMAGE}:0.1.1")
    old = install.pod()["metadata"]["name"]
    issued = len(install.sim.commands)
    install.sim.hold_replies(COPY)
    try:
        install.sh("kubectl scale vmf/basic --replicas=6")
        wait_for(lambda: install.copies(issued), 60, "the old pod to start the scaling")
        install.sh(
            f"kubectl -n vmfleet-system set image deploy/vmfleet-operator operator={IMAGE}:0.1.1\n"
            f"kubectl -n vmfleet-system wait --for=delete pod/{old} --timeout=3m"
        )
        held = install.copies(issued)
    finally:
        install.sim.hold_replies(None)
    assert held, "no clone was being made when the old pod went"
    install.sh(
        "kubectl -n vmfleet-system rollout status deploy/vmfleet-operator --timeout=3m\n"
        "kubectl wait --for=jsonpath='{.status.readyReplicas}'=6 vmf/basic --timeout=5m\n"
        "kubectl wait --for=condition=Ready vmf/basic --timeout=5m\n"
    )
    pod = install.pod()
    assert pod["metadata"]["name"] != old and pod["spec"]["containers"][0]["image"] == f"{IMAGE}:0.1.1"
    assert sorted(install.domains()) == [f"default.basic-{i}" for i in range(6)]
    # each clone made exactly once across both pods: the held copies were found, not made again
    assert sorted(install.copies(issued).values()) == [1] * 3
    install.sh("kubectl delete vmf/basic --timeout=3m")
    assert install.domains() == {}
    assert not list((install.store / "frank" / "vmfleet" / "clones").rglob("basic-*.img"))
