"""A fleet's record in the store, beside its clones: where each VM was placed, under which libvirt URI.

It is written before the actions it announces (a write-ahead record), so whatever is killed when, the
next pass knows every host that may be running a VM, even with the Kubernetes status lost (a restore from
backup) or in standalone mode, which keeps no status at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..storage import StoreDriver, StoreError

RECORD_NAME = "fleet.json"
KIND = "vmfleet.io/FleetRecord"
# A VM's clone is about to be made, exists, or is about to be deleted: only a placed one missing is lost. Or it
# is about to be replaced by a new clone of the parent (a reimage): until the clone found differs from the one
# it replaces, the reimage is not done.
CREATING, PLACED, DELETING, REIMAGING = "creating", "placed", "deleting", "reimaging"
STATES = (CREATING, PLACED, DELETING, REIMAGING)


@dataclass(frozen=True)
class Placement:
    host: str
    uri: str
    state: str = PLACED
    parent: str = ""  # the clone parent its clone was made from ("" when not recorded)
    replaces: str = ""  # REIMAGING: the fingerprint of the clone being replaced ("" when there was none)
    was: str = ""  # REIMAGING: the parent of the clone being replaced (it counts until the reimage is done)
    stopped: bool = False  # vmfleet stopped the VM (not the guest, not a crash): RerunOnFailure starts it again
    # When the DHCP lease its MAC had as vmfleet last started it runs out (0: none seen): dnsmasq keeps a lease
    # when the guest stops, so until the guest has a lease other than that one it has not asked since it started.
    lease: int = 0


@dataclass
class FleetRecord:
    uid: str
    namespace: str
    name: str
    vms: dict[int, Placement] = field(default_factory=dict)

    def to_text(self) -> str:
        return (
            json.dumps(
                {
                    "kind": KIND,
                    "uid": self.uid,
                    "namespace": self.namespace,
                    "name": self.name,
                    "vms": {
                        str(o): {
                            "host": p.host,
                            "uri": p.uri,
                            "state": p.state,
                            "parent": p.parent,
                            **({"replaces": p.replaces} if p.replaces else {}),
                            **({"was": p.was} if p.was else {}),
                            **({"stopped": True} if p.stopped else {}),
                            **({"lease": p.lease} if p.lease else {}),
                        }
                        for o, p in sorted(self.vms.items())
                    },
                },
                indent=1,
            )
            + "\n"
        )

    @classmethod
    def parse(cls, text: str, where: str) -> FleetRecord:
        try:
            doc: Any = json.loads(text)
            vms = {
                int(o): Placement(
                    str(p["host"]),
                    str(p["uri"]),
                    str(p["state"]),
                    str(p.get("parent", "")),
                    str(p.get("replaces", "")),
                    str(p.get("was", "")),
                    p.get("stopped") is True,
                    int(p.get("lease", 0)),
                )
                for o, p in doc["vms"].items()
            }
            if any(p.state not in STATES for p in vms.values()):
                raise ValueError(f"a state is not one of {', '.join(STATES)}")
            return cls(str(doc["uid"]), str(doc["namespace"]), str(doc["name"]), vms)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # Unreadable: refuse to act rather than forget where VMs run.
            raise StoreError(
                f"{where} is not a vmfleet fleet record ({type(e).__name__}: {e}); "
                "restore it or remove it to let vmfleet rebuild it"
            ) from None

    def with_vms(self, vms: Mapping[int, Placement]) -> FleetRecord:
        return replace(self, vms=dict(vms))


async def read_record(driver: StoreDriver, directory: str, uid: str, namespace: str, name: str) -> FleetRecord:
    path = f"{directory}/{RECORD_NAME}"
    text = await driver.read_text(path)
    if text is None:
        return FleetRecord(uid, namespace, name)
    record = FleetRecord.parse(text, path)
    if record.uid != uid:
        raise StoreError(f"{path} belongs to fleet UID {record.uid}, not {uid}")
    return record


async def write_record(driver: StoreDriver, directory: str, record: FleetRecord) -> None:
    await driver.write_text(f"{directory}/{RECORD_NAME}", record.to_text())
