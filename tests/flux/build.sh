#!/usr/bin/env bash
# Builds fluxprobe (Flux's own kstatus and CEL health-check code, see main.go) once per go.mod/go.sum/main.go/Go
# version, into a cache directory outside the repository; prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v go >/dev/null || { echo "go is not installed: Flux's health-check code is built with it" >&2; exit 1; }
key=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" <(go version) | sha256sum | cut -c1-16)
bin="${XDG_CACHE_HOME:-$HOME/.cache}/vmfleet/flux/$key/fluxprobe"
if [ ! -x "$bin" ]; then
  mkdir -p "$(dirname "$bin")"
  (cd "$here" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -buildvcs=false -o "$bin.partial" .) >&2
  mv "$bin.partial" "$bin"
fi
echo "$bin"
