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

from provider import drivers, loopback
from provider.drivers.common import generate_ssh_key
from provider.drivers.seed import write_seed_image
from provider.errors import InvalidInputError
from provider.program import parse_machine
from provider.resources.host import HostProvider

KEY, _ = generate_ssh_key("test")


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
    lease = loopback.take("127.100.0.251", holder="another machine")
    try:
        failures = check(address="127.100.0.251")
        assert any("already leased to another machine" in f for f in failures), failures
        # The same address on a machine that has it already is no clash.
        assert check(address="127.100.0.251", olds={"address": "127.100.0.251"}) == []
    finally:
        loopback.release(lease.address)


def test_qemu_address_with_a_busy_port_rejected():
    with socket.socket() as listener:
        listener.bind(("127.100.0.252", 0))
        listener.listen()
        port = listener.getsockname()[1]
        failures = check(address="127.100.0.252", options={"forwardPorts": [port]})
    assert any(f"port(s) [{port}] already in use" in f for f in failures), failures


def test_qemu_address_outside_loopback_rejected():
    failures = check(address="10.0.0.5")
    assert any("127.0.0.0/8" in failure for failure in failures), failures


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
