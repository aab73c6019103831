"""A real single-node Kubernetes cluster for the tests: the control plane of cluster.py plus
kube-controller-manager, kube-scheduler, kube-proxy, a kubelet and Debian's containerd, all in one scratch
directory, on an address of its own (a dummy interface), torn down by PID and checked clean afterwards.

What this machine needs and why (cgroup v1, oom_score_adj, no registry): shared/reference/kube-cluster.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster import Cluster, free_port, kubeconfig

NODE = "vmfleet-node"
NODE_IP = "10.250.0.1"  # on an interface of its own: pods reach it through the bridge, nothing else does
DUMMY = "vmfleet-node0"
BRIDGE = "vmfleet-cni0"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.97.0.0/24"
SERVICE_IP = "10.97.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
CNI_BIN = "/usr/lib/cni"
# Chains the kubelet and the CNI portmap plugin add themselves (kube-proxy --cleanup removes its own).
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")
# Kernel settings the kubelet changes at start; put back at the end.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
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
    sysctls: dict[str, str] = field(default_factory=dict)
    ready_seconds: float = 0.0

    def _certificates(self) -> None:
        from cluster import _certificates

        _certificates(
            self.dir,
            ips=("127.0.0.1", NODE_IP, SERVICE_IP),
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
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
        sh("ip", "link", "add", DUMMY, "type", "bridge")  # a port-less bridge: this kernel has no dummy module
        sh("ip", "addr", "add", f"{NODE_IP}/32", "dev", DUMMY)
        sh("ip", "link", "set", DUMMY, "up")
        self.sysctls = {k: (Path("/proc/sys") / k).read_text().strip() for k in KUBELET_SYSCTLS}
        self._start_containerd()
        super().start()
        self._start_node()
        self.ready_seconds = time.monotonic() - t0

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
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # root here cannot lower oom_score_adj (no CAP_SYS_RESOURCE): without this every sandbox fails to start
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
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

    def ctr(self, *args: str, check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            ["ctr", "--address", str(self.dir / "containerd" / "containerd.sock"), "-n", "k8s.io", *args],
            capture_output=True,
            input=stdin,
            timeout=300,
        )
        if check and done.returncode:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {done.stderr.decode()[-2000:]}")
        return done

    def import_image(self, archive: Path | bytes) -> None:
        data = archive if isinstance(archive, bytes) else archive.read_bytes()
        self.ctr("images", "import", "--all-platforms", "-", stdin=data)

    def _start_node(self) -> None:
        d = self.dir
        self.import_image(pause_archive(self.bin / "pause"))
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
                    "port": free_port(),
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
        whatever they left behind: iptables chains, the bridge, mounts, cgroups, sysctls, the dummy interface."""
        if self.processes and all(p.poll() is None for p in self.processes):
            self.kubectl("delete", "namespace", "vmfleet-system", "--ignore-not-found", "--wait=false", check=False)
            self.kubectl("delete", "pods", "--all", "-A", "--grace-period=5", "--timeout=60s", check=False)
            deadline = time.monotonic() + 60
            while self.daemons and self.ctr("tasks", "ls", "-q", check=False).stdout.strip():  # sandboxes too
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        for p in reversed(self.daemons):
            _stop(p)
        if (self.dir / "kube-proxy.yaml").exists():
            sh(str(self.bin / "kube-proxy"), "--cleanup", f"--config={self.dir / 'kube-proxy.yaml'}", check=False)
        self._kill_shims()
        super().stop()
        self._clean_host()

    def _kill_shims(self) -> None:
        """containerd's runc shims outlive it on purpose; these are ours (their -address names our socket)."""
        sock = str(self.dir / "containerd" / "containerd.sock")
        for pid in _pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if sock.encode() in cmdline:
                _kill_tree(pid)

    def _clean_host(self) -> None:
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle"):
                for chain in (*KUBELET_CHAINS, "CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"):
                    _drop_chain(tool, table, chain)
                for chain in _chains(tool, table):
                    if chain.startswith("CNI-"):
                        _drop_chain(tool, table, chain)
        for link in (BRIDGE, DUMMY):
            sh("ip", "link", "del", link, check=False)
        for mount in reversed(_mounts_under(self.dir)):
            sh("umount", "-l", mount, check=False)
        for controller in CGROUP.iterdir():
            kubepods = controller / "kubepods"
            if controller.is_symlink() or not kubepods.is_dir():
                continue
            for sub in sorted((p for p in kubepods.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                sub.rmdir()
            kubepods.rmdir()
        for key, value in self.sysctls.items():
            (Path("/proc/sys") / key).write_text(value)

    def leftovers(self) -> list[str]:
        """What the cluster would leave on this machine if teardown missed it: the fixture asserts none."""
        found = [f"process {pid}" for pid in _pids() if str(self.dir).encode() in _cmdline(pid)]
        found += [f"link {link}" for link in (BRIDGE, DUMMY) if Path(f"/sys/class/net/{link}").exists()]
        found += [f"mount {m}" for m in _mounts_under(self.dir)]
        found += [f"cgroup {c}/kubepods" for c in CGROUP.iterdir() if not c.is_symlink() and (c / "kubepods").is_dir()]
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle"):
                found += [f"{tool} -t {table} {c}" for c in _chains(tool, table) if c.startswith(("KUBE-", "CNI-"))]
        found += [
            f"sysctl {k}={(Path('/proc/sys') / k).read_text().strip()} (was {v})"
            for k, v in self.sysctls.items()
            if (Path("/proc/sys") / k).read_text().strip() != v
        ]
        return found


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


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
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _chains(tool: str, table: str) -> list[str]:
    done = sh(tool, "-w", "-t", table, "-S", check=False)
    return [line.split()[1] for line in done.stdout.splitlines() if line.startswith("-N ")]


def _drop_chain(tool: str, table: str, chain: str) -> None:
    """Every rule that jumps to the chain, then the chain."""
    if chain not in _chains(tool, table):
        return
    for line in sh(tool, "-w", "-t", table, "-S").stdout.splitlines():
        parts = shlex.split(line)
        if parts[0] == "-A" and f"-j {chain}" in line and parts[1] != chain:
            sh(tool, "-w", "-t", table, "-D", *parts[1:], check=False)
    sh(tool, "-w", "-t", table, "-F", chain, check=False)
    sh(tool, "-w", "-t", table, "-X", chain, check=False)


def _mounts_under(d: Path) -> list[str]:
    prefix = str(d.resolve()) + "/"
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
