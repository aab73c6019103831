"""Where kopf keeps its own records: in status.kopf, beside the status vmfleet writes.

kopf remembers the last spec it handled (to tell an edit from a resync) and a handler's retries. vmfleet 0.1 kept
them as annotations, with kopf's marker annotation vmfleet.io/kopf-managed. That cost a write of its own each time
an object was made or edited (1,000 of 7,500 writes for 1,000 fleets), and with it a KvmHost's drain annotation
was never handled as a change: the operator's debug log showed kopf finding "the essence is the same", and the
host said Draining only at its next resync (tests/test_kube_changes.py). In status.kopf the records go out in the
status's own write, and the drain is handled at once. A record an older vmfleet annotated is read while it is
there; kopf writes a record only when the spec, labels or annotations changed since the last, and then the old
one and the marker are removed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf

from ..api.schema import GROUP

LEGACY = f"{GROUP}/last-handled-configuration"
MARKER = f"{GROUP}/kopf-managed"
_legacy = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)


class LastHandled(kopf.StatusDiffBaseStorage):
    """status.kopf.last-handled-configuration, falling back once on vmfleet 0.1's annotation."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        essence = super().build(body=body, extra_fields=extra_fields)
        annotations = essence.get("metadata", {}).get("annotations", {})
        for key in (LEGACY, MARKER):
            annotations.pop(key, None)
        self.remove_empty_stanzas(essence)
        return essence

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return super().fetch(body=body) or _legacy.fetch(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        super().store(body=body, patch=patch, essence=essence)
        for key in (LEGACY, MARKER):
            if key in body.metadata.annotations:
                patch.metadata.annotations[key] = None


def keep_in_status(settings: kopf.OperatorSettings) -> None:
    settings.persistence.diffbase_storage = LastHandled()
    settings.persistence.progress_storage = kopf.StatusProgressStorage()  # status.kopf.progress
