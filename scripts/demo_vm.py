"""Boot or stop the demo's Debian VM, outside Pulumi.

The demo stack's machine (see Pulumi.demo.yaml) is this VM at the fixed
loopback address 127.100.0.2, logged in to with a key generated once into the
demo directory. ``up`` boots it if it is not running; ``down`` powers it off
and removes its disk.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from provider import loopback, qemu, vmimage

DEMO_ADDRESS = "127.100.0.2"
DEMO_HOLDER = "pulumi-docker-machine demo VM"


def demo_dir() -> Path:
    """Return the directory that contains the demo's key and VM."""
    return vmimage.cache_root() / "demo"


def ensure_key(directory: Path) -> Path:
    """Generate the demo's ed25519 key pair once; return the private key path."""
    key = directory / "id_ed25519"
    if not key.exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pulumi-docker-machine demo",
             "-f", str(key)],
            check=True,
        )  # fmt: skip
    return key


def up() -> None:
    """Boot the demo VM unless it is already running."""
    directory = demo_dir()
    machine_dir = directory / "vm"
    if qemu.is_running(machine_dir):
        print(f"demo VM already running at {DEMO_ADDRESS}", file=sys.stderr)
        return
    key = ensure_key(directory)
    image = vmimage.ensure_image()
    # A lease left by an earlier demo VM that is no longer running is stale.
    for lease in loopback.list_leases():
        if lease.address == DEMO_ADDRESS and lease.holder == DEMO_HOLDER:
            loopback.release(DEMO_ADDRESS)
    loopback.take(DEMO_ADDRESS, holder=DEMO_HOLDER, persistent=True)
    print(f"booting the demo VM at {DEMO_ADDRESS} (about 30 s under emulation)",
          file=sys.stderr)  # fmt: skip
    config = qemu.VMConfig(
        machine_dir=machine_dir,
        image=image,
        address=DEMO_ADDRESS,
        authorized_key=Path(f"{key}.pub").read_text().strip(),
    )
    try:
        qemu.boot(config)
    except BaseException:
        loopback.release(DEMO_ADDRESS)
        raise


def down() -> None:
    """Power the demo VM off and remove its disk and lease."""
    machine_dir = demo_dir() / "vm"
    qemu.stop(machine_dir)
    qemu.remove(machine_dir)
    loopback.release(DEMO_ADDRESS)
    print("demo VM stopped and removed", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down"])
    arguments = parser.parse_args()
    up() if arguments.command == "up" else down()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
