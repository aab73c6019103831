"""Fixtures that start the real components: XFS on a loop device, libvirtd and virtlogd.

Outside CI a component that cannot start skips its tests, loudly; with VMFLEET_REQUIRE_REAL=1 (as
.ci/run sets) it fails them instead, so nothing real is ever skipped in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import prebuild
from vmfleet.engine import Runtime
from vmfleet.images import make_template_image

if TYPE_CHECKING:
    from cluster import Cluster
    from node_cluster import NodeCluster
    from operator_process import OperatorProcess

REPO = Path(__file__).resolve().parent.parent
REQUIRE_REAL = os.environ.get("VMFLEET_REQUIRE_REAL") == "1"


TIMINGS: dict[str, float] = {}
BUILT_FOR = {"kube": ("kube",), "node_cluster": ("kube", "image"), "flux": ("flux",)}  # fixture: the builds it needs


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, seconds in TIMINGS.items():
        terminalreporter.write_line(f"vmfleet: {what} in {seconds:.1f} s")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that need a cold build run last, while the build goes on beside the others (tests/prebuild.py).
    The sort is stable: the tests of each file keep their order."""
    items.sort(key=lambda item: bool(BUILT_FOR.keys() & set(getattr(item, "fixturenames", ()))))


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    needed = set().union(*(getattr(item, "fixturenames", ()) for item in session.items))
    for fixture, builds in BUILT_FOR.items():
        if fixture in needed:
            for name in builds:
                prebuild.start(name)


def pytest_sessionfinish() -> None:
    prebuild.stop()


def unavailable(what: str) -> None:
    """A real component cannot run: fail under VMFLEET_REQUIRE_REAL=1 (CI), else skip loudly."""
    stop = pytest.fail if REQUIRE_REAL else pytest.skip  # CI sets VMFLEET_REQUIRE_REAL=1: never a silent skip
    stop(f"real component unavailable (VMFLEET_REQUIRE_REAL={int(REQUIRE_REAL)}): {what}")


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


@pytest.fixture(scope="session")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real XFS file system with reflink=1 on a loop device."""
    if os.geteuid() != 0:
        unavailable("loop-mounting XFS needs root")
    if not shutil.which("mkfs.xfs"):
        unavailable("mkfs.xfs is missing (apt-get install xfsprogs)")
    base = tmp_path_factory.mktemp("xfs")
    image, mnt = base / "xfs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(8 << 30)
    run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
    done = run("mount", "-o", "loop", str(image), str(mnt), check=False)
    if done.returncode != 0:
        unavailable(f"mount -o loop failed: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        run("umount", "-l", str(mnt), check=False)
        image.unlink(missing_ok=True)


def _libvirtd_answers() -> bool:
    import libvirt

    try:
        libvirt.open("qemu:///system").close()
        return True
    except libvirt.libvirtError:
        return False


QEMU_CONF = Path("/etc/libvirt/qemu.conf")
LOCK_MANAGER = 'lock_manager = "lockd"'


def lock_disks_with_virtlockd(conf: Path = QEMU_CONF) -> bool:
    """I2's second line of defence: libvirt's QEMU driver takes a virtlockd lease on every disk of a domain it
    starts. One line of the machine's qemu.conf is added or replaced, the rest kept. True when it changed."""
    lines = conf.read_text().splitlines() if conf.exists() else []
    at = [i for i, line in enumerate(lines) if re.match(r"\s*lock_manager\s*=", line)]
    if [lines[i].strip() for i in at] == [LOCK_MANAGER]:
        return False
    if at:
        lines[at[0]] = LOCK_MANAGER
        lines = [line for i, line in enumerate(lines) if i not in at[1:]]
    else:
        lines.append(LOCK_MANAGER)
    new = conf.with_name(conf.name + ".vmfleet-new")
    new.write_text("\n".join(lines) + "\n")
    os.chmod(new, conf.stat().st_mode & 0o7777 if conf.exists() else 0o600)
    os.replace(new, conf)
    return True


def _daemon_pid(daemon: str) -> int | None:
    """The pid of this machine's `<daemon> -d`, from its pid file in /run (not one in another mount namespace)."""
    try:
        pid = int(Path(f"/run/{daemon}.pid").read_text().strip())
        return pid if Path(f"/proc/{pid}/comm").read_text().strip() == daemon else None
    except (OSError, ValueError):
        return None


def _wait_for_pid(daemon: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (pid := _daemon_pid(daemon)) is None:
        if time.monotonic() > deadline:
            unavailable(f"{daemon} -d wrote no /run/{daemon}.pid within {timeout:.0f} s")
        time.sleep(0.05)
    return pid


def _started_at(pid: int) -> float:
    """When a process started, in seconds since the epoch (to within a second: /proc/stat's btime)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(
        float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _stop(pid: int, timeout: float = 30) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[str]:
    """The real libvirtd with virtlogd (QEMU domains need it) and virtlockd (qemu.conf's lock_manager = "lockd":
    every disk leased), started by hand when not running, restarted when it runs with an older qemu.conf."""
    if os.geteuid() != 0:
        unavailable("the system libvirtd needs root")
    if not all(shutil.which(p) for p in ("libvirtd", "virtlockd", "virtlogd", "qemu-system-x86_64")):
        unavailable(
            "libvirtd, virtlockd, virtlogd or qemu-system-x86_64 is missing (apt-get install "
            "libvirt-daemon-system qemu-system-x86)"
        )
    changed = lock_disks_with_virtlockd()
    started: dict[str, int] = {}
    for daemon in ("virtlockd", "virtlogd"):  # before libvirtd: it needs both at every domain start
        if _daemon_pid(daemon) is None:
            subprocess.run([daemon, "-d"], check=True)
            started[daemon] = _wait_for_pid(daemon)
    running = _daemon_pid("libvirtd")
    if running is not None and (changed or QEMU_CONF.stat().st_mtime > _started_at(running) + 2):
        _stop(running)  # it read qemu.conf before the lock manager was set; its domains keep running
        subprocess.run(["libvirtd", "-d"], check=True)  # someone else's: left running at the end
    elif running is None and not _libvirtd_answers():
        subprocess.run(["libvirtd", "-d"], check=True)
        started["libvirtd"] = _wait_for_pid("libvirtd")
    deadline = time.monotonic() + 30
    while not _libvirtd_answers():
        if time.monotonic() > deadline:
            unavailable("libvirtd did not answer on qemu:///system within 30 s")
        time.sleep(0.2)
    try:
        yield "qemu:///system"
    finally:
        if "libvirtd" in started:  # virtlogd and virtlockd serve every running domain: they go only with it
            for daemon in ("libvirtd", "virtlogd", "virtlockd"):
                if daemon in started:
                    _stop(started[daemon])


@pytest.fixture
async def runtime() -> Iterator[Runtime]:
    rt = Runtime()
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture(scope="session")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 MiB bootable template with 8 MiB of data."""
    path = tmp_path_factory.mktemp("images") / "template.img"
    make_template_image(str(path), 64 << 20, 8 << 20, marker="VMFLEET-BOOT-OK")
    return path


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(autouse=True)
def _kube_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on the shared apiserver leaves no vmfleet.io object behind (see Cluster.remove_vmfleet_objects_since)."""
    if "kube" not in request.fixturenames:
        yield
        return
    kube: Cluster = request.getfixturevalue("kube")
    before = kube.vmfleet_objects()
    yield
    kube.remove_vmfleet_objects_since(before)


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real etcd and kube-apiserver on loopback with RBAC, deploy/ applied (CRDs, RBAC, namespace)."""
    from cluster import Cluster, build

    if not shutil.which("go"):
        unavailable("go is not installed: the test apiserver is built from the Go module proxy")
    t0 = time.monotonic()
    try:
        binaries = build()
    except RuntimeError as e:
        unavailable(str(e))
    TIMINGS["kube binaries built or found"] = time.monotonic() - t0
    cluster = Cluster(binaries, tmp_path_factory.mktemp("kube"))
    try:
        cluster.start()
    except RuntimeError as e:
        cluster.stop()
        unavailable(str(e))
    TIMINGS["kube-apiserver and etcd ready"] = cluster.start_seconds
    try:
        cluster.install(REPO / "deploy")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """A single-node cluster (kubelet, containerd, controller-manager, scheduler, kube-proxy) with the project's
    image imported as localhost/vmfleet:0.1.0; torn down at the end, and the machine checked clean."""
    from cluster import build
    from node_cluster import NodeCluster

    if os.geteuid() != 0:
        unavailable("a kubelet and containerd need root")
    missing = [t for t in ("go", "containerd", "ctr", "podman", "runc", "iptables") if not shutil.which(t)]
    if missing or not Path("/usr/lib/cni/bridge").exists():
        unavailable(f"missing {missing or 'CNI plugins'} (hack/system-packages.sh test)")
    t0 = time.monotonic()
    try:
        binaries = build()
    except RuntimeError as e:
        unavailable(str(e))
    base = tmp_path_factory.mktemp("node")
    archive = prebuild.image_archive()
    done = prebuild.result("image")
    if done.returncode:
        unavailable(f"hack/build-image.sh failed:\n{done.stderr[-3000:]}")
    TIMINGS["cluster binaries and operator image built or found"] = time.monotonic() - t0
    cluster = NodeCluster(binaries, base / "cluster")
    cluster.dir.mkdir()
    # pytest runs no finalizer on SIGTERM (a CI timeout): as an interrupt, it does, and the machine is cleaned
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        try:
            cluster.start()
            t1 = time.monotonic()
            cluster.import_image(archive)
            TIMINGS["operator image imported into containerd"] = time.monotonic() - t1
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            _stop_clean(cluster)
            unavailable(str(e))
        except BaseException:
            _stop_clean(cluster)
            raise
        archive.unlink()
        TIMINGS["single-node cluster Ready"] = cluster.ready_seconds
        try:
            yield cluster
        finally:
            _stop_clean(cluster)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_clean(cluster: NodeCluster) -> None:
    t0 = time.monotonic()
    signals = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:  # a second interrupt must not leave daemons running and the machine half-undone
        cluster.stop()
    finally:
        for sig, handler in signals.items():
            signal.signal(sig, handler)
    TIMINGS["single-node cluster torn down"] = time.monotonic() - t0
    left = cluster.leftovers() if cluster.owned else []
    assert not left, f"the cluster left these on the machine: {left}"


class Sshd:
    """OpenSSH's sshd on a loopback port, root login by key only: a second way into the KVM host."""

    def __init__(self, base: Path, config: Sequence[str] = (), address: str = "127.0.0.1", port: int = 0):
        self.base, self.port, self.config = base, port, list(config)  # config: more sshd_config lines
        self.address = address
        self.proc: subprocess.Popen[bytes] | None = None
        for key in ("host", "client"):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / key))
        (base / "authorized_keys").write_text((base / "client.pub").read_text())

    @property
    def private_key(self) -> str:
        return (self.base / "client").read_text()

    @property
    def known_hosts(self) -> str:
        host = self.address if self.port == 22 else f"[{self.address}]:{self.port}"  # ssh's own form
        return f"{host} {(self.base / 'host.pub').read_text()}"

    def start(self) -> None:
        from cluster import free_port

        self.port = self.port or free_port()
        (self.base / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.address}",
                    f"HostKey {self.base / 'host'}",
                    f"PidFile {self.base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    *self.config,
                    "",
                ]
            )
        )
        if self.port:  # a port of our choosing: another listener there would answer the readiness check below
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no listener
                try:
                    probe.bind((self.address, self.port))
                except OSError as e:
                    raise RuntimeError(f"{self.address}:{self.port} is taken by another listener: {e}") from None
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-f", str(self.base / "sshd_config"), "-E", str(self.base / "sshd.log")]
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((self.address, self.port), 1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"sshd did not start: {(self.base / 'sshd.log').read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """The listener and every session it forked (libvirt's open connection among them): the host is gone."""
        if not self.proc or self.proc.poll() is not None:
            return
        sessions = [pid for pid in _descendants(self.proc.pid)]
        self.proc.terminate()
        self.proc.wait(10)
        for pid in sessions:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/sshd"):
        unavailable("sshd needs root and openssh-server (apt-get install openssh-server)")
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def operator(kube: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator as its own process, as deploy/'s ServiceAccount; one per test module (never two at once)."""
    from operator_process import OperatorProcess

    d = tmp_path_factory.mktemp("operator")
    sa = kube.service_account_kubeconfig("vmfleet-system", "vmfleet-operator", d / "sa.kubeconfig")
    op = OperatorProcess(sa, d / "operator.log")
    op.start()
    yield op
    op.stop()


class FuseMount:
    """A FUSE pass-through mount (bindfs, in the foreground) of `source` at `path`. `freeze` stops the FUSE
    daemon (SIGSTOP): every call on the mount then blocks in the kernel, as on a hung NFS or FUSE mount, until
    `thaw`. `source` stays reachable without the mount, to look at what the store holds while it is frozen."""

    def __init__(self, source: Path, path: Path, proc: subprocess.Popen[bytes]):
        self.source, self.path, self.proc = source, path, proc
        self.frozen = False

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False


def _mounted(path: Path) -> bool:
    """From /proc/self/mountinfo: a stat of the mount point would hang on a frozen mount."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@pytest.fixture
def fuse_mount(tmp_path: Path) -> Iterator[FuseMount]:
    """A FUSE mount to freeze. Always thawed and unmounted at the end, lazily if something still holds it."""
    if not shutil.which("bindfs") or not shutil.which("fusermount"):
        unavailable("bindfs or fusermount is missing (apt-get install bindfs)")
    if not os.path.exists("/dev/fuse"):
        unavailable("/dev/fuse is missing: FUSE cannot be used here")
    source, path = tmp_path / "fuse-source", tmp_path / "fuse-mount"
    source.mkdir()
    path.mkdir()
    log = tmp_path / "bindfs.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bindfs", "-f", str(source), str(path)], stdout=out, stderr=subprocess.STDOUT)
    mount = FuseMount(source, path, proc)
    try:
        deadline = time.monotonic() + 10
        while not _mounted(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                unavailable(f"bindfs could not mount {path}: {log.read_text(errors='replace').strip()}")
            time.sleep(0.05)
        yield mount
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        if _mounted(path) and run("fusermount", "-u", str(path), check=False).returncode != 0:
            run("fusermount", "-uz", str(path), check=False)  # still busy: detached now, gone when released
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
