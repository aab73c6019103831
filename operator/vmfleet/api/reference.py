"""docs/api.md, generated from the schema like crds/: one table of fields per kind."""

from __future__ import annotations

from collections.abc import Iterator

from .crd import RULES_KEY
from .schema import API_VERSION, KINDS, Schema


def _rows(schema: Schema, path: str, required: bool) -> Iterator[tuple[str, str, str, str]]:
    kind = schema.get("type", "")
    if kind == "array":
        kind = f"[]{schema['items'].get('type', '')}"
    limits = []
    for key, label in (("minimum", "≥"), ("maximum", "≤"), ("maxLength", "length ≤"), ("maxItems", "items ≤")):
        if key in schema:
            limits.append(f"{label} {schema[key]}")
    if "enum" in schema:
        limits.append(" \\| ".join(f"`{v}`" for v in schema["enum"]))
    if "pattern" in schema:
        limits.append(f"matches `{schema['pattern']}`")
    if "default" in schema:
        limits.append(f"default `{schema['default']}`")
    if required:
        limits.append("**required**")
    for rule in schema.get(RULES_KEY, ()):
        limits.append(f"rule: {rule.message}")
    if path:
        yield path, kind, "; ".join(limits), schema.get("description", "").replace("|", "\\|")
    needed = set(schema.get("required", ()))
    for name, sub in schema.get("properties", {}).items():
        yield from _rows(sub, f"{path}.{name}" if path else name, name in needed)
    if schema.get("type") == "array" and "properties" in schema["items"]:
        item = schema["items"]
        needed = set(item.get("required", ()))
        for name, sub in item["properties"].items():
            yield from _rows(sub, f"{path}[].{name}", name in needed)


def markdown() -> str:
    out = [
        "# API reference (`" + API_VERSION + "`)",
        "",
        "Generated from `operator/vmfleet/api/schema.py` by `vmfleet crds`; do not edit.",
        "",
    ]
    for kind in KINDS.values():
        scope = "namespaced" if kind.namespaced else "cluster-scoped"
        out += [
            f"## {kind.kind}",
            "",
            f"{kind.spec['description']} ({scope}; short names: {', '.join(kind.short_names)}; category `vmfleet`)",
            "",
        ]
        for part, schema in (("spec", kind.spec), ("status", kind.status)):
            out += ["| field | type | rules | description |", "|---|---|---|---|"]
            out += [f"| `{part}.{p}` | {t} | {r} | {d} |" for p, t, r, d in _rows(schema, "", False)]
            out += [""] + [
                f"- Rule on `{part}`: {rule.message} (CEL: `{rule.cel}`)" for rule in schema.get(RULES_KEY, ())
            ]
            out.append("")
    return "\n".join(out)
