"""A VmTemplate's clone parent: made once per image, counted, removed only when nothing refers to it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..api import reasons
from ..api.types import CloneStore, VmTemplate
from ..clock import now
from ..storage import StoreDriver, StoreError, parent_path
from .runtime import Runtime
from .status import Event, condition, summary_conditions


def source_path(parent: str) -> str:
    """Beside each parent: which image it was made from, and that image's fingerprint then."""
    return f"{parent}.source"


async def image_changed(driver: StoreDriver, template: VmTemplate, parent: str) -> str:
    """'' while the image is the one the parent was made from; else what changed. A parent found without a
    note (made by an older version) is taken to come from the image as it is now."""
    now_print = await driver.fingerprint(template.image_path)
    text = await driver.read_text(source_path(parent))
    try:
        noted = json.loads(text) if text is not None else None
        then = noted["fingerprint"] if isinstance(noted, dict) else None
    except (ValueError, KeyError):
        then = None
    if then is None:
        await driver.write_text(
            source_path(parent),
            json.dumps({"image": template.image_path, "format": template.image_format, "fingerprint": now_print})
            + "\n",
        )
        return ""
    if then == now_print:
        return ""
    return (
        f"{template.image_path} changed since {parent} was made from it (size:mtime:inode {then} -> "
        f"{now_print or 'missing'}): existing and new clones still come from the old image; to roll the new "
        "one out, point a template at a new image path"
    )


async def reconcile_template(
    runtime: Runtime, template: VmTemplate, store: CloneStore, clones: int, previous: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[Event]]:
    parent = parent_path(template.image_path, template.image_format)
    events: list[Event] = []
    old = (previous or {}).get("parent") or {}
    prepared_at = old.get("preparedAt") if old.get("path") == parent else None
    t = now()
    changed = ""
    try:
        driver = runtime.store_driver(store)
        async with runtime.parent_lock(store, parent):
            if not await driver.exists(parent):
                await driver.prepare_parent(template.image_path, template.image_format, parent)
                events.append(Event("Normal", reasons.PARENT_PREPARED, f"prepared {parent} from {template.image_path}"))
                prepared_at = t
            changed = await image_changed(driver, template, parent)
        ok, reason, message = True, reasons.PARENT_READY, f"clone parent {parent} is ready"
    except StoreError as e:  # the driver's one error for the store, its Secret and its connection
        ok, reason, message = False, reasons.PARENT_FAILED, str(e)
        events.append(Event("Warning", reason, message))
    conditions = summary_conditions(
        "Ready" if ok else "Degraded", reason, message, template.meta.generation, previous, t
    )
    if changed:  # present only while true; said once as an event
        conditions.append(
            condition(
                reasons.IMAGE_CHANGED, True, reasons.IMAGE_CHANGED, changed, template.meta.generation, previous, t
            )
        )
        if not any(c.get("type") == reasons.IMAGE_CHANGED for c in (previous or {}).get("conditions", []) or []):
            events.append(Event("Warning", reasons.IMAGE_CHANGED, changed))
    status: dict[str, Any] = {
        "observedGeneration": template.meta.generation,
        "conditions": conditions,
    }
    if ok:
        status["parent"] = {
            "path": parent,
            "format": template.image_format,
            "clones": clones,
            "preparedAt": prepared_at or t,
        }
    return status, events


async def release_parent(
    runtime: Runtime, template: VmTemplate, store: CloneStore, clones: int, shared_with_other_templates: bool
) -> tuple[bool, Event]:
    """Delete the template's parent if nothing refers to it; (released, what happened)."""
    parent = parent_path(template.image_path, template.image_format)
    if clones:
        return False, Event(
            "Warning",
            reasons.PARENT_IN_USE,
            f"{clones} clone(s) still refer to {parent}: delete or scale in their fleets first",
        )
    if shared_with_other_templates:
        return True, Event("Normal", reasons.PARENT_KEPT, f"{parent} is kept: another template uses the same image")
    driver = runtime.store_driver(store)
    try:
        await driver.delete_parent(parent, template.image_path)
        await driver.delete(source_path(parent))
    except StoreError as e:
        return False, Event("Warning", reasons.PARENT_IN_USE, str(e))
    return True, Event("Normal", reasons.PARENT_DELETED, f"deleted {parent}")
