#!/usr/bin/env bash
# Installs the Debian packages vmfleet needs, when it can (root on Debian/Ubuntu); otherwise names them.
#   hack/system-packages.sh demo   what `make demo` needs (build libvirt-python, qemu-img, libvirt's test driver,
#                                   the Linux guest image)
#   hack/system-packages.sh test   what the whole test suite needs (+ libvirtd, QEMU, XFS tools, bindfs: FUSE,
#                                   containerd and CNI plugins: a single-node cluster)
set -euo pipefail

# dosfstools, mtools, syslinux(-common): `vmfleet image --linux` makes its boot partition without root or a mount
demo=(gcc pkg-config libvirt-dev qemu-utils dosfstools mtools syslinux syslinux-common)
test=("${demo[@]}" libvirt-daemon-system qemu-system-x86 xfsprogs procps openssh-server openssh-client
      podman runc debootstrap bindfs containerd containernetworking-plugins iptables)

case "${1:-demo}" in
  demo) wanted=("${demo[@]}") ;;
  test) wanted=("${test[@]}") ;;
  *) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac

missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
else
  echo "vmfleet needs these Debian/Ubuntu packages: ${missing[*]}" >&2
  echo "install them (sudo apt-get install ${missing[*]}) and run make again" >&2
  exit 1
fi
