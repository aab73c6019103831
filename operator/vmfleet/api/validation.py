"""Standalone validation with the apiserver's meaning: defaults, the OpenAPI schema, CEL-equivalent rules.

Every error names the field (`spec.replicas`) and the rule it breaks.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Iterator

import jsonschema

from .crd import RULES_KEY, root_schema
from .schema import API_VERSION, KINDS, NAME_PATTERN, Kind, Schema


@dataclass(frozen=True)
class FieldError:
    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class InvalidManifest(ValueError):
    def __init__(self, what: str, errors: list[FieldError]):
        self.what = what
        self.errors = errors
        super().__init__(f"{what} is invalid:\n" + "\n".join(f"  {e}" for e in errors))


def _path(parts: Iterator[Any] | list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _strict(schema: Schema, open_object: bool = False) -> Schema:
    """The schema for jsonschema: unknown fields are errors (as `kubectl apply --validate=strict`),
    except in metadata, whose other fields Kubernetes itself checks."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if k not in (RULES_KEY, "properties")}
        if "properties" in schema:
            props = schema["properties"]
            top = "metadata" in props and "spec" in props
            out["properties"] = {k: _strict(v, open_object=top and k == "metadata") for k, v in props.items()}
            if not top and not open_object and "additionalProperties" not in out:
                out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


_VALIDATORS: dict[str, jsonschema.Draft7Validator] = {}


def _validator(kind: Kind) -> jsonschema.Draft7Validator:
    if kind.kind not in _VALIDATORS:
        _VALIDATORS[kind.kind] = jsonschema.Draft7Validator(_strict(root_schema(kind)))
    return _VALIDATORS[kind.kind]


def _describe(error: jsonschema.ValidationError) -> FieldError:
    path = list(error.absolute_path)
    v, arg = error.validator, error.validator_value
    if v == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        return FieldError(_path(path + [missing.group(1) if missing else "?"]), "required")
    if v == "additionalProperties":
        extra = re.findall(r"'([^']+)'", error.message)
        return FieldError(_path(path + extra[:1]), "unknown field")
    rules = {
        "type": lambda: f"must be of type {arg}",
        "pattern": lambda: f"must match {arg}",
        "enum": lambda: "must be one of: " + ", ".join(map(str, arg)),
        "minimum": lambda: f"must be >= {arg}",
        "maximum": lambda: f"must be <= {arg}",
        "maxLength": lambda: f"must be at most {arg} characters",
        "maxItems": lambda: f"must have at most {arg} items",
        "maxProperties": lambda: f"must have at most {arg} entries",
    }
    return FieldError(_path(path), rules.get(str(v), lambda: error.message)())


def _apply_defaults(schema: Schema, value: Any) -> None:
    if isinstance(value, dict) and schema.get("type") == "object":
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _apply_defaults(schema["items"], item)


def _check_rules(schema: Schema, value: Any, path: list[Any]) -> Iterator[FieldError]:
    """CEL-equivalent rules and list-map key uniqueness, at every level of the object."""
    if isinstance(value, dict):
        for rule in schema.get(RULES_KEY, ()):
            if not rule.check(value):
                yield FieldError(_path(path + rule.field.split(".") if rule.field else path), rule.message)
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                yield from _check_rules(sub, value[name], path + [name])
    elif isinstance(value, list) and "items" in schema:
        keys = schema.get("x-kubernetes-list-map-keys")
        seen: set[tuple[Any, ...]] = set()
        for i, item in enumerate(value):
            if keys and isinstance(item, dict):
                key = tuple(item.get(k) for k in keys)
                if key in seen:
                    yield FieldError(_path(path + [i]), f"duplicate entry for {', '.join(keys)} = {key[0]}")
                seen.add(key)
            yield from _check_rules(schema["items"], item, path + [i])


def validate(doc: Any, source: str = "manifest") -> dict[str, Any]:
    """A validated, defaulted copy of one vmfleet object; raises InvalidManifest naming each bad field."""
    if not isinstance(doc, dict):
        raise InvalidManifest(source, [FieldError("(root)", "must be a mapping with apiVersion, kind, metadata, spec")])
    kind_name = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION:
        raise InvalidManifest(source, [FieldError("apiVersion", f"must be {API_VERSION}")])
    if kind_name not in KINDS:
        raise InvalidManifest(source, [FieldError("kind", "must be one of: " + ", ".join(KINDS))])
    kind = KINDS[kind_name]
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    what = f"{kind_name} {name!r} ({source})" if isinstance(name, str) else f"{kind_name} ({source})"
    errors: list[FieldError] = []
    if not isinstance(meta, dict):
        raise InvalidManifest(what, [FieldError("metadata", "required, a mapping")])
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name) or len(name) > 63:
        errors.append(FieldError("metadata.name", f"required, a DNS-1123 label ({NAME_PATTERN}, at most 63)"))
    namespace = meta.get("namespace")
    if kind.namespaced and namespace is not None and not (
        isinstance(namespace, str) and re.match(NAME_PATTERN, namespace)
    ):
        errors.append(FieldError("metadata.namespace", f"must match {NAME_PATTERN}"))
    if errors:
        raise InvalidManifest(what, errors)

    out = copy.deepcopy(doc)
    schema = root_schema(kind)
    _apply_defaults(schema, out)
    errors = sorted({_describe(e) for e in _validator(kind).iter_errors(out)}, key=lambda e: e.field)
    if not errors:
        errors = list(_check_rules(schema, out, []))
    if errors:
        raise InvalidManifest(what, errors)
    if kind.namespaced:
        out["metadata"].setdefault("namespace", "default")
    return out
