"""The ``qemu`` driver: a VM on this workstation, run by QEMU.

Each machine gets a directory of its own (under the machines home, see
:mod:`provider.certdir`) holding a copy-on-write overlay of a shared base
image, QEMU's pid file, QMP socket and serial console log. QEMU forwards the
guest's SSH port and the listed engine ports to a loopback address leased
for the machine alone (:mod:`provider.loopback`), so to ``DockerDaemonConfig``
and to the docker client the VM looks like any host with standard ports.
The VM keeps running after ``pulumi up`` exits; ``state`` powers it off and
on in place, and destroy removes the VM, its disk, directory and lease.

The base image is the project's Debian image (built once with debootstrap,
:mod:`provider.vmimage`), whose root key arrives on the kernel command line,
or an image the user gives (raw or qcow2) that boots with its own boot loader
and takes its key from a cloud-init seed the driver writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from pulumi.dynamic import CheckFailure

from provider import certdir, loopback, qemu, vmimage
from provider.drivers import Driver
from provider.drivers.common import generate_ssh_key, host_outputs, log_in
from provider.drivers.seed import write_seed_image
from provider.errors import InvalidInputError
from provider.progress import report
from provider.resources.base import is_unknown

DEFAULT_CPUS = 1
DEFAULT_MEMORY_MB = 1024
# systemd, sshd and dockerd of the project's image need about 300 MiB; below
# 512 MiB the first `docker run` is likely to meet the OOM killer.
MIN_MEMORY_MB = 512
DEFAULT_FORWARD_PORTS = [2376]
DEFAULT_SSH_TIMEOUT = 600
ACCELERATORS = ("tcg", "kvm")
SEED_NAME = "seed.img"
GIB = 1024**3

logger = logging.getLogger(__name__)


def _failure(setting: str, value: Any, reason: str) -> CheckFailure:
    return CheckFailure("options", str(InvalidInputError(f"qemu.{setting}", value, reason)))


def _int_setting(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() else None


def _host_memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024**2


def image_info(path: Path) -> dict[str, Any]:
    """Return ``qemu-img info`` of ``path`` (format and virtual size).

    Raises InvalidInputError if qemu-img cannot read the file, and QemuError
    if qemu-img itself is missing or hangs.
    """
    try:
        completed = subprocess.run(
            ["qemu-img", "info", "--output=json", str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except FileNotFoundError:
        raise qemu.QemuError(
            "qemu-img not found on PATH, so disk images cannot be read: install "
            "the Debian package qemu-utils"
        ) from None
    except subprocess.TimeoutExpired:
        raise qemu.QemuError(f"qemu-img info {path} timed out after 60 s") from None
    if completed.returncode != 0:
        raise InvalidInputError(
            "qemu.image", str(path),
            f"qemu-img cannot read it ({completed.stderr.strip()}); give a raw or "
            f"qcow2 disk image",
        )  # fmt: skip
    return json.loads(completed.stdout)


def _check_image(value: Any) -> list[CheckFailure]:
    if not isinstance(value, str) or not value.strip():
        return [_failure("image", value, "must be the path of a disk image")]
    path = Path(value).expanduser()
    if not path.is_file():
        return [
            _failure(
                "image", value,
                "no such file; give the path of a raw or qcow2 disk image, or leave "
                "image unset to use the project's Debian image",
            )
        ]  # fmt: skip
    try:
        info = image_info(path)
    except (InvalidInputError, qemu.QemuError) as error:
        return [CheckFailure("options", str(error))]
    if info.get("format") not in ("raw", "qcow2"):
        return [
            _failure("image", value, f"format {info.get('format')!r}; use raw or qcow2")
        ]
    return []


def _check_cpus_and_memory(options: dict[str, Any]) -> list[CheckFailure]:
    failures = []
    host_cpus = os.cpu_count() or 1
    cpus = options.get("cpus", DEFAULT_CPUS)
    if _int_setting(cpus) is None or not 1 <= _int_setting(cpus) <= host_cpus:
        failures.append(
            _failure(
                "cpus", cpus,
                f"must be a whole number from 1 to {host_cpus}, the number of "
                f"CPUs this machine has",
            )
        )  # fmt: skip

    memory = options.get("memory", DEFAULT_MEMORY_MB)
    host_memory = _host_memory_mb()
    if _int_setting(memory) is None or _int_setting(memory) < MIN_MEMORY_MB:
        failures.append(
            _failure(
                "memory", memory,
                f"too small: give at least {MIN_MEMORY_MB} (MiB) so that systemd, "
                f"sshd and dockerd fit; 1024 is the default",
            )
        )  # fmt: skip
    elif _int_setting(memory) > host_memory:
        failures.append(
            _failure("memory", memory, f"more than this machine has ({host_memory} MiB); give less")
        )
    return failures


def _check_storage(options: dict[str, Any]) -> list[CheckFailure]:
    failures = []
    disk = options.get("diskSize")
    if disk is not None and (_int_setting(disk) is None or not 1 <= _int_setting(disk) <= 2048):
        failures.append(
            _failure("diskSize", disk, "must be a whole number of GiB from 1 to 2048")
        )
    image = options.get("image")
    if image is not None and not is_unknown(image):
        failures += _check_image(image)
    if not failures and disk is not None:
        failures += _check_disk_size(image, _int_setting(disk))
    return failures


def _check_disk_size(image: Any, disk_gib: int) -> list[CheckFailure]:
    if image is None:
        base_size = vmimage.IMAGE_SIZE_BYTES
    elif is_unknown(image):
        return []
    else:
        try:
            info = image_info(Path(image).expanduser())
        except (InvalidInputError, qemu.QemuError) as error:
            return [CheckFailure("options", str(error))]
        base_size = int(info.get("virtual-size", 0))
    if disk_gib * GIB < base_size:
        return [
            _failure(
                "diskSize", disk_gib,
                f"smaller than the image ({base_size / GIB:.1f} GiB); a disk can "
                f"grow but not shrink: give at least {-(-base_size // GIB)}",
            )
        ]  # fmt: skip
    return []


def _check_ssh_user(user: Any, options: dict[str, Any]) -> list[CheckFailure]:
    """Reject a login other than root on the project's image.

    The project's image installs the machine's key for root only, from the
    kernel command line. Only an ``image`` gets a cloud-init seed, which
    installs it for ``sshUser``.
    """
    if options.get("image") is not None or user in (None, "root") or is_unknown(user):
        return []
    message = str(
        InvalidInputError(
            "ssh_user",
            user,
            "the project's Debian image lets only root log in; remove sshUser, "
            "or set qemu.image to a cloud image, whose cloud-init seed installs "
            "the key for this user",
        )
    )
    return [CheckFailure("ssh_user", message)]


def _check_accelerator(accelerator: Any) -> list[CheckFailure]:
    if accelerator not in ACCELERATORS:
        return [_failure("accelerator", accelerator, f"use one of: {', '.join(ACCELERATORS)}")]
    if accelerator == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return [
            _failure(
                "accelerator", accelerator,
                "/dev/kvm is missing or not accessible to this user; use tcg "
                "(software emulation) or give the user access to /dev/kvm",
            )
        ]  # fmt: skip
    return []


class QemuDriver(Driver):
    """Runs the machine as a QEMU VM with a loopback address of its own."""

    name = "qemu"
    options = frozenset(
        {"cpus", "memory", "diskSize", "image", "accelerator", "forwardPorts", "sshTimeout"}
    )
    replace_on = ("driver", "address", "ssh_port", "machine_name")
    filled_inputs = ("address", "ssh_private_key")
    replace_on_options = ("image", "diskSize")

    def check(self, inputs: dict[str, Any], olds: dict[str, Any]) -> list[CheckFailure]:
        options = inputs.get("options") or {}
        failures = _check_cpus_and_memory(options)
        failures += _check_storage(options)
        failures += _check_accelerator(options.get("accelerator", "tcg"))
        failures += self._check_ports(inputs, options)
        failures += _check_ssh_user(inputs.get("ssh_user"), options)
        timeout = options.get("sshTimeout", DEFAULT_SSH_TIMEOUT)
        if _int_setting(timeout) is None or not 10 <= _int_setting(timeout) <= 7200:
            failures.append(
                _failure("sshTimeout", timeout, "must be a whole number of seconds from 10 to 7200")
            )

        address = inputs.get("address")
        # The machine's own lease (an existing VM checked again) is no clash.
        if address is not None and address != olds.get("address") and not failures:
            failures += self._check_address(address, _forwarded_ports(inputs))
        return failures

    @staticmethod
    def _check_ports(inputs: dict[str, Any], options: dict[str, Any]) -> list[CheckFailure]:
        ports = options.get("forwardPorts", DEFAULT_FORWARD_PORTS)
        if not isinstance(ports, list) or not all(
            _int_setting(port) is not None and 1 <= _int_setting(port) <= 65535
            for port in ports
        ):
            return [_failure("forwardPorts", ports, "must be a list of TCP ports (1 to 65535)")]
        ssh_port = inputs.get("ssh_port", 22)
        if not is_unknown(ssh_port) and int(ssh_port) in [int(port) for port in ports]:
            return [
                _failure(
                    "forwardPorts", ports,
                    f"contains the SSH port {int(ssh_port)}, which is forwarded to the "
                    f"guest's sshd already; remove it",
                )
            ]  # fmt: skip
        return []

    @staticmethod
    def _check_address(address: Any, ports: list[int]) -> list[CheckFailure]:
        if is_unknown(address) or any(is_unknown(port) for port in ports):
            return []
        try:
            address = loopback.check_manual_address(address)
            lease = loopback.lease_of(address)
            busy = [] if lease is not None else loopback.find_busy_ports(address, ports)
        except InvalidInputError as error:
            return [CheckFailure("address", f"{error}; or leave address unset to get one")]
        except (loopback.LoopbackError, OSError) as error:
            # Binding the SSH port 22 needs root or CAP_NET_BIND_SERVICE.
            return [CheckFailure("address", f"cannot check address {address!r}: {error}")]
        if lease is None:
            if not busy:
                return []
            return [
                CheckFailure(
                    "address",
                    f"invalid address {address!r}: port(s) {busy} already in use there; "
                    f"stop what listens on them (`ss -ltnp`), choose another address, "
                    f"or leave address unset to get a free one",
                )
            ]
        return [
            CheckFailure(
                "address",
                f"invalid address {address!r}: already leased to {lease.holder}; "
                f"choose another address in {loopback.MANUAL_RANGE}, or leave "
                f"address unset to get a free one",
            )
        ]

    def create(self, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        options = props.get("options") or {}
        name = props["machine_name"]
        machine_dir = certdir.machines_home() / "vms" / f"{name}-{uuid.uuid4().hex[:8]}"
        private_key = props.get("ssh_private_key")
        if private_key:
            public_key = _public_key_line(private_key, name)
        else:
            private_key, public_key = generate_ssh_key(f"pulumi-docker-machine {name}")

        image = _base_image(options)
        ports = _forwarded_ports(props)
        lease = _lease(props.get("address"), ports, name, machine_dir)
        details = {
            "machineDir": str(machine_dir),
            "image": str(image.path),
            "publicKey": public_key,
        }

        try:
            machine_dir.mkdir(mode=0o700, parents=True)
            _boot(props, details, lease.address, public_key, image)
            host_key, os_name = log_in(
                lease.address, int(props["ssh_port"]), props["ssh_user"], private_key,
                props.get("pinned_host_key"),
                setup_script=_first_boot_script(options, image),
            )  # fmt: skip
            state = "running"
            if props.get("state") == "stopped":
                report(f"powering off {name}, as state is stopped")
                qemu.stop(machine_dir)
                state = "stopped"
        except BaseException as error:
            _remove_machine(machine_dir, lease.address, error)
            raise

        outputs = host_outputs(
            props, address=lease.address, ssh_port=int(props["ssh_port"]),
            ssh_private_key=private_key, host_key=host_key, os_name=os_name,
            state=state, details=details,
        )  # fmt: skip
        return f"qemu:{machine_dir}", outputs

    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> dict[str, Any]:
        details = dict(olds["details"])
        machine_dir = Path(details["machineDir"])
        old_options = olds.get("options") or {}
        new_options = news.get("options") or {}
        boot_settings = ("cpus", "memory", "accelerator", "forwardPorts")
        reboot = any(old_options.get(k) != new_options.get(k) for k in boot_settings)
        requested_state = news.get("state") or "running"

        private_key = olds["ssh_private_key"]
        if news.get("ssh_private_key") and news["ssh_private_key"] != private_key:
            raise InvalidInputError(
                "ssh_private_key", "[secret]",
                "cannot change on a qemu machine, whose key was installed at its "
                "first boot; replace the machine to change it",
            )  # fmt: skip

        running = qemu.is_running(machine_dir)
        image = None
        if requested_state == "running" and (reboot or not running):
            # Checked while the VM still runs, because a VM stopped for a
            # restart that then fails to boot would stay down.
            _require_free_ports(olds["address"], old_options, new_options)
            image = _recorded_image(details, new_options, news["machine_name"])

        if running and (requested_state == "stopped" or reboot):
            report(f"powering off {news['machine_name']}")
            qemu.stop(machine_dir)

        host_key, os_name = olds["host_key"], olds.get("os")
        if image is not None:
            _boot(news, details, olds["address"], details["publicKey"], image)
            # The recorded host key must match: the disk is the same one.
            host_key, os_name = log_in(
                olds["address"], int(olds["ssh_port"]), news["ssh_user"], private_key,
                news.get("pinned_host_key") or olds["host_key"],
                setup_script=WAIT_FOR_BOOT_SCRIPT,
            )  # fmt: skip

        return host_outputs(
            news, address=olds["address"], ssh_port=int(olds["ssh_port"]),
            ssh_private_key=private_key, host_key=host_key, os_name=os_name,
            state=requested_state, details=details,
        )  # fmt: skip

    def read(self, id_: str, props: dict[str, Any]) -> dict[str, Any] | None:
        machine_dir = Path((props.get("details") or {}).get("machineDir", ""))
        if not (machine_dir / qemu.DISK_NAME).is_file():
            # Gone, so the engine drops the resource and delete never runs.
            _release_own_lease(props, machine_dir)
            return None
        state = "running" if qemu.is_running(machine_dir) else "stopped"
        return {**props, "state": state}

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        machine_dir = Path(props["details"]["machineDir"])
        if qemu.is_running(machine_dir):
            report(f"powering off {props['machine_name']} (up to 60 s, then killed)")
            qemu.stop(machine_dir, timeout=60)
        qemu.remove(machine_dir)
        shutil.rmtree(machine_dir, ignore_errors=True)
        loopback.release(props["address"])
        report(f"removed {props['machine_name']}: its VM, disk and {machine_dir}")


def _forwarded_ports(props: dict[str, Any]) -> list[int]:
    """Return the ports of the machine's address: SSH first, then the forwarded ones."""
    options = props.get("options") or {}
    forwarded = options.get("forwardPorts", DEFAULT_FORWARD_PORTS)
    return [int(props.get("ssh_port", 22))] + [int(port) for port in forwarded]


def _public_key_line(private_key: str, comment: str) -> str:
    import asyncssh  # here, so that check and diff do without it

    key = asyncssh.import_private_key(private_key)
    return key.export_public_key("openssh").decode().strip() + f" {comment}"


def _base_image(options: dict[str, Any]) -> vmimage.BaseImage:
    if options.get("image"):
        path = Path(options["image"]).expanduser().resolve()
        info = image_info(path)
        return vmimage.BaseImage(path, None, None, "", format=info["format"])
    image = vmimage.cached_image()
    if image is None:
        report("building the project's Debian VM image (2 to 4 minutes, once)")
        image = vmimage.ensure_image()
    return image


def _lease_holder(name: str, machine_dir: Path) -> str:
    return f"machine {name} ({machine_dir})"


def _lease(
    address: str | None, ports: list[int], name: str, machine_dir: Path
) -> loopback.Lease:
    # The lease is persistent: it outlives the provider process and ends
    # only when the machine is destroyed.
    holder = _lease_holder(name, machine_dir)
    if address:
        return loopback.take(address, ports, holder=holder, persistent=True)
    lease = loopback.allocate(ports, holder=holder, persistent=True)
    report(f"{name} gets the loopback address {lease.address}")
    return lease


def _release_own_lease(props: dict[str, Any], machine_dir: Path) -> None:
    """Release the machine's address if its lease is still this machine's."""
    address = props.get("address")
    if not address:
        return
    lease = loopback.lease_of(address)
    if lease is None or lease.holder != _lease_holder(props["machine_name"], machine_dir):
        return
    report(f"{machine_dir} is gone: releasing the loopback address {address}")
    loopback.release(address)


def _require_free_ports(
    address: str, old_options: dict[str, Any], new_options: dict[str, Any]
) -> None:
    """Raise if a port newly listed in forwardPorts is in use on ``address``."""
    old_ports = old_options.get("forwardPorts", DEFAULT_FORWARD_PORTS)
    new_ports = new_options.get("forwardPorts", DEFAULT_FORWARD_PORTS)
    added = [int(port) for port in new_ports if port not in old_ports]
    busy = loopback.find_busy_ports(address, added)
    if busy:
        raise InvalidInputError(
            "qemu.forwardPorts", new_ports,
            f"port(s) {busy} already in use on {address}, so the VM could not "
            f"boot with them; it keeps running with the old ports. Stop what "
            f"listens there (`ss -ltnp`) or forward other ports",
        )  # fmt: skip


def _recorded_image(
    details: dict[str, Any], options: dict[str, Any], name: str
) -> vmimage.BaseImage:
    """Return the base image the machine's disk was made from, as recorded.

    The overlay contains only the changes made on top of that image, and
    the project's image contains the modules of one kernel only. So a restart
    must use the same image and kernel even after a newer image was built.
    """
    path = Path(details["image"])
    replace_hint = (
        f"or replace the machine, which deletes its disk: `pulumi up --replace` "
        f"with the URN of {name}-host"
    )
    if not path.is_file():
        raise qemu.VMBootError(
            f"cannot start {name}: its base image {path} is gone, and its disk "
            f"holds only the changes made on top of that image. Restore the "
            f"file, {replace_hint}"
        )
    if options.get("image"):
        return vmimage.BaseImage(path, None, None, "", format=image_info(path)["format"])
    image = vmimage.image_at(path)
    if image is None:
        raise qemu.VMBootError(
            f"cannot start {name}: no kernel in /boot is the one its image {path} "
            f"was built for (a kernel upgrade may have removed it), and the image has "
            f"modules for that kernel only. Reinstall that kernel's package, "
            f"{replace_hint}"
        )
    return image


def _boot(
    props: dict[str, Any],
    details: dict[str, Any],
    address: str,
    public_key: str,
    image: vmimage.BaseImage,
) -> None:
    """Start the machine's VM from ``image`` and wait for its SSH banner."""
    options = props.get("options") or {}
    machine_dir = Path(details["machineDir"])
    seed = None
    if image.kernel is None:
        seed = machine_dir / SEED_NAME
        if not seed.exists():
            write_seed_image(seed, props["ssh_user"], public_key, props["machine_name"])
    forward = [int(port) for port in options.get("forwardPorts", DEFAULT_FORWARD_PORTS)]
    disk = options.get("diskSize")
    config = qemu.VMConfig(
        machine_dir=machine_dir,
        image=image,
        address=address,
        authorized_key=public_key,
        memory_mb=int(options.get("memory", DEFAULT_MEMORY_MB)),
        cpus=int(options.get("cpus", DEFAULT_CPUS)),
        ssh_port=int(props["ssh_port"]),
        forward_ports=tuple(forward),
        name=f"pdm-{props['machine_name']}",
        accelerator=options.get("accelerator", "tcg"),
        disk_size=None if disk is None else int(disk) * GIB,
        seed_image=seed,
    )
    timeout = int(options.get("sshTimeout", DEFAULT_SSH_TIMEOUT))
    report(f"booting {props['machine_name']} at {address} (SSH deadline {timeout} s)")
    qemu.boot(config, ssh_timeout=timeout, ssh_attempts=max(1, timeout // 3), progress=report)


# sshd accepts logins before the rest of the boot is done (dockerd among
# it), so a machine counts as up once systemd reports the boot finished.
WAIT_FOR_BOOT_SCRIPT = (
    "timeout 600 systemctl is-system-running --wait >/dev/null 2>&1 || true\n"
)


def _first_boot_script(options: dict[str, Any], image: vmimage.BaseImage) -> str:
    """Return the script that finishes a first boot: wait for it, grow the file system."""
    if options.get("diskSize") is None or image.kernel is None:
        # Cloud images grow their root partition with cloud-init's growpart.
        return WAIT_FOR_BOOT_SCRIPT
    return WAIT_FOR_BOOT_SCRIPT + "resize2fs /dev/vda >/dev/null 2>&1 || resize2fs /dev/vda\n"


def _remove_machine(machine_dir: Path, address: str, error: BaseException) -> None:
    """Undo a failed create: the VM, its directory and its lease.

    Every step runs even if an earlier one failed, and each failure becomes
    a note on ``error``.
    """
    steps = [
        (f"stopping the VM in {machine_dir}", lambda: qemu.remove(machine_dir)),
        (f"removing {machine_dir}", lambda: _remove_tree(machine_dir)),
        (f"releasing {address}", lambda: loopback.release(address)),
    ]
    for description, step in steps:
        try:
            step()
        except Exception as cleanup_error:  # reported below, then the next step
            logger.error("cleanup failed %s: %s", description, cleanup_error)
            error.add_note(f"cleanup failed {description}: {cleanup_error}")


def _remove_tree(directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)


DRIVER = QemuDriver()
