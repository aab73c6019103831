"""SSH credentials from a Kubernetes Secret, for a CloneStore (spec.ssh.secretRef) and a KvmHost (spec.secretRef)
alike: neither storage nor hypervisor reads Secrets through the other.

A SecretReader knows the Secret, not which field named it; `ssh_keys` is given the field, so every message
names both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .api.types import SecretRef
from .errors import CredentialsError

SecretReader = Callable[[SecretRef], Mapping[str, str]]
"""Reads a Secret's data (decoded; bytes that are not UTF-8 as surrogates), a SecretData where its type is known;
raises SecretUnreadable when it cannot."""

USER_DATA_TYPE = "vmfleet.io/user-data"
"""The type a Secret must have for spec.cloudInit.userDataSecretRef: only Secrets made for it reach a guest."""


class SecretData(dict[str, str]):
    """A Secret's data with its type."""

    def __init__(self, data: Mapping[str, str], type_: str) -> None:
        super().__init__(data)
        self.type = type_


KeyReader = Callable[[], tuple[str, str]]
"""() -> (private key, known_hosts), read again at every (re)connection so a rotated Secret takes effect;
blocking (it may ask the Kubernetes API), so it runs in a thread; raises CredentialsError."""

PRIVATE_KEY = "ssh-privatekey"  # the keys of a kubernetes.io/ssh-auth Secret
KNOWN_HOSTS = "known_hosts"


class SecretUnreadable(CredentialsError):
    """A SecretReader could not read a Secret; `reason` says why, to be told with the field that names it.
    `forbidden`: the reader is not allowed to (the Kubernetes API said 403)."""

    def __init__(self, ref: SecretRef, reason: str, forbidden: bool = False) -> None:
        super().__init__(f"Secret {ref.namespace}/{ref.name} {reason}")
        self.ref, self.reason, self.forbidden = ref, reason, forbidden


def no_secrets(ref: SecretRef) -> Mapping[str, str]:
    """The SecretReader where there is none to read from."""
    raise SecretUnreadable(ref, "is not available here")


def ssh_keys(ref: SecretRef, read_secret: SecretReader, field: str) -> KeyReader:
    """Reads (private key, known_hosts) from the kubernetes.io/ssh-auth Secret `ref`, which `field` names, at
    each call; CredentialsError naming the Secret and `field` when it cannot."""
    named = f"Secret {ref.namespace}/{ref.name} ({field})"

    def read() -> tuple[str, str]:
        try:
            data = read_secret(ref)
        except SecretUnreadable as e:
            raise CredentialsError(f"{named} {e.reason}") from None
        missing = [k for k in (PRIVATE_KEY, KNOWN_HOSTS) if not data.get(k)]
        if missing:
            raise CredentialsError(f"{named} has no {' or '.join(missing)}")
        for k in (PRIVATE_KEY, KNOWN_HOSTS):
            try:
                data[k].encode()
            except UnicodeEncodeError:  # the message names the key, never its bytes
                raise CredentialsError(f"{named}: {k} is not UTF-8 text") from None
        return data[PRIVATE_KEY], data[KNOWN_HOSTS]

    return read


# The ClusterRole deploy/rbac.yaml defines, and a namespace's RoleBinding grants, to read user data Secrets.
USER_DATA_ROLE = "vmfleet-cloud-init-reader"
OPERATOR_ACCOUNT = "vmfleet-system:vmfleet-operator"


def user_data(ref: SecretRef, key: str, read_secret: SecretReader) -> str:
    """The user data in Secret `ref` under `key` (spec.cloudInit.userDataSecretRef); CredentialsError naming the
    field, and the RoleBinding to create when the operator may not read Secrets in that namespace. The error never
    carries the Secret's content."""
    field = "spec.cloudInit.userDataSecretRef"
    named = f"Secret {ref.namespace}/{ref.name} ({field})"
    try:
        data = read_secret(ref)
    except SecretUnreadable as e:
        if e.forbidden:
            raise CredentialsError(
                f"{named} {e.reason}: the operator may read Secrets only in namespaces that grant it; create the "
                f"RoleBinding: kubectl -n {ref.namespace} create rolebinding vmfleet-cloud-init "
                f"--clusterrole={USER_DATA_ROLE} --serviceaccount={OPERATOR_ACCOUNT}"
            ) from None
        raise CredentialsError(f"{named} {e.reason}") from None
    kind = getattr(data, "type", "")
    if kind != USER_DATA_TYPE:
        raise CredentialsError(
            f"{named} is of type {kind or 'unknown'}: user data is read only from Secrets of type {USER_DATA_TYPE} "
            f"(kubectl create secret generic {ref.name} --type={USER_DATA_TYPE} --from-file=userdata=FILE), so that "
            "no Secret made for something else (an SSH key, a password) can be copied into a guest's seed"
        )
    if key not in data:
        raise CredentialsError(f"{named} has no key {key!r} (userDataSecretRef.key)")
    return data[key]


__all__ = [
    "KNOWN_HOSTS",
    "PRIVATE_KEY",
    "USER_DATA_ROLE",
    "USER_DATA_TYPE",
    "KeyReader",
    "SecretData",
    "SecretReader",
    "SecretUnreadable",
    "no_secrets",
    "ssh_keys",
    "user_data",
]
