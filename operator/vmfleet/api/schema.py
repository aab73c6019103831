"""The vmfleet.io/v1alpha1 API, written once: the CRDs in crds/ and the standalone validator both come from here.

Rules that span fields are written once, in CEL: the apiserver evaluates them, and standalone mode evaluates the
same strings with cel-python (validation.py), so the two agree by construction. tests/test_api.py checks that
crds/ is generated from this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import reasons

GROUP = "vmfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "vmfleet"
DEFAULT_NAMESPACE = "default"  # where the apiserver puts a namespaced object that names none

# DNS-1123 label: what Kubernetes accepts as a name, and safe in a file name and a libvirt domain name.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Path segments may not start with a dot: that rules out "." and ".." (and hidden files) in one stroke.
_SEGMENT = r"[A-Za-z0-9_+@%=:,-][A-Za-z0-9_+@%=:,.-]*"
ABSOLUTE_PATH_PATTERN = rf"^(/{_SEGMENT})+/?$"
RELATIVE_PATH_PATTERN = rf"^{_SEGMENT}(/{_SEGMENT})*$"
HOSTNAME_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"
# A libvirt URI is scheme://[user@]host[:port]/path and nothing else. No query string: vmfleet appends the
# parameters it needs (keyfile, known_hosts, sshauth), and others turn off host-key checking
# (known_hosts_verify=ignore, no_verify=1) or run another program (command=, netcat=, socket=). No fragment,
# %-escape, space or newline either: each could smuggle one of those past a reader of the URI.
_URI_USER = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}"
_URI_HOST = r"([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
_URI_AUTHORITY = rf"(({_URI_USER}@)?{_URI_HOST}(:[0-9]{{1,5}})?)?"
LIBVIRT_URI_PATTERN = (
    rf"^(qemu(\+(ssh|libssh|libssh2|tcp|tls|unix))?://{_URI_AUTHORITY}/(system|session)"
    rf"|test(\+(tcp|unix))?://{_URI_AUTHORITY}/default)$"
)
# Kubernetes' label rules (k8s.io/apimachinery/pkg/util/validation): a value of at most 63 characters; a key is
# an optional DNS-subdomain prefix (at most 253) and '/', then a name of at most 63. "[.]", not an escaped dot,
# so that the same text is a valid CEL string literal.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_KEY_LENGTH_PATTERN = r"^([^/]{1,253}/)?[^/]{1,63}$"
# A fleet name leaves room for "-<ordinal>" inside a 63-character name.
MAX_FLEET_NAME = 52
MAX_REPLICAS = 10000
RUN_STRATEGIES = ("Always", "Halted", "Manual", "RerunOnFailure")
# The fields of status.clones[] the biggest fleets leave out first (engine/status.py compact), in this order.
OPTIONAL_CLONE_FIELDS = ("addresses", "mac", "uuid", "name", "file", "revision")
MAX_ADDRESSES = 2  # per VM in status: where to ssh (an IPv4 and an IPv6), not an inventory


@dataclass(frozen=True)
class Rule:
    """A CEL rule over one object, evaluated by the apiserver and, the same string, by standalone validation."""

    cel: str
    message: str
    field: str = ""  # the field the error is reported on, relative to the object holding the rule


Schema = dict[str, Any]


def string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def integer(description: str, minimum: int | None = None, maximum: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "integer", "description": description, **extra}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def boolean(description: str, **extra: Any) -> Schema:
    return {"type": "boolean", "description": description, **extra}


def array(description: str, items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "description": description, "items": items, **extra}


def obj(
    description: str,
    properties: dict[str, Schema],
    required: tuple[str, ...] = (),
    rules: tuple[Rule, ...] = (),
    **extra: Any,
) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    if rules:
        schema["x-vmfleet-rules"] = list(rules)
    return schema


def name_field(description: str) -> Schema:
    return string(description, pattern=NAME_PATTERN, maxLength=63)


def reference(kind: str) -> Schema:
    return obj(f"Refers to a {kind} by name.", {"name": name_field(f"Name of the {kind}.")}, required=("name",))


def secret_reference(description: str) -> Schema:
    return obj(
        description,
        {
            "name": name_field("Name of the Secret."),
            "namespace": name_field("Namespace of the Secret."),
        },
        required=("name", "namespace"),
    )


def _condition() -> Schema:
    return obj(
        "One observation of the object's state, as in Kubernetes API conventions.",
        {
            "type": string("Ready, Reconciling, Stalled or Degraded."),
            "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": string("One CamelCase word a program can match on."),
            "message": string("What happened, for a human."),
            "lastTransitionTime": string("When status last changed.", format="date-time"),
            "observedGeneration": integer("The generation of the spec this condition speaks of.", 0),
        },
        required=("type", "status"),
    )


def conditions() -> Schema:
    return array(
        "Conditions: Ready, Reconciling, Stalled, Degraded.",
        _condition(),
        **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def observed_generation() -> Schema:
    return integer("The metadata.generation this status was computed from.", 0)


def kopf_record() -> Schema:
    """status.kopf: where kopf keeps what it needs between events, written with the status (one write, not two)."""
    return {
        "type": "object",
        "description": "The operator framework's own record (kopf): the last spec it handled "
        "(last-handled-configuration) and a handler's retries (progress). Not for users.",
        "x-kubernetes-preserve-unknown-fields": True,
    }


# ---------------------------------------------------------------- CloneStore

REMOTE_DRIVERS = ["sonas", "gpfs"]  # reached over SSH (spec.ssh); the others work on a local or mounted directory
STORE_DRIVERS = [*REMOTE_DRIVERS, "reflink", "qcow2"]
_LOCAL_DRIVERS = [d for d in STORE_DRIVERS if d not in REMOTE_DRIVERS]

CLONE_STORE_SPEC = obj(
    "Where template images and their clones live, and how clones are made.",
    {
        "driver": string(
            "How clones are made: sonas (mkclone over SSH), gpfs (mmclone over SSH), "
            "reflink (FICLONE on a local XFS or btrfs), qcow2 (qemu-img overlays in a local directory).",
            enum=STORE_DRIVERS,
        ),
        "root": string(
            "Absolute path on the storage under which parents and clones are kept "
            "(the server-side path for sonas and gpfs).",
            pattern=ABSOLUTE_PATH_PATTERN,
            maxLength=1024,
        ),
        "localPath": string(
            "Where `root` is mounted for the operator (the NFS export, for sonas). Defaults to `root`.",
            pattern=ABSOLUTE_PATH_PATTERN,
            maxLength=1024,
        ),
        "ssh": obj(
            "How the operator reaches the storage's management or GPFS node (sonas and gpfs only).",
            {
                "host": string("Host name or address.", pattern=HOSTNAME_PATTERN, maxLength=253),
                "port": integer("TCP port.", 1, 65535, default=22),
                "user": string("CLI or shell user.", pattern=r"^[a-z_][a-z0-9_-]*$", maxLength=32),
                "secretRef": secret_reference(
                    "Secret holding `ssh-privatekey` and `known_hosts`; host keys are always verified."
                ),
                "commandTimeoutSeconds": integer("How long one storage command may take.", 1, 3600, default=60),
                "maxSessions": integer(
                    "The SSH server's MaxSessions: commands at once on one connection (OpenSSH: 10). "
                    "When `concurrency` needs more, the operator opens more connections.",
                    1,
                    1000,
                    default=10,
                ),
            },
            required=("host", "user", "secretRef"),
        ),
        "maxCloneDepth": integer(
            "Longest clone chain allowed on the storage (0 = no limit); longer chains are redirected.", 0, 64, default=0
        ),
        "concurrency": integer("How many storage operations run at once.", 1, 256, default=8),
    },
    required=("driver", "root"),
    rules=(
        Rule(
            f"self.driver in {REMOTE_DRIVERS!r} ? has(self.ssh) : !has(self.ssh)",
            f"spec.ssh is required for the {' and '.join(REMOTE_DRIVERS)} drivers and not allowed for "
            f"{' and '.join(_LOCAL_DRIVERS)}",
            "ssh",
        ),
        Rule(
            "self.driver != 'sonas' || has(self.localPath)",
            "spec.localPath is required for the sonas driver (space is read through the NFS export)",
            "localPath",
        ),
    ),
)

CLONE_STORE_STATUS = obj(
    "What the operator last saw of the store.",
    {"observedGeneration": observed_generation(), "conditions": conditions(), "kopf": kopf_record()},
)

# ---------------------------------------------------------------- KvmHost

KVM_HOST_SPEC = obj(
    "One libvirt endpoint on which fleets place their VMs; metadata.labels are matched by hostSelector.",
    {
        "uri": string(
            "libvirt connection URI: qemu:///system, qemu+ssh://user@host/system, test:///default. Only "
            "scheme://[user@]host[:port]/path: a scheme above or qemu+libssh, qemu+libssh2, qemu+tcp, qemu+tls, "
            "qemu+unix; a host name, IPv4 or [IPv6] address; the path /system or /session (/default for libvirt's test "
            "driver: test, or test+tcp and test+unix for one a libvirtd serves). No "
            "query string (?...), fragment (#...), %-escape or space: vmfleet adds the parameters it needs itself "
            "(keyfile, known_hosts, sshauth), and others could turn off host-key checking or run another command.",
            pattern=LIBVIRT_URI_PATTERN,
            maxLength=1024,
        ),
        "domainType": string(
            "kvm for hardware virtualisation, qemu for software emulation (TCG).", enum=["kvm", "qemu"], default="kvm"
        ),
        "capacity": obj(
            "What fleets may use on this host; defaults to what libvirt reports for the node.",
            {
                "vcpus": integer("Virtual CPUs.", 1, 65536),
                "memoryMiB": integer("Memory in MiB.", 64, 1 << 30),
            },
        ),
        "storeMounts": array(
            "Where this host mounts each store's root; a store not listed is mounted at its `root`.",
            obj(
                "One store mount.",
                {
                    "store": name_field("Name of the CloneStore."),
                    "path": string("Absolute path of the store's root on this host.", pattern=ABSOLUTE_PATH_PATTERN),
                },
                required=("store", "path"),
            ),
            maxItems=64,
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["store"]},
        ),
        "unschedulable": boolean(
            "Cordon: no new VM is placed on this host (a new VM, or a scale-out); the VMs on it stay, run and "
            "are updated there. As a Node's spec.unschedulable: set it before maintenance, unset it after. "
            'Annotation vmfleet.io/drain: "true" cordons the host too and moves its VMs to other hosts '
            "(`vmfleet drain`).",
            default=False,
        ),
        "migrationAddress": string(
            "Host name or address other hosts send a live migration's memory to (a drain's moves); default: the "
            "name this host's libvirtd gives for itself.",
            pattern=HOSTNAME_PATTERN,
            maxLength=253,
        ),
        "consoleLogDir": string(
            "Directory on the host where each VM's serial console is logged as <domain>.log.",
            pattern=ABSOLUTE_PATH_PATTERN,
            maxLength=1024,
        ),
        "secretRef": secret_reference(
            "Secret with `ssh-privatekey` and `known_hosts` for a qemu+libssh:// URI; the host key is "
            "always checked against known_hosts."
        ),
    },
    required=("uri",),
    rules=(
        Rule(
            "!has(self.secretRef) || self.uri.startsWith('qemu+libssh')",
            "spec.secretRef needs a qemu+libssh:// or qemu+libssh2:// uri (they check the host key against "
            "the Secret's known_hosts)",
            "secretRef",
        ),
        Rule(
            "!self.uri.contains('?') && !self.uri.contains('#')",
            "spec.uri may not carry a query string (?...) or a fragment (#...): vmfleet sets the libvirt parameters "
            "it needs itself, and others could turn off host-key checking (known_hosts_verify=ignore) or run another "
            "command (command=)",
            "uri",
        ),
    ),
)

KVM_HOST_STATUS = obj(
    "What the operator last saw of the host.",
    {
        "observedGeneration": observed_generation(),
        "kopf": kopf_record(),
        "conditions": conditions(),
        "domains": integer("Domains defined on the host.", 0),
    },
)

# ---------------------------------------------------------------- cloud-init (VmTemplate and VmFleet)

DATASOURCES = ["NoCloud", "ConfigDrive"]
# Keys of meta-data vmfleet writes itself: spec.cloudInit.metaData may not set them.
RESERVED_META_DATA = ["instance-id", "local-hostname", "public-keys", "uuid", "hostname", "name", "public_keys"]
_TEMPLATED = (
    " Per-VM variables: {{ name }}, {{ ordinal }}, {{ fleet }}, {{ namespace }}, {{ mac }}, {{ uuid }}; any other "
    "bare {{ word }} is an error, while cloud-init's own jinja ({{ v1.local_hostname }}) passes through."
)


def cloud_init(where: str) -> Schema:
    return obj(
        f"cloud-init for each VM: a small seed image per VM (ISO 9660, labelled cidata or config-2) in the store "
        f"next to its clone, attached read-only. {where}",
        {
            "datasource": string(
                "NoCloud (default; cloud-init) or ConfigDrive (OpenStack config-drive v2, which cloudbase-init "
                "reads on Windows).",
                enum=DATASOURCES,
            ),
            "userData": string("User data, inline (#cloud-config, a script, ...)." + _TEMPLATED, maxLength=65536),
            "userDataSecretRef": obj(
                "A Secret of type vmfleet.io/user-data in the fleet's namespace holding the user data. The operator "
                "reads it only where a RoleBinding grants it (docs/security.md); its content never reaches logs, "
                "Events or status.",
                {
                    "name": name_field("Name of the Secret."),
                    "key": string(
                        "The key of the user data in the Secret.",
                        pattern=r"^[-._a-zA-Z0-9]+$",
                        maxLength=253,
                        default="userdata",
                    ),
                },
                required=("name",),
            ),
            "networkData": string(
                "Network configuration: network-config (YAML, version 1 or 2) for NoCloud, network_data.json for "
                "ConfigDrive." + _TEMPLATED,
                maxLength=65536,
            ),
            "metaData": {
                "type": "object",
                "description": "Extra meta-data keys (instance-id, local-hostname and public-keys are vmfleet's)."
                + _TEMPLATED,
                "additionalProperties": string("A meta-data value.", maxLength=4096),
                "maxProperties": 64,
                "x-vmfleet-rules": [
                    Rule(
                        f"self.all(k, k.matches('^[A-Za-z0-9][-A-Za-z0-9_.]*$') && size(k) <= 63 && "
                        f"!(k in {RESERVED_META_DATA!r}))",
                        "each key must be at most 63 of [A-Za-z0-9_.-], starting with a letter or digit, and not "
                        f"one vmfleet writes itself ({', '.join(RESERVED_META_DATA)})",
                    )
                ],
            },
            "sshAuthorizedKeys": array(
                "SSH public keys for the guest's default user (meta-data public-keys).",
                string("One public key, on one line.", pattern=r"^[^\n\r]+$", maxLength=16384),
                maxItems=64,
            ),
        },
        rules=(
            Rule(
                "!(has(self.userData) && has(self.userDataSecretRef))",
                "set userData or userDataSecretRef, not both",
            ),
        ),
    )


# ---------------------------------------------------------------- VmTemplate

# Device profiles: what the guest's drivers can talk to (hypervisor/domain.py builds the devices from these). The
# cloud-init seed is a read-only disk where virtio is there, and a CD-ROM (what cloudbase-init looks for) where not.
PROFILES: dict[str, dict[str, str]] = {
    "linux-virtio": {
        "disk_bus": "virtio",
        "disk_dev": "vda",
        "nic": "virtio",
        "machine": "q35",
        "clock": "utc",
        "seed_device": "disk",
        "seed_bus": "virtio",
        "seed_dev": "vdb",
    },
    # Windows Server 2008 R2 and friends ship no virtio drivers: SATA disk, e1000 NIC, local-time clock.
    "windows-legacy": {
        "disk_bus": "sata",
        "disk_dev": "sda",
        "nic": "e1000",
        "machine": "pc",
        "clock": "localtime",
        "seed_device": "cdrom",
        "seed_bus": "sata",
        "seed_dev": "sdb",
    },
}

VM_TEMPLATE_SPEC = obj(
    "A golden image on a CloneStore and the defaults of every VM cloned from it.",
    {
        "storeRef": reference("CloneStore"),
        "image": obj(
            "The template image.",
            {
                "path": string(
                    "Path of the image relative to the store's root; no '..', no leading '/'.",
                    pattern=RELATIVE_PATH_PATTERN,
                    maxLength=1024,
                ),
                "format": string("Disk format of the image.", enum=["raw", "qcow2"], default="raw"),
            },
            required=("path",),
        ),
        "profile": string(
            "Device profile: linux-virtio (virtio disk and NIC) or windows-legacy (SATA disk, e1000 NIC), "
            "for guests without virtio drivers such as Windows Server 2008 R2.",
            enum=list(PROFILES),
            default="linux-virtio",
        ),
        "vcpus": integer("Virtual CPUs of each VM.", 1, 256, default=1),
        "memoryMiB": integer("Memory of each VM in MiB.", 16, 4194304, default=1024),
        "machineType": string(
            "QEMU machine type (q35, pc, pc-q35-7.2, ...); defaults to q35, or pc for windows-legacy.",
            pattern=r"^[a-z0-9][a-z0-9._-]*$",
            maxLength=64,
        ),
        "firmware": string("bios (SeaBIOS) or uefi (OVMF).", enum=["bios", "uefi"], default="bios"),
        "network": string(
            "libvirt network each VM's NIC joins; no NIC when unset. Each NIC's MAC is the VM's own (status.clones).",
            pattern=r"^[A-Za-z0-9_.-]+$",
            maxLength=64,
        ),
        "cloudInit": cloud_init("No seed when neither the template nor the fleet sets it."),
    },
    required=("storeRef", "image"),
)

VM_TEMPLATE_STATUS = obj(
    "The template's read-only clone parent.",
    {
        "observedGeneration": observed_generation(),
        "kopf": kopf_record(),
        "conditions": conditions(),
        "parent": obj(
            "The read-only clone parent every clone of this template is made from.",
            {
                "path": string("Path of the parent relative to the store's root."),
                "format": string("Disk format of the parent."),
                "store": string("The CloneStore the parent is on."),
                "image": string("The image the parent was made from, relative to the store's root."),
                "clones": integer("Clones that refer to this parent.", 0),
                "preparedAt": string("When the parent was made.", format="date-time"),
            },
        ),
        "retiredParents": array(
            "Parents this template made for an image it no longer names: each is deleted (and leaves this list) at "
            "the first pass after no clone of any fleet uses it, no template names its image and every fleet that "
            "may clone from it has counted its clones; the template's deletion waits for them too.",
            obj(
                "One old clone parent the template still owes a release.",
                {
                    "path": string("Path of the parent relative to the store's root."),
                    "format": string("Disk format of the parent."),
                    "store": string("The CloneStore the parent is on."),
                    "image": string("The image the parent was made from, relative to the store's root."),
                    "clones": integer("Clones of all fleets that still refer to it.", 0),
                    "retiredAt": string("When the template stopped naming its image.", format="date-time"),
                    "message": string("Why it is still there: what holds it, or the store's error."),
                },
                required=("path", "store"),
            ),
        ),
    },
)

# ---------------------------------------------------------------- VmFleet

_VM_OVERRIDE = obj(
    "Settings for one VM that differ from the template's.",
    {
        "ordinal": integer("The VM's ordinal (its name is <fleet>-<ordinal>).", 0, MAX_REPLICAS - 1),
        "vcpus": integer("Virtual CPUs.", 1, 256),
        "memoryMiB": integer("Memory in MiB.", 16, 4194304),
        "running": boolean("Whether this VM runs."),
        "mac": string(
            "The MAC of this VM's NIC, instead of the one derived from the fleet's UID and the ordinal: unicast, "
            "lower case, and not another VM's.",
            pattern=r"^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$",
        ),
    },
    required=("ordinal",),
)

VM_FLEET_SPEC = obj(
    "A fleet of VMs, each booted from its own copy-on-write clone of a template.",
    {
        "templateRef": reference("VmTemplate in the fleet's namespace"),
        "replicas": integer("How many VMs.", 0, MAX_REPLICAS, default=1),
        "hostSelector": obj(
            "Which KvmHosts the fleet may use; all hosts when empty.",
            {
                "matchLabels": {
                    "type": "object",
                    "description": "Labels a KvmHost must carry: keys and values follow Kubernetes' label rules.",
                    "additionalProperties": string("Label value.", pattern=LABEL_VALUE_PATTERN, maxLength=63),
                    "maxProperties": 32,
                    "x-vmfleet-rules": [
                        Rule(
                            f"self.all(k, k.matches('{LABEL_KEY_PATTERN}') && k.matches('{LABEL_KEY_LENGTH_PATTERN}'))",
                            "spec.hostSelector.matchLabels: each key must be a label key, [prefix/]name: an optional "
                            "DNS subdomain of at most 253 characters, then a name of at most 63 of [A-Za-z0-9_.-] "
                            "that starts and ends with a letter or digit",
                        )
                    ],
                }
            },
        ),
        "placement": string(
            "spread: as few VMs per host as possible; pack: fill one host before the next.",
            enum=["spread", "pack"],
            default="spread",
        ),
        "running": boolean(
            "Whether the fleet's VMs run: true is runStrategy Always, false Halted. runStrategy, when set, wins.",
            default=True,
        ),
        "runStrategy": string(
            "Always: vmfleet starts every VM that is not running. Halted: it stops them. Manual: it neither starts "
            "nor stops a VM that exists (a new VM is defined, not started). RerunOnFailure: it starts a VM again "
            "unless the guest powered itself off.",
            enum=list(RUN_STRATEGIES),
        ),
        "ephemeral": boolean(
            "A VM that stops (the guest powers off, or crashes) gets a new clone of the template's parent and is "
            "started again: a fresh disk for every job, as CI runners want. What the guest wrote is gone.",
            default=False,
        ),
        "shutdown": obj(
            "How vmfleet stops a VM (scale-in, runStrategy Halted, updates, reimage, deletion).",
            {
                "gracePeriodSeconds": integer(
                    "Seconds between pressing the ACPI power button and pulling the plug (virsh destroy); 0 pulls it "
                    "at once.",
                    0,
                    3600,
                    default=60,
                ),
            },
            default={},
        ),
        "updateStrategy": obj(
            "How VMs that exist take a new revision of the fleet (a template or fleet edit).",
            {
                "type": string(
                    "RollingUpdate: vmfleet updates the VMs, at most maxUnavailable of them down at once, from the "
                    "highest ordinal down. OnDelete: a VM takes the new revision only when it is stopped or "
                    "reimaged.",
                    enum=["RollingUpdate", "OnDelete"],
                    default="RollingUpdate",
                ),
                "rollingUpdate": obj(
                    "Settings of RollingUpdate.",
                    {
                        "maxUnavailable": {
                            "description": "How many VMs may be down for the update at once: a number (at least 1) "
                            "or a percent of spec.replicas (rounded down, at least 1).",
                            "x-kubernetes-int-or-string": True,
                            "anyOf": [{"type": "integer"}, {"type": "string"}],
                            "default": 1,
                        },
                        "partition": integer(
                            "Only VMs whose ordinal is at least this are updated: a canary.", 0, MAX_REPLICAS, default=0
                        ),
                    },
                    rules=(
                        Rule(
                            "!has(self.maxUnavailable) || (type(self.maxUnavailable) == int ? self.maxUnavailable >= 1"
                            " : string(self.maxUnavailable).matches('^(100|[1-9][0-9]?)%$'))",
                            "spec.updateStrategy.rollingUpdate.maxUnavailable: must be a number of at least 1 or a "
                            "percent from 1% to 100%",
                        ),
                    ),
                    default={},
                ),
                "diskPolicy": string(
                    "When the template's image changes: Reimage gives each VM a new clone of the new image (what "
                    "the guest wrote is gone), Keep leaves every VM its disk (only new and reimaged VMs get the new "
                    "image).",
                    enum=["Reimage", "Keep"],
                    default="Reimage",
                ),
            },
            default={},
        ),
        "readiness": string(
            "When a VM counts as ready (readyReplicas, and before a rolling update moves on): Running (its domain "
            "runs: not paused, nor still starting, which libvirt does paused), or Address: running and an IP "
            "address seen on its NIC (a DHCP lease, or the host's ARP table), so "
            "that a guest that does not boot is not ready and halts the update. dnsmasq keeps a lease while its guest "
            "is off: a lease counts only when granted after vmfleet started the VM (it runs out later than the one "
            "its MAC held then), and once one was, the VM stays ready while it runs (a lease table lost or a host "
            "that does not answer for its leases does not take it down). Needs leases of finite time.",
            enum=["Running", "Address"],
            default="Running",
        ),
        "progressDeadlineSeconds": integer(
            "Seconds a rolling update may go without a VM becoming ready on the new revision before it is "
            "reported stalled (condition Stalled, reason RolloutStalled).",
            1,
            86400,
            default=600,
        ),
        "deletionPolicy": string(
            "What happens to the clones when the fleet is deleted: Delete them, or Retain them on the storage.",
            enum=["Delete", "Retain"],
            default="Delete",
        ),
        "cloudInit": cloud_init(
            "Each field set here replaces the template's (metaData: key by key; userData and userDataSecretRef as one)."
        ),
        "overrides": array(
            "Per-VM settings, by ordinal.",
            _VM_OVERRIDE,
            maxItems=MAX_REPLICAS,
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["ordinal"]},
        ),
    },
    required=("templateRef",),
)

_CLONE_STATUS = obj(
    "One VM of the fleet.",
    {
        "name": string("The VM's name, <fleet>-<ordinal>."),
        "ordinal": integer("The VM's ordinal.", 0),
        "host": string("The KvmHost the VM is placed on."),
        "file": string(
            "The clone's file name in status.cloneDirectory (a name, not a path: it keeps the status of the biggest "
            "fleets far from etcd's object size limit)."
        ),
        "state": string("Pending, Running, Stopped, Paused, Lost, Unknown, ..."),
        "revision": string("The fleet revision the VM was last built or updated from (status.updateRevision)."),
        "uuid": string("The VM's libvirt UUID: the same for its whole life."),
        "mac": string("The MAC of the VM's NIC (when the template names a network)."),
        "addresses": array(
            f"IP addresses of the VM's NIC, from the network's DHCP leases or the host's ARP table (the first "
            f"{MAX_ADDRESSES}).",
            string("An IPv4 or IPv6 address.", maxLength=45),
            maxItems=MAX_ADDRESSES,
        ),
        "restartRequired": {
            "type": "boolean",
            "description": "The VM runs an older definition than the one "
            "defined: it takes effect at its next restart (condition RestartRequired).",
        },
        "logicalBytes": integer("The clone's size as the guest sees it, plus its cloud-init seed's.", 0),
        "allocatedBytes": integer(
            "Bytes of this clone's data (and its seed's) no other file shares: what deleting it frees. Leaves out "
            "XFS's transient copy-on-write preallocation (up to 128 KiB per region written, trimmed within 5 minutes).",
            0,
        ),
    },
    required=("ordinal",),
)

VM_FLEET_STATUS = obj(
    "What the fleet looks like now.",
    {
        "observedGeneration": observed_generation(),
        "kopf": kopf_record(),
        "conditions": conditions(),
        "replicas": integer("VMs that exist (a clone and a domain).", 0),
        "labelSelector": string(
            "vmfleet.io/fleet=<name>: the selector of the scale subresource (`kubectl get --raw .../scale`), which a "
            "HorizontalPodAutoscaler or KEDA needs to scale the fleet; it matches no pod (the VMs are domains).",
            maxLength=128,
        ),
        "readyReplicas": integer("VMs in the state the spec asks for.", 0),
        "updatedReplicas": integer("VMs on status.updateRevision.", 0),
        "updateRevision": string(
            "A hash of everything that shapes the fleet's VMs (the template's image and hardware, cloud-init, "
            "overrides): the revision VMs are being brought to."
        ),
        "currentRevision": string(
            "The revision every VM was on before the update in progress; equal to updateRevision once every VM is "
            "on it. VMs below spec.updateStrategy.rollingUpdate.partition keep it, as a StatefulSet's pods do."
        ),
        "updateProgressedAt": string(
            "When the update in progress last made progress (a VM ready on updateRevision): spec."
            "progressDeadlineSeconds counts from here.",
            format="date-time",
        ),
        "logicalBytes": integer("Sum of the clones' logical sizes.", 0),
        "allocatedBytes": integer("Sum of the clones' own bytes.", 0),
        "savedBytes": integer(
            "logicalBytes - allocatedBytes (never below 0): what full copies would have cost on top.", 0
        ),
        "savingsRatio": {"type": "number", "description": "savedBytes / logicalBytes, 0 to 1."},
        "measuredAt": string(
            "When the space figures shown last changed. The files of all fleets of a store are measured together, "
            "in one batch, whenever a pass finds the last batch a resync (VMFLEET_RESYNC_SECONDS) old, and a "
            "fleet's files again at once when vmfleet has changed them; the status is written only when a figure "
            "differs. The figures are so at most two resyncs old (a pass shows those of the last batch, and the "
            "next pass comes a resync later), unless condition Degraded says StoreUnavailable: they are then those "
            "of the last pass that reached the store.",
            format="date-time",
        ),
        "store": string("The CloneStore the fleet's clones are in (a fleet cannot move to another store)."),
        "parent": string("The clone parent the fleet's clones come from, relative to the store's root."),
        "clonesByParent": array(
            "How many of the fleet's clones come from each clone parent (a fleet that switched templates has "
            "clones of two): a parent is deleted only when no fleet counts any.",
            obj(
                "One clone parent.",
                {
                    "parent": string("The parent's path relative to the store's root."),
                    "clones": integer("Clones of this fleet made from it.", 0),
                },
                required=("parent", "clones"),
            ),
            maxItems=MAX_REPLICAS + 1000,
        ),
        "cloneDirectory": string(
            "Where the fleet's clones are, relative to the store's root: "
            "vmfleet/clones/<namespace>/<fleet>/<fleet UID>; the UID says which fleet made "
            "them, so a later fleet of the same name never touches them."
        ),
        "vmsByHost": array(
            "How many of the fleet's VMs each KvmHost held at the last pass (every VM, whatever status.clones lists, "
            "and a stale definition of one on another host too): a KvmHost is deleted only when no fleet counts any.",
            obj(
                "One KvmHost.",
                {"host": string("The KvmHost's name."), "vms": integer("VMs of this fleet placed on it.", 0)},
                required=("host", "vms"),
            ),
            maxItems=MAX_REPLICAS + 1000,
        ),
        "clones": array(
            "One entry per VM, by ordinal (in the biggest fleets, see clonesOmitted, not every VM).",
            _CLONE_STATUS,
            maxItems=MAX_REPLICAS + 1000,
        ),
        "compactedFields": array(
            "Per-VM fields left out of every entry of status.clones so that the object stays inside etcd's size "
            "limit (the biggest fleets only), in this order: addresses, mac, uuid (the VMs' domains have them: virsh "
            "domifaddr, domiflist, domuuid), name (<fleet>-<ordinal>), file (in status.cloneDirectory), revision "
            "(status.updatedReplicas counts the VMs on status.updateRevision).",
            string("A field of status.clones[].", enum=list(OPTIONAL_CLONE_FIELDS)),
            maxItems=len(OPTIONAL_CLONE_FIELDS),
        ),
        "clonesOmitted": integer(
            "VMs left out of status.clones even with compactedFields, so that the object stays inside etcd's size "
            "limit: those ready as they are first, the highest ordinals first. The fleet's totals and "
            "status.vmsByHost count them; `virsh list` on the hosts shows them.",
            0,
        ),
    },
)


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    namespaced: bool
    spec: Schema
    status: Schema
    printer_columns: tuple[dict[str, Any], ...] = ()
    max_name: int = 63  # CRDs may restrict metadata.name (and nothing else in metadata)
    scale: bool = False
    # The operator reconciles (or probes) this kind and writes its status: until it has, the API serves
    # status.observedGeneration 0, so kstatus (Flux) and Argo CD read a new object as in progress, not current.
    reconciled: bool = False


def _column(name: str, path: str, type_: str = "string", priority: int = 0, description: str = "") -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": description or name}
    if priority:
        column["priority"] = priority
    return column


_AGE = _column("Age", ".metadata.creationTimestamp", "date")

KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind(
            "CloneStore",
            "clonestores",
            "clonestore",
            ("cst",),
            False,
            CLONE_STORE_SPEC,
            CLONE_STORE_STATUS,
            reconciled=True,
            printer_columns=(
                _column("Driver", ".spec.driver"),
                _column("Root", ".spec.root"),
                _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
                _AGE,
            ),
        ),
        Kind(
            "KvmHost",
            "kvmhosts",
            "kvmhost",
            ("kvh",),
            False,
            KVM_HOST_SPEC,
            KVM_HOST_STATUS,
            reconciled=True,
            printer_columns=(
                _column("URI", ".spec.uri"),
                _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
                _column("Schedulable", '.status.conditions[?(@.type=="Schedulable")].status'),
                _column("Drain", f'.status.conditions[?(@.type=="{reasons.DRAINED}")].reason'),
                _column("Domains", ".status.domains", "integer"),
                _AGE,
            ),
        ),
        Kind(
            "VmTemplate",
            "vmtemplates",
            "vmtemplate",
            ("vmt",),
            True,
            VM_TEMPLATE_SPEC,
            VM_TEMPLATE_STATUS,
            reconciled=True,
            printer_columns=(
                _column("Store", ".spec.storeRef.name"),
                _column("Image", ".spec.image.path"),
                _column("Profile", ".spec.profile"),
                _column("Clones", ".status.parent.clones", "integer"),
                _AGE,
            ),
        ),
        Kind(
            "VmFleet",
            "vmfleets",
            "vmfleet",
            ("vmf",),
            True,
            VM_FLEET_SPEC,
            VM_FLEET_STATUS,
            reconciled=True,
            printer_columns=(
                _column("Desired", ".spec.replicas", "integer"),
                _column("Ready", ".status.readyReplicas", "integer"),
                _column("Allocated", ".status.allocatedBytes", "integer", description="Bytes the clones own"),
                _column("Saved", ".status.savedBytes", "integer", description="Bytes saved against full copies"),
                _column("Age", ".metadata.creationTimestamp", "date"),
                _column("Template", ".spec.templateRef.name", priority=1),
                _column("Placement", ".spec.placement", priority=1),
                _column("Ratio", ".status.savingsRatio", "number", priority=1),
                _column("Status", '.status.conditions[?(@.type=="Ready")].reason', priority=1),
            ),
            max_name=MAX_FLEET_NAME,
            scale=True,
        ),
    )
}
