#!/usr/bin/env bash
# The seed scenario against the SONAS simulator over SSH: a 10 GiB template with 1 GiB of data,
# three mkclone'd VMs of 0 bytes each. Needs root: the simulator's GPFS is XFS on a loop device,
# so that its clones are real reflinks.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "make demo-sonas needs root (it loop-mounts an XFS file system)" >&2; exit 1; }
command -v mkfs.xfs >/dev/null || apt-get install -y -q xfsprogs >/dev/null
base=/tmp/vmfleet-sonas
mkdir -p "$base/gpfs"
if ! mountpoint -q "$base/gpfs"; then
  [ -f "$base/xfs.img" ] || { truncate -s 40G "$base/xfs.img"; mkfs.xfs -q -m reflink=1 "$base/xfs.img"; }
  mount -o loop "$base/xfs.img" "$base/gpfs"
fi
image="$base/gpfs/frank/image/linux/basic.img"
[ -f "$image" ] || .venv/bin/vmfleet image "$image" --size-mib 10240 --data-mib 1024
rm -f "$base/secret.yaml"
.venv/bin/python -m vmfleet.sim --dir "$base/gpfs" --mount-point /ibm --port 22022 \
    --secret "$base/secret.yaml" >"$base/sim.log" 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null' EXIT
for _ in $(seq 50); do [ -s "$base/secret.yaml" ] && break; sleep 0.1; done
.venv/bin/vmfleet apply -f examples/sonas/ -f "$base/secret.yaml"
