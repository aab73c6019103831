#!/usr/bin/env bash
# The static checks `make test` runs before the tests: lint and format (ruff), types (mypy --strict on the
# package) and layers (import-linter, the contracts in pyproject.toml). Each prints what it finds.
set -euo pipefail  # pipefail: lint-imports's status survives the sed
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
"$venv/bin/ruff" check operator tests bench
"$venv/bin/ruff" format --check operator tests bench
"$venv/bin/mypy"
PYTHONPATH=operator "$venv/bin/lint-imports" | sed -n "/^Contracts/,\$p"  
