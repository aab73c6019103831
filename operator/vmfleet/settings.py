"""The operator's settings: read once, at start, from the environment, into one typed object.

Nothing else in vmfleet reads the environment. `vmfleet run` builds a Settings and hands it to the kopf
handlers through kopf's memo; standalone mode builds one too. Each field names its variable.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class Settings:
    resync_seconds: float = 60.0
    """VMFLEET_RESYNC_SECONDS: how often every object is reconciled again, changed or not."""

    host_relist_seconds: float = 600.0
    """VMFLEET_HOST_RELIST_SECONDS: how often each KvmHost's domains are listed in full, for all fleets at once;
    in between, libvirt's domain events say which changed (hypervisor/view.py). Events are lost only with their
    connection, after which the host is listed in full at once; this catches what nothing else would. Listing
    10,000 domains costs seconds of CPU: at every resync it was most of what an idle operator did."""

    resync_rate: float = 5.0
    """VMFLEET_RESYNC_RATE: at most this many resync passes start per second, all objects together (changes are
    not held back): with more objects than resync_seconds times this, each is resynced less often, and an idle
    operator's CPU stays bounded whatever their number (operator/pacing.py); 0: no limit. An unchanged fleet's
    pass costs about 10 ms of CPU (bench/many.py): 5 a second keep an idle operator near 0.05 cores."""

    api_writes: int = 16
    """VMFLEET_API_WRITES: at most this many writes to the apiserver (status patches, Events) in flight at once;
    the others wait their turn in the operator, reads never (operator/session.py). Past the apiserver's
    --max-mutating-requests-inflight it refuses them (429) and each is retried seconds later. 0: no limit."""

    metrics_port: int = 9090
    """VMFLEET_METRICS_PORT: where Prometheus scrapes /metrics; 0 for no endpoint."""

    store_timeout_seconds: float = 60.0
    """VMFLEET_STORE_TIMEOUT_SECONDS: how long a file-system call on a locally mounted store (listing, stat,
    read, unlink, rename, a reflink or a qcow2 overlay) may take, queued behind others of the store included,
    before the store is reported unavailable (a hung NFS or FUSE mount); 0: no limit."""

    copy_timeout_seconds: float = 3600.0
    """VMFLEET_COPY_TIMEOUT_SECONDS: the same for the one call that copies data: making a clone parent from
    its image; 0: no limit."""

    libvirt_timeout_seconds: float = 60.0
    """VMFLEET_LIBVIRT_TIMEOUT_SECONDS: how long a libvirt call to a KvmHost (connecting included, queued behind
    the host's other calls included) may take before the host is reported unreachable: a libvirtd that accepts
    and never answers (a live migration has its own limit); 0: no limit."""

    migration_timeout_seconds: float = 3600.0
    """VMFLEET_MIGRATION_TIMEOUT_SECONDS: how long a live migration may take, connecting included; past it the
    migration is aborted and the VM stays where it runs (the next pass looks where it is). 0: no limit."""

    lease: str = ""
    """VMFLEET_LEASE: NAMESPACE/NAME of the coordination.k8s.io Lease on which the operator's replicas elect the
    one that reconciles (deploy/ runs 2); empty: no election, for a single replica."""

    lease_seconds: float = 15.0
    """VMFLEET_LEASE_SECONDS: how long a replica waits on a lease its holder stopped renewing before it takes it
    over: about the longest time nothing is reconciled after the active replica dies."""

    lease_renew_deadline_seconds: float = 10.0
    """VMFLEET_LEASE_RENEW_DEADLINE_SECONDS: a holder that could not renew for this long stops (exits) before
    any other replica may take over; below lease_seconds."""

    lease_retry_seconds: float = 2.0
    """VMFLEET_LEASE_RETRY_SECONDS: how often the holder renews and the others try."""

    @property
    def waiting_retry_seconds(self) -> float:
        """Objects applied together arrive in any order: one waiting on another is retried this soon."""
        return min(5.0, self.resync_seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings named in `environ` (default: this process's), the defaults for the rest; a value
        that does not parse is an error naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, float | int | str] = {}
        for f in fields(cls):
            name = f"VMFLEET_{f.name.upper()}"
            if name not in env:
                continue
            if f.type in (str, "str"):
                values[f.name] = env[name]
                continue
            kind = int if f.type in (int, "int") else float
            try:
                value = kind(env[name])
            except ValueError:
                raise ValueError(f"{name}={env[name]!r} is not a {'whole ' if kind is int else ''}number") from None
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={env[name]!r} must be a finite number, not negative")
            values[f.name] = value
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """A ValueError naming the variable when settings cannot work together (a malformed lease, or one that
        would let two replicas lead at once)."""
        if self.lease_name() is None:
            return
        if self.lease_seconds < 1:
            raise ValueError("VMFLEET_LEASE_SECONDS must be at least 1 (a Lease counts whole seconds)")
        if not 0 < self.lease_renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "VMFLEET_LEASE_RENEW_DEADLINE_SECONDS must be above 0 and below VMFLEET_LEASE_SECONDS: a holder "
                "must stop before another replica may take its lease"
            )

    def lease_name(self) -> tuple[str, str] | None:
        """(namespace, name) of the leader Lease, None without one."""
        if not self.lease:
            return None
        namespace, _, name = self.lease.partition("/")
        if not (DNS_LABEL.fullmatch(namespace) and DNS_SUBDOMAIN.fullmatch(name)):
            raise ValueError(
                f"VMFLEET_LEASE={self.lease!r} must be NAMESPACE/NAME: a namespace (a DNS label) and a Lease name "
                "(a DNS subdomain), such as vmfleet-system/vmfleet-operator"
            )
        return namespace, name
