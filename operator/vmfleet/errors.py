"""Every error vmfleet raises on purpose, in one tree (as httpx's `_exceptions.py` has for transports).

Drivers translate what their libraries raise (OSError, libvirtError, asyncssh errors) into these where it
arises; the engine catches these and nothing broader, and turns each into a condition and an Event.

    VmfleetError
    ├── StoreError            a storage operation failed
    │   ├── StoreTimeout      the store did not answer in time (a hung mount, a silent SSH peer)
    │   └── RootMissing       the store's root is not a directory that can be opened where vmfleet runs
    ├── HostError             a libvirt host refused or did not answer
    │   └── HostTimeout       the host did not answer in time (a libvirtd that accepts and never answers)
    ├── CredentialsError      a Secret named by a spec field cannot be read or lacks a key
    │   └── SecretUnreadable  (credentials.py) a SecretReader's failure, before the field is known
    ├── Unresolved            (engine/catalog.py) a reference that does not resolve, or an invalid object
    └── ImageBuildError       (guest.py) the Linux guest image cannot be built: a tool or package is missing

A CredentialsError leaves a driver as that driver's error (the store's StoreError, the host's HostError):
the engine reports a Secret's fault as it reports its owner's.
"""

from __future__ import annotations


class VmfleetError(Exception):
    """The root: the message says what failed and why, naming the object or field."""


class StoreError(VmfleetError):
    """A storage operation failed; the message says which and why."""


class StoreTimeout(StoreError):
    """The store did not answer within its timeout; the call may still be running there."""


class RootMissing(StoreError):
    """The store's root is not a directory that can be opened here (its mount is missing)."""


class HostError(VmfleetError):
    """A libvirt host refused an operation or cannot be reached."""


class HostTimeout(HostError):
    """The host did not answer within its timeout; the call may still be running there."""


class CredentialsError(VmfleetError):
    """A Secret cannot be read or lacks a key; the message names the Secret and the field that names it."""


class ImageBuildError(VmfleetError):
    """The Linux guest image cannot be built; the message names the missing tool, package or file."""
