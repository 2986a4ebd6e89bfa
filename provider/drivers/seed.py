"""cloud-init NoCloud seed images, for disk images that boot on their own.

cloud-init's NoCloud data source reads ``user-data`` and ``meta-data`` from a
file system labelled ``cidata``. The seed written here is an ISO 9660 image
(with Joliet and Rock Ridge names, as cloud-init's own tools make it) that
installs the machine's public key for its SSH user.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib

VOLUME_LABEL = "cidata"


def user_data(user: str, public_key: str) -> str:
    """Return the cloud-config that lets ``user`` log in with ``public_key``."""
    account: dict[str, object] = {"name": user, "ssh_authorized_keys": [public_key]}
    if user != "root":
        account.update(sudo="ALL=(ALL) NOPASSWD:ALL", shell="/bin/bash")
    config = {
        "users": ["default", account],
        # Cloud images turn root logins off by default, and the project's
        # own image logs in as root.
        "disable_root": user != "root",
        "ssh_pwauth": False,
    }
    # JSON is YAML, so the document needs no YAML writer and no quoting rules.
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"


def meta_data(hostname: str) -> str:
    """Return the NoCloud meta-data naming the instance and its host name."""
    return json.dumps({"instance-id": f"pdm-{hostname}", "local-hostname": hostname}) + "\n"


def write_seed_image(path: Path, user: str, public_key: str, hostname: str) -> Path:
    """Write the seed image for ``user`` and ``public_key`` to ``path``."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    for name, text in (("user-data", user_data(user, public_key)), ("meta-data", meta_data(hostname))):
        data = text.encode()
        iso_name = name.upper().replace("-", "_") + ".;1"
        iso.add_fp(
            io.BytesIO(data), len(data), f"/{iso_name}",
            rr_name=name, joliet_path=f"/{name}",
        )  # fmt: skip
    iso.write(str(path))
    iso.close()
    return path
