"""The docs a newcomer and an operator read stay true to the code: every reason, every metric, the two commands."""

from __future__ import annotations

import dataclasses
import re

from helpers import REPO
from vmfleet import metrics
from vmfleet.cli.output import HINTS
from vmfleet.settings import Settings

OPERATIONS = (REPO / "docs" / "operations.md").read_text()
_REASON = re.compile(r'Event\("Warning", "(\w+)"|Problem\(\s*Severity\.\w+,\s*"(\w+)"|Unresolved\("(\w+)"'
                     r'|Op\.\w+: "(\w+Failed)"|summary_conditions\("Degraded", "(\w+)"|blocked_status\([^)]*"Degraded", "(\w+)"'
                     r'|ok, reason, message = False, "(\w+)"|reason = "\w+" if ok else "(\w+)"')


def reasons_in_code() -> set[str]:
    found: set[str] = set()
    for path in (REPO / "operator" / "vmfleet").rglob("*.py"):
        for match in _REASON.finditer(path.read_text()):
            found.update(g for g in match.groups() if g)
    return found - {"NotStalled", "NotDegraded", "Converged"}


def test_every_reason_has_a_hint_and_a_row_in_the_troubleshooting_table() -> None:
    reasons = reasons_in_code()
    assert {"TemplateNotFound", "HostUnreachable", "CloneLost", "StoreUnavailable", "CreateCloneFailed",
            "InsufficientCapacity", "ParentFailed", "RootMissing", "HostInUse"} <= reasons  # the scan finds them
    assert reasons <= set(HINTS), reasons - set(HINTS)
    rows = set(re.findall(r"^\| `(\w+)`", OPERATIONS, re.M)) | set(re.findall(r"`(\w+Failed)`", OPERATIONS))
    assert reasons <= rows, reasons - rows


def test_every_metric_is_documented() -> None:
    names = {m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    assert len(names) >= 10
    for name in names:
        assert name.removesuffix("_total") in OPERATIONS or name.split("_fleet_")[-1] in OPERATIONS, name


def test_every_setting_is_documented_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(VMFLEET_\w+)` \| ([\d.]+) \|", OPERATIONS, re.M))
    for f in dataclasses.fields(Settings):
        variable = f"VMFLEET_{f.name.upper()}"
        assert variable in rows, variable
        assert float(rows[variable]) == getattr(Settings(), f.name), variable


def test_the_readme_starts_with_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]
    for doc in ("docs/architecture.md", "docs/api.md", "docs/operations.md", "docs/gitops.md"):
        assert (REPO / doc).exists() and doc.split("/")[1] in readme or doc in readme, doc
