"""A tiny Linux golden image: Debian's kernel and busybox, booted by SYSLINUX from a FAT partition.

The guest reads its cloud-init seed (NoCloud `cidata` or ConfigDrive `config-2`, ISO 9660 or FAT), sets its
hostname, asks DHCP for an address and prints one line on the serial console, so a test can prove that a VM
got its own seed and NIC:

    VMFLEET-GUEST hostname=<h> instance-id=<i> mac=<m> ip=<a or none> user-data=<first line of user-data>

(after `VMFLEET-IMAGE marker=<m>` when the image was given a marker by mark_image: which image it booted).

Everything comes from the Debian packages the machine's apt sources serve (fetched with `apt-get download`,
no root), and the image is made without root or a mount: the initramfs is written here, the FAT file system
with mkfs.vfat and mcopy, the boot sector with the mtools-based `syslinux --install`, the partition table here.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterable

from .errors import ImageBuildError

IMAGE_SIZE = 32 << 20
PARTITION_START = 2048  # sectors: the first partition at 1 MiB, as partitioning tools put it
SECTOR = 512
KERNEL_CMDLINE = "console=ttyS0 panic=-1 quiet"
# An image's marker (mark_image) is a kernel parameter in its syslinux.cfg: the guest prints it as
#     VMFLEET-IMAGE marker=<m>
# on the line before its VMFLEET-GUEST line, so a test can tell which of two images a VM booted from.
MARKER_PARAMETER = "vmfleet.marker"
MARKER = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
IMAGE_LINE = re.compile(r"^VMFLEET-IMAGE marker=(?P<marker>\S+)\r?$", re.MULTILINE)
# The one line the guest prints on its serial console (after a newline; a line ends with \r\n there).
CONSOLE_LINE = re.compile(
    r"^VMFLEET-GUEST hostname=(?P<hostname>\S*) instance-id=(?P<instance_id>\S*) mac=(?P<mac>\S*) "
    r"ip=(?P<ip>\S*) user-data=(?P<user_data>.*?)\r?$",
    re.MULTILINE,
)
HOST_TOOLS = {  # what the build runs -> the Debian package that has it
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "syslinux": "syslinux",
}
MBR_CODE = "/usr/lib/syslinux/mbr/mbr.bin"  # syslinux-common: boots the active partition

# What the guest loads, in this order; their dependencies come first (read from each module's .modinfo).
# virtio disk and NIC (linux-virtio), AHCI disk, CD-ROM and e1000 NIC (windows-legacy, q35's AHCI), the seed's
# file systems, and the ACPI power button with the input events busybox acpid reads.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "ahci",
    "sd_mod",
    "sr_mod",
    "e1000",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "button",
    "evdev",
)


def syslinux_cfg(marker: str = "") -> str:
    """The boot loader's configuration: Debian's kernel and the initramfs, on the serial console."""
    cmdline = f"{KERNEL_CMDLINE} {MARKER_PARAMETER}={marker}" if marker else KERNEL_CMDLINE
    return f"""\
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND {cmdline}
"""


# The guest's /init (busybox sh). It must never exit: PID 1 exiting panics the kernel.
INIT = r"""#!/bin/sh
# vmfleet's test guest: read the cloud-init seed, print one line on the serial console, then stay up.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp /var/log /var/run /seed
say() { echo "vmfleet-guest: $*"; }

while read -r m; do
  insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done < /etc/vmfleet/modules
hostname vmfleet-guest
ip link set lo up
# The ACPI power button powers the guest off (busybox acpid runs /etc/acpi/PWRF/00000080). Started before the
# seed search and DHCP, which take seconds, so the button works as soon as the console line is there.
if command -v acpid >/dev/null; then acpid -f & fi

# The label of block device $1 as "FSTYPE label" (lower case), from the bytes: busybox has no blkid.
read_at() { dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | tr -d '\000'; }
label_of() {
  if [ "$(read_at "$1" 32769 5)" = CD001 ]; then
    fs=iso9660 label=$(read_at "$1" 32808 32)            # ISO 9660: the primary volume descriptor's id
  elif [ "$(read_at "$1" 82 5)" = FAT32 ]; then
    fs=vfat label=$(read_at "$1" 71 11)                   # FAT32 boot sector
  elif [ "$(read_at "$1" 54 3)" = FAT ]; then
    fs=vfat label=$(read_at "$1" 43 11)                   # FAT12/16 boot sector
  else
    return 1
  fi
  echo "$fs $(echo "$label" | sed 's/ *$//' | tr 'A-Z' 'a-z')"
}
find_seed() {
  for dev in /dev/vd* /dev/sd* /dev/sr*; do
    [ -b "$dev" ] || continue
    set -- $(label_of "$dev")
    case "$2" in
      cidata|config-2) SEED_DEV=$dev SEED_FS=$1 SEED_KIND=$2; return 0 ;;
    esac
  done
  return 1
}
uptime_s() { read -r up _ < /proc/uptime; echo "${up%.*}"; }
# SATA and CD-ROM devices are probed asynchronously: look again until a deadline.
deadline=$(( $(uptime_s) + 15 ))
until find_seed; do
  [ "$(uptime_s)" -ge "$deadline" ] && break
  sleep 0.2
done

# A YAML line "key: value" (value maybe quoted) and a JSON string value: sed is enough for a seed's files.
unquote() { sed -e 's/\r$//' -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'$/\1/"; }
yaml_value() { sed -n "s/^$1:[[:space:]]*//p" "$2" 2>/dev/null | head -n 1 | unquote; }
json_value() { sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$2" 2>/dev/null | head -n 1; }

IID=none HOST= USER_DATA=
if [ -z "$SEED_DEV" ]; then
  say "no seed (no volume labelled cidata or config-2)"
elif ! mount -t "$SEED_FS" -o ro "$SEED_DEV" /seed; then
  say "no seed: cannot mount $SEED_DEV ($SEED_FS)"
elif [ "$SEED_KIND" = cidata ]; then
  IID=$(yaml_value instance-id /seed/meta-data)
  HOST=$(yaml_value local-hostname /seed/meta-data)
  USER_DATA=/seed/user-data
else
  IID=$(json_value uuid /seed/openstack/latest/meta_data.json)
  HOST=$(json_value hostname /seed/openstack/latest/meta_data.json)
  USER_DATA=/seed/openstack/latest/user_data
fi
[ -n "$HOST" ] && hostname "$HOST"
FIRST=
[ -n "$USER_DATA" ] && [ -f "$USER_DATA" ] && FIRST=$(head -n 1 "$USER_DATA" | tr -d '\r')

IF= MAC=none ADDR=
for d in /sys/class/net/*; do
  [ "${d##*/}" = lo ] || { IF=${d##*/}; break; }
done
if [ -n "$IF" ]; then
  MAC=$(cat "/sys/class/net/$IF/address")
  ip link set "$IF" up
  # Again when an offer was not acknowledged (udhcpc -n gives up after three requests), as DHCP clients do.
  LEASED=
  for try in 1 2 3; do
    if udhcpc -n -q -t 5 -T 2 -i "$IF" -s /etc/vmfleet/udhcpc >/tmp/udhcpc.log 2>&1; then LEASED=1; break; fi
    grep -q 'select for' /tmp/udhcpc.log || break  # nothing offered at all: no DHCP here
  done
  [ -n "$LEASED" ] || say "no DHCP lease on $IF: $(tr '\n' ' ' < /tmp/udhcpc.log)"
  ADDR=$(ip -4 -o addr show dev "$IF" | sed -n 's/.* inet \([0-9.]*\).*/\1/p' | head -n 1)
fi

line="VMFLEET-GUEST hostname=$(hostname) instance-id=${IID:-none} mac=$MAC ip=${ADDR:-none} user-data=$FIRST"
# The image's marker (vmfleet.marker= on the kernel command line its syslinux.cfg gives), on the line before.
MARKER=$(sed -n 's/.*vmfleet\.marker=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$MARKER" ] && line="VMFLEET-IMAGE marker=$MARKER
$line"
# After a newline: the bootloader leaves terminal escapes on the serial line, and the marker starts a line.
if [ -c /dev/ttyS0 ]; then printf '\n%s\n' "$line" > /dev/ttyS0; else printf '\n%s\n' "$line"; fi

while :; do sleep 3600; done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc's hook: assign the leased address, the default route and the name servers.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for s in $dns; do echo "nameserver $s" >> /etc/resolv.conf; done
    ;;
esac
exit 0
"""

POWER_BUTTON = "#!/bin/sh\npoweroff -f\n"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vmfleet", "guest")


def build_linux_image(path: str, cache_dir: str | None = None) -> None:
    """Write a raw disk image of IMAGE_SIZE bytes at `path` (atomically) that boots Debian's kernel and the
    seed-reading busybox initramfs under QEMU with SeaBIOS. The Debian packages are kept in `cache_dir`
    (default: default_cache_dir()) and reused."""
    _check_host_tools()
    cache = cache_dir or default_cache_dir()
    os.makedirs(cache, exist_ok=True)
    kernel_deb = fetch(kernel_package(cache), cache)
    busybox_deb = fetch("busybox-static", cache)
    # Unpacked beside the cache rather than in /tmp: the kernel package is 400 MiB unpacked, too much for a tmpfs.
    with tempfile.TemporaryDirectory(prefix=".build-", dir=cache) as work:
        kernel = _unpack(kernel_deb, os.path.join(work, "kernel"))
        busybox = _unpack(busybox_deb, os.path.join(work, "busybox"))
        vmlinuz = _one(glob.glob(os.path.join(kernel, "boot", "vmlinuz-*")), f"boot/vmlinuz-* in {kernel_deb}")
        moddir = _one(glob.glob(os.path.join(kernel, "lib", "modules", "*")), f"lib/modules/* in {kernel_deb}")
        initrd = os.path.join(work, "initrd.gz")
        with open(initrd, "wb") as f:
            f.write(initramfs(os.path.join(busybox, "bin", "busybox"), load_order(moddir, GUEST_MODULES)))
        part = os.path.join(work, "boot.fat")
        _fat_partition(part, IMAGE_SIZE - PARTITION_START * SECTOR, {"vmlinuz": vmlinuz, "initrd.gz": initrd})
        out_dir = os.path.dirname(os.path.abspath(path))
        os.makedirs(out_dir, exist_ok=True)
        tmp = path + ".partial"
        try:
            with open(tmp, "wb") as out, open(part, "rb") as fat, open(MBR_CODE, "rb") as mbr:
                out.write(master_boot_record(mbr.read(), PARTITION_START, IMAGE_SIZE // SECTOR - PARTITION_START))
                out.seek(PARTITION_START * SECTOR)
                shutil.copyfileobj(fat, out)
                out.truncate(IMAGE_SIZE)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def missing_host_tools() -> list[str]:
    """What the build needs on this machine and does not find, each as "tool (Debian package)"."""
    missing = [f"{tool} ({pkg})" for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)]
    if not os.path.exists(MBR_CODE):
        missing.append(f"{MBR_CODE} (syslinux-common)")
    return missing


def _check_host_tools() -> None:
    missing = missing_host_tools()
    if missing:
        raise ImageBuildError(f"building the Linux guest image needs {', '.join(missing)}: apt-get install them")


def _run(argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    except OSError as e:  # e.g. busybox-static of another architecture than this machine's
        raise ImageBuildError(f"cannot run {argv[0]}: {e}") from e
    if done.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def _one(found: list[str], what: str) -> str:
    if len(found) != 1:
        raise ImageBuildError(f"expected exactly one {what}, found {len(found)}: {sorted(found)}")
    return found[0]


def fetch(package: str, cache: str) -> str:
    """The .deb of `package` that apt serves now, from `cache` if it is there and intact, else downloaded."""
    out = _run(["apt-get", "download", "--print-uris", package])
    # One line: 'URI' FILENAME SIZE SHA256:HEX
    fields = out.split()
    if len(fields) != 4 or not fields[3].startswith("SHA256:"):
        raise ImageBuildError(f"apt-get download --print-uris {package} said {out.strip()!r}: run apt-get update?")
    name, size, sha256 = fields[1], int(fields[2]), fields[3].removeprefix("SHA256:")
    deb = os.path.join(cache, name)
    if os.path.exists(deb) and os.path.getsize(deb) == size and _sha256(deb) == sha256:
        return deb
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        _run(["apt-get", "download", package], cwd=tmp)  # apt checks the hash
        os.replace(os.path.join(tmp, name), deb)
    return deb


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def kernel_package(cache: str) -> str:
    """The versioned kernel package (linux-image-6.*-amd64) that linux-image-amd64 depends on now."""
    meta = fetch("linux-image-amd64", cache)
    depends = _run(["dpkg-deb", "-f", meta, "Depends"])
    for alternative in depends.replace("|", ",").split(","):
        name = alternative.split("(")[0].strip()
        if name.startswith("linux-image-6.") and name.endswith("-amd64"):
            return name
    raise ImageBuildError(f"linux-image-amd64 depends on no linux-image-6.*-amd64: Depends: {depends.strip()}")


def _unpack(deb: str, into: str) -> str:
    _run(["dpkg-deb", "-x", deb, into])
    return into


# --- kernel modules ---


def modinfo(ko: bytes) -> dict[str, str]:
    """The key=value strings of an ELF64 kernel module's .modinfo section (the first value of each key)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)
    # Elf64_Shdr: name, type, flags, addr, offset, size, link, info, addralign, entsize
    headers = [struct.unpack_from("<IIQQQQIIQQ", ko, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    for h in headers:
        start = names_at + h[0]
        if ko[start : ko.index(b"\0", start)] == b".modinfo":
            info: dict[str, str] = {}
            for item in ko[h[4] : h[4] + h[5]].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    raise ValueError("no .modinfo section")


def _module_index(moddir: str) -> dict[str, str]:
    """Module name (as `depends=` spells it: '_' for '-') -> file, for the kernel tree's modules."""
    index: dict[str, str] = {}
    for dirpath, _, files in os.walk(os.path.join(moddir, "kernel")):
        for f in files:
            for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
                if f.endswith(ext):
                    index[f.removesuffix(ext).replace("-", "_")] = os.path.join(dirpath, f)
    return index


def _read_module(path: str) -> bytes:
    """A module's ELF bytes: busybox insmod does not decompress, so a compressed module is decompressed here."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        if not shutil.which("zstd"):
            raise ImageBuildError(f"{path} is zstd-compressed: decompressing it needs zstd (apt-get install zstd)")
        return subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout
    return data


def load_order(moddir: str, wanted: Iterable[str]) -> list[tuple[str, bytes]]:
    """The modules `wanted` and what they depend on, each after its dependencies, as (name, ELF bytes)."""
    index = _module_index(moddir)
    order: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")  # the kernel takes both; depends= spells some with '-' (t10-pi)
        if name in done:
            return
        if name in chain:
            raise ImageBuildError(f"kernel modules depend on each other in a cycle: {' -> '.join(chain + (name,))}")
        if name not in index:
            needed_by = chain[-1] if chain else "the guest"
            raise ImageBuildError(f"kernel module {name} (needed by {needed_by}) is not in {moddir}")
        data = _read_module(index[name])
        for dep in filter(None, modinfo(data).get("depends", "").split(",")):
            visit(dep, chain + (name,))
        done.add(name)
        order.append((name, data))

    for name in wanted:
        visit(name, ())
    return order


# --- the initramfs ---


class Cpio:
    """An archive in the `newc` format the kernel unpacks as an initramfs (every parent named before its child)."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 0
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self._out += b"070701" + "".join(f"{v:08x}" for v in fields).encode() + name.encode() + b"\0"
        self._out += b"\0" * (-len(self._out) % 4) + data
        self._out += b"\0" * (-len(self._out) % 4)

    def _parents(self, name: str) -> None:
        parent = os.path.dirname(name)
        if parent and parent not in self._dirs:
            self.directory(parent)

    def directory(self, name: str) -> None:
        self._parents(name)
        self._dirs.add(name)
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self._out)


def initramfs(busybox: str, modules: list[tuple[str, bytes]]) -> bytes:
    """The gzip'd initramfs: busybox and its applet links, the modules (loaded in the listed order), /init."""
    # busybox-static is an amd64 static binary, as is the host that builds an amd64 guest: ask it its applets.
    applets = _run([busybox, "--list-full"]).split()
    if "bin/sh" not in applets:
        raise ImageBuildError(f"{busybox} --list-full names no bin/sh: not the busybox this guest needs")
    archive = Cpio()
    for d in ("dev", "proc", "sys", "run", "tmp", "seed", "etc/acpi/PWRF"):
        archive.directory(d)
    archive.char_device("dev/console", 5, 1)  # the kernel opens it for /init before devtmpfs is mounted
    with open(busybox, "rb") as f:
        archive.file("bin/busybox", f.read(), 0o755)
    for applet in applets:
        if applet != "bin/busybox":
            archive.symlink(applet, "/bin/busybox")
    for name, data in modules:
        archive.file(f"lib/modules/{name}.ko", data)
    archive.file("etc/vmfleet/modules", "".join(f"{name}\n" for name, _ in modules).encode())
    archive.file("etc/vmfleet/udhcpc", UDHCPC_SCRIPT.encode(), 0o755)
    archive.file("etc/acpi/PWRF/00000080", POWER_BUTTON.encode(), 0o755)
    archive.file("init", INIT.encode(), 0o755)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


# --- the disk ---


def _fat_partition(path: str, size: int, files: dict[str, str]) -> None:
    """A FAT file system of `size` bytes holding `files` (name -> host path) and syslinux, bootable from
    sector PARTITION_START of a disk (its hidden sectors)."""
    with open(path, "wb") as f:
        f.truncate(size)
    _run(["mkfs.vfat", "-F", "16", "-n", "VMFLEET", "-h", str(PARTITION_START), "--invariant", path])
    cfg = os.path.join(os.path.dirname(path), "syslinux.cfg")
    with open(cfg, "w", encoding="ascii") as f:
        f.write(syslinux_cfg())
    # mtools refuses images whose size is no whole number of its guessed tracks unless told not to check.
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for name, src in {**files, "syslinux.cfg": cfg}.items():
        _run(["mcopy", "-o", "-i", path, src, f"::/{name}"], env=env)
    _run(["syslinux", "--install", path], env=env)


def mark_image(path: str, marker: str) -> None:
    """Give an image build_linux_image wrote a marker, in place: its syslinux.cfg is rewritten (mtools, no
    mount) to pass it on the kernel command line, and the guest prints `VMFLEET-IMAGE marker=<marker>`.
    Two copies marked differently are two images a test can tell apart from a VM's console."""
    if not MARKER.match(marker):
        raise ImageBuildError(f"marker {marker!r}: 1 to 64 letters, digits, '.', '_' or '-'")
    with tempfile.TemporaryDirectory(prefix="vmfleet-mark-") as work:
        cfg = os.path.join(work, "syslinux.cfg")
        with open(cfg, "w", encoding="ascii") as f:
            f.write(syslinux_cfg(marker))
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        _run(["mcopy", "-o", "-i", f"{path}@@{PARTITION_START * SECTOR}", cfg, "::/syslinux.cfg"], env=env)


def _chs(lba: int) -> bytes:
    """The 3-byte CHS address of an LBA for 255 heads and 63 sectors a track (1023/254/63 past the limit)."""
    cylinder, rest = divmod(lba, 255 * 63)
    head, sector = divmod(rest, 63)
    if cylinder > 1023:
        cylinder, head, sector = 1023, 254, 62
    return bytes([head, ((cylinder >> 2) & 0xC0) | (sector + 1), cylinder & 0xFF])


def master_boot_record(code: bytes, start: int, sectors: int) -> bytes:
    """A DOS partition table with one active FAT16 (LBA) partition of `sectors` at `start`, behind `code`."""
    if len(code) > 440:
        raise ImageBuildError(f"{MBR_CODE} is {len(code)} bytes: more than the 440 an MBR has for code")
    entry = b"\x80" + _chs(start) + b"\x0e" + _chs(start + sectors - 1) + struct.pack("<II", start, sectors)
    signature = b"VMFL"  # the disk identifier Linux shows; any non-zero value
    return code.ljust(440, b"\0") + signature + b"\0\0" + entry + b"\0" * 48 + b"\x55\xaa"
