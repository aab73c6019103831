#!/usr/bin/env bash
# Runs checkov (kept in its own venv: it pins many packages) over deploy/ and the Dockerfile, offline;
# prints one JSON list of the failed checks.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${XDG_CACHE_HOME:-$HOME/.cache}/vmfleet/checkov-3.3.30
if [ ! -f "$venv/.installed" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" && "$venv/bin/pip" install -q checkov==3.3.30 >&2
  touch "$venv/.installed"
fi
out=$(mktemp -d)
# checkov exits 1 when a check fails; the JSON says which, and an empty file means it did not run.
"$venv/bin/checkov" -d deploy --framework kubernetes --skip-download --quiet -o json >"$out/k8s.json" || true
"$venv/bin/checkov" -f Dockerfile --framework dockerfile --skip-download --quiet -o json >"$out/docker.json" || true
[ -s "$out/k8s.json" ] && [ -s "$out/docker.json" ] || { echo "checkov produced no report" >&2; exit 1; }
python3 - "$out" <<'PY'
import json, sys, pathlib
failed = []
for name in ("k8s.json", "docker.json"):
    data = json.loads(pathlib.Path(sys.argv[1], name).read_text() or "[]")
    for report in data if isinstance(data, list) else [data]:
        for check in report.get("results", {}).get("failed_checks", []):
            failed.append({"id": check["check_id"], "name": check["check_name"], "resource": check["resource"]})
print(json.dumps(failed))
PY
rm -rf "$out"
