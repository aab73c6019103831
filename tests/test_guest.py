"""The Linux guest image (vmfleet.guest) boots under QEMU (TCG, SeaBIOS) from its own disk, reads its cloud-init
seed (NoCloud on a virtio disk, ConfigDrive on a SATA CD-ROM), takes a DHCP address and says so on the serial
console; without a seed or DHCP it says that; its ACPI power button powers it off. The guests boot in parallel."""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TIMINGS, unavailable
from helpers import linux_image, wait_for
from vmfleet.errors import ImageBuildError
from vmfleet.guest import CONSOLE_LINE, IMAGE_SIZE, mark_image, missing_host_tools
from vmfleet.seed import Seed

pytestmark = pytest.mark.identity

SLIRP_ADDRESS = "10.0.2.15"  # what QEMU's user-mode network leases to its first guest


def iso(path: Path, label: str, files: dict[str, bytes]) -> Path:
    """An ISO 9660 seed labelled `label`, made as the operator makes them (vmfleet.seed)."""
    path.write_bytes(Seed(label, tuple(sorted(files.items()))).image())
    return path


def vfat(path: Path, label: str, files: dict[str, bytes]) -> Path:
    """A FAT seed as `cloud-localds --filesystem vfat` makes one: mkfs.vfat picks FAT12 for 2 MiB."""
    with open(path, "wb") as f:
        f.truncate(2 << 20)
    subprocess.run(["mkfs.vfat", "-n", label, str(path)], check=True, capture_output=True)
    for name, data in files.items():
        src = path.parent / f"{path.name}.{name}"
        src.write_bytes(data)
        subprocess.run(["mcopy", "-i", str(path), str(src), f"::/{name}"], check=True, capture_output=True)
    return path


def _die_with_parent() -> None:
    """In the child before QEMU runs: a SIGKILLed test run would otherwise leave its QEMUs busy on the cores."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Guest:
    """One QEMU booting a copy of the image: its devices, where its console goes, what it must print."""

    name: str
    dir: Path
    machine: str
    devices: list[tuple[str, str]]  # (option, value), the boot disk's file written {image}
    expected: dict[str, str]
    deadline: float = 60
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    @property
    def log(self) -> Path:
        return self.dir / "console.log"

    @property
    def monitor(self) -> Path:
        return self.dir / "monitor.sock"

    def start(self, image: Path) -> None:
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", self.machine, "-m", "256", "-nographic"]
        argv += ["-serial", f"file:{self.log}", "-monitor", f"unix:{self.monitor},server=on,wait=off"]
        argv += [word.format(image=image) for option in self.devices for word in option]
        with open(self.dir / "qemu.err", "wb") as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, preexec_fn=_die_with_parent
            )

    def console(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def line(self) -> re.Match[str] | None:
        """The guest's VMFLEET-GUEST line once it is on the console; fails at once if QEMU is gone."""
        found = CONSOLE_LINE.search(self.console())
        assert self.proc is not None
        if not found and self.proc.poll() is not None:
            raise AssertionError(f"QEMU for {self.name} exited ({self.proc.returncode}): {self.errors()}")
        return found

    def wait_line(self) -> re.Match[str]:
        left = self.started + self.deadline - time.monotonic()  # the deadline counts from QEMU's start
        found: re.Match[str] = wait_for(self.line, left, f"the {self.name} guest's VMFLEET-GUEST line")
        TIMINGS.setdefault(f"{self.name} guest: QEMU start to VMFLEET-GUEST", time.monotonic() - self.started)
        return found

    def errors(self) -> str:
        return (self.dir / "qemu.err").read_text(errors="replace")[-2000:]

    def monitor_command(self, command: str) -> None:
        """One HMP command, as a person at the monitor types it: after the prompt, then waiting for the next.

        QEMU writes its banner on connecting; to a client already gone that write fails and QEMU drops the
        connection with the command unread (a connect, send and close lost 10 quits of 10 here)."""
        with socket.socket(socket.AF_UNIX) as monitor:
            monitor.settimeout(10)
            monitor.connect(str(self.monitor))
            for line in (b"", command.encode() + b"\n"):
                monitor.sendall(line)
                seen = b""
                while not seen.endswith(b"(qemu) "):
                    data = monitor.recv(4096)
                    if not data:
                        return  # QEMU is gone: a command like quit ends it before the prompt
                    seen += data


def seeds(tmp: Path, token: str) -> tuple[Path, Path, Path]:
    """A NoCloud seed (values quoted both ways), a ConfigDrive seed and a NoCloud seed on FAT written on Windows
    (CRLF, label in upper case), each naming its guest with `token`."""
    nocloud = iso(
        tmp / "nocloud.iso",
        "cidata",
        {
            "meta-data": f"instance-id: \"i-{token}\"\nlocal-hostname: 'web-{token}'\n".encode(),
            "user-data": f"#cloud-config nocloud-{token}\nruncmd: [echo second line]\n".encode(),
        },
    )
    meta = {"availability_zone": "nova", "hostname": f"db-{token}", "launch_index": 0, "uuid": f"u-{token}"}
    configdrive = iso(
        tmp / "configdrive.iso",
        "config-2",
        {
            "openstack/latest/meta_data.json": json.dumps(meta).encode(),
            "openstack/latest/user_data": f"#!/bin/sh configdrive-{token}\necho second line\n".encode(),
        },
    )
    windows = vfat(
        tmp / "vfat.img",
        "CIDATA",
        {
            "meta-data": f"instance-id: v-{token}\r\nlocal-hostname: fat-{token}\r\n".encode(),
            "user-data": f"#cloud-config vfat-{token}\r\nruncmd: []\r\n".encode(),
        },
    )
    return nocloud, configdrive, windows


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Guest]]:
    """Four guests booting at once from copies of one image: NoCloud on virtio (q35); ConfigDrive on a SATA
    CD-ROM with a SATA disk and an e1000 NIC (windows-legacy's devices, machine pc); NoCloud on FAT; one without
    seed or DHCP.
    Every QEMU started here is killed at the end, whatever happened."""
    missing = missing_host_tools() + [t for t in ("qemu-system-x86_64",) if not shutil.which(t)]
    if missing:
        unavailable(f"the Linux guest needs {', '.join(missing)} (hack/system-packages.sh test)")
    tmp = tmp_path_factory.mktemp("guest")
    token = secrets.token_hex(4)
    nocloud, configdrive, windows = seeds(tmp, token)
    virtio_disk = ("-drive", "file={image},if=virtio,format=raw,snapshot=on")
    made = [
        Guest(
            "nocloud",
            tmp / "nocloud",
            "q35",
            [
                virtio_disk,
                ("-drive", f"file={nocloud},if=virtio,format=raw,readonly=on"),
                ("-netdev", "user,id=n0"),
                ("-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"),
            ],
            {
                "hostname": f"web-{token}",
                "instance_id": f"i-{token}",
                "mac": "52:54:00:12:34:56",
                "ip": SLIRP_ADDRESS,
                "user_data": f"#cloud-config nocloud-{token}",
            },
        ),
        Guest(
            "configdrive",
            tmp / "configdrive",
            "pc",
            [
                ("-device", "ahci,id=ahci"),
                ("-drive", "file={image},if=none,id=disk,format=raw,snapshot=on"),
                ("-device", "ide-hd,drive=disk,bus=ahci.1,bootindex=1"),
                ("-drive", f"file={configdrive},if=none,id=cd,media=cdrom,format=raw,readonly=on"),
                ("-device", "ide-cd,drive=cd,bus=ahci.0"),
                ("-netdev", "user,id=n0"),
                ("-device", "e1000,netdev=n0,mac=52:54:00:65:43:21"),
            ],
            {
                "hostname": f"db-{token}",
                "instance_id": f"u-{token}",
                "mac": "52:54:00:65:43:21",
                "ip": SLIRP_ADDRESS,
                "user_data": f"#!/bin/sh configdrive-{token}",
            },
        ),
        Guest(
            "vfat",
            tmp / "vfat",
            "q35",
            [
                virtio_disk,
                ("-drive", f"file={windows},if=virtio,format=raw,readonly=on"),
                ("-netdev", "user,id=n0"),
                ("-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:04"),
            ],
            {
                "hostname": f"fat-{token}",
                "instance_id": f"v-{token}",
                "mac": "52:54:00:00:00:04",
                "ip": SLIRP_ADDRESS,
                "user_data": f"#cloud-config vfat-{token}",
            },
        ),
        Guest(
            "bare",
            tmp / "bare",
            "q35",
            [
                virtio_disk,
                ("-netdev", "hubport,id=n0,hubid=0"),  # a hub with nothing else on it: no DHCP server answers
                ("-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:03"),
            ],
            {
                "hostname": "vmfleet-guest",
                "instance_id": "none",
                "mac": "52:54:00:00:00:03",
                "ip": "none",
                "user_data": "",
            },
            deadline=90,  # it waits for a seed, then for DHCP, before it speaks
        ),
    ]
    try:
        for g in made:
            g.dir.mkdir()
            g.start(linux_image(g.dir))
        yield {g.name: g for g in made}
    finally:
        for g in made:
            if g.proc is not None and g.proc.poll() is None:
                g.proc.kill()
        for g in made:
            if g.proc is not None:
                g.proc.wait(timeout=30)


def test_the_image_is_a_few_tens_of_mib_with_an_active_fat_partition(tmp_path: Path) -> None:
    if missing_host_tools():
        unavailable(f"building the Linux guest needs {', '.join(missing_host_tools())}")
    image = linux_image(tmp_path)
    data = image.read_bytes()
    assert len(data) == IMAGE_SIZE and 16 << 20 <= len(data) <= 64 << 20
    assert data[510:512] == b"\x55\xaa"
    assert data[446] == 0x80 and int.from_bytes(data[454:458], "little") == 2048  # active, at 1 MiB
    files = subprocess.run(
        ["mdir", "-a", "-b", "-i", f"{image}@@1M", "::/"],
        capture_output=True, text=True, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout.split()  # fmt: skip
    assert {"::/vmlinuz", "::/initrd.gz", "::/syslinux.cfg", "::/ldlinux.sys", "::/ldlinux.c32"} <= set(files)


def test_a_marked_image_passes_its_marker_on_the_kernel_command_line(tmp_path: Path) -> None:
    """The marker a test tells two images apart by (test_rollout_guest boots both and reads it on the console)."""
    if missing_host_tools():
        unavailable(f"building the Linux guest needs {', '.join(missing_host_tools())}")
    image = linux_image(tmp_path)
    size = image.stat().st_size
    mark_image(str(image), "rev-2")
    cfg = subprocess.run(
        ["mtype", "-i", f"{image}@@1M", "::/syslinux.cfg"],
        capture_output=True, text=True, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout  # fmt: skip
    assert "  APPEND console=ttyS0 panic=-1 quiet vmfleet.marker=rev-2\n" in cfg
    assert image.stat().st_size == size
    with pytest.raises(ImageBuildError, match="marker 'two words'"):
        mark_image(str(image), "two words")


@pytest.mark.parametrize("name", ["nocloud", "configdrive", "vfat", "bare"])
def test_the_guest_prints_its_seed_mac_and_address(guests: dict[str, Guest], name: str) -> None:
    guest = guests[name]
    found = guest.wait_line()
    assert found.groupdict() == guest.expected, guest.console()[-3000:]
    console = guest.console()
    assert console.count("VMFLEET-GUEST") == 1
    assert ("no seed" in console[: found.start()]) == (name == "bare")


def test_the_power_button_powers_the_guest_off(guests: dict[str, Guest]) -> None:
    guest = guests["bare"]
    guest.wait_line()  # acpid starts before the seed search and DHCP, so it has long been listening
    assert guest.proc is not None

    def pressed_and_off() -> bool:
        # ACPI events nobody listens to are lost: press again until the guest powers itself off
        if guest.proc.poll() is not None:  # type: ignore[union-attr]
            return True
        try:
            guest.monitor_command("system_powerdown")
        except OSError:  # the monitor closed as the guest powered off
            return guest.proc.poll() is not None  # type: ignore[union-attr]
        try:
            guest.proc.wait(timeout=1)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            return False
        return True

    wait_for(pressed_and_off, 30, "the guest to power off after the power button")
    assert guest.proc.returncode == 0, guest.errors()


def test_a_missing_build_tool_is_named_with_its_package_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmfleet.cli import main

    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("apt-get", "dpkg-deb", "mcopy", "syslinux"):  # everything but mkfs.vfat
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tools))
    target = tmp_path / "linux.img"
    assert main(["image", "--linux", str(target), "--cache", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert "mkfs.vfat (dosfstools)" in err
    assert not [t for t in ("apt-get", "dpkg-deb", "mcopy", "syslinux") if shutil.which(t) and f"{t} (" in err]
    assert not target.exists() and not (tmp_path / "cache").exists()
