"""The hypervisor driver: domain XML and libvirt endpoints."""

from .domain import DomainInfo, DomainSpec, Lease, Owner, domain_xml, parse_owner
from .libvirt_host import HostError, LibvirtHost
from .view import FleetKey, Usage

__all__ = [
    "DomainInfo",
    "DomainSpec",
    "FleetKey",
    "HostError",
    "Lease",
    "LibvirtHost",
    "Owner",
    "Usage",
    "domain_xml",
    "parse_owner",
]
