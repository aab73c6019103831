"""A VmTemplate's clone parent: made once per image, counted, removed only when nothing refers to it.

A template pointed at a new image keeps owing a release of the parent of its old one: that parent is listed
in status.retiredParents until no clone of any fleet uses it, no template names its image and every fleet that
may clone from it has said so in its status; the next pass then deletes it (parents are counted per parent, not
per template: issue 16)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import reasons
from ..api.types import CloneStore, VmTemplate
from ..clock import now
from ..storage import StoreDriver, StoreError, parent_path
from .catalog import Catalog, Unresolved
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
    runtime: Runtime,
    template: VmTemplate,
    store: CloneStore,
    clones: int,
    previous: Mapping[str, Any] | None,
    catalog: Catalog | None = None,
) -> tuple[dict[str, Any], list[Event]]:
    """One pass: the template's parent made if missing, counted, and its old parents released that nothing
    needs any more. Without a `catalog` (who else uses parents: `vmfleet apply` sees only its own manifests)
    old parents are listed, never deleted."""
    parent = parent_path(template.image_path, template.image_format)
    events: list[Event] = []
    old = (previous or {}).get("parent") or {}
    same = (old.get("store") or store.meta.name, old.get("path")) == (store.meta.name, parent)
    prepared_at = old.get("preparedAt") if same else None
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
            "store": store.meta.name,
            "image": template.image_path,
            "clones": clones,
            "preparedAt": prepared_at or t,
        }
    retired, said = retire(template, store, previous, t)
    events += said
    if said and not ok:  # the old one is retired, the new one not ready: no parent (merged: null removes it)
        status["parent"] = None
    if catalog is not None:
        retired, done = await release_retired(runtime, retired, (store.meta.name, parent), catalog)
        events += done
    status["retiredParents"] = retired
    return status, events


def retire(
    template: VmTemplate, store: CloneStore, previous: Mapping[str, Any] | None, now: str
) -> tuple[list[dict[str, Any]], list[Event]]:
    """The old parents the template owes a release: those of its status, and the one its status named when it
    names another now."""
    current = (store.meta.name, parent_path(template.image_path, template.image_format))
    entries = [
        dict(e)
        for e in (previous or {}).get("retiredParents") or []
        if isinstance(e, Mapping) and (e.get("store"), e.get("path")) != current  # edited back: its own again
    ]
    old = (previous or {}).get("parent") or {}
    # A status written before parents said their store: the parent was on the store the template names now.
    key = (str(old.get("store") or store.meta.name), str(old.get("path") or ""))
    if not key[1] or key == current or key in {(e.get("store"), e.get("path")) for e in entries}:
        return entries, []
    image = str(old.get("image") or "")
    entries.append(
        {"store": key[0], "path": key[1], "format": str(old.get("format") or ""), "image": image, "retiredAt": now}
    )
    return entries, [
        Event(
            "Normal",
            reasons.PARENT_RETIRED,
            f"{key[1]}{f' (of {image})' if image else ''} is retired: the template now uses {template.image_path};"
            " it is deleted once no clone of any fleet uses it",
        )
    ]


async def release_retired(
    runtime: Runtime,
    entries: Sequence[Mapping[str, Any]],
    current: tuple[str, str],
    catalog: Catalog,
    deleting: bool = False,
) -> tuple[list[dict[str, Any]], list[Event]]:
    """Delete each old parent nothing needs any more; (those kept, each saying why, what happened). The
    template's `current` (store, parent) is its own again: no longer owed. A template being `deleting` lets go
    of a parent another template names now: that one owes it."""
    kept: list[dict[str, Any]] = []
    events: list[Event] = []
    for entry in entries:
        name, path = str(entry.get("store") or ""), str(entry.get("path") or "")
        if (name, path) == current:
            continue  # its own parent again
        holders = catalog.parent_holders(name, path)
        if deleting and holders.templates and not (holders.clones or holders.cloning or holders.uncounted):
            continue
        why = holders.reasons()
        if why:
            kept.append({**entry, "clones": holders.clones, "message": "; ".join(why)})
            continue
        try:
            store = catalog.store_named(name)
        except Unresolved as e:  # out of reach, not gone: listed until the store is back, or the template goes
            if deleting:
                events.append(Event("Warning", e.reason, f"{path} is left where it was: {e}"))
            else:
                kept.append({**entry, "clones": 0, "message": str(e)})
            continue
        left, said = await _delete_retired(runtime, entry, store)
        events += said
        if left is not None:
            kept.append(left)
    return kept, events


async def _delete_retired(
    runtime: Runtime, entry: Mapping[str, Any], store: CloneStore
) -> tuple[dict[str, Any] | None, list[Event]]:
    """Delete one old parent that nothing needs; (the entry again when it stays, what happened)."""
    name, path = store.meta.name, str(entry.get("path") or "")
    driver = runtime.store_driver(store)
    image = str(entry.get("image") or "")
    try:
        async with runtime.parent_lock(store, path):
            if not path.startswith("vmfleet/parents/") or not await driver.exists(path):
                return None, []  # gone already (another template's release, or by hand); nothing of ours
            if not image:  # listed from a status that did not name it: the note beside the parent does
                image = await _noted_image(driver, path)
            image_format = str(entry.get("format") or "raw")
            if not image or parent_path(image, image_format) != path:
                message = f"{path} is not the clone parent of a known image ({image or 'none noted'}): left alone"
                return {**entry, "clones": 0, "message": message}, []
            await driver.delete_parent(path, image)
            await driver.delete(source_path(path))
    except StoreError as e:
        message = f"{path} could not be deleted: {e}"
        said = entry.get("message") == message  # tried every pass, said once
        return {**entry, "clones": 0, "message": message}, [] if said else [
            Event("Warning", reasons.RETIRED_PARENT_FAILED, f"CloneStore {name}: {message}")
        ]
    return None, [
        Event("Normal", reasons.PARENT_DELETED, f"deleted {path} (of {image}): no clone of any fleet uses it")
    ]


async def _noted_image(driver: StoreDriver, parent: str) -> str:
    try:
        noted = json.loads(await driver.read_text(source_path(parent)) or "null")
    except ValueError:
        return ""
    image = noted.get("image") if isinstance(noted, dict) else None
    return image if isinstance(image, str) else ""


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
