"""CustomResourceDefinitions built from the schema in schema.py; `vmfleet crds` writes them to crds/."""

from __future__ import annotations

from typing import Any

from .schema import API_VERSION, CATEGORY, GROUP, KINDS, NAME_PATTERN, VERSION, Kind, Rule, Schema

RULES_KEY = "x-vmfleet-rules"


def openapi(schema: Any) -> Any:
    """The schema as the apiserver takes it: vmfleet's rules become `x-kubernetes-validations`."""
    if isinstance(schema, dict):
        out: Schema = {}
        for key, value in schema.items():
            if key == RULES_KEY:
                out["x-kubernetes-validations"] = [_cel(r) for r in value]
            else:
                out[key] = openapi(value)
        return out
    if isinstance(schema, list):
        return [openapi(v) for v in schema]
    return schema


def _cel(rule: Rule) -> dict[str, str]:
    out = {"rule": rule.cel, "message": rule.message}
    if rule.field:
        out["fieldPath"] = "." + rule.field
    return out


def root_schema(kind: Kind) -> Schema:
    """The whole object's schema."""
    schema: Schema = {
        "type": "object",
        "description": f"{kind.kind} ({API_VERSION}).",
        "properties": {
            "apiVersion": {"type": "string", "description": "vmfleet.io/v1alpha1"},
            "kind": {"type": "string", "description": kind.kind},
            # The apiserver allows nothing in metadata's schema but limits on name and generateName. Names are
            # DNS-1123 labels (the apiserver alone would take subdomains, with dots): they become file and
            # domain names, and standalone mode accepts the same.
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "pattern": NAME_PATTERN, "maxLength": kind.max_name}},
            },
            "spec": kind.spec,
            "status": {**kind.status, "default": {"observedGeneration": 0}} if kind.reconciled else kind.status,
        },
        "required": ["spec"],
    }
    return schema


def crd(kind: Kind) -> dict[str, Any]:
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.labelSelector",  # a HorizontalPodAutoscaler refuses a target without one
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi(root_schema(kind))},
                    "subresources": subresources,
                    "additionalPrinterColumns": list(kind.printer_columns),
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name in crds/ -> CRD object."""
    return {f"{k.plural}.{GROUP}.yaml": crd(k) for k in KINDS.values()}


__all__ = ["Rule", "all_crds", "crd", "openapi", "root_schema"]
