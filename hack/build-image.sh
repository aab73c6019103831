#!/usr/bin/env bash
# Builds the operator image with podman (no Docker engine, no registry: the base is a debootstrap'd
# Debian imported once) and proves it runs read-only without capabilities. Needs root.
# Settings and quirks of these machines: shared/reference/container-build.md.
# VMFLEET_IMAGE_ARCHIVE=FILE also saves it there (docker-archive), for `ctr images import` on a registry-less node.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${VMFLEET_IMAGE_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/vmfleet/image}
image=${VMFLEET_IMAGE:-localhost/vmfleet:0.1.0}
base=localhost/vmfleet-base:bookworm
mkdir -p "$work"
cat > "$work/containers.conf" <<CONF
[containers]
netns = "host"
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat > "$work/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$work/storage"
runroot = "$work/run"
CONF
export CONTAINERS_CONF="$work/containers.conf" CONTAINERS_STORAGE_CONF="$work/storage.conf"

if ! podman image exists "$base"; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  rootfs="$work/rootfs"
  rm -rf "$rootfs"
  # A mirror caught mid-sync fails a debootstrap once in a while (seen in CI): it is tried three times.
  for try in 1 2 3; do
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$rootfs" \
        "${mirror:-http://deb.debian.org/debian}" >&2 && break
    tail -5 "$rootfs/debootstrap/debootstrap.log" >&2 || true
    [ "$try" = 3 ] && { echo "debootstrap failed three times" >&2; exit 1; }
    rm -rf "$rootfs"; sleep 10
  done
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs/etc/resolv.conf"
  tar -C "$rootfs" -c . | podman import - "$base" >&2
  rm -rf "$rootfs"
fi
podman build --network=host --build-arg "BASE=$base" \
    -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca/ca-certificates.crt:ro \
    --build-arg PIP_CERT=/run/host-ca/ca-certificates.crt -t "$image" . >&2
podman run --rm --read-only --cap-drop=ALL --network=none --user 10001 "$image" --help
if [ -n "${VMFLEET_IMAGE_ARCHIVE:-}" ]; then
  rm -f "$VMFLEET_IMAGE_ARCHIVE"
  podman save --format docker-archive -o "$VMFLEET_IMAGE_ARCHIVE" "$image" >&2
fi
