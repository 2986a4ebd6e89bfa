"""Build and cache the Debian 12 (bookworm) root file system that test VMs boot.

The image is a raw ext4 file system made with ``debootstrap`` and
``mkfs.ext4 -d``. It boots with the host's Debian kernel and initrd from /boot,
so the matching /lib/modules tree is copied into it. Each VM boots its own
qcow2 overlay of this image (see :mod:`provider.qemu`). The image therefore
ships without SSH host keys, a machine id or an authorized key. Each VM
generates its host keys on first boot and takes root's authorized key from
the kernel command line parameter ``pdm.authorized_key``.

Images are cached under ``<cache root>/images`` and named by a hash of the
recipe (suite, package list, every file written into the image, the kernel
version), so a changed recipe builds a new image and an unchanged one is
reused. Building needs root.

``python -m provider.vmimage`` builds or reuses the image and prints its path.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provider.errors import DockerMachineError

logger = logging.getLogger(__name__)

SUITE = "bookworm"
VARIANT = "minbase"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMAGE_SIZE_BYTES = 3 * 1024**3
PACKAGES = (
    "systemd-sysv",
    "udev",
    "openssh-server",
    "iproute2",
    "ifupdown",
    "isc-dhcp-client",
    "docker.io",
    "ca-certificates",
    "curl",
    "kmod",
    "apparmor",
    # systemd-logind needs D-Bus, and logind turns the ACPI power button
    # (QMP system_powerdown) into a clean poweroff.
    "dbus",
)
AUTHORIZED_KEY_PARAMETER = "pdm.authorized_key"
# Bump when the build steps change in a way the recipe contents do not show.
RECIPE_REVISION = 1


@dataclass(frozen=True)
class ImageFile:
    """A file written into the image: absolute path inside it, text, mode."""

    path: str
    content: str
    mode: int = 0o644


_AUTHORIZED_KEY_SCRIPT = f"""\
#!/bin/sh
# Write root's authorized_keys from the kernel command line parameter
# {AUTHORIZED_KEY_PARAMETER}=<base64 of one OpenSSH public key line>.
# A public key is not a secret, so the command line may carry it.
set -eu
for word in $(cat /proc/cmdline); do
    case "$word" in
    {AUTHORIZED_KEY_PARAMETER}=*)
        umask 077
        mkdir -p /root/.ssh
        chmod 0700 /root/.ssh
        encoded="${{word#{AUTHORIZED_KEY_PARAMETER}=}}"
        {{ printf '%s' "$encoded" | base64 -d; echo; }} > /root/.ssh/authorized_keys.new
        chmod 0600 /root/.ssh/authorized_keys.new
        mv /root/.ssh/authorized_keys.new /root/.ssh/authorized_keys
        echo "installed root's authorized key from the kernel command line"
        ;;
    esac
done
"""

_AUTHORIZED_KEY_UNIT = f"""\
[Unit]
Description=Install root's SSH authorized key from the kernel command line
ConditionKernelCommandLine={AUTHORIZED_KEY_PARAMETER}
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pdm-authorized-key

[Install]
WantedBy=multi-user.target
"""

# Only ed25519 and ECDSA host keys: an RSA-3072 key costs about 10 s of every
# first boot under software emulation.
_HOST_KEYS_SCRIPT = """\
#!/bin/sh
set -eu
for type in ed25519 ecdsa; do
    key=/etc/ssh/ssh_host_${type}_key
    [ -e "$key" ] || ssh-keygen -q -t "$type" -N '' -f "$key"
done
"""

# The packaged unit runs `sshd -t` first, which fails without host keys. So the
# drop-in replaces the ExecStartPre list, generating missing keys before the test.
_SSH_HOST_KEYS_DROP_IN = """\
[Service]
ExecStartPre=
ExecStartPre=/usr/local/sbin/pdm-host-keys
ExecStartPre=/usr/sbin/sshd -t
"""

FILES = (
    ImageFile(
        "/etc/network/interfaces",
        "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n",
    ),
    ImageFile("/etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n"),
    ImageFile("/etc/hostname", "pdm-vm\n"),
    ImageFile("/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 pdm-vm\n"),
    ImageFile(
        "/etc/ssh/sshd_config.d/10-pulumi-docker-machine.conf",
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "HostKey /etc/ssh/ssh_host_ecdsa_key\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n",
    ),
    ImageFile(
        "/etc/systemd/system/ssh.service.d/10-generate-host-keys.conf",
        _SSH_HOST_KEYS_DROP_IN,
    ),
    ImageFile("/usr/local/sbin/pdm-authorized-key", _AUTHORIZED_KEY_SCRIPT, 0o755),
    ImageFile("/usr/local/sbin/pdm-host-keys", _HOST_KEYS_SCRIPT, 0o755),
    ImageFile("/etc/systemd/system/pdm-authorized-key.service", _AUTHORIZED_KEY_UNIT),
    # Empty, so that systemd generates a distinct machine id in every VM.
    ImageFile("/etc/machine-id", ""),
)
# Units enabled at boot: symlink inside the image -> target.
SYMLINKS = {
    "/etc/systemd/system/multi-user.target.wants/pdm-authorized-key.service": (
        "/etc/systemd/system/pdm-authorized-key.service"
    ),
    "/etc/systemd/system/multi-user.target.wants/ssh.service": (
        "/lib/systemd/system/ssh.service"
    ),
    "/etc/systemd/system/multi-user.target.wants/docker.service": (
        "/lib/systemd/system/docker.service"
    ),
    "/etc/systemd/system/sockets.target.wants/docker.socket": (
        "/lib/systemd/system/docker.socket"
    ),
}
# The variant without Docker, for tests that install it: the same recipe less
# the docker.io package and the links that enable its units.
DOCKER_PACKAGES = ("docker.io",)
DOCKER_SYMLINKS = (
    "/etc/systemd/system/multi-user.target.wants/docker.service",
    "/etc/systemd/system/sockets.target.wants/docker.socket",
)
# Per-machine state that debootstrap creates and no two VMs may share.
REMOVED_GLOBS = ("etc/ssh/ssh_host_*", "var/lib/dbus/machine-id")


class ImageBuildError(DockerMachineError):
    """The VM image could not be built, or a tool it needs is missing."""


@dataclass(frozen=True)
class BaseImage:
    """A VM image and the kernel and initrd it boots with.

    The project's image boots a kernel given by QEMU; an image a user brings
    has no ``kernel`` and boots with its own boot loader.
    """

    path: Path
    kernel: Path | None
    initrd: Path | None
    kernel_version: str
    format: str = "raw"


@dataclass(frozen=True)
class Kernel:
    """A Debian kernel installed on this machine, with initrd and modules."""

    version: str
    vmlinuz: Path
    initrd: Path
    modules: Path


def cache_root() -> Path:
    """Return the project's cache directory (``PDM_CACHE_DIR`` or XDG default)."""
    configured = os.environ.get("PDM_CACHE_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pulumi-docker-machine"


def find_kernel(
    boot_dir: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")
) -> Kernel:
    """Return the newest kernel in ``boot_dir`` that has an initrd and modules."""
    candidates = []
    for vmlinuz in boot_dir.glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        initrd = boot_dir / f"initrd.img-{version}"
        modules = modules_root / version
        if initrd.is_file() and modules.is_dir():
            candidates.append(Kernel(version, vmlinuz, initrd, modules))
    if not candidates:
        raise ImageBuildError(
            f"no kernel with an initrd and modules found in {boot_dir} and "
            f"{modules_root}: install the Debian package linux-image-amd64"
        )
    return max(candidates, key=lambda kernel: _version_key(kernel.version))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(number) for number in re.findall(r"\d+", version))


def image_packages(with_docker: bool = True) -> tuple[str, ...]:
    """Return the packages debootstrap installs into the image."""
    if with_docker:
        return PACKAGES
    return tuple(name for name in PACKAGES if name not in DOCKER_PACKAGES)


def image_symlinks(with_docker: bool = True) -> dict[str, str]:
    """Return the unit links of the image (link inside it to target)."""
    if with_docker:
        return SYMLINKS
    return {link: target for link, target in SYMLINKS.items() if link not in DOCKER_SYMLINKS}


def recipe_hash(kernel_version: str, with_docker: bool = True) -> str:
    """Return the SHA-256 of everything that decides the image's contents.

    The variant without Docker differs only in its packages and unit links,
    and the recipe has no variant key, so the default image's hash does not
    depend on the variant.
    """
    recipe = {
        "revision": RECIPE_REVISION,
        "suite": SUITE,
        "variant": VARIANT,
        "packages": image_packages(with_docker),
        "files": [[f.path, f.content, f.mode] for f in FILES],
        "symlinks": image_symlinks(with_docker),
        "removed": REMOVED_GLOBS,
        "kernel_version": kernel_version,
        "size": IMAGE_SIZE_BYTES,
    }
    encoded = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()


def _image_name(kernel_version: str, with_docker: bool) -> str:
    prefix = "debian12" if with_docker else "debian12-nodocker"
    return f"{prefix}-{recipe_hash(kernel_version, with_docker)[:16]}.raw"


def _image_path(cache_dir: Path | None, kernel: Kernel, with_docker: bool) -> Path:
    return (cache_dir or cache_root()) / "images" / _image_name(kernel.version, with_docker)


def image_at(image_path: Path, boot_dir: Path = Path("/boot")) -> BaseImage | None:
    """Return the project's image at ``image_path`` with the kernel it was built for.

    An image contains the modules of one kernel version only, which its file
    name encodes through the recipe hash. Returns None if no kernel in
    ``boot_dir`` (with its initrd) matches that name.
    """
    for vmlinuz in boot_dir.glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        initrd = boot_dir / f"initrd.img-{version}"
        if not initrd.is_file():
            continue
        if image_path.name in (_image_name(version, True), _image_name(version, False)):
            return BaseImage(image_path, vmlinuz, initrd, version)
    return None


def cached_image(cache_dir: Path | None = None) -> BaseImage | None:
    """Return the default image if it is built already, else None."""
    kernel = find_kernel()
    image_path = _image_path(cache_dir, kernel, with_docker=True)
    if not image_path.is_file():
        return None
    return BaseImage(image_path, kernel.vmlinuz, kernel.initrd, kernel.version)


def ensure_image(
    cache_dir: Path | None = None,
    mirror: str | None = None,
    *,
    with_docker: bool = True,
) -> BaseImage:
    """Return the cached image for the current recipe, building it when missing.

    ``mirror`` defaults to ``PDM_DEBIAN_MIRROR`` or Debian's CDN. A process that
    finds another one building the same image waits for it and reuses it.
    ``with_docker=False`` gives the variant without Docker.
    """
    kernel = find_kernel()
    image_path = _image_path(cache_dir, kernel, with_docker)
    images_dir = image_path.parent
    name = image_path.stem
    result = BaseImage(image_path, kernel.vmlinuz, kernel.initrd, kernel.version)
    if image_path.is_file():
        logger.info("reusing the VM image %s", image_path)
        return result

    images_dir.mkdir(parents=True, exist_ok=True)
    with open(images_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image_path.is_file():
            logger.info("reusing the VM image %s built meanwhile", image_path)
            return result
        _check_build_prerequisites()
        _remove_stale_builds(images_dir, name)
        mirror = mirror or os.environ.get("PDM_DEBIAN_MIRROR") or DEFAULT_MIRROR
        build_image(image_path, kernel, mirror, with_docker=with_docker)
    return result


def _check_build_prerequisites() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building the VM image needs root (debootstrap and chroot): run "
            "`sudo python -m provider.vmimage` once, or set PDM_CACHE_DIR to a "
            "cache that already holds the image"
        )
    for tool, package in (("debootstrap", "debootstrap"), ("mkfs.ext4", "e2fsprogs")):
        if shutil.which(tool) is None:
            raise ImageBuildError(
                f"{tool} not found on PATH: install the Debian package {package}"
            )


def build_image(
    image_path: Path, kernel: Kernel, mirror: str, *, with_docker: bool = True
) -> None:
    """Build the image at ``image_path``, renaming it into place when complete."""
    started = time.monotonic()
    work_dir = Path(
        tempfile.mkdtemp(prefix=f".build-{image_path.stem}-", dir=image_path.parent)
    )
    root = work_dir / "root"
    partial = work_dir / image_path.name
    try:
        with _step(f"debootstrap {SUITE} from {mirror} into {root}"):
            _debootstrap(root, mirror, work_dir / "debootstrap.log", with_docker)

        with _step(f"copying the modules of kernel {kernel.version} into the image"):
            _install_kernel_modules(root, kernel)

        with _step("configuring SSH, the network and Docker in the image"):
            configure_root(root, with_docker)

        with _step(f"making a {IMAGE_SIZE_BYTES // 1024**3} GB ext4 file system"):
            _make_filesystem(root, partial)

        os.rename(partial, image_path)
    finally:
        _remove_build_dir(work_dir)
    elapsed = time.monotonic() - started
    logger.info("built the VM image %s in %.0f s", image_path, elapsed)


@contextmanager
def _step(description: str) -> Iterator[None]:
    """Log the start of a build step and, when it succeeds, its duration."""
    logger.info("%s", description)
    started = time.monotonic()
    yield
    logger.info("... done in %.0f s", time.monotonic() - started)


def _debootstrap(root: Path, mirror: str, log_path: Path, with_docker: bool) -> None:
    include = ",".join(image_packages(with_docker))
    command = [
        "debootstrap",
        f"--variant={VARIANT}",
        f"--include={include}",
        SUITE,
        str(root),
        mirror,
    ]
    _run_logged(command, log_path)


def _install_kernel_modules(root: Path, kernel: Kernel) -> None:
    target = root / "lib" / "modules" / kernel.version
    shutil.copytree(kernel.modules, target, symlinks=True)
    _run_logged(
        ["chroot", str(root), "depmod", "-a", kernel.version],
        root.parent / "depmod.log",
    )


def configure_root(root: Path, with_docker: bool = True) -> None:
    """Write the recipe's files and symlinks into ``root`` and remove host state."""
    for image_file in FILES:
        target = root / image_file.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(image_file.content)
        target.chmod(image_file.mode)
    for link, destination in image_symlinks(with_docker).items():
        target = root / link.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(destination)
    for pattern in REMOVED_GLOBS:
        for path in root.glob(pattern):
            path.unlink()
    # The image does not need the downloaded packages, and they take space.
    for package_file in (root / "var/cache/apt/archives").glob("*.deb"):
        package_file.unlink()


def _make_filesystem(root: Path, image_path: Path) -> None:
    with open(image_path, "wb") as image:
        image.truncate(IMAGE_SIZE_BYTES)
    command = ["mkfs.ext4", "-q", "-F", "-L", "pdm-root", "-d", str(root)]
    _run_logged(command + [str(image_path)], root.parent / "mkfs.log")


def _run_logged(command: list[str], log_path: Path) -> None:
    with open(log_path, "ab") as log:
        completed = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    if completed.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise ImageBuildError(
            f"{command[0]} failed with exit status {completed.returncode} while "
            f"building the VM image; last lines of {log_path.name}:\n{tail}"
        )


def _remove_stale_builds(images_dir: Path, name: str) -> None:
    # Called with the image's lock held, so no other process owns these.
    for stale in images_dir.glob(f".build-{name}-*"):
        logger.info("removing the interrupted build %s", stale)
        _remove_build_dir(stale)


def _remove_build_dir(work_dir: Path) -> None:
    # debootstrap mounts /proc and /sys inside the root. A build killed midway
    # leaves them mounted, and deleting through them would touch the host's.
    for mount_point in _mounts_under(work_dir):
        subprocess.run(["umount", "--lazy", mount_point], check=False)
    remaining = _mounts_under(work_dir)
    if remaining:
        logger.error("not removing %s: still mounted: %s", work_dir, remaining)
        return
    shutil.rmtree(work_dir, ignore_errors=True)


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    mount_points = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            mount_point = line.split()[1].replace("\\040", " ")
            if mount_point.startswith(prefix):
                mount_points.append(mount_point)
    # Unmount the deepest first.
    return sorted(mount_points, key=len, reverse=True)


def main() -> None:
    """Build or reuse the image and print its path (``--no-docker``: the variant)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        image = ensure_image(with_docker="--no-docker" not in sys.argv[1:])
    except ImageBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(image.path)


if __name__ == "__main__":
    main()
