"""`make demo` on this machine (hack/demo.py): real QEMU guests through qemu:///session, each printing the
identity it read from its own seed, and `make clean` taking only the demo's domains away."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from helpers import REPO, open_up

pytestmark = pytest.mark.identity


def test_make_demo_boots_real_guests_that_print_their_own_identity(tmp_path: Path, libvirtd: str) -> None:
    root = tmp_path / "quickstart"
    root.mkdir()
    open_up(root)
    env = {"DEMO_ROOT": str(root), "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run(
        [sys.executable, str(REPO / "hack" / "demo.py")], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test driver instead" not in done.stderr
    lines = dict(re.findall(r"^(demo-\d): (VMFLEET-GUEST .*)$", done.stdout, re.M))
    assert sorted(lines) == ["demo-0", "demo-1", "demo-2"], done.stdout
    conn = libvirt.open("qemu:///session")
    try:
        for vm, line in lines.items():
            uuid = conn.lookupByName(f"default.{vm}").UUIDString()
            assert f"hostname={vm} instance-id={uuid} " in line
            assert f"user-data=#cloud-config demo: hello from {vm} ({uuid})" in line
        subprocess.run([sys.executable, str(REPO / "hack" / "demo.py"), "--clean"], check=True, env=env, timeout=60)
        assert not [d.name() for d in conn.listAllDomains() if d.name().startswith("default.demo-")]
    finally:
        conn.close()
