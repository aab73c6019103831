"""The vmfleet.io/v1alpha1 API: schema, CRDs, validation and typed objects."""

from .types import CloneStore, KvmHost, Meta, Resource, VmFleet, VmTemplate, parse
from .validation import FieldError, InvalidManifest, validate

__all__ = [
    "CloneStore",
    "FieldError",
    "InvalidManifest",
    "KvmHost",
    "Meta",
    "Resource",
    "VmFleet",
    "VmTemplate",
    "parse",
    "validate",
]
