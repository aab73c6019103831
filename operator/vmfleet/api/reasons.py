"""Every reason vmfleet gives, in a condition or an Event, with what a person should do about it.

One CamelCase word a program can match on (kstatus, Argo CD, alerts); the hint is what `vmfleet status`
prints under it and what the troubleshooting table of docs/operations.md says (a test holds them equal).
As KubeVirt's pool controller keeps its reasons in one constant block, nothing else in vmfleet spells one:
`Event` and `condition` refuse a reason that is not registered here.
"""

from __future__ import annotations

from typing import Final

HINTS: dict[str, str] = {}
"""Reason -> what to do about it: every reason that says something is wrong, or is being waited on."""
DOCUMENTED: dict[str, tuple[str, str]] = {}
"""Reason -> (where it shows, what it means): the troubleshooting table of docs/operations.md."""
NORMAL: set[str] = set()
"""Reasons that say all is well or something was done: nothing to do."""


def _problem(name: str, where: str, meaning: str, hint: str) -> str:
    """A reason that says something is wrong or awaited: `where` it shows, what it `means`, what to do."""
    assert name not in HINTS and name not in NORMAL, name
    HINTS[name] = hint
    DOCUMENTED[name] = (where, meaning)
    return name


def _normal(name: str) -> str:
    assert name not in HINTS and name not in NORMAL, name
    NORMAL.add(name)
    return name


def known(reason: str) -> bool:
    return reason in HINTS or reason in NORMAL


TABLE_START = "<!-- generated from operator/vmfleet/api/reasons.py by `make crds`; do not edit -->\n"
TABLE_END = "<!-- end of generated table -->"


def troubleshooting_table() -> str:
    """The table docs/operations.md shows (written by `vmfleet crds --troubleshooting`)."""
    rows = ["| reason | where | meaning | what to do |", "|---|---|---|---|"]
    rows += [f"| `{name}` | {where} | {meaning} | {HINTS[name]} |" for name, (where, meaning) in DOCUMENTED.items()]
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------ the summary conditions' steady states

ALL_REPLICAS_READY: Final = _normal("AllReplicasReady")
REPLICAS_NOT_READY: Final = _normal("ReplicasNotReady")  # while converging: Reconciling says why
PROGRESSING: Final = _normal("Progressing")
CONVERGED: Final = _normal("Converged")
STALLED: Final = _normal("Stalled")
NOT_STALLED: Final = _normal("NotStalled")
NOT_DEGRADED: Final = _normal("NotDegraded")
NOT_OBSERVED: Final = _normal("NotObserved")  # shown by `vmfleet status` before the first pass
DEFINITION_CHANGED: Final = _problem(
    "DefinitionChanged",
    where="VmFleet, condition `RestartRequired`",
    meaning="the VMs named run an older definition than the one vmfleet defined (template, override or host change)",
    hint="restart the VMs named (virsh shutdown NAME; vmfleet starts them with the new definition)",
)

# ------------------------------------------------------------------ references (a fleet or template waits on them)

TEMPLATE_NOT_FOUND: Final = _problem(
    "TemplateNotFound",
    where="VmFleet, Reconciling",
    meaning="`spec.templateRef` names no VmTemplate in the namespace; retried every few seconds",
    hint="apply the VmTemplate named in spec.templateRef, in the fleet's namespace",
)
STORE_NOT_FOUND: Final = _problem(
    "StoreNotFound",
    where="VmTemplate/VmFleet, Reconciling",
    meaning="the template's `spec.storeRef` names no CloneStore",
    hint="apply the CloneStore named in the template's spec.storeRef",
)
INVALID_SPEC: Final = _problem(
    "InvalidSpec",
    where="any, Stalled",
    meaning="the object breaks a rule the API should have enforced (an old object, or CRDs not up to date), or one "
    "only vmfleet checks (an unknown variable in spec.cloudInit, a pinned MAC that is another VM's)",
    hint="fix the field named above and apply again",
)
STORE_CHANGED: Final = _problem(
    "StoreChanged",
    where="VmFleet, Stalled",
    meaning="the fleet's template now names another CloneStore than the one its clones are in; nothing is done (the"
    " clones would look lost)",
    hint="point spec.templateRef back to a template on the store named, or delete the fleet",
)

# ------------------------------------------------------------------ placing and keeping VMs (the planner's problems)

NO_HOSTS: Final = _problem(
    "NoHosts",
    where="VmFleet, Stalled",
    meaning="no KvmHost carries the labels in `spec.hostSelector`",
    hint="label a KvmHost to match the fleet's spec.hostSelector, or change the selector",
)
NO_REACHABLE_HOST: Final = _problem(
    "NoReachableHost",
    where="VmFleet, Stalled",
    meaning="hosts match, none answers",
    hint="check each KvmHost's spec.uri: `virsh -c URI list` from where the operator runs",
)
INSUFFICIENT_CAPACITY: Final = _problem(
    "InsufficientCapacity",
    where="VmFleet, Stalled",
    meaning="no host has the VM's vCPUs and memory free within its `spec.capacity`",
    hint="add a KvmHost, raise spec.capacity of one, or lower spec.replicas",
)
HOSTS_CORDONED: Final = _problem(
    "HostsCordoned",
    where="VmFleet, Stalled",
    meaning="every reachable host the fleet may use is cordoned (`spec.unschedulable: true`): no new VM is "
    "placed there",
    hint='uncordon a host (`kubectl patch kvh HOST --type merge -p \'{"spec":{"unschedulable":false}}\'`) or '
    "add one the fleet's spec.hostSelector matches",
)
HOST_UNREACHABLE: Final = _problem(
    "HostUnreachable",
    where="VmFleet, Degraded",
    meaning="a host that may run this fleet's VMs cannot be observed: it does not answer, its KvmHost was deleted, "
    "or its `uri` changed and the VM is not at the new one. Its VMs show `Unknown`: not moved, not scaled "
    "in, their clones not deleted, the fleet not torn down (I1, I2)",
    hint="bring that host (or its KvmHost, or its old URI) back: its VMs stay put and keep their disks until "
    "vmfleet can see them; if the host is dead for good, annotate the fleet vmfleet.io/hosts-lost=<host> "
    "(docs/operations.md)",
)
HOST_DECLARED_LOST: Final = _problem(
    "HostDeclaredLost",
    where="VmFleet, Warning event",
    meaning="the fleet's `vmfleet.io/hosts-lost` annotation names a host: its VMs count as stopped and are placed "
    "elsewhere, or scaled in",
    hint="remove the vmfleet.io/hosts-lost annotation once the host is repaired or deleted",
)
DUPLICATE_DOMAIN: Final = _problem(
    "DuplicateDomain",
    where="VmFleet, Degraded",
    meaning="a host declared lost came back and runs a VM that now also runs elsewhere: two domains, one disk",
    hint="a host declared lost came back running the VM: stop and undefine the stale domain by hand",
)
CLONE_LOST: Final = _problem(
    "CloneLost",
    where="VmFleet, Degraded",
    meaning="a VM's clone file is gone; vmfleet will not recreate it empty (that would boot a fresh VM under the "
    "old name)",
    hint="restore the clone file from a backup, or scale in to drop the VM",
)
NAME_CONFLICT: Final = _problem(
    "NameConflict",
    where="VmFleet, Stalled",
    meaning="a libvirt domain of the VM's name exists and was not made by this fleet",
    hint="a domain of that name was not made by vmfleet: rename or undefine it",
)
STORE_UNAVAILABLE: Final = _problem(
    "StoreUnavailable",
    where="VmFleet, Degraded",
    meaning="the store could not be observed: SSH refused, unknown host key, mount missing",
    hint="check the store: SSH to spec.ssh.host with its key and known_hosts, or its NFS mount",
)

# ------------------------------------------------------------------ the operations (engine/operations.py)

PARENT_PREPARED: Final = _normal("ParentPrepared")
CLONES_CREATED: Final = _normal("ClonesCreated")
DOMAINS_DEFINED: Final = _normal("DomainsDefined")
DOMAINS_STARTED: Final = _normal("DomainsStarted")
DOMAINS_STOPPED: Final = _normal("DomainsStopped")
DOMAINS_UNDEFINED: Final = _normal("DomainsUndefined")
MIGRATED: Final = _normal("Migrated")
CLONES_DELETED: Final = _normal("ClonesDeleted")
CLONES_RETAINED: Final = _normal("ClonesRetained")
REIMAGED: Final = _normal("Reimaged")
ROLLING_UPDATE: Final = _normal("Updating")  # condition Updated, while VMs are brought to the new revision
ROLLOUT_COMPLETE: Final = _normal("RolloutComplete")
SEEDS_WRITTEN: Final = _normal("SeedsWritten")
SEEDS_DELETED: Final = _normal("SeedsDeleted")
WRITE_SEED_FAILED: Final = _problem(
    "WriteSeedFailed",
    where="VmFleet, Degraded",
    meaning="a VM's cloud-init seed image could not be written next to its clone",
    hint="see the store's message above (space, permissions); the next pass retries",
)
DELETE_SEEDS_FAILED: Final = _problem(
    "DeleteSeedsFailed",
    where="VmFleet, Degraded",
    meaning="an older cloud-init seed image could not be removed",
    hint="see the store's message above; the next pass retries",
)
MAC_IN_USE: Final = _problem(
    "MacInUse",
    where="VmFleet, Degraded",
    meaning="a VM is not started because another VM still runs with the MAC it should have (a MAC pin moved "
    "between running VMs)",
    hint="restart the VM named in the message: it takes its new MAC, and the other starts",
)
VM_PAUSED: Final = _problem(
    "VmPaused",
    where="VmFleet, Degraded",
    meaning="a VM's domain is paused (by a person, or by QEMU after an I/O error) or its guest is asleep: it is "
    "not ready and counts against maxUnavailable; vmfleet neither resumes it nor destroys it for an update",
    hint="resume the VM named in the message (virsh resume) once what paused it is fixed, or reimage it",
)
USER_DATA_UNREADABLE: Final = _problem(
    "UserDataUnreadable",
    where="VmFleet, Stalled",
    meaning="the Secret named by spec.cloudInit.userDataSecretRef cannot be used: missing, not of type "
    "vmfleet.io/user-data, without the key, or the operator is not granted to read Secrets in the fleet's namespace; "
    "nothing is created or changed",
    hint="create the Secret (type vmfleet.io/user-data) with the key, or the RoleBinding the message names "
    "(docs/security.md)",
)
PREPARE_PARENT_FAILED: Final = _problem(
    "PrepareParentFailed",
    where="VmFleet, Degraded",
    meaning="the same, seen by a fleet",
    hint="check the template's spec.image.path exists under the store's root",
)
REIMAGE_FAILED: Final = _problem(
    "ReimageFailed",
    where="VmFleet, Degraded",
    meaning="deleting a VM's clone or making its new one from the parent failed during a reimage (the store's own "
    "text follows); its domain stays stopped, and the record says the clone is being made",
    hint="see the store's message above; the next pass makes the clone and starts the VM",
)
ROLLOUT_STALLED: Final = _problem(
    "RolloutStalled",
    where="VmFleet, Stalled and condition `Updated`",
    meaning="no VM became ready on the fleet's new revision within spec.progressDeadlineSeconds: the rolling update "
    "stopped with at most maxUnavailable VMs down (their guests may not boot: readiness Address waits for an IP)",
    hint="look at the updated VMs' consoles; fix the template, or roll it back (the VMs on the new revision are "
    "brought back to the old one the same way)",
)
UPDATE_WAITING: Final = _problem(
    "UpdateWaiting",
    where="VmFleet, condition `Updated`",
    meaning="VMs run an older revision and vmfleet will not restart them: updateStrategy OnDelete, or runStrategy "
    "Manual",
    hint="stop the VMs named (virsh shutdown), or `vmfleet reimage FLEET ORDINAL`: they take the new revision then",
)
CREATE_CLONE_FAILED: Final = _problem(
    "CreateCloneFailed",
    where="VmFleet, Degraded",
    meaning="`mkclone`/`mmclone`/reflink/qemu-img failed for a VM (the message carries the storage's own text, e.g."
    " `EFSSG0632C`)",
    hint="see the store's message above; the next pass retries",
)
DEFINE_FAILED: Final = _problem(
    "DefineFailed",
    where="VmFleet, Degraded",
    meaning="a libvirt call failed; the message has libvirt's error",
    hint="see libvirt's message above; `virsh -c URI define` the same XML to reproduce",
)
START_FAILED: Final = _problem(
    "StartFailed",
    where="VmFleet, Degraded",
    meaning="a libvirt call failed; the message has libvirt's error",
    hint="see libvirt's message above; the VM's log is under /var/log/libvirt/qemu on its host",
)
STOP_FAILED: Final = _problem(
    "StopFailed",
    where="VmFleet, Degraded",
    meaning="a libvirt call failed; the message has libvirt's error",
    hint="see libvirt's message above; `virsh -c URI destroy DOMAIN` to reproduce",
)
UNDEFINE_FAILED: Final = _problem(
    "UndefineFailed",
    where="VmFleet, Degraded",
    meaning="a libvirt call failed; the message has libvirt's error",
    hint="see libvirt's message above; the next pass retries",
)
MIGRATE_FAILED: Final = _problem(
    "MigrateFailed",
    where="VmFleet, Degraded",
    meaning="a drain's move failed: libvirt refused both the live migration and a step of the cold move after it",
    hint="see libvirt's message above; the next pass retries the move",
)
MIGRATED_COLD: Final = _problem(
    "MigratedCold",
    where="VmFleet, Warning event",
    meaning="a drain could not live-migrate a running VM (libvirt refused: the store not shared between the two "
    "hosts, the target's libvirtd out of the source's reach, a CPU mismatch...), so it moved it cold: shut down, "
    "defined on the other host, started",
    hint="see libvirt's message; for live moves the source's libvirtd must reach the target's KvmHost URI, both must "
    "mount the store on a shared file system, and the target's spec.migrationAddress must be reachable",
)
DELETE_CLONE_FAILED: Final = _problem(
    "DeleteCloneFailed",
    where="VmFleet, Degraded",
    meaning="a clone could not be removed (scale-in or deletion)",
    hint="see the store's message above; the next pass retries",
)

# ------------------------------------------------------------------ templates and their clone parents

PARENT_READY: Final = _normal("ParentReady")
PARENT_KEPT: Final = _normal("ParentKept")
PARENT_DELETED: Final = _normal("ParentDeleted")
PARENT_RETIRED: Final = _normal("ParentRetired")
PARENT_FAILED: Final = _problem(
    "ParentFailed",
    where="VmTemplate, Degraded",
    meaning="the clone parent could not be prepared",
    hint="check the template's spec.image.path exists under the store's root",
)
PARENT_IN_USE: Final = _problem(
    "ParentInUse",
    where="VmTemplate deletion",
    meaning="clones still refer to the parent, or to one in `status.retiredParents`: the template keeps its finalizer",
    hint="delete or scale in the fleets that use the template first (or that still have clones of an old image)",
)
RETIRED_PARENT_FAILED: Final = _problem(
    "RetiredParentFailed",
    where="VmTemplate, Warning event and `status.retiredParents[].message`",
    meaning="an old clone parent that nothing counts any more could not be deleted: the store refused or did not "
    "answer (GPFS and qcow2 refuse while a clone still depends on it, e.g. one a fleet retained); it stays listed "
    "and every pass tries again",
    hint="see the store's message; delete the retained clones that still depend on it, or bring the store back",
)
IMAGE_CHANGED: Final = _problem(
    "ImageChanged",
    where="VmTemplate, condition and Warning event",
    meaning="the template's image file was rewritten or replaced since its clone parent was made from it; existing "
    "and new clones still come from the old image (the parent)",
    hint="the golden image was changed in place: clones keep coming from the old one; give the new image a new path"
    " and point a template at it (to stop the warning without a new path, delete the `.source` note beside the"
    " parent: the image as it is now is then noted; the parent still holds the old data)",
)

# ------------------------------------------------------------------ stores and hosts

REACHABLE: Final = _normal("Reachable")
CONNECTED: Final = _normal("Connected")
NOT_CORDONED: Final = _normal("NotCordoned")
CORDONED: Final = _normal("Cordoned")
DRAINED: Final = _normal("Drained")
DRAINING: Final = _problem(
    "Draining",
    where="KvmHost, Drained False",
    meaning='annotation `vmfleet.io/drain: "true"`: the host takes no new VM and its VMs move to other hosts '
    "their fleets may use, at most `maxUnavailable` of a fleet down at once; the message names the VMs still here",
    hint="wait for the fleets' next passes; a VM that stays has no other host with room its fleet may use (or was "
    "saved with managedsave): add or uncordon a host, or remove the annotation to stop the drain",
)
STORE_RELEASED: Final = _normal("StoreReleased")
HOST_RELEASED: Final = _normal("HostReleased")
UNREACHABLE: Final = _problem(
    "Unreachable",
    where="CloneStore/KvmHost, Degraded",
    meaning="the probe of the store (gpfs: over SSH) or host failed",
    hint="check the endpoint named above from where the operator runs",
)
ROOT_MISSING: Final = _problem(
    "RootMissing",
    where="CloneStore, Degraded",
    meaning="`spec.localPath` (or `root`) is not a directory where the operator runs",
    hint="mount the store's export at spec.localPath (or root) where the operator runs",
)
STORE_IN_USE: Final = _problem(
    "StoreInUse",
    where="CloneStore deletion",
    meaning="templates use the store",
    hint="delete the templates (and their fleets) that use the store first",
)
HOST_IN_USE: Final = _problem(
    "HostInUse",
    where="KvmHost deletion",
    meaning="VMs are placed on the host",
    hint="scale in or delete the fleets with VMs on the host first",
)
