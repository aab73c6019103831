"""A real Kubernetes control plane for the tests: etcd and kube-apiserver on loopback, RBAC on.

Built from source by tests/kube/build.sh (cached outside the repo); started once per session.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import secrets
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import prebuild

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ok(
    request: urllib.request.Request,
    processes: list[subprocess.Popen[bytes]],
    timeout: float,
    logs: Callable[[], str],
    context: ssl.SSLContext | None = None,
) -> None:
    """Poll an HTTP endpoint until it answers 200; fail early, with the logs, if a process dies."""
    deadline = time.monotonic() + timeout
    while True:
        for p in processes:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode}:\n{logs()[-3000:]}")
        try:
            if urllib.request.urlopen(request, context=context, timeout=2).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{request.full_url} did not answer within {timeout} s:\n{logs()[-3000:]}")
        time.sleep(0.2)


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _sign(
    ca: x509.Certificate, ca_key: Any, name: str, key: Any, san: list[x509.GeneralName], client: bool = False
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def certificates(
    d: Path, ips: tuple[str, ...] = ("127.0.0.1",), dns: tuple[str, ...] = ("localhost",), kubelet_ip: str = ""
) -> None:
    """A CA, a serving certificate for `ips` and `dns` signed by it, a client certificate for the apiserver to
    show kubelets, a kubelet's serving certificate for `kubelet_ip`, and the service-account key pair."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmfleet-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    san = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _sign(ca, ca_key, "kube-apiserver-kubelet-client", client_key, [], client=True)
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "apiserver.crt").write_bytes(
        _sign(ca, ca_key, "kube-apiserver", key, san).public_bytes(serialization.Encoding.PEM)
    )
    (d / "apiserver.key").write_bytes(_pem_key(key))
    (d / "kubelet-client.crt").write_bytes(client.public_bytes(serialization.Encoding.PEM))
    (d / "kubelet-client.key").write_bytes(_pem_key(client_key))
    if kubelet_ip:
        kubelet_key = ec.generate_private_key(ec.SECP256R1())
        kubelet = _sign(ca, ca_key, "kubelet", kubelet_key, [x509.IPAddress(ipaddress.ip_address(kubelet_ip))])
        (d / "kubelet.crt").write_bytes(kubelet.public_bytes(serialization.Encoding.PEM))
        (d / "kubelet.key").write_bytes(_pem_key(kubelet_key))
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "sa.key").write_bytes(_pem_key(sa))
    (d / "sa.pub").write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def kubeconfig(server: str, ca: Path, token: str, user: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "test",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        }
    )


@dataclass
class Cluster:
    bin: Path
    dir: Path
    server: str = ""
    kubeconfig: Path = field(default=Path())
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    start_seconds: float = 0.0
    address: str = "127.0.0.1"  # where the apiserver listens
    tokens: dict[str, str] = field(default_factory=dict)  # user -> bearer token
    _apiserver: list[str] = field(default_factory=list)  # its command line

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "KUBECACHEDIR": str(self.dir / "kubecache"),
            "PATH": f"{self.bin}:{os.environ['PATH']}",
        }

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.bin / "kubectl"), *args],
            capture_output=True,
            text=True,
            env=self.env(kubeconfig),
            timeout=timeout,
            input=stdin,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    VMFLEET_KINDS = "vmfleets,vmtemplates,clonestores,kvmhosts"

    def vmfleet_objects(self) -> set[tuple[str, str, str]]:
        """(kind/name, namespace or "", uid) of every vmfleet.io object."""
        items = self.get(self.VMFLEET_KINDS, "-A")["items"]
        return {
            (f"{o['kind'].lower()}/{o['metadata']['name']}", o["metadata"].get("namespace", ""), o["metadata"]["uid"])
            for o in items
        }

    def remove_vmfleet_objects_since(self, before: set[tuple[str, str, str]]) -> None:
        """Deletes what a test made, finalizers and all (no operator may be left to clear them): an operator a
        later test starts then acts on that test's objects only, not on every host and fleet made before it."""
        made = self.vmfleet_objects() - before
        if not made:
            return
        by_namespace: dict[str, list[str]] = {}
        for what, namespace, _ in made:
            by_namespace.setdefault(namespace, []).append(what)
        for namespace, names in by_namespace.items():  # one call per namespace, then one for every finalizer
            where = ("-n", namespace) if namespace else ()
            self.kubectl("delete", *sorted(names), *where, "--wait=false", "--ignore-not-found", check=False)
        uids = {uid for _, _, uid in made}
        held = [o for o in self.get(self.VMFLEET_KINDS, "-A")["items"] if o["metadata"]["uid"] in uids]
        for o in held:
            o["metadata"].pop("finalizers", None)
        if held:
            listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": held})
            if self.kubectl("replace", "-f", "-", stdin=listed, check=False).returncode:  # one changed meanwhile
                patch = json.dumps({"metadata": {"finalizers": None}})
                for o in held:
                    where = ("-n", o["metadata"]["namespace"]) if o["metadata"].get("namespace") else ()
                    what = f"{o['kind'].lower()}/{o['metadata']['name']}"
                    self.kubectl("patch", what, *where, "--type=merge", "-p", patch, check=False)

    def _apiserver_args(self, etcd_port: int, api_port: int) -> list[str]:
        d = self.dir
        return [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={d}",
            f"--tls-cert-file={d / 'apiserver.crt'}",
            f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--token-auth-file={d / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--enable-priority-and-fairness=false",
            "--endpoint-reconciler-type=none",  # a loopback advertise address is refused otherwise
            "--v=0",
        ]

    def _certificates(self) -> None:
        certificates(self.dir)

    def _api_port(self) -> int:
        return free_port()

    def _tokens(self) -> dict[str, str]:
        """Users of the token file: name -> 'uid,groups' (the admin is the only one here)."""
        return {"vmfleet-test-admin": 'uid-admin,"system:masters"'}

    def start(self) -> None:
        t0 = time.monotonic()
        d = self.dir
        self._certificates()
        self.tokens = {user: secrets.token_hex(16) for user in self._tokens()}
        (d / "tokens.csv").write_text(
            "".join(f"{self.tokens[user]},{user},{rest}\n" for user, rest in self._tokens().items())
        )
        token = self.tokens["vmfleet-test-admin"]
        etcd_port, peer_port, api_port = free_port(), free_port(), self._api_port()
        etcd_log = open(d / "etcd.log", "wb")
        self.processes.append(
            subprocess.Popen(
                [
                    str(self.bin / "etcd"),
                    "--name=default",
                    f"--data-dir={d / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                    "--log-level=warn",
                    "--unsafe-no-fsync",
                ],
                stdout=etcd_log,
                stderr=subprocess.STDOUT,
            )
        )
        self._apiserver = [str(self.bin / "kube-apiserver"), *self._apiserver_args(etcd_port, api_port)]
        self._start_apiserver()
        self.server = f"https://{self.address}:{api_port}"
        self.kubeconfig = d / "admin.kubeconfig"
        self.kubeconfig.write_text(kubeconfig(self.server, d / "ca.crt", token, "admin"))
        self._wait_ready()
        self.start_seconds = time.monotonic() - t0

    def _start_apiserver(self) -> None:
        with open(self.dir / "apiserver.log", "ab") as log:
            self.processes.append(subprocess.Popen(self._apiserver, stdout=log, stderr=subprocess.STDOUT))

    def _apiserver_process(self) -> subprocess.Popen[bytes]:
        (api,) = [p for p in self.processes if p.args == self._apiserver and p.poll() is None]
        return api

    def apiserver_pid(self) -> int:
        return self._apiserver_process().pid

    def restart_apiserver(self) -> None:
        """The apiserver stopped (SIGTERM) and started again on the same port; etcd, and so every object, kept."""
        api = self._apiserver_process()
        api.terminate()
        api.wait(30)
        self.processes.remove(api)
        self._start_apiserver()
        self._wait_ready()

    def _wait_ready(self) -> None:
        d = self.dir
        token = self.tokens["vmfleet-test-admin"]
        wait_until_ok(
            urllib.request.Request(f"{self.server}/readyz", headers={"Authorization": f"Bearer {token}"}),
            self.processes,
            90,
            lambda: (d / "etcd.log").read_text() + (d / "apiserver.log").read_text(),
            ssl.create_default_context(cafile=str(d / "ca.crt")),
        )

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.terminate()
        for p in reversed(self.processes):
            try:
                p.wait(5)  # throwaway state: no need for a graceful drain
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def install(self, kustomization: Path) -> None:
        """kubectl apply -k, then wait until the new resources are Established and actually listable:
        a fresh CRD answers 429 "storage is (re)initializing" for a while, and kopf backs off for long."""
        self.kubectl("apply", "-k", str(kustomization))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        deadline = time.monotonic() + 60
        while self.kubectl("get", "clonestores,kvmhosts,vmtemplates,vmfleets", "-A", check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("the vmfleet resources were not listable 60 s after their CRDs were Established")
            time.sleep(0.2)

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig for a ServiceAccount, with a token from the TokenRequest API."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=2h").stdout.strip()
        path.write_text(kubeconfig(self.server, self.dir / "ca.crt", token, f"{namespace}-{name}"))
        return path


def build() -> Path:
    done = prebuild.result("kube")
    if done.returncode != 0:
        raise RuntimeError(f"building kube-apiserver failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip())
