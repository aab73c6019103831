"""Standalone validation with the apiserver's meaning: defaults, the OpenAPI schema, the CRDs' own CEL rules,
and what the apiserver checks of metadata itself (name, namespace, labels).

Every error names the field (`spec.replicas`) and the rule it breaks. Patterns are RE2 (what the apiserver runs,
where `$` is the end of the text; Python's `re` would let a trailing newline through) and the CEL rules are
evaluated by cel-python, so that standalone mode accepts exactly what a cluster accepts.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import celpy
import jsonschema
import re2
from celpy.adapter import json_to_cel

from .crd import RULES_KEY, root_schema
from .schema import (
    API_VERSION,
    DEFAULT_NAMESPACE,
    KINDS,
    LABEL_KEY_LENGTH_PATTERN,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    NAME_PATTERN,
    Kind,
    Rule,
    Schema,
)


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


def _strict(schema: Any, open_object: bool = False) -> Any:
    """The schema for jsonschema: unknown fields are errors (as `kubectl apply --validate=strict`),
    except in metadata, whose other fields Kubernetes itself checks."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {k: _strict(v) for k, v in schema.items() if k not in (RULES_KEY, "properties")}
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


@functools.cache
def _re2(pattern: str) -> Any:
    return re2.compile(pattern)


def matches(pattern: str, value: str) -> bool:
    """Whether `value` matches `pattern` as the apiserver's OpenAPI `pattern` and CEL `matches()` decide (RE2)."""
    return _re2(pattern).search(value) is not None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Schema) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not matches(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# jsonschema's own `pattern` is Python's re.search: "web\n" would match "^[a-z]+$".
_Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": _pattern})
_VALIDATORS: dict[str, Any] = {}


def _validator(kind: Kind) -> Any:
    if kind.kind not in _VALIDATORS:
        _VALIDATORS[kind.kind] = _Validator(_strict(root_schema(kind)))
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
    rules: dict[str, Callable[[], str]] = {
        "type": lambda: f"must be of type {arg}",
        "pattern": lambda: f"must match {arg}",
        "enum": lambda: "must be one of: " + ", ".join(map(str, arg)),
        "minimum": lambda: f"must be >= {arg}",
        "maximum": lambda: f"must be <= {arg}",
        "maxLength": lambda: f"must be at most {arg} characters",
        "maxItems": lambda: f"must have at most {arg} items",
        "maxProperties": lambda: f"must have at most {arg} entries",
    }
    rule = rules.get(str(v))
    return FieldError(_path(path), rule() if rule else str(error.message))


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


@functools.cache
def _program(cel: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(cel))


def holds(rule: Rule, value: Any) -> bool:
    """The rule's CEL, evaluated with `self` bound to `value` as the apiserver does; an error breaks the rule."""
    program = _program(rule.cel)  # outside the try: a rule that does not compile is a bug, not an invalid object
    try:
        result = program.evaluate({"self": json_to_cel(value)})
    except Exception:
        return False
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)


def _check_rules(schema: Schema, value: Any, path: list[Any]) -> Iterator[FieldError]:
    """The CEL rules and list-map key uniqueness, at every level of the object."""
    if isinstance(value, dict):
        for rule in schema.get(RULES_KEY, ()):
            if not holds(rule, value):
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


# The schema errors after which the apiserver skips the CEL rules (hasBlockingErr in apiextensions-apiserver:
# NotSupported, Required, TooLong, TooMany, TypeInvalid) and unknown fields, which it would not pass to CEL.
_BLOCKING = {"enum", "required", "maxLength", "maxItems", "maxProperties", "type", "additionalProperties"}
_NAME_RULE = f"a DNS-1123 label ({NAME_PATTERN}, at most 63 characters)"
_LABEL_KEY_RULE = (
    "a label key is [prefix/]name: an optional DNS subdomain of at most 253 characters, then a name of at most "
    "63 of [A-Za-z0-9_.-] that starts and ends with a letter or digit"
)
_LABEL_VALUE_RULE = (
    "a label value is empty or at most 63 characters of [A-Za-z0-9_.-] that start and end with a letter or digit"
)


def _dns_label(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 63 and matches(NAME_PATTERN, value)


def _metadata_errors(kind: Kind, meta: dict[str, Any]) -> Iterator[FieldError]:
    """What the apiserver checks of metadata with its own code, not the CRD: name, namespace, labels."""
    if not _dns_label(meta.get("name")):
        yield FieldError("metadata.name", f"required, {_NAME_RULE}")
    namespace = meta.get("namespace")
    if kind.namespaced and namespace is not None and not _dns_label(namespace):
        yield FieldError("metadata.namespace", f"must be {_NAME_RULE}")
    labels = meta.get("labels")
    if labels is not None and not isinstance(labels, dict):
        yield FieldError("metadata.labels", "must be a mapping of label keys to string values")
        return
    for key, value in (labels or {}).items():
        if not (isinstance(key, str) and matches(LABEL_KEY_PATTERN, key) and matches(LABEL_KEY_LENGTH_PATTERN, key)):
            yield FieldError("metadata.labels", f"{key!r}: {_LABEL_KEY_RULE}")
        if not (isinstance(value, str) and len(value) <= 63 and matches(LABEL_VALUE_PATTERN, value)):
            yield FieldError("metadata.labels", f"{key!r}: {value!r}: {_LABEL_VALUE_RULE}")


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
    if not isinstance(meta, dict):
        raise InvalidManifest(what, [FieldError("metadata", "required, a mapping")])
    errors = list(_metadata_errors(kind, meta))
    if errors:
        raise InvalidManifest(what, errors)

    out = copy.deepcopy(doc)
    schema = root_schema(kind)
    _apply_defaults(schema, out)
    schema_errors = list(_validator(kind).iter_errors(out))
    found = {_describe(e) for e in schema_errors}
    # As the apiserver does: the CEL rules run too, unless an error leaves the object's shape in doubt.
    if not any(e.validator in _BLOCKING for e in schema_errors):
        found.update(_check_rules(schema, out, []))
    if found:
        raise InvalidManifest(what, sorted(found, key=lambda e: (e.field, e.rule)))
    if kind.namespaced:
        out["metadata"].setdefault("namespace", DEFAULT_NAMESPACE)
    return out
