"""A real single-node Kubernetes cluster for the tests: the control plane of cluster.py plus
kube-controller-manager, kube-scheduler, kube-proxy, a kubelet and Debian's containerd, all in one scratch
directory, on addresses of its own (a port-less bridge), torn down by PID and checked clean afterwards: what
it changed on the machine is read before it starts and after it stops (`HostState`), and undone.

What this machine needs and why (cgroup v1, oom_score_adj, no registry): shared/reference/kube-cluster.md.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cluster import Cluster, certificates, free_port, kubeconfig

NODE = "vmfleet-node"
NODE_IP = "10.250.0.1"  # on an interface of its own: pods reach it through the bridge, nothing else does
STORAGE_IP = "10.250.0.2"  # the same interface: "another machine" for the tests' GPFS node
API_PORT = 6443  # on NODE_IP, which is ours: the ports deploy/networkpolicy.yaml allows
KUBELET_PORT = 10250
DUMMY = "vmfleet-node0"
BRIDGE = "vmfleet-cni0"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.97.0.0/24"
SERVICE_IP = "10.97.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
CNI_BIN = "/usr/lib/cni"
FIREWALL = "VMFLEET-NODE"  # the fixture's own chain: the node's addresses answer this machine and its pods only
LOCK = Path("/run/vmfleet-node.lock")  # one cluster per machine: its names and addresses are fixed
STATE = Path("/run/vmfleet-node.state")  # what the machine was before, and where the cluster is, until it is gone
NETWORKS = ("10.250.0.0/24", POD_CIDR, SERVICE_CIDR)
# Kernel settings the kubelet, kube-proxy and the bridge plugin change; put back at the end. The kubelet's
# production tunings (all but forwarding) are put back as soon as the node is up: nothing here needs them, and
# the rest of the test run should not reboot on an oops.
FORWARDING = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/route_localnet")
SYSCTLS = (
    *FORWARDING,
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Directories the kubelet, containerd and CNI use whatever they are told: what they add there is removed.
HOST_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/var/run/netns",
    "/opt/containerd",
)
IPTABLES = tuple((tool, table) for tool in ("iptables", "ip6tables") for table in ("filter", "nat", "mangle", "raw"))
CGROUP = Path("/sys/fs/cgroup")


def sh(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def pause_archive(binary: Path, name: str = PAUSE_IMAGE) -> bytes:
    """An OCI image archive holding only a static pause binary: what containerd runs as each pod's sandbox."""

    def blob(data: bytes) -> tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as layer:
        info = tarfile.TarInfo("pause")
        info.size, info.mode = binary.stat().st_size, 0o755
        layer.addfile(info, binary.open("rb"))
    layer_digest, layer_bytes = blob(layer_buf.getvalue())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_bytes = blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": len(layer_bytes)}
        ],
    }
    manifest_digest, manifest_bytes = blob(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "3.10"},
            }
        ],
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        files = {
            "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
            "index.json": json.dumps(index).encode(),
            **{
                f"blobs/sha256/{d.split(':')[1]}": b
                for d, b in (
                    (layer_digest, layer_bytes),
                    (config_digest, config_bytes),
                    (manifest_digest, manifest_bytes),
                )
            },
        }
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class NodeCluster(Cluster):
    """The apiserver of cluster.py on NODE_IP with Node,RBAC authorization, and a node that runs pods."""

    address: str = NODE_IP
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)  # the node's, stopped before the control plane
    ready_seconds: float = 0.0
    owned: bool = False  # holds the machine's one cluster slot: stop() undoes what changed since `before`
    before: HostState | None = None
    _lock: IO[str] | None = field(default=None, repr=False)

    def _certificates(self) -> None:
        certificates(
            self.dir,
            ips=("127.0.0.1", NODE_IP, SERVICE_IP),
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            kubelet_ip=NODE_IP,
        )

    def _tokens(self) -> dict[str, str]:
        return {
            **super()._tokens(),
            f"system:node:{NODE}": 'uid-node,"system:nodes"',
            "system:kube-controller-manager": "uid-kcm",
            "system:kube-scheduler": "uid-scheduler",
            "system:kube-proxy": "uid-proxy",
        }

    def _apiserver_args(self, etcd_port: int, api_port: int) -> list[str]:
        d = self.dir
        replaced = {
            "--bind-address": NODE_IP,
            "--advertise-address": NODE_IP,
            "--authorization-mode": "Node,RBAC",
            "--service-cluster-ip-range": SERVICE_CIDR,
        }
        args = [a for a in super()._apiserver_args(etcd_port, api_port) if a.split("=")[0] not in replaced]
        args.remove("--endpoint-reconciler-type=none")  # the `kubernetes` Service gets NODE_IP as its endpoint
        return [
            *args,
            *(f"{k}={v}" for k, v in replaced.items()),
            f"--kubelet-client-certificate={d / 'kubelet-client.crt'}",
            f"--kubelet-client-key={d / 'kubelet-client.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",  # the node's name is in no DNS
            f"--kubelet-certificate-authority={d / 'ca.crt'}",
        ]

    def _kubeconfig(self, user: str) -> Path:
        path = self.dir / f"{user.replace(':', '-')}.kubeconfig"
        path.write_text(kubeconfig(self.server, self.dir / "ca.crt", self.tokens[user], user))
        return path

    def _daemon(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.daemons.append(proc)
        return proc

    def logs(self, *names: str) -> str:
        return "".join(f"--- {n}\n{(self.dir / f'{n}.log').read_text(errors='replace')[-3000:]}" for n in names)

    # -- start ------------------------------------------------------------------------------------------

    def start(self) -> None:
        t0 = time.monotonic()
        self._lock = LOCK.open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another test run holds {LOCK}: one cluster per machine") from None
        if STATE.exists():
            raise RuntimeError(f"a killed run's cluster left {STATE}: `python tests/node_cluster.py --sweep` undoes it")
        before = HostState.read()
        refusals = [*before.kubernetes(), *_collisions()]
        if refusals:
            raise RuntimeError(f"refusing to start a test cluster beside {refusals[:5]}")
        self.before = before
        STATE.write_text(json.dumps({"dir": str(self.dir), "before": before.to_json()}))
        self.owned = True  # from here on, stop() undoes what changed
        sh("ip", "link", "add", DUMMY, "type", "bridge")  # a port-less bridge: this kernel has no dummy module
        for ip in (NODE_IP, STORAGE_IP):
            sh("ip", "addr", "add", f"{ip}/32", "dev", DUMMY)
        sh("ip", "link", "set", DUMMY, "up")
        _firewall("-I")
        self._start_containerd()
        super().start()
        self._start_node()
        for key, value in before.sysctls:
            if key not in FORWARDING:
                _write_sysctl(key, value)
        self.ready_seconds = time.monotonic() - t0

    def _api_port(self) -> int:
        return API_PORT

    def _start_containerd(self) -> None:
        d = self.dir / "containerd"
        (self.dir / "cni" / "net.d").mkdir(parents=True)
        (self.dir / "cni" / "net.d" / "10-vmfleet.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "vmfleet-test",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,  # nothing leaves this machine
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(self.dir / "cni" / "ipam"),
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        d.mkdir()
        (d / "config.toml").write_text(
            f"""version = 2
root = "{d}/root"
state = "{d}/state"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # root here cannot lower oom_score_adj (no CAP_SYS_RESOURCE): without this every sandbox fails to start
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.dir}/cni/net.d"
"""
        )
        proc = self._daemon("containerd", "containerd", "--config", str(d / "config.toml"))
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{self.logs('containerd')}")
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            ["ctr", "--address", str(self.dir / "containerd" / "containerd.sock"), "-n", "k8s.io", *args],
            capture_output=True,
            timeout=300,
        )
        if check and done.returncode:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {done.stderr.decode()[-2000:]}")
        return done

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", "--all-platforms", str(archive))

    def _start_node(self) -> None:
        d = self.dir
        pause = d / "pause.tar"
        pause.write_bytes(pause_archive(self.bin / "pause"))
        self.import_image(pause)
        self._daemon(
            "kube-controller-manager",
            str(self.bin / "kube-controller-manager"),
            f"--kubeconfig={self._kubeconfig('system:kube-controller-manager')}",
            f"--root-ca-file={d / 'ca.crt'}",
            f"--service-account-private-key-file={d / 'sa.key'}",
            "--use-service-account-credentials",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--v=0",
        )
        self._daemon(
            "kube-scheduler",
            str(self.bin / "kube-scheduler"),
            f"--kubeconfig={self._kubeconfig('system:kube-scheduler')}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--v=0",
        )
        (d / "kube-proxy.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(self._kubeconfig("system:kube-proxy"))},
                    "mode": "iptables",
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": NODE,
                    "bindAddress": NODE_IP,
                    "healthzBindAddress": f"127.0.0.1:{free_port()}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    "nodePortAddresses": [f"{NODE_IP}/32"],  # not localhost: that would set route_localnet
                    # 0: leave the machine's conntrack settings as they are
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                }
            )
        )
        self._daemon("kube-proxy", str(self.bin / "kube-proxy"), f"--config={d / 'kube-proxy.yaml'}")
        (d / "kubelet.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "cgroupDriver": "cgroupfs",
                    "failCgroupV1": False,  # this machine is cgroup v1
                    "failSwapOn": False,
                    "containerRuntimeEndpoint": f"unix://{d / 'containerd' / 'containerd.sock'}",
                    "address": NODE_IP,
                    "port": KUBELET_PORT,
                    "tlsCertFile": str(d / "kubelet.crt"),  # signed by the test CA: the apiserver checks it
                    "tlsPrivateKeyFile": str(d / "kubelet.key"),
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": free_port(),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": False},
                        "x509": {"clientCAFile": str(d / "ca.crt")},
                    },
                    "authorization": {"mode": "AlwaysAllow"},  # only the apiserver holds a client certificate
                    "podLogsDir": str(d / "pod-logs"),
                    "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "resolvConf": "/etc/resolv.conf",
                    "fileCheckFrequency": "0s",
                    "serializeImagePulls": False,
                }
            )
        )
        self._daemon(
            "kubelet",
            str(self.bin / "kubelet"),
            f"--config={d / 'kubelet.yaml'}",
            f"--kubeconfig={self._kubeconfig(f'system:node:{NODE}')}",
            f"--root-dir={d / 'kubelet'}",
            f"--cert-dir={d / 'kubelet-pki'}",
            f"--hostname-override={NODE}",
            f"--node-ip={NODE_IP}",
            "--v=1",
        )
        deadline = time.monotonic() + 120
        while True:
            for p in self.daemons:
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{p.args[0]} exited with {p.returncode}:\n{self.logs(Path(str(p.args[0])).name)}"
                    )
            ready = self.kubectl(
                "get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False
            ).stdout
            account = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0
            if ready == "True" and account:  # pods made before `default` exists are refused
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node not Ready in 120 s:\n{self.logs('kubelet', 'containerd')}")
            time.sleep(0.5)

    # -- stop -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Pods first (so the kubelet unmounts and CNI releases what they hold), then every daemon by PID, then
        whatever they changed on the machine. Each step runs whatever the ones before did; errors are raised at
        the end, together."""
        if not self.owned:
            return
        errors: list[str] = []

        def step(what: str, do: Callable[[], object]) -> None:
            try:
                do()
            except BaseException as e:  # every step must run; all failures are reported
                errors.append(f"{what}: {e!r}")

        step("delete the pods", self._delete_pods)
        step("kill the containers", self._kill_containers)
        for p in reversed(self.daemons):
            step(f"stop {p.args[0]}", lambda p=p: _stop(p))
        kube_proxy = [str(self.bin / "kube-proxy"), "--cleanup", f"--config={self.dir / 'kube-proxy.yaml'}"]
        step("kube-proxy --cleanup", lambda: sh(*kube_proxy, check=False))
        step("kill the shims", self._kill_rest)
        step("stop the control plane", super().stop)
        step("remove the firewall", lambda: _firewall("-D"))
        before = self.before
        assert before is not None
        step("undo the host's changes", lambda: errors.extend(before.undo(HostState.read(), self.dir)))
        if not errors and not self.leftovers():
            STATE.unlink()  # else the next run refuses to start until --sweep
        if self._lock:
            self._lock.close()
        if errors:
            raise RuntimeError("; ".join(errors))

    def _delete_pods(self) -> None:
        if not self.processes or any(p.poll() is not None for p in self.processes):
            return  # no apiserver: the containers are killed through containerd instead
        self.kubectl("delete", "namespace", "vmfleet-system", "--ignore-not-found", "--wait=false", check=False)
        self.kubectl("delete", "pods", "--all", "-A", "--grace-period=5", "--timeout=60s", check=False)
        deadline = time.monotonic() + 60
        while self.ctr("tasks", "ls", "-q", check=False).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.5)

    def _kill_containers(self) -> None:
        """What is still running when the kubelet could not stop it: killed and removed through containerd, and
        any process left in the pods' cgroups."""
        if self.daemons and self.daemons[0].poll() is None:  # containerd
            for task in self.ctr("tasks", "ls", "-q", check=False).stdout.decode().split():
                self.ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, check=False)
                self.ctr("tasks", "delete", "-f", task, check=False)
        for pid in _pod_pids():
            _kill_tree(pid)

    def _kill_rest(self) -> None:
        """What still names the cluster's directory: containerd's runc shims, which outlive it on purpose."""
        for pid in _processes_of(self.dir):
            _kill_tree(pid)

    def leftovers(self) -> list[str]:
        """What the cluster left on this machine: the fixture asserts there is nothing."""
        found = [f"process {pid}: {_cmdline(pid)[:200]!r}" for pid in _processes_of(self.dir)]
        assert self.before is not None
        return found + self.before.changes(HostState.read(), self.dir)


@dataclass(frozen=True)
class HostState:
    """What a cluster can change on this machine outside its directory, as read at one moment."""

    chains: frozenset[str]  # "iptables -t nat KUBE-SERVICES"
    rules: frozenset[str]  # "iptables -t filter -A INPUT ...": in the built-in chains
    nft_tables: frozenset[str]  # "table ip nat"
    links: frozenset[str]
    mounts: frozenset[str]
    paths: frozenset[str]  # what is in HOST_PATHS, two levels down
    cgroups: frozenset[str]  # the top level of each hierarchy
    sysctls: tuple[tuple[str, str], ...]

    @classmethod
    def read(cls) -> HostState:
        chains, rules = set(), set()
        for tool, table in IPTABLES:
            for line in _rules(tool, table):
                if line.startswith("-N "):
                    chains.add(f"{tool} -t {table} {line.split()[1]}")
                elif line.startswith("-A ") and re.fullmatch(r"[A-Z]+", line.split()[1]):
                    rules.add(f"{tool} -t {table} {line}")
        nft = sh("nft", "list", "tables", check=False).stdout.splitlines() if shutil.which("nft") else []
        paths = set()
        for root in map(Path, HOST_PATHS):
            if root.exists():
                paths.update({str(root), *map(str, root.glob("*")), *map(str, root.glob("*/*"))})
        return cls(
            frozenset(chains),
            frozenset(rules),
            frozenset(nft),
            frozenset(os.listdir("/sys/class/net")),
            frozenset(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()),
            frozenset(paths),
            frozenset(str(c) for ctl in _controllers() for c in ctl.iterdir() if c.is_dir()),
            tuple((k, (Path("/proc/sys") / k).read_text().strip()) for k in SYSCTLS),
        )

    def kubernetes(self) -> list[str]:
        """A node of some cluster already here: a test cluster beside it would take its chains and cgroups."""
        return [
            *(f"link {x}" for x in self.links if x in (DUMMY, BRIDGE)),
            *(f"chain {x}" for x in self.chains if x.split()[-1].startswith(("KUBE-", "CNI-", FIREWALL))),
            *(f"cgroup {x}" for x in self.cgroups if Path(x).name.startswith("kubepods")),
        ]

    def to_json(self) -> dict[str, list[str] | list[list[str]]]:
        return {
            f.name: sorted(v) if isinstance(v := getattr(self, f.name), frozenset) else list(v)
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_json(cls, data: dict[str, list[Any]]) -> HostState:
        return cls(**{k: tuple(map(tuple, v)) if k == "sysctls" else frozenset(v) for k, v in data.items()})

    def added(self, now: HostState, cluster_dir: Path) -> dict[str, list[str]]:
        """What the cluster added since this state, by kind: only what it makes, by kind and name (the rest of
        the test run, loop mounts and libvirt, may have added its own meanwhile)."""
        made_roots = {p for p in now.paths - self.paths if p in HOST_PATHS}  # the whole directory is new: ours
        cluster_chains = ("KUBE-", "CNI-", FIREWALL)
        shims = _shim_sockets(cluster_dir)

        def ours(path: str) -> bool:
            p = Path(path)
            return (
                any(path == root or path.startswith(root + "/") for root in made_roots)
                or (p.is_symlink() and str(p.readlink()).startswith(str(cluster_dir)))
                or (p.parent == Path("/var/lib/cni/results") and p.name.startswith(("vmfleet-test-", "cni-loopback-")))
                or (p.parent == Path("/run/containerd/s") and p.name in shims)
            )

        return {
            "rule": sorted(r for r in now.rules - self.rules if re.search(rf" -j (KUBE-|CNI-|{FIREWALL}$)", r)),
            "chain": sorted(c for c in now.chains - self.chains if c.split()[-1].startswith(cluster_chains)),
            # A table iptables-nft made for kube-proxy that another user (libvirt's networks) has put rules in since
            # is theirs too: neither left by the cluster nor dropped.
            "nft": sorted(
                t for t in now.nft_tables - self.nft_tables if t.split()[1] in ("ip", "ip6") and not _nft_in_use(t)
            ),
            "link": sorted(x for x in now.links - self.links if x in (DUMMY, BRIDGE) or _on_bridge(x)),
            "mount": sorted((m for m in now.mounts - self.mounts if m.startswith(str(cluster_dir))), key=len)[::-1],
            "path": sorted((p for p in now.paths - self.paths if ours(p)), key=len),
            "cgroup": sorted(c for c in now.cgroups - self.cgroups if Path(c).name.startswith("kubepods")),
            "sysctl": [f"{k}={v} (was {dict(self.sysctls)[k]})" for k, v in now.sysctls if (k, v) not in self.sysctls],
        }

    def changes(self, now: HostState, cluster_dir: Path) -> list[str]:
        return [f"{kind} {item}" for kind, items in self.added(now, cluster_dir).items() for item in items]

    def undo(self, now: HostState, cluster_dir: Path) -> list[str]:
        """Put back what the cluster changed; each item whatever the others do. Returns what failed."""
        added, errors = self.added(now, cluster_dir), []

        def attempt(what: str, do: Callable[[], object]) -> None:
            try:
                do()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                errors.append(f"{what}: {e}")

        for key, value in self.sysctls:
            if dict(now.sysctls)[key] != value:
                attempt(f"sysctl {key}", lambda key=key, value=value: _write_sysctl(key, value))
        for rule in added["rule"]:
            tool, _, table, line = rule.split(" ", 3)
            attempt(rule, lambda: sh(tool, "-w", "-t", table, "-D", *shlex.split(line)[1:]))
        for verb in ("-F", "-X"):  # all flushed before any is deleted: they jump to each other
            for chain in added["chain"]:
                tool, _, table, name = chain.split()
                attempt(f"{verb} {chain}", lambda: sh(tool, "-w", "-t", table, verb, name))
        for table in added["nft"]:  # made by iptables-nft for kube-proxy, and left with empty chains only
            attempt(table, lambda: sh("nft", "delete", *table.split()))
        for link in added["link"]:
            attempt(f"link {link}", lambda: sh("ip", "link", "del", link))
        for mount in added["mount"]:
            attempt(f"mount {mount}", lambda: sh("umount", "-l", mount))
        for cgroup in map(Path, added["cgroup"]):
            for sub in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                attempt(f"cgroup {sub}", sub.rmdir)
            attempt(f"cgroup {cgroup}", cgroup.rmdir)
        for path in map(Path, added["path"]):
            if path.is_dir() and not path.is_symlink():
                attempt(f"path {path}", lambda: shutil.rmtree(path))
            else:
                attempt(f"path {path}", lambda: path.unlink(missing_ok=True))
        return errors


def _shim_sockets(cluster_dir: Path) -> set[str]:
    """The names containerd 1.6 gives its shims' sockets in /run/containerd/s whatever its state directory:
    sha256 of "<grpc address>/<namespace>/<task id>". The task ids are the state directories it keeps."""
    address = cluster_dir / "containerd" / "containerd.sock"
    tasks = cluster_dir / "containerd" / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
    ids = os.listdir(tasks) if tasks.is_dir() else []
    return {hashlib.sha256(f"{address}/k8s.io/{task}".encode()).hexdigest() for task in ids}


def _nft_in_use(table: str) -> bool:
    """Whether an nftables table ("table ip nat") holds a rule: something uses it."""
    listing = sh("nft", "list", *table.split(), check=False).stdout
    return bool(re.search(r"^\s+(?!type |chain |policy |\})\S", listing, re.M))


def _write_sysctl(key: str, value: str) -> None:
    (Path("/proc/sys") / key).write_text(value)


def _collisions() -> list[str]:
    """Routes or addresses of this machine inside the cluster's networks (the default route aside)."""
    found = []
    for address in (NODE_IP, STORAGE_IP, "10.244.0.1", SERVICE_IP):
        routes = sh("ip", "-o", "route", "show", "table", "all", "match", address, check=False).stdout.splitlines()
        found += [r.strip() for r in routes if r.split()[0] not in ("default", "unreachable")]
    addresses = sh("ip", "-o", "-4", "addr", "show", check=False).stdout.splitlines()
    nets = [ipaddress.ip_network(n) for n in NETWORKS]
    for line in addresses:
        address = ipaddress.ip_interface(line.split()[3]).ip
        if any(address in net for net in nets):
            found.append(line.strip())
    return found


def _on_bridge(link: str) -> bool:
    master = Path(f"/sys/class/net/{link}/master")
    return master.exists() and master.resolve().name == BRIDGE


def _firewall(action: str) -> None:
    """`-I` or `-D`: in raw PREROUTING, before any DNAT: the cluster's networks answer this machine (loopback)
    and its pods only, and the pods reach nothing else: all of the cluster's traffic stays on this machine."""
    if action == "-I":
        sh("iptables", "-w", "-t", "raw", "-N", FIREWALL)
        rules = [["-i", "lo", "-j", "RETURN"]]
        rules += [["-i", BRIDGE, "-d", net, "-j", "RETURN"] for net in NETWORKS]
        rules += [["-i", BRIDGE, "-j", "DROP"]]
        rules += [["-d", net, "-j", "DROP"] for net in NETWORKS]
        for rule in rules:
            sh("iptables", "-w", "-t", "raw", "-A", FIREWALL, *rule)
        sh("iptables", "-w", "-t", "raw", "-I", "PREROUTING", "-j", FIREWALL)
        return
    sh("iptables", "-w", "-t", "raw", "-D", "PREROUTING", "-j", FIREWALL, check=False)
    sh("iptables", "-w", "-t", "raw", "-F", FIREWALL, check=False)
    sh("iptables", "-w", "-t", "raw", "-X", FIREWALL, check=False)


def sweep() -> None:
    """What a killed test run's cluster left behind, from its state file: its daemons (their arguments name
    its directory) and what they changed on the machine. `python tests/node_cluster.py --sweep`"""
    with LOCK.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(f"a test run holds {LOCK}: its cluster is up, not left behind")
        if not STATE.exists():
            sys.exit(f"no {STATE}: no cluster was left behind")
        state = json.loads(STATE.read_text())
        cluster_dir, before = Path(state["dir"]), HostState.from_json(state["before"])

        def alive() -> list[int]:  # its daemons and sshds, and the containers it ran
            return [*_processes_of(cluster_dir), *_pod_pids()]

        for pid in alive():
            _kill_tree(pid)
        deadline = time.monotonic() + 30  # SIGKILL lands when the kernel gets to it
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive():
            sys.exit(f"these processes of the cluster would not die: {alive()}")
        _firewall("-D")
        errors = before.undo(HostState.read(), cluster_dir)
        left = before.changes(HostState.read(), cluster_dir)
        if errors or left:
            sys.exit(f"could not undo {errors}; still there: {left}")
        STATE.unlink()
        print(f"swept the cluster of {cluster_dir}")


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _processes_of(cluster_dir: Path) -> list[int]:
    """Processes with the cluster's directory, or a path in it, as an argument (`--data-dir=DIR/etcd` too)."""
    names_it = re.compile(rb"(^|=)" + re.escape(str(cluster_dir).encode()) + rb"(/|$)")
    return [pid for pid in _pids() if any(names_it.search(arg) for arg in _cmdline(pid).split(b"\0"))]


def _pod_pids() -> list[int]:
    """Every process in the pods' cgroups: the containers."""
    return [
        int(pid)
        for controller in _controllers()
        for procs in (controller / "kubepods").rglob("cgroup.procs")
        for pid in procs.read_text().split()
    ]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_tree(pid: int) -> None:
    """SIGKILL a process, and its process group where it leads one (the daemons started in sessions of their
    own): never the group of a process that only belongs to someone else's, such as the test run's."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _rules(tool: str, table: str) -> list[str]:
    return sh(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines()


def _controllers() -> list[Path]:
    return [c for c in CGROUP.iterdir() if c.is_dir() and not c.is_symlink()]


if __name__ == "__main__":
    if sys.argv[1:] != ["--sweep"]:
        sys.exit("usage: python tests/node_cluster.py --sweep")
    sweep()
