"""A fleet's record in the store, beside its clones: where each VM was placed, under which libvirt URI.

It is written before the actions it announces (a write-ahead record), so whatever is killed when, the
next pass knows every host that may be running a VM, even with the Kubernetes status lost (a restore from
backup) or in standalone mode, which keeps no status at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..storage import StoreDriver, StoreError

RECORD_NAME = "fleet.json"
KIND = "vmfleet.io/FleetRecord"
# A VM's clone is about to be made, exists, or is about to be deleted: only a placed one missing is lost. Or it
# is about to be replaced by a new clone of the parent (a reimage): the old clone is untouched while the state
# says reimaging; the reimage sets creating once it has deleted it.
CREATING, PLACED, DELETING, REIMAGING = "creating", "placed", "deleting", "reimaging"
STATES = (CREATING, PLACED, DELETING, REIMAGING)


@dataclass(frozen=True)
class Placement:
    host: str
    uri: str
    state: str = PLACED
    parent: str = ""  # the clone parent its clone was made from ("" when not recorded)
    was: str = ""  # REIMAGING: the parent of the clone being replaced (it counts until the reimage is done)
    stopped: bool = False  # vmfleet stopped the VM (not the guest, not a crash): RerunOnFailure starts it again
    # readiness Address. dnsmasq keeps a stopped guest's lease, so the address a VM has just after a start is not
    # proof that it booted. `lease`: when the lease its MAC held as vmfleet started it runs out (read with the
    # guest off, 0: none); a lease granted since runs out later. `answered`: one was seen since that start, so
    # the VM stays ready when the lease table is lost or reset under a running guest.
    lease: int = 0
    answered: bool = False
    # Its guest had powered itself off (its job done) when a drain moved it: on the new host libvirt no longer says
    # why it is off, and RerunOnFailure must not start it there. Until it runs again.
    finished: bool = False


@dataclass
class FleetRecord:
    uid: str
    namespace: str
    name: str
    vms: dict[int, Placement] = field(default_factory=dict)
    # The reimage annotation's value this record has carried out, and the VMs already reimaged for it: a wave, a
    # pass or an operator that comes after does not reimage them again.
    reimage_request: str = ""
    reimaged: frozenset[int] = frozenset()

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
                            **({"was": p.was} if p.was else {}),
                            **({"stopped": True} if p.stopped else {}),
                            **({"lease": p.lease} if p.lease else {}),
                            **({"answered": True} if p.answered else {}),
                            **({"finished": True} if p.finished else {}),
                        }
                        for o, p in sorted(self.vms.items())
                    },
                    **(
                        {"reimage": {"request": self.reimage_request, "done": sorted(self.reimaged)}}
                        if self.reimage_request
                        else {}
                    ),
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
                    str(p.get("was", "")),
                    p.get("stopped") is True,
                    int(p.get("lease", 0)),
                    p.get("answered") is True,
                    p.get("finished") is True,
                )
                for o, p in doc["vms"].items()
            }
            if any(p.state not in STATES for p in vms.values()):
                raise ValueError(f"a state is not one of {', '.join(STATES)}")
            reimage = doc.get("reimage") or {}
            done = frozenset(int(o) for o in reimage.get("done", []))
            return cls(
                str(doc["uid"]), str(doc["namespace"]), str(doc["name"]), vms, str(reimage.get("request", "")), done
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # Unreadable: refuse to act rather than forget where VMs run.
            raise StoreError(
                f"{where} is not a vmfleet fleet record ({type(e).__name__}: {e}); "
                "restore it or remove it to let vmfleet rebuild it"
            ) from None

    def content(self) -> tuple[dict[int, Placement], str, frozenset[int]]:
        """What the record says, without whose it is."""
        return self.vms, self.reimage_request, self.reimaged

    def with_vms(self, vms: Mapping[int, Placement]) -> FleetRecord:
        return replace(self, vms=dict(vms))

    def reimaged_for(self, request: str) -> frozenset[int]:
        """The VMs already reimaged for this value of the reimage annotation."""
        return self.reimaged if request and request == self.reimage_request else frozenset()


class RecordKeeper:
    """The record while a plan runs: operations that change it part way (a reimage, once its old clone is gone)
    write it through here, one at a time."""

    def __init__(self, driver: StoreDriver, directory: str, record: FleetRecord):
        self.driver, self.directory, self.record = driver, directory, record
        self._lock = asyncio.Lock()

    async def reimaging(self, ordinal: int, request: str) -> None:
        """The old clone of a reimage is gone: its new one is being made (from the parent announced); and the
        reimage annotation's `request`, when it named this VM, is carried out for it."""
        async with self._lock:
            old = self.record.vms[ordinal]
            reimaged = self.record.reimaged_for(request) | {ordinal} if request else self.record.reimaged
            self.record = replace(
                self.record,
                vms={**self.record.vms, ordinal: replace(old, state=CREATING, was="")},
                reimage_request=request or self.record.reimage_request,
                reimaged=reimaged,
            )
            await write_record(self.driver, self.directory, self.record)

    async def starting(self, ordinal: int, lease: int) -> None:
        """vmfleet starts the VM now: `lease` is its MAC's DHCP lease (its expiry, 0: none) with the guest off."""
        async with self._lock:
            old = self.record.vms.get(ordinal)
            if old is None or (old.lease, old.answered) == (lease, False):
                return
            self.record = replace(
                self.record, vms={**self.record.vms, ordinal: replace(old, lease=lease, answered=False)}
            )
            await write_record(self.driver, self.directory, self.record)


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
