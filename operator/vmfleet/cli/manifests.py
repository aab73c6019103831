"""Reading manifests from files and directories, and resolving what they refer to."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from ..api import CloneStore, FieldError, InvalidManifest, KvmHost, Resource, VmFleet, VmTemplate, validate
from ..api.schema import DEFAULT_NAMESPACE
from ..api.types import DRAIN_ANNOTATION, PARSERS, REIMAGE_ANNOTATION, parse
from ..engine.catalog import Catalog, Unresolved

SUFFIXES = (".yaml", ".yml", ".json")


def manifest_files(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            out += sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(SUFFIXES))
        elif os.path.isfile(path):
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return out


@dataclass(frozen=True)
class Secret:
    namespace: str
    name: str
    data: dict[str, str]
    type: str = "Opaque"


def _secret(doc: dict[str, Any], source: str) -> Secret:
    """A core v1 Secret beside the vmfleet objects (standalone mode has no cluster to hold it)."""
    import base64
    import binascii

    meta = doc.get("metadata") or {}
    if not isinstance(meta.get("name"), str):
        raise InvalidManifest(f"Secret ({source})", [FieldError("metadata.name", "required")])
    data = {k: str(v) for k, v in (doc.get("stringData") or {}).items()}
    for k, v in (doc.get("data") or {}).items():
        try:
            data[k] = base64.b64decode(v, validate=True).decode(errors="surrogateescape")  # any bytes, as the API
        except (binascii.Error, TypeError):
            raise InvalidManifest(
                f"Secret {meta['name']!r} ({source})", [FieldError(f"data.{k}", "must be base64")]
            ) from None
    return Secret(meta.get("namespace") or DEFAULT_NAMESPACE, meta["name"], data, str(doc.get("type") or "Opaque"))


@dataclass(frozen=True)
class Loaded:
    doc: dict[str, Any]  # validated and defaulted, as the apiserver would store it
    resource: Resource
    source: str = ""  # file#document


def _key(item: Loaded) -> tuple[str, str, str]:
    meta = item.resource.meta
    return (item.doc["kind"], meta.namespace, meta.name)


def duplicates(items: list[Loaded]) -> list[FieldError]:
    """Two objects of one kind and name: the apiserver would keep one; reconciling both in turn would undo each
    other (a fleet of 3 then of 1 deletes two clones, then makes them again, empty)."""
    first: dict[tuple[str, str, str], Loaded] = {}
    errors = []
    for item in items:
        key = _key(item)
        if key in first:
            kind, ns, name = key
            errors.append(
                FieldError(
                    f"{kind} {ns + '/' if ns else ''}{name}: metadata.name",
                    f"defined twice, in {first[key].source} and {item.source}: keep one",
                )
            )
        else:
            first[key] = item
    return errors


def load(paths: Iterable[str]) -> tuple[list[Loaded], dict[tuple[str, str], Secret]]:
    """Every vmfleet object and Secret in the files; InvalidManifest lists every bad field at once."""
    resources: list[Loaded] = []
    secrets: dict[tuple[str, str], Secret] = {}
    problems: list[str] = []
    for path in manifest_files(paths):
        with open(path, encoding="utf-8") as f:
            try:
                docs = list(yaml.safe_load_all(f))
            except yaml.YAMLError as e:
                problems.append(f"{path}: not valid YAML: {e}")
                continue
        for i, doc in enumerate(d for d in docs if d is not None):
            try:
                if isinstance(doc, dict) and doc.get("apiVersion") == "v1" and doc.get("kind") == "Secret":
                    secret = _secret(doc, f"{path}#{i + 1}")
                    if (secret.namespace, secret.name) in secrets:
                        problems.append(
                            f"Secret {secret.namespace}/{secret.name}: defined twice (again in "
                            f"{path}#{i + 1}): keep one"
                        )
                    secrets[(secret.namespace, secret.name)] = secret
                    continue
                checked = validate(doc, f"{path}#{i + 1}")
                resources.append(Loaded(checked, PARSERS[checked["kind"]].parse(checked), f"{path}#{i + 1}"))
            except InvalidManifest as e:
                problems.append(str(e))
    problems += [str(e) for e in duplicates(resources)]
    if problems:
        raise InvalidManifest("the manifests", [FieldError("", p) for p in problems])
    return resources, secrets


def resolve(resources: Iterable[Resource]) -> tuple[Catalog, list[VmFleet]]:
    """The manifests' objects as the Catalog the engine resolves through, and their fleets in order; a reference to
    an object not in the manifests is an error, all of them at once."""
    resources = list(resources)
    templates = {(r.meta.namespace, r.meta.name): r for r in resources if isinstance(r, VmTemplate)}
    catalog = Catalog(
        stores={r.meta.name: r for r in resources if isinstance(r, CloneStore)},
        hosts=[r for r in resources if isinstance(r, KvmHost)],
        templates=templates,
    )
    fleets = [r for r in resources if isinstance(r, VmFleet)]
    errors = []
    for (ns, name), t in templates.items():
        try:
            catalog.store_of(t)
        except Unresolved:
            errors.append(
                FieldError(f"VmTemplate {ns}/{name}: spec.storeRef.name", f"CloneStore {t.store!r} is not defined")
            )
    for f in fleets:
        try:
            catalog.template_of(f)
        except Unresolved:
            errors.append(
                FieldError(
                    f"VmFleet {f.meta.namespace}/{f.meta.name}: spec.templateRef.name",
                    f"VmTemplate {f.template!r} is not defined in namespace {f.meta.namespace}",
                )
            )
    if errors:
        raise InvalidManifest("the manifests", errors)
    return catalog, fleets


def reimage_in(loaded: list[Loaded], name: str, ordinals: str) -> list[Loaded]:
    """The manifests with the fleet `name` asking for a reimage of `ordinals` (its annotation, as kubectl annotate
    would set it); InvalidManifest when no such fleet is in them."""
    return _annotated(loaded, "VmFleet", name, REIMAGE_ANNOTATION, ordinals, "vmfleet reimage")


def drain_in(loaded: list[Loaded], name: str, value: str) -> list[Loaded]:
    """The manifests with the KvmHost `name` annotated to be drained ("true") or not (""): what `vmfleet drain -f`
    applies."""
    return _annotated(loaded, "KvmHost", name, DRAIN_ANNOTATION, value, "vmfleet drain")


def _annotated(loaded: list[Loaded], kind: str, name: str, key: str, value: str, command: str) -> list[Loaded]:
    out, found = [], False
    for item in loaded:
        if item.doc["kind"] == kind and item.resource.meta.name == name:
            doc = copy.deepcopy(item.doc)
            annotations = doc["metadata"].setdefault("annotations", {})
            if value:
                annotations[key] = value
            else:
                annotations.pop(key, None)
            item = Loaded(doc, parse(doc, item.source), item.source)
            found = True
        out.append(item)
    if not found:
        raise InvalidManifest(command, [FieldError("name", f"no {kind} {name!r} in the manifests")])
    return out
