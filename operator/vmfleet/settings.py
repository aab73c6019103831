"""The operator's settings: read once, at start, from the environment, into one typed object.

Nothing else in vmfleet reads the environment. `vmfleet run` builds a Settings and hands it to the kopf
handlers through kopf's memo; standalone mode builds one too. Each field names its variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Settings:
    resync_seconds: float = 60.0
    """VMFLEET_RESYNC_SECONDS: how often every object is reconciled again, changed or not."""

    metrics_port: int = 9090
    """VMFLEET_METRICS_PORT: where Prometheus scrapes /metrics; 0 for no endpoint."""

    store_timeout_seconds: float = 60.0
    """VMFLEET_STORE_TIMEOUT_SECONDS: how long a file-system call on a locally mounted store (listing, stat,
    read, unlink, rename, a reflink or a qcow2 overlay) may take, queued behind others of the store included,
    before the store is reported unavailable (a hung NFS or FUSE mount); 0: no limit."""

    copy_timeout_seconds: float = 3600.0
    """VMFLEET_COPY_TIMEOUT_SECONDS: the same for the one call that copies data: making a clone parent from
    its image; 0: no limit."""

    @property
    def waiting_retry_seconds(self) -> float:
        """Objects applied together arrive in any order: one waiting on another is retried this soon."""
        return min(5.0, self.resync_seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings named in `environ` (default: this process's), the defaults for the rest; a value
        that does not parse is an error naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for f in fields(cls):
            name = f"VMFLEET_{f.name.upper()}"
            if name not in env:
                continue
            kind = int if f.type in (int, "int") else float
            try:
                value = kind(env[name])
            except ValueError:
                raise ValueError(f"{name}={env[name]!r} is not a {'whole ' if kind is int else ''}number") from None
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={env[name]!r} must be a finite number, not negative")
            values[f.name] = value
        return cls(**values)  # type: ignore[arg-type]
