"""`make demo`: the quickstart fleet of examples/quickstart/, for real where this machine can run QEMU.

With QEMU and libvirt's QEMU driver (qemu:///session: no root needed), the template is the tiny Linux guest
(`vmfleet image --linux`, built once), each VM gets its own cloud-init seed, and each VM's console line is
printed once it has booted. Where QEMU cannot run, the same fleet runs on libvirt's test driver, and this says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("DEMO_ROOT", "/tmp/vmfleet-quickstart"))
VMFLEET = str(Path(sys.executable).parent / "vmfleet")
URI = "qemu:///session"
BOOT_TIMEOUT = 120.0
USER_DATA = "#cloud-config demo: hello from {{ name }} ({{ uuid }})\n"


def qemu_problem() -> str | None:
    """Why real guests cannot run here, or None when they can."""
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    import libvirt

    if os.geteuid() == 0 and not Path("/run/libvirt/libvirt-sock").exists() and shutil.which("libvirtd"):
        # root's qemu:///session is served by the system daemon: start it as the tests do
        for daemon in ("virtlockd", "virtlogd", "libvirtd"):
            if shutil.which(daemon):
                subprocess.run([daemon, "-d"], check=False)
        for _ in range(50):
            if Path("/run/libvirt/libvirt-sock").exists():
                break
            time.sleep(0.1)
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError as e:
        return f"libvirt's QEMU driver does not answer at {URI} ({e.get_error_message()})"
    return None


def manifests(real: bool) -> Path:
    out = ROOT / "manifests"
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted((REPO / "examples" / "quickstart").glob("*.yaml")):
        doc = yaml.safe_load(src.read_text())
        if doc["kind"] == "CloneStore":
            doc["spec"]["root"] = str(ROOT)
        if real and doc["kind"] == "KvmHost":
            doc["spec"].update(uri=URI, consoleLogDir=str(ROOT / "logs"))
        if real and doc["kind"] == "VmFleet":
            doc["spec"]["cloudInit"] = {"userData": USER_DATA}
        (out / src.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def console_lines(names: list[str]) -> dict[str, str]:
    deadline = time.monotonic() + BOOT_TIMEOUT
    found: dict[str, str] = {}
    while len(found) < len(names) and time.monotonic() < deadline:
        for name in names:
            log = ROOT / "logs" / f"default.{name}.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            line = next((x.strip() for x in text.splitlines() if x.startswith("VMFLEET-GUEST ")), None)
            if line and name not in found:
                found[name] = line
                print(f"{name}: {line}", flush=True)
        time.sleep(0.5)
    return found


def clean() -> int:
    """Stop and remove the demo's domains (the files go with DEMO_ROOT)."""
    import libvirt

    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError:
        return 0
    for dom in conn.listAllDomains():
        if re.fullmatch(r"default\.demo-[0-9]+", dom.name()) and f"'{ROOT}/" in dom.XMLDesc():  # the demo's only
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    conn.close()
    return 0


def main() -> int:
    if sys.argv[1:] == ["--clean"]:
        return clean()
    problem = qemu_problem()
    image = ROOT / "images" / "basic.img"
    if problem:
        print(f"vmfleet demo: {problem}: running the fleet on libvirt's test driver instead", file=sys.stderr)
        subprocess.run([VMFLEET, "image", str(image)], check=True)
        return subprocess.run([VMFLEET, "apply", "-f", str(manifests(False))]).returncode
    (ROOT / "logs").mkdir(parents=True, exist_ok=True)
    if not image.exists():
        print("vmfleet demo: building the tiny Linux guest image (once)", file=sys.stderr, flush=True)
        subprocess.run([VMFLEET, "image", "--linux", str(image)], check=True)
    done = subprocess.run([VMFLEET, "apply", "-f", str(manifests(True))])
    if done.returncode != 0:
        return done.returncode
    names = [
        f"demo-{i}"
        for i in range(yaml.safe_load((REPO / "examples/quickstart/fleet.yaml").read_text())["spec"]["replicas"])
    ]
    print(f"\nwaiting for the guests to boot (QEMU, {URI}):", flush=True)
    booted = console_lines(names)
    if len(booted) < len(names):
        silent = sorted(set(names) - set(booted))
        print(f"vmfleet demo: {silent} printed nothing in {BOOT_TIMEOUT:.0f} s; see {ROOT / 'logs'}", file=sys.stderr)
        return 1
    print(f"\nThe VMs keep running under {URI}; `make clean` stops and removes them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
