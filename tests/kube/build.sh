#!/usr/bin/env bash
# Builds a Kubernetes cluster's binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
# kube-proxy, kubelet, kubectl), etcd and a pod sandbox's pause from the Go module proxy, once per go.mod/go.sum/Go version,
# into a cache directory outside the repository; prints the directory holding the binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v go >/dev/null || { echo "go is not installed: the real kube-apiserver is built with it" >&2; exit 1; }
version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")
minor=$(echo "$version" | cut -d. -f2)
# What k8s's own build stamps, so that `kubectl version` tells the truth.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1
 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$version"
key=$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" "$here/pause/main.go" <(go version) <(echo "$ldflags") | sha256sum | cut -c1-16)
cache=${VMFLEET_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmfleet/kube}
bin="$cache/$key/bin"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl etcd pause)
built=1
for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || built=0; done
if [ "$built" = 0 ]; then
  mkdir -p "$bin.partial"
  start=$(date +%s)
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="${ldflags//$'\n'/}" -o "$bin.partial/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kubectl ./etcd ./pause) >&2
  rm -rf "$bin" && mv "$bin.partial" "$bin"
  echo "built ${binaries[*]} in $(( $(date +%s) - start )) s" >&2
fi
echo "$bin"
