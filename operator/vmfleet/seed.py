"""A VM's cloud-init seed image: the small ISO 9660 file system cloud-init finds by its label, `cidata` for
NoCloud or `config-2` for OpenStack's config drive (which cloudbase-init reads on Windows).

The files are what the datasource reads; the image carries Rock Ridge names for Linux and Joliet names for
Windows. `Seed.digest` depends on the files alone (the image also records when it was made), so a seed is
rewritten only when what the guest would read changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pycdlib
import yaml

NOCLOUD, CONFIG_DRIVE = "NoCloud", "ConfigDrive"
LABELS = {NOCLOUD: "cidata", CONFIG_DRIVE: "config-2"}


@dataclass(frozen=True)
class Seed:
    label: str
    files: tuple[tuple[str, bytes], ...] = field(repr=False)  # (path, content), sorted; user data: not for logs

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.label.encode())
        for path, data in self.files:
            h.update(b"\0%s\0%d\0" % (path.encode(), len(data)) + data)
        return h.hexdigest()[:12]

    def image(self) -> bytes:
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=self.label)
        made: set[str] = set()
        for path, data in self.files:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    made.add(directory)
                    iso.add_directory(_iso_name(directory), rr_name=parts[depth - 1], joliet_path=f"/{directory}")
            iso.add_fp(io.BytesIO(data), len(data), _iso_name(path) + ";1", rr_name=parts[-1], joliet_path=f"/{path}")
        out = io.BytesIO()
        iso.write_fp(out)
        iso.close()
        return out.getvalue()


def _iso_name(path: str) -> str:
    """The plain ISO 9660 name (level 3: d-characters only), beside the Rock Ridge and Joliet names readers use."""
    return "/" + "/".join(re.sub(r"[^A-Z0-9_]", "_", part.upper())[:30] for part in path.split("/"))


def nocloud(
    instance_id: str,
    hostname: str,
    user_data: str,
    network_config: str | None,
    meta_data: Mapping[str, str],
    keys: Sequence[str],
) -> Seed:
    meta: dict[str, object] = {"instance-id": instance_id, "local-hostname": hostname, **meta_data}
    if keys:
        meta["public-keys"] = list(keys)
    files = {"meta-data": yaml.safe_dump(meta, sort_keys=False), "user-data": user_data}
    if network_config is not None:
        files["network-config"] = network_config
    return _seed(LABELS[NOCLOUD], files)


def config_drive(
    instance_id: str,
    hostname: str,
    user_data: str,
    network_data: str | None,
    meta_data: Mapping[str, str],
    keys: Sequence[str],
) -> Seed:
    meta = {
        "uuid": instance_id,
        "hostname": hostname,
        "name": hostname,
        "meta": dict(meta_data),
        "public_keys": {f"key-{i}": k for i, k in enumerate(keys)},
    }
    files = {
        "openstack/latest/meta_data.json": json.dumps(meta, indent=2, sort_keys=True) + "\n",
        "openstack/latest/user_data": user_data,
    }
    if network_data is not None:
        files["openstack/latest/network_data.json"] = network_data
    return _seed(LABELS[CONFIG_DRIVE], files)


def _seed(label: str, files: Mapping[str, str]) -> Seed:
    # surrogateescape: user data from a Secret may be any bytes (gzip), carried in a str by the Secret reader
    return Seed(label, tuple(sorted((p, t.encode(errors="surrogateescape")) for p, t in files.items())))


def read_files(image: bytes) -> dict[str, bytes]:
    """The files of a seed image by their Rock Ridge paths: what a Linux guest sees (tests and `vmfleet` checks)."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        out: dict[str, bytes] = {}
        for root, _dirs, names in iso.walk(rr_path="/"):
            for name in names:
                path = f"{root.rstrip('/')}/{name}"
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, rr_path=path)
                out[path.lstrip("/")] = buf.getvalue()
        return out
    finally:
        iso.close()


def label_of(image: bytes) -> str:
    """The volume identifier (32 bytes at sector 16 + 40), as a guest looking for `cidata` reads it."""
    return image[32768 + 40 : 32768 + 72].decode("ascii", "replace").strip()
