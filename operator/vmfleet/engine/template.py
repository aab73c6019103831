"""A VmTemplate's clone parent: made once per image, counted, removed only when nothing refers to it."""

from __future__ import annotations

from typing import Any, Mapping

from ..api.types import CloneStore, VmTemplate
from ..storage import StoreError, parent_path
from .fleet import now
from .runtime import Runtime
from .status import Event, summary_conditions


async def reconcile_template(
    runtime: Runtime, template: VmTemplate, store: CloneStore, clones: int, previous: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[Event]]:
    parent = parent_path(template.image_path, template.image_format)
    events: list[Event] = []
    old = (previous or {}).get("parent") or {}
    prepared_at = old.get("preparedAt") if old.get("path") == parent else None
    t = now()
    try:
        driver = runtime.store_driver(store)
        async with runtime.parent_lock(store, parent):
            if not await driver.exists(parent):
                await driver.prepare_parent(template.image_path, template.image_format, parent)
                events.append(Event("Normal", "ParentPrepared", f"prepared {parent} from {template.image_path}"))
                prepared_at = t
        ok, reason, message = True, "ParentReady", f"clone parent {parent} is ready"
    except Exception as e:  # noqa: BLE001 - reported in status and as an event
        ok, reason, message = False, "ParentFailed", str(e)
        events.append(Event("Warning", reason, message))
    status: dict[str, Any] = {
        "observedGeneration": template.meta.generation,
        "conditions": summary_conditions("Ready" if ok else "Degraded", reason, message, template.meta.generation,
                                         previous, t),
    }
    if ok:
        status["parent"] = {"path": parent, "format": template.image_format, "clones": clones,
                            "preparedAt": prepared_at or t}
    return status, events


async def release_parent(runtime: Runtime, template: VmTemplate, store: CloneStore, clones: int,
                         shared_with_other_templates: bool) -> tuple[bool, Event]:
    """Delete the template's parent if nothing refers to it; (released, what happened)."""
    parent = parent_path(template.image_path, template.image_format)
    if clones:
        return False, Event("Warning", "ParentInUse",
                            f"{clones} clone(s) still refer to {parent}: delete or scale in their fleets first")
    if shared_with_other_templates:
        return True, Event("Normal", "ParentKept", f"{parent} is kept: another template uses the same image")
    try:
        await runtime.store_driver(store).delete_parent(parent)
    except StoreError as e:
        return False, Event("Warning", "ParentInUse", str(e))
    return True, Event("Normal", "ParentDeleted", f"deleted {parent}")
