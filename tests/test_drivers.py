"""Host drivers without a machine: input checks, the program's parsing, the seed.

These call the provider's ``check`` and the program's parser directly, the
way the engine does, so every message here is the one ``pulumi preview``
prints.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from provider import drivers, loopback, qemu, vmimage
from provider.drivers import qemu as qemu_driver
from provider.drivers.common import generate_ssh_key
from provider.drivers.seed import write_seed_image
from provider.errors import InvalidInputError
from provider.program import parse_machine, parse_machines
from provider.resources.host import HostProvider
from tests.harness.vm import take_manual_address

KEY, _ = generate_ssh_key("test")
_, HOST_KEY = generate_ssh_key("host")
# Unprivileged ports, so the probes of an address also work without root.
PORTS = (40022, 42376)


def check(driver="qemu", olds=None, **inputs):
    """Run Host's check; return the failure messages."""
    news = {"driver": driver, "machine_name": "m", "ssh_port": 22, "ssh_user": "root"}
    news.update(inputs)
    result = HostProvider().check(olds or {}, news)
    return [failure.reason for failure in result.failures]


def test_qemu_defaults_pass():
    assert check(options={}) == []


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"memory": 256}, "invalid qemu.memory 256: too small: give at least 512"),
        ({"memory": 10**9}, "more than this machine has"),
        ({"memory": "lots"}, "invalid qemu.memory 'lots'"),
        ({"cpus": 0}, "invalid qemu.cpus 0: must be a whole number from 1 to"),
        ({"cpus": (os.cpu_count() or 1) + 1}, "the number of CPUs this machine has"),
        ({"cpus": 1.5}, "invalid qemu.cpus 1.5"),
        ({"diskSize": 0}, "invalid qemu.diskSize 0: must be a whole number of GiB"),
        ({"diskSize": 2}, "invalid qemu.diskSize 2: smaller than the image"),
        ({"image": "/nonexistent.qcow2"}, "invalid qemu.image '/nonexistent.qcow2': no such file"),
        ({"accelerator": "hvf"}, "invalid qemu.accelerator 'hvf': use one of: tcg, kvm"),
        ({"forwardPorts": [22]}, "contains the SSH port 22"),
        ({"forwardPorts": [70000]}, "must be a list of TCP ports"),
        ({"sshTimeout": 1}, "invalid qemu.sshTimeout 1"),
        ({"ram": 1024}, "invalid qemu.ram 1024: unknown setting of the qemu driver"),
    ],
)
def test_qemu_bad_settings_named(options, fragment):
    failures = check(options=options)
    assert any(fragment in failure for failure in failures), failures


def test_qemu_image_directory_rejected(tmp_path):
    failures = check(options={"image": str(tmp_path)})
    assert any("invalid qemu.image" in failure for failure in failures), failures


def test_qemu_image_of_another_format_rejected(tmp_path):
    image = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(image), "1G"], check=True)
    failures = check(options={"image": str(image)})
    assert any("format 'vmdk'; use raw or qcow2" in f for f in failures), failures


def test_qemu_address_leased_elsewhere_rejected():
    lease = take_manual_address("another machine")
    try:
        failures = check(address=lease.address)
        assert any("already leased to another machine" in f for f in failures), failures
        # The same address on a machine that has it already is no clash.
        assert check(address=lease.address, olds={"address": lease.address}) == []
    finally:
        loopback.release(lease.address)


def test_qemu_address_with_a_busy_port_rejected(tmp_path, monkeypatch):
    # The lease keeps other tests off the address. The check then reads an
    # empty lease directory, so that it finds the address free of leases and
    # probes its ports.
    # The lease is released in the directory it was taken in, with the
    # caller's PDM_CACHE_DIR back in place.
    lease = take_manual_address("test of a busy port", PORTS)
    try:
        with monkeypatch.context() as patch, socket.socket() as listener:
            patch.setenv("PDM_CACHE_DIR", str(tmp_path))
            listener.bind((lease.address, 0))
            listener.listen()
            port = listener.getsockname()[1]
            failures = check(
                address=lease.address, ssh_port=PORTS[0], options={"forwardPorts": [port]}
            )
    finally:
        loopback.release(lease.address)
    assert loopback.lease_of(lease.address) is None
    assert any(f"port(s) [{port}] already in use" in f for f in failures), failures


@pytest.mark.parametrize(
    "address",
    ["10.0.0.5", "127.0.0.5", "127.1.2.3", "127.100.1.5", "127.100.0.1", "127.100.0.255"],
)
def test_qemu_address_outside_manual_range_rejected(address):
    failures = check(address=address)
    assert any(
        f"invalid loopback address '{address}': must be in 127.100.0.2 to 127.100.0.254" in f
        for f in failures
    ), failures


def test_qemu_address_check_without_bind_permission(monkeypatch):
    """A user without root cannot bind port 22, so its probe fails."""

    def probe_as_non_root(address, ports):
        raise loopback.LoopbackError(f"binding port 22 on {address} needs root")

    lease = take_manual_address("test of a failed probe", PORTS)
    loopback.release(lease.address)
    monkeypatch.setattr(loopback, "find_busy_ports", probe_as_non_root)
    failures = check(address=lease.address)
    assert failures == [
        f"cannot check address '{lease.address}': binding port 22 on "
        f"{lease.address} needs root"
    ]


def test_qemu_image_check_without_qemu_img(tmp_path, monkeypatch):
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 4096)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    failures = check(options={"image": str(image), "diskSize": 4})
    assert any("qemu-img not found on PATH" in f for f in failures), failures
    assert any("qemu-utils" in f for f in failures), failures


def test_generic_needs_address_and_key():
    failures = check(driver="generic")
    assert any(f.startswith("missing address") for f in failures), failures
    assert any(f.startswith("missing ssh_private_key") for f in failures), failures


def test_generic_rejects_state_and_options():
    failures = check(
        driver="generic", address="127.0.0.1", ssh_private_key=KEY,
        state="stopped", options={"memory": 1},
    )  # fmt: skip
    assert any("invalid generic.memory" in f for f in failures), failures


def test_unknown_driver_named():
    failures = check(driver="virtualbox")
    assert any("invalid driver 'virtualbox': unknown driver" in f for f in failures)


def test_state_value_checked():
    assert any("invalid state 'paused'" in f for f in check(state="paused"))


def test_program_reads_qemu_machine_without_address_or_key():
    spec = parse_machine({"name": "m", "driver": "qemu", "qemu": {"cpus": 1}}, 0)
    assert spec.address is None
    assert spec.ssh_private_key is None
    assert spec.options == {"cpus": 1}


def test_program_rejects_settings_of_another_driver():
    with pytest.raises(InvalidInputError, match=r"machines\[0\]\.qemu.*set driver: qemu"):
        parse_machine({"name": "m", "address": "h", "sshPrivateKey": KEY, "qemu": {}}, 0)


def test_program_rejects_engine_port_qemu_does_not_forward():
    entry = {"name": "m", "driver": "qemu", "enginePort": 2377}
    with pytest.raises(InvalidInputError, match=r"qemu\.forwardPorts"):
        parse_machine(entry, 0)
    entry["qemu"] = {"forwardPorts": [2377]}
    assert parse_machine(entry, 0).engine_port == 2377


def read_iso_file(path: Path, name: str) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        buffer = io.BytesIO()
        iso.get_file_from_iso_fp(buffer, rr_path=f"/{name}")
        joliet = io.BytesIO()
        iso.get_file_from_iso_fp(joliet, joliet_path=f"/{name}")
        assert joliet.getvalue() == buffer.getvalue()
        label = iso.pvd.volume_identifier.decode().strip()
    finally:
        iso.close()
    assert label == "cidata"
    return buffer.getvalue().decode()


@pytest.mark.parametrize("user", ["root", "debian"])
def test_seed_installs_the_key_for_the_user(tmp_path, user):
    seed = write_seed_image(tmp_path / "seed.img", user, "ssh-ed25519 AAAAkey m", "m")
    user_data = read_iso_file(seed, "user-data")
    assert user_data.startswith("#cloud-config\n")
    config = yaml.safe_load(user_data)
    account = config["users"][1]
    assert account["name"] == user
    assert account["ssh_authorized_keys"] == ["ssh-ed25519 AAAAkey m"]
    assert config["disable_root"] is (user != "root")
    assert ("sudo" in account) is (user != "root")
    meta = yaml.safe_load(read_iso_file(seed, "meta-data"))
    assert meta == {"instance-id": "pdm-m", "local-hostname": "m"}


def test_qemu_diff_ignores_values_the_driver_chose():
    olds = {
        "driver": "qemu", "machine_name": "m", "address": "127.100.1.9", "ssh_port": 22,
        "ssh_user": "root", "ssh_private_key": KEY, "state": "running", "options": {},
    }  # fmt: skip
    news = {**olds, "address": None, "ssh_private_key": None, "state": None}
    result = HostProvider().diff("qemu:x", olds, news)
    assert not result.changes
    assert not result.replaces


def test_qemu_diff_replaces_on_a_set_address():
    olds = {"driver": "qemu", "machine_name": "m", "address": "127.100.1.9", "ssh_port": 22}
    news = {**olds, "address": "127.100.0.9"}
    assert HostProvider().diff("qemu:x", olds, news).replaces == ["address"]


@pytest.mark.parametrize(
    "driver,expected",
    [("amazonec2", "ubuntu"), ("generic", "root"), ("qemu", "root"), (None, "root")],
)
def test_default_ssh_user_follows_driver_image(driver, expected):
    assert drivers.default_ssh_user(driver) == expected


def qemu_host(machine_dir: Path, address: str, **settings) -> dict:
    """Return the outputs of a qemu Host whose VM lives in ``machine_dir``."""
    outputs = {
        "driver": "qemu", "machine_name": "m", "address": address, "ssh_port": 22,
        "ssh_user": "root", "ssh_private_key": KEY, "host_key": HOST_KEY, "os": "Debian",
        "state": "running", "options": {},
        "details": {
            "machineDir": str(machine_dir), "image": str(machine_dir.parent / "base.raw"),
            "publicKey": "ssh-ed25519 AAAA m",
        },
    }  # fmt: skip
    outputs.update(settings)
    return outputs


class FakeVMs:
    """Stand-ins for the qemu module's process calls, recording what ran."""

    def __init__(self, running: bool) -> None:
        self.running = running
        self.calls: list[str] = []
        self.boot_configs: list = []

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(qemu, "is_running", lambda machine_dir: self.running)
        monkeypatch.setattr(qemu, "stop", self.stop)
        monkeypatch.setattr(qemu, "boot", self.boot)
        monkeypatch.setattr(qemu_driver, "log_in", self.log_in)

    def stop(self, machine_dir, timeout=60.0):
        self.calls.append("stop")
        self.running = False

    def boot(self, config, **limits):
        self.calls.append("boot")
        self.boot_configs.append(config)
        self.running = True

    def log_in(self, *args, **settings):
        self.calls.append("log_in")
        return HOST_KEY, "Debian"


def test_qemu_read_of_deleted_machine_releases_lease(tmp_path):
    machine_dir = tmp_path / "vms" / "m-0123abcd"
    lease = loopback.allocate(
        PORTS, f"machine m ({machine_dir})", persistent=True
    )
    try:
        assert qemu_driver.DRIVER.read("qemu:x", qemu_host(machine_dir, lease.address)) is None
        assert loopback.lease_of(lease.address) is None
    finally:
        loopback.release(lease.address)


def test_qemu_read_keeps_lease_of_another_holder(tmp_path):
    machine_dir = tmp_path / "vms" / "m-0123abcd"
    lease = loopback.allocate(PORTS, "machine m (another directory)", persistent=True)
    try:
        assert qemu_driver.DRIVER.read("qemu:x", qemu_host(machine_dir, lease.address)) is None
        assert loopback.lease_of(lease.address) == lease
    finally:
        loopback.release(lease.address)


def test_qemu_failed_create_cleanup_continues_after_error(tmp_path, monkeypatch):
    machine_dir = tmp_path / "vms" / "m-0123abcd"
    machine_dir.mkdir(parents=True)
    (machine_dir / "seed.img").write_bytes(b"seed")
    lease = loopback.allocate(PORTS, f"machine m ({machine_dir})", persistent=True)

    def survive_kill(directory):
        raise qemu.QemuError(f"qemu pid 1234 of {directory} survived SIGKILL")

    monkeypatch.setattr(qemu, "remove", survive_kill)
    error = RuntimeError("boot failed")
    try:
        qemu_driver._remove_machine(machine_dir, lease.address, error)
        assert not machine_dir.exists()
        assert loopback.lease_of(lease.address) is None
    finally:
        loopback.release(lease.address)
    assert error.__notes__ == [
        f"cleanup failed stopping the VM in {machine_dir}: qemu pid 1234 of "
        f"{machine_dir} survived SIGKILL"
    ]


def fake_boot_dir(tmp_path: Path, version: str) -> Path:
    boot = tmp_path / f"boot-{version}"
    boot.mkdir()
    (boot / f"vmlinuz-{version}").write_bytes(b"kernel")
    (boot / f"initrd.img-{version}").write_bytes(b"initrd")
    return boot


def use_boot_dir(monkeypatch, boot: Path) -> None:
    image_at = vmimage.image_at
    monkeypatch.setattr(vmimage, "image_at", lambda path: image_at(path, boot_dir=boot))


def test_qemu_restart_boots_recorded_image(tmp_path, monkeypatch):
    # The image was built for kernel 6.1.0-1. Since then 6.1.0-2 was
    # installed, whose image would be another file.
    old_kernel = vmimage.Kernel("6.1.0-1", Path("/unused"), Path("/unused"), Path("/unused"))
    recorded = vmimage._image_path(tmp_path, old_kernel, with_docker=True)
    recorded.parent.mkdir(parents=True)
    recorded.write_bytes(b"image")
    boot = fake_boot_dir(tmp_path, "6.1.0-1")
    (boot / "vmlinuz-6.1.0-2").write_bytes(b"newer kernel")
    (boot / "initrd.img-6.1.0-2").write_bytes(b"newer initrd")
    use_boot_dir(monkeypatch, boot)

    def no_new_image(*args, **settings):
        raise AssertionError("a restart must not look for the current image")

    monkeypatch.setattr(vmimage, "cached_image", no_new_image)
    monkeypatch.setattr(vmimage, "ensure_image", no_new_image)
    vms = FakeVMs(running=True)
    vms.install(monkeypatch)
    olds = qemu_host(tmp_path / "vms" / "m-0123abcd", "127.100.1.9")
    olds["details"]["image"] = str(recorded)
    news = {**olds, "options": {"memory": 2048}}

    outputs = qemu_driver.DRIVER.update("qemu:x", olds, news)

    assert vms.calls == ["stop", "boot", "log_in"]
    image = vms.boot_configs[0].image
    assert image.path == recorded
    assert image.kernel == boot / "vmlinuz-6.1.0-1"
    assert image.initrd == boot / "initrd.img-6.1.0-1"
    assert outputs["details"]["image"] == str(recorded)


def test_qemu_restart_without_image_explains(tmp_path, monkeypatch):
    vms = FakeVMs(running=True)
    vms.install(monkeypatch)
    olds = qemu_host(tmp_path / "vms" / "m-0123abcd", "127.100.1.9")
    news = {**olds, "options": {"cpus": 1}}

    with pytest.raises(qemu.VMBootError) as raised:
        qemu_driver.DRIVER.update("qemu:x", olds, news)

    message = str(raised.value)
    assert f"its base image {tmp_path / 'vms' / 'base.raw'} is gone" in message
    assert "`pulumi up --replace` with the URN of m-host" in message
    assert vms.calls == [], "the VM must keep running"


def test_qemu_restart_without_kernel_explains(tmp_path, monkeypatch):
    kernel = vmimage.Kernel("6.1.0-1", Path("/unused"), Path("/unused"), Path("/unused"))
    recorded = vmimage._image_path(tmp_path, kernel, with_docker=True)
    recorded.parent.mkdir(parents=True)
    recorded.write_bytes(b"image")
    use_boot_dir(monkeypatch, fake_boot_dir(tmp_path, "6.1.0-2"))
    vms = FakeVMs(running=False)
    vms.install(monkeypatch)
    olds = qemu_host(tmp_path / "vms" / "m-0123abcd", "127.100.1.9", state="stopped")
    olds["details"]["image"] = str(recorded)
    news = {**olds, "state": "running"}

    with pytest.raises(qemu.VMBootError, match="no kernel in /boot is the one its image"):
        qemu_driver.DRIVER.update("qemu:x", olds, news)
    assert vms.calls == []


def test_qemu_forward_port_in_use_keeps_vm_running(tmp_path, monkeypatch):
    lease = loopback.allocate(PORTS, "test of a forwarded port in use")
    vms = FakeVMs(running=True)
    vms.install(monkeypatch)
    try:
        with socket.create_server((lease.address, 0)) as listener:
            port = listener.getsockname()[1]
            olds = qemu_host(tmp_path / "vms" / "m-0123abcd", lease.address)
            news = {**olds, "options": {"forwardPorts": [2376, port]}}
            with pytest.raises(InvalidInputError, match=rf"port\(s\) \[{port}\] already in use"):
                qemu_driver.DRIVER.update("qemu:x", olds, news)
    finally:
        loopback.release(lease.address)
    assert vms.calls == [], "the VM must keep running"


def generic_entry(**settings):
    entry = {"name": "m", "address": "127.0.0.1", "sshPrivateKey": KEY}
    entry.update(settings)
    return entry


@pytest.mark.parametrize("driver", [["generic"], {"name": "qemu"}, 5, "virtualbox"])
def test_program_rejects_unknown_driver(driver):
    with pytest.raises(InvalidInputError, match=r"machines\[0\]\.driver .*unknown driver"):
        parse_machine(generic_entry(driver=driver), 0)


def test_program_null_setting_takes_default():
    entry = generic_entry(driver=None, sshPort=None, enginePort=None, extraSans=None, qemu=None)
    spec = parse_machine(entry, 0)
    assert spec.driver == "generic"
    assert spec.ssh_port == 22
    assert spec.engine_port == 2376
    assert spec.extra_sans == []


def test_program_null_address_missing():
    with pytest.raises(InvalidInputError, match=r"machines\[0\]\.address None: missing"):
        parse_machine(generic_entry(address=None), 0)


@pytest.mark.parametrize(
    ("make_path", "fragment"),
    [
        (lambda tmp: 5, "invalid machines[0].sshPrivateKeyFile 5: must be the path"),
        (lambda tmp: ["id"], "must be the path of a private key file"),
        (lambda tmp: str(tmp / "id") + "\0", "cannot be read (not a valid path)"),
        (lambda tmp: str(tmp), "cannot be read (Is a directory)"),
        (lambda tmp: str(tmp / "missing"), "cannot be read (No such file or directory)"),
        (lambda tmp: write_binary(tmp / "id.der"), "cannot be read (not text)"),
    ],
    ids=["int", "list", "nul", "directory", "missing", "binary"],
)
def test_program_key_file_unreadable(tmp_path, make_path, fragment):
    entry = {"name": "m", "address": "127.0.0.1", "sshPrivateKeyFile": make_path(tmp_path)}
    with pytest.raises(InvalidInputError) as caught:
        parse_machine(entry, 0)
    assert fragment in str(caught.value)


def write_binary(path: Path) -> str:
    path.write_bytes(b"\x30\x82\xff\xfe")
    return str(path)


def test_program_qemu_engine_port_as_digits():
    spec = parse_machine({"name": "m", "driver": "qemu", "enginePort": "2376"}, 0)
    assert spec.engine_port == "2376"
    entry = {"name": "m", "driver": "qemu", "enginePort": 2377, "qemu": {"forwardPorts": [2377.0]}}
    assert parse_machine(entry, 0).engine_port == 2377


def test_program_rejects_shared_generic_host():
    machines = [generic_entry(name="a"), generic_entry(name="b", sshPort=22.0)]
    with pytest.raises(InvalidInputError) as caught:
        parse_machines(machines)
    message = str(caught.value)
    assert "invalid machines[1].address '127.0.0.1'" in message
    assert "machines[0] has the same address and sshPort 22" in message


def test_program_allows_hosts_on_other_ports():
    machines = [generic_entry(name="a"), generic_entry(name="b", sshPort=2222)]
    assert [spec.name for spec in parse_machines(machines)] == ["a", "b"]


def test_program_rejects_shared_qemu_address():
    machines = [
        {"name": "a", "driver": "qemu", "address": "127.100.0.77"},
        {"name": "b", "driver": "qemu", "address": "127.100.0.77", "sshPort": 2222},
    ]
    with pytest.raises(InvalidInputError, match=r"machines\[1\]\.address .*leased to one VM"):
        parse_machines(machines)


def ec2_entry(**settings):
    entry = {"name": "m", "driver": "amazonec2", "amazonec2": {"allowedCidrs": ["127.0.0.0/8"]}}
    entry.update(settings)
    return entry


def test_amazonec2_engine_port_from_machine():
    assert parse_machine(ec2_entry(enginePort=2377), 0).options["enginePort"] == 2377
    # The default port stays implicit, so existing machines see no change.
    assert "enginePort" not in parse_machine(ec2_entry(), 0).options
    assert "enginePort" not in parse_machine(ec2_entry(enginePort=2376), 0).options


@pytest.mark.parametrize(
    ("machine_port", "driver_port"), [(2377, 2376), (None, 2377), (2376, "2377")]
)
def test_amazonec2_engine_port_mismatch(machine_port, driver_port):
    entry = ec2_entry(enginePort=machine_port)
    entry["amazonec2"]["enginePort"] = driver_port
    with pytest.raises(InvalidInputError, match=r"machines\[0\]\.amazonec2\.enginePort .*differs"):
        parse_machine(entry, 0)


def test_qemu_project_image_root_only(tmp_path):
    failures = check(ssh_user="ubuntu", options={})
    messages = [f for f in failures if "invalid ssh_user 'ubuntu'" in f]
    assert len(messages) == 1, failures
    assert "set qemu.image to a cloud image" in messages[0]
    image = tmp_path / "cloud.raw"
    image.write_bytes(b"\0" * 4096)
    assert check(ssh_user="ubuntu", options={"image": str(image)}) == []
