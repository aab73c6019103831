"""The hypervisor driver: domain XML and libvirt endpoints."""

from .domain import DomainInfo, DomainSpec, Lease, Owner, domain_xml, parse_owner
from .libvirt_host import HostError, LibvirtHost

__all__ = ["DomainInfo", "DomainSpec", "HostError", "Lease", "LibvirtHost", "Owner", "domain_xml", "parse_owner"]
