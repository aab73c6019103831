"""What one fleet should be, and what each part of it is called. Pure: no I/O, no clock.

Every name vmfleet gives is made here, deterministically, so that any pass, in any process, finds what an
earlier one made: the clone directory (the fleet's UID in it, I3), clone files, domain names and UUIDs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence

from ..api.identity import VM_UUID_NAMESPACE as VM_UUID_NAMESPACE
from ..api.identity import render, vm_uuid
from ..api.types import CloneStore, CloudInit, KvmHost, VmFleet, VmTemplate
from ..disks import DiskSource, FileDisk
from ..hypervisor import DomainSpec, Owner
from ..planner import Update, VmWant
from ..seed import CONFIG_DRIVE, LABELS, NOCLOUD, Seed, config_drive, nocloud
from ..storage import clone_path, fleet_dir, parent_path
from ..storage.base import CLONE_EXTENSIONS, disk_format_of

DiskOf = Callable[[str, str], DiskSource]
"""(clone under the store root, where the host sees it) -> what the domain opens: the store driver's."""


# One pattern for every fleet, the fleet's name compared after: a pattern per fleet name overflows re's cache of
# 512 with many fleets, and each pass would compile its own again.
_EXTENSIONS = "|".join(re.escape(e.lstrip(".")) for e in CLONE_EXTENSIONS.values())
_CLONE_NAME = re.compile(rf"^(.+)-(0|[1-9][0-9]*)\.({_EXTENSIONS})\Z", re.DOTALL)
_LABELS = "|".join(re.escape(label) for label in LABELS.values())
_SEED_NAME = re.compile(rf"^(.+)-(0|[1-9][0-9]*)\.({_LABELS})-[0-9a-f]{{12}}\.iso\Z", re.DOTALL)


class Desired:
    """One fleet as its spec wants it. Without a template (a fleet being deleted whose template is gone) it
    still names everything the fleet made, so that it can be found and removed."""

    def __init__(
        self,
        fleet: VmFleet,
        template: VmTemplate | None,
        store: CloneStore,
        hosts: Sequence[KvmHost],
        clone_format: str,
        disk_of: DiskOf,
        user_data: str | None = None,
    ):
        """`user_data`: the text of spec.cloudInit.userDataSecretRef, read by the caller."""
        self.fleet, self.template, self.store, self.disk_of = fleet, template, store, disk_of
        self.cloud_init = cloud_init_of(fleet, template)
        self._user_data = user_data
        self.hosts: Mapping[str, KvmHost] = {h.meta.name: h for h in hosts}
        self.namespace = fleet.meta.namespace
        self.directory = fleet_dir(self.namespace, fleet.meta.name, fleet.meta.uid)
        self.parent = parent_path(template.image_path, template.image_format) if template else ""
        self.clone_format = clone_format if template else "raw"
        self.forced = fleet.hosts_declared_lost
        self.wants: list[VmWant] = self._wants() if template else []
        self._seeds: dict[int, Seed | None] = {}
        self._kept: Mapping[int, str] = {}
        self._live: Mapping[int, str] = {}

    def _wants(self) -> list[VmWant]:
        assert self.template is not None
        out = []
        for o in range(self.fleet.replicas):
            ov = self.fleet.overrides.get(o)
            strategy = self.fleet.run_strategy_of(o)
            out.append(
                VmWant(
                    o,
                    self.fleet.vm_name(o),
                    (ov.vcpus if ov and ov.vcpus else None) or self.template.vcpus,
                    (ov.memory_mib if ov and ov.memory_mib else None) or self.template.memory_mib,
                    strategy in ("Always", "RerunOnFailure"),
                    strategy,
                )
            )
        return out

    @functools.cached_property
    def revision(self) -> str:
        """A hash of everything that shapes the fleet's VMs: the template's image and hardware, cloud-init (the
        Secret's user data by its digest), the overrides' hardware and MACs. Content, not generations: an edit
        undone is the revision it was before, so rolling back is rolling forward to it."""
        t = self.template
        if t is None:
            return ""
        user_data = self._user_data if self.cloud_init and self.cloud_init.user_data_secret else None
        shape = {
            "image": [t.image_path, t.image_format],
            "hardware": [t.profile, t.vcpus, t.memory_mib, t.machine_type, t.firmware, t.network],
            "cloudInit": dataclasses.asdict(self.cloud_init) if self.cloud_init else None,
            "userData": hashlib.sha256(user_data.encode(errors="surrogateescape")).hexdigest() if user_data else None,
            "overrides": {
                str(o): made
                for o, v in sorted(self.fleet.overrides.items())
                if any(made := [v.vcpus, v.memory_mib, v.mac])  # `running` alone shapes nothing
            },
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def needs_address(self) -> bool:
        """readiness Address: a VM is ready only with an IP address seen (its template has a network)."""
        return self.fleet.readiness == "Address" and bool(self.template and self.template.network)

    def update(self, reimaged: frozenset[int] = frozenset()) -> Update:
        """spec.updateStrategy, spec.ephemeral and the reimage annotation (but the VMs already `reimaged` for
        it), for the planner."""
        fleet, strategy = self.fleet, self.fleet.update
        return Update(
            rolling=strategy.type == "RollingUpdate",
            budget=strategy.unavailable_budget(fleet.replicas),
            partition=strategy.partition,
            revision=self.revision,
            parent=self.parent,
            reimage_on_image_change=strategy.disk_policy == "Reimage",
            ephemeral=fleet.ephemeral,
            reimage=fleet.reimage_requested - reimaged,
        )

    def vm_name(self, ordinal: int) -> str:
        return self.fleet.vm_name(ordinal)

    def domain_name(self, ordinal: int) -> str:
        # libvirt has no namespaces: qualify by ours. A '.' never occurs in a Kubernetes name.
        return f"{self.namespace}.{self.fleet.vm_name(ordinal)}"

    def vm_uuid(self, ordinal: int) -> str:
        """The libvirt UUID of a VM whose domain does not exist yet: derived from the fleet's UID and the
        ordinal, so every pass defines the same one."""
        return vm_uuid(self.fleet.meta.uid, ordinal)

    def clone_files(self, names: Sequence[str]) -> dict[int, str]:
        """Ordinal -> the clone file of each VM among the names in the fleet's directory. Two files for one VM
        (a crash between formats): the one of the current format."""
        files: dict[int, str] = {}
        for n in names:
            if (m := _CLONE_NAME.match(n)) and m.group(1) == self.fleet.meta.name:
                o = int(m.group(2))
                if o not in files or disk_format_of(n) == self.clone_format:
                    files[o] = n
        return files

    def seed_files(self, names: Sequence[str]) -> dict[int, frozenset[str]]:
        """Ordinal -> the seed images of each VM among the names in the fleet's directory."""
        out: dict[int, set[str]] = {}
        for n in names:
            if (m := _SEED_NAME.match(n)) and m.group(1) == self.fleet.meta.name:
                out.setdefault(int(m.group(2)), set()).add(f"{self.directory}/{n}")
        return {o: frozenset(found) for o, found in out.items()}

    def keep_macs(self, kept: Mapping[int, str], live: Mapping[int, str] | None = None) -> None:
        """The MACs libvirt gave VMs whose domains an older vmfleet defined: they keep them (no guest bound to its
        MAC loses its network to an upgrade) unless one is pinned. `live`: the MACs running VMs run with."""
        if kept != self._kept:
            self._kept, self._seeds = dict(kept), {}
        self._live = dict(live or {})

    def _pinned(self, ordinal: int) -> bool:
        return ordinal in self.fleet.overrides and bool(self.fleet.overrides[ordinal].mac)

    def mac(self, ordinal: int) -> str:
        """The MAC of a VM's NIC: pinned (overrides), kept (from before vmfleet chose MACs), or derived."""
        if not self._pinned(ordinal) and ordinal in self._kept:
            return self._kept[ordinal]
        return self.fleet.mac(ordinal)

    def duplicate_mac(self) -> str | None:
        """Why two VMs would be given one MAC, or None. Two VMs that kept one MAC from before vmfleet chose MACs
        are left as they were."""
        owner: dict[str, int] = {}
        for o in range(self.fleet.replicas):
            mac = self.mac(o)
            other = owner.setdefault(mac, o)
            if other != o and not (self._keeps(o) and self._keeps(other)):
                return f"{self._whose(o, other)}: {self.vm_name(other)} and {self.vm_name(o)} would share MAC {mac}"
        return None

    def mac_in_use(self, ordinal: int) -> int | None:
        """Another VM that still runs with the MAC this one should start with (a MAC moved between VMs): this
        one waits until that one has restarted on its own."""
        mac = self.mac(ordinal)
        for other, live in self._live.items():
            if other != ordinal and live == mac and self.mac(other) != mac:
                return other
        return None

    def _whose(self, *ordinals: int) -> str:
        return "spec.overrides" if any(self._pinned(o) for o in ordinals) else "MAC"

    def seed(self, ordinal: int) -> Seed | None:
        """The cloud-init seed VM `ordinal` should have; None without spec.cloudInit or for an unwanted VM."""
        if self.cloud_init is None or ordinal >= self.fleet.replicas:
            return None
        if ordinal not in self._seeds:
            self._seeds[ordinal] = self._make_seed(self.cloud_init, ordinal)
        return self._seeds[ordinal]

    def _make_seed(self, ci: CloudInit, ordinal: int) -> Seed:
        name, uuid = self.vm_name(ordinal), self.vm_uuid(ordinal)
        values = {
            "name": name,
            "ordinal": str(ordinal),
            "fleet": self.fleet.meta.name,
            "namespace": self.namespace,
            "mac": self.mac(ordinal),
            "uuid": uuid,
        }
        user_data = (self._user_data if ci.user_data_secret is not None else ci.user_data) or ""
        make = config_drive if ci.datasource == CONFIG_DRIVE else nocloud
        return make(
            uuid,  # instance-id: cloud-init runs its once-per-instance modules again only when it changes
            name,
            render(user_data, values) if _is_text(user_data) else user_data,  # binary (gzip): as it is
            render(ci.network_data, values) if ci.network_data is not None else None,
            {k: render(v, values) for k, v in sorted(ci.meta_data.items())},
            ci.ssh_authorized_keys or (),
        )

    def seed_path(self, ordinal: int) -> str | None:
        seed = self.seed(ordinal)
        if seed is None:
            return None
        return f"{self.directory}/{self.vm_name(ordinal)}.{seed.label}-{seed.digest}.iso"

    def clone(self, ordinal: int, files: Mapping[int, str]) -> str:
        """The clone of a VM: the file found for it (whatever format it was made in), else the one to make."""
        found = files.get(ordinal)
        if found is not None:
            return f"{self.directory}/{found}"
        return self.fresh_clone(ordinal)

    def fresh_clone(self, ordinal: int) -> str:
        """Where a new clone of this VM goes (in the format the store makes of the template's image now)."""
        return clone_path(self.directory, self.fleet.vm_name(ordinal), self.clone_format)

    def domain_spec(self, ordinal: int, host_name: str, clone: str) -> DomainSpec:
        template = self.template
        assert template is not None, "domains are only defined for a fleet whose template resolves"
        host = self.hosts[host_name]
        want = self.wants[ordinal] if ordinal < len(self.wants) else None
        name = self.domain_name(ordinal)
        seed = self.seed_path(ordinal)
        return DomainSpec(
            name=name,
            domain_type=host.domain_type,
            vcpus=want.vcpus if want else template.vcpus,
            memory_mib=want.memory_mib if want else template.memory_mib,
            profile=template.profile,
            machine=template.machine_type,
            firmware=template.firmware,
            disk=self.disk_of(clone, host.store_path(self.store, clone)),
            network=template.network,
            console_log=f"{host.console_log_dir.rstrip('/')}/{name}.log" if host.console_log_dir else None,
            mac=self.mac(ordinal) if template.network and not self._keeps(ordinal) else None,
            kept_mac=self.mac(ordinal) if template.network and self._keeps(ordinal) else None,
            seed=FileDisk(host.store_path(self.store, seed), "raw") if seed else None,
        )

    def owner(self, ordinal: int, host: str, clone: str, spec: DomainSpec) -> Owner:
        return Owner(
            self.fleet.meta.uid,
            self.namespace,
            self.fleet.meta.name,
            ordinal,
            clone,
            spec.spec_hash(),
            host,
            spec.mac or spec.kept_mac,  # None without a NIC: its metadata is as before
            spec.kept_mac is not None,
            self.revision,
        )

    def _keeps(self, ordinal: int) -> bool:
        return ordinal in self._kept and not self._pinned(ordinal)

    def uri(self, host: str) -> str:
        return self.hosts[host].uri if host in self.hosts else ""


def cloud_init_of(fleet: VmFleet, template: VmTemplate | None) -> CloudInit | None:
    """The fleet's spec.cloudInit laid over its template's; datasource defaulted."""
    base = template.cloud_init if template else None
    ci = fleet.cloud_init.over(base) if fleet.cloud_init else base
    if ci is None or template is None:
        return None
    return ci if ci.datasource else dataclasses.replace(ci, datasource=NOCLOUD)


def _is_text(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:  # bytes that were not UTF-8, carried as surrogates
        return False
    return True
