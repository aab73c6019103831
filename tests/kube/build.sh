#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from the Go module proxy, once per go.mod/go.sum/Go version,
# into a cache directory outside the repository; prints the directory holding the binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v go >/dev/null || { echo "go is not installed: the real kube-apiserver is built with it" >&2; exit 1; }
key=$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" <(go version) | sha256sum | cut -c1-16)
cache=${VMFLEET_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmfleet/kube}
bin="$cache/$key/bin"
if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kubectl" ] || [ ! -x "$bin/etcd" ]; then
  mkdir -p "$bin.partial"
  start=$(date +%s)
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags='-s -w' -o "$bin.partial/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./etcd) >&2
  rm -rf "$bin" && mv "$bin.partial" "$bin"
  echo "built kube-apiserver, kubectl and etcd in $(( $(date +%s) - start )) s" >&2
fi
echo "$bin"
