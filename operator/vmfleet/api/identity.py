"""Who each VM of a fleet is for its whole life, derived from the fleet's UID and the VM's ordinal so that every
pass, in any process, gives the same answer: its libvirt UUID, its MAC, and the values its cloud-init text may
use (`{{ name }}`, `{{ mac }}`, ...)."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping

from .schema import MAX_REPLICAS

VM_UUID_NAMESPACE = "3b0f8c52-6d1e-4c57-9a0e-2f6b7d8e9c14"

# The per-VM values of spec.cloudInit's texts; docs/api.md lists them.
VARIABLES = ("name", "ordinal", "fleet", "namespace", "mac", "uuid")
# A variable is a bare name in double braces. Anything else in braces ({{ v1.local_hostname }}, {% if %}) is left
# to cloud-init's own jinja templating.
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

# What each variable looks like, for checking a text with its variables filled in (networkData must still parse).
SAMPLE_VALUES = {
    "name": "fleet-0",
    "ordinal": "0",
    "fleet": "fleet",
    "namespace": "default",
    "mac": "02:00:00:00:00:00",
    "uuid": "00000000-0000-0000-0000-000000000000",
}

assert MAX_REPLICAS <= 1 << 16, "the MAC's last two octets are the ordinal"


def vm_uuid(fleet_uid: str, ordinal: int) -> str:
    return str(uuid.uuid5(uuid.UUID(VM_UUID_NAMESPACE), f"{fleet_uid}/{ordinal}"))


def vm_mac(fleet_uid: str, ordinal: int) -> str:
    """Locally administered and unicast; four octets from the fleet's UID and two from the ordinal, so no two VMs
    of a fleet share one."""
    h = hashlib.sha256(f"mac/{fleet_uid}".encode()).digest()
    octets = ((h[0] & 0xFC) | 0x02, h[1], h[2], h[3], ordinal >> 8, ordinal & 0xFF)
    return ":".join(f"{b:02x}" for b in octets)


def unknown_variables(text: str) -> list[str]:
    return sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(VARIABLES))


def render(text: str, values: Mapping[str, str]) -> str:
    """`text` with each `{{ variable }}` replaced by its value; an unknown one stays as it is (validation refuses
    them in the spec; a Secret's user data is not validated, and cloud-init may read it as jinja)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
