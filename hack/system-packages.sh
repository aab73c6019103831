#!/usr/bin/env bash
# Installs the Debian packages vmfleet needs, when it can (root on Debian/Ubuntu); otherwise names them.
#   hack/system-packages.sh demo   what `make demo` needs (build libvirt-python, qemu-img, libvirt's test driver)
#   hack/system-packages.sh guest  what makes `make demo` real (QEMU, libvirtd, the Linux guest image's tools):
#                                   installed where it can be, else named; never fails (the demo falls back)
#   hack/system-packages.sh test   what the whole test suite needs (+ XFS tools, bindfs: FUSE, containerd and
#                                   CNI plugins: a single-node cluster)
set -euo pipefail

demo=(gcc pkg-config libvirt-dev qemu-utils)
# dosfstools, mtools, syslinux(-common): `vmfleet image --linux` makes its boot partition without root or a mount
guest=(qemu-system-x86 libvirt-daemon-system dosfstools mtools syslinux syslinux-common)
test=("${demo[@]}" "${guest[@]}" xfsprogs procps openssh-server openssh-client
      podman runc debootstrap bindfs containerd containernetworking-plugins iptables)

case "${1:-demo}" in
  demo) wanted=("${demo[@]}") ;;
  guest) wanted=("${guest[@]}") ;;
  test) wanted=("${test[@]}") ;;
  *) echo "usage: $0 demo|guest|test" >&2; exit 2 ;;
esac

missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ "${1:-demo}" = guest ]; then  # optional: the demo falls back to libvirt's test driver without them
    { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; } ||
      echo "could not install ${missing[*]}: make demo runs on libvirt's test driver" >&2
    exit 0
  fi
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
elif [ "${1:-demo}" = guest ]; then
  echo "for real QEMU guests, make demo wants: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
else
  echo "vmfleet needs these Debian/Ubuntu packages: ${missing[*]}" >&2
  echo "install them (sudo apt-get install ${missing[*]}) and run make again" >&2
  exit 1
fi
