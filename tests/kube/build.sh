#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from the Go module proxy, once per go.mod/go.sum/Go version,
# into a cache directory outside the repository; prints the directory holding the binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v go >/dev/null || { echo "go is not installed: the real kube-apiserver is built with it" >&2; exit 1; }
version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")
minor=$(echo "$version" | cut -d. -f2)
# What k8s's own build stamps, so that `kubectl version` tells the truth.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1
 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$version"
key=$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" <(go version) <(echo "$ldflags") | sha256sum | cut -c1-16)
cache=${VMFLEET_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmfleet/kube}
bin="$cache/$key/bin"
if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kubectl" ] || [ ! -x "$bin/etcd" ]; then
  mkdir -p "$bin.partial"
  start=$(date +%s)
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="${ldflags//$'\n'/}" -o "$bin.partial/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./etcd) >&2
  rm -rf "$bin" && mv "$bin.partial" "$bin"
  echo "built kube-apiserver, kubectl and etcd in $(( $(date +%s) - start )) s" >&2
fi
echo "$bin"
