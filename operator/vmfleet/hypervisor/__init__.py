"""The hypervisor driver: domain XML and libvirt endpoints."""

from .domain import DomainInfo, DomainSpec, Owner, domain_xml, parse_owner
from .libvirt_host import HostError, LibvirtHost

__all__ = ["DomainInfo", "DomainSpec", "HostError", "LibvirtHost", "Owner", "domain_xml", "parse_owner"]
