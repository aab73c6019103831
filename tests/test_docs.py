"""The docs a newcomer and an operator read stay true to the code: every reason, every metric, the two commands."""

from __future__ import annotations

import dataclasses
import re

from helpers import REPO
from vmfleet import metrics
from vmfleet.api import reasons
from vmfleet.engine.operations import OPERATIONS
from vmfleet.planner import Op
from vmfleet.settings import Settings

OPERATIONS_DOC = (REPO / "docs" / "operations.md").read_text()


def test_the_troubleshooting_table_is_the_one_the_reasons_module_writes() -> None:
    """Every reason that asks for something to be done has a row and a hint; `make crds` writes the table."""
    assert len(reasons.HINTS) >= 25 and all(reasons.HINTS.values())
    table = OPERATIONS_DOC.split(reasons.TABLE_START, 1)[1].split(reasons.TABLE_END, 1)[0]
    assert table == reasons.troubleshooting_table(), "docs/operations.md is stale: run `make crds`"


def test_every_operation_is_defined_once_with_its_reasons() -> None:
    assert set(OPERATIONS) == set(Op)
    for op, how in OPERATIONS.items():
        assert how.op is op and how.did
        assert how.done in reasons.NORMAL and how.failed in reasons.HINTS, op


def test_no_reason_is_spelled_outside_the_reasons_module() -> None:
    """A reason literal anywhere else would dodge the table and the hints: only api/reasons.py spells them."""
    spelled = re.compile(r'"(' + "|".join(sorted(set(reasons.HINTS) | reasons.NORMAL - {"Stalled"})) + r')"')
    found = []
    for path in (REPO / "operator" / "vmfleet").rglob("*.py"):
        if path.name != "reasons.py":
            found += [f"{path.relative_to(REPO)}: {m.group(1)}" for m in spelled.finditer(path.read_text())]
    assert not found, found


def test_every_metric_is_documented() -> None:
    names = {m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    assert len(names) >= 10
    for name in names:
        assert name.removesuffix("_total") in OPERATIONS_DOC or name.split("_fleet_")[-1] in OPERATIONS_DOC, name


def test_every_setting_is_documented_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(VMFLEET_\w+)` \| ([^|]+?) \|", OPERATIONS_DOC, re.M))
    for f in dataclasses.fields(Settings):
        variable = f"VMFLEET_{f.name.upper()}"
        assert variable in rows, variable
        default = getattr(Settings(), f.name)
        if isinstance(default, str):
            assert rows[variable] == (f"`{default}`" if default else "none"), variable
        else:
            assert float(rows[variable]) == default, variable


def test_the_readme_starts_with_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]
    for doc in ("docs/architecture.md", "docs/api.md", "docs/operations.md", "docs/gitops.md"):
        assert ((REPO / doc).exists() and doc.split("/")[1] in readme) or doc in readme, doc
