"""Bad stack configuration, through the real engine: nothing is created.

Each case runs ``pulumi preview`` and ``pulumi up`` on one stack whose state
stays empty. Values checked by a resource's ``check`` fail the same way in
both. Structural faults (no name, a duplicate name, an unknown setting) are
rejected by the program before any resource is declared.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.harness.netguard import check_dialable

pytestmark = pytest.mark.engine

# Nothing listens here, and no case gets far enough to dial it: every case
# must fail before any connection.
ADDRESS = check_dialable("127.0.0.1")
UNUSED_PORT = 1


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A private key file and its public key file."""
    directory = tmp_path_factory.mktemp("keys")
    key = ed25519.Ed25519PrivateKey.generate()
    private = directory / "id_ed25519"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = directory / "id_ed25519.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    binary = directory / "id_ed25519.der"
    binary.write_bytes(b"\x30\x82\xff\xfe")
    return {"private": str(private), "public": str(public), "binary": str(binary)}


@pytest.fixture(scope="module")
def stack(stack_factory):
    """One stack for every case; its state must stay empty."""
    return stack_factory()


def machine(keys, **settings):
    """Return a valid machine entry with ``settings`` applied."""
    entry = {
        "name": "bad-input",
        "address": ADDRESS,
        "sshPort": UNUSED_PORT,
        "sshPrivateKeyFile": keys["private"],
    }
    entry.update(settings)
    return entry


# (id, machines list builder, extra config, fragments the error must contain)
CASES = [
    (
        "address-url",
        lambda keys: [machine(keys, address=f"tcp://{ADDRESS}")],
        {},
        ["invalid address", f"tcp://{ADDRESS}", f"give the bare address '{ADDRESS}'"],
    ),
    (
        "address-with-port",
        lambda keys: [machine(keys, address=f"{ADDRESS}:22")],
        {},
        ["invalid address", f"{ADDRESS}:22", "port in the port input"],
    ),
    (
        "address-with-space",
        lambda keys: [machine(keys, address="my host")],
        {},
        ["invalid address", "my host"],
    ),
    (
        "ssh-port-too-large",
        lambda keys: [machine(keys, sshPort=70000)],
        {},
        ["invalid ssh_port", "70000", "from 1 to 65535"],
    ),
    (
        "engine-port-not-number",
        lambda keys: [machine(keys, enginePort="docker")],
        {},
        ["invalid engine_port", "docker", "from 1 to 65535"],
    ),
    (
        "public-key-as-private-key",
        lambda keys: [machine(keys, sshPrivateKeyFile=keys["public"])],
        {},
        ["invalid ssh_private_key", "public key", "give the private key"],
    ),
    (
        "san-with-space",
        lambda keys: [machine(keys, extraSans=["docker host"])],
        {},
        ["docker host", "IP address or a DNS name"],
    ),
    (
        "san-url",
        lambda keys: [machine(keys, extraSans=["https://docker.example.test"])],
        {},
        ["https://docker.example.test"],
    ),
    (
        "empty-name",
        lambda keys: [machine(keys, name="")],
        {},
        ["machines[0].name", "stack configuration"],
    ),
    (
        "duplicate-name",
        lambda keys: [machine(keys), machine(keys)],
        {},
        ["machines[1].name", "bad-input", "duplicate machine name"],
    ),
    (
        "unknown-setting",
        lambda keys: [machine(keys, adress=ADDRESS)],
        {},
        ["machines[0].adress", "unknown setting"],
    ),
    (
        "missing-key-file",
        lambda keys: [machine(keys, sshPrivateKeyFile="/nonexistent/id_ed25519")],
        {},
        ["/nonexistent/id_ed25519", "cannot be read"],
    ),
    (
        "install-http-without-checksum",
        lambda keys: [
            machine(keys, install={"scriptUrl": "http://127.0.0.1:9/install.sh"})
        ],
        {},
        ["invalid install.script_url", "http://127.0.0.1:9/install.sh", "script_sha256"],
    ),
    (
        "install-unknown-setting",
        lambda keys: [machine(keys, install={"methd": "package"})],
        {},
        ["machines[0].install.methd", "unknown install setting"],
    ),
    (
        "driver-not-text",
        lambda keys: [machine(keys, driver=["generic"])],
        {},
        ["machines[0].driver", "['generic']", "unknown driver; use one of"],
    ),
    (
        "binary-key-file",
        lambda keys: [machine(keys, sshPrivateKeyFile=keys["binary"])],
        {},
        ["machines[0].sshPrivateKeyFile", "id_ed25519.der", "cannot be read (not text)"],
    ),
    (
        "shared-host",
        lambda keys: [machine(keys), machine(keys, name="bad-input-2")],
        {},
        ["machines[1].address", "machines[0] has the same address and sshPort"],
    ),
    (
        "amazonec2-engine-port-mismatch",
        lambda keys: [
            {
                "name": "bad-input",
                "driver": "amazonec2",
                "enginePort": 2377,
                "amazonec2": {"enginePort": 2376, "allowedCidrs": ["127.0.0.0/8"]},
            }
        ],
        {},
        ["machines[0].amazonec2.enginePort", "differs from machines[0].enginePort (2377)"],
    ),
    (
        "unknown-algorithm",
        lambda keys: [machine(keys)],
        {"certAuthority": {"algorithm": "dsa-1024"}},
        ["invalid algorithm", "dsa-1024", "ecdsa-p256"],
    ),
]


@pytest.mark.parametrize(
    ("build", "extra", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_config_creates_nothing(stack, keys, build, extra, fragments):
    stack.write_config(build(keys), **extra)

    for command in (stack.preview, stack.up):
        result = command(check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        for fragment in fragments:
            assert fragment in output, f"{fragment!r} missing from:\n{output}"
        assert "Traceback" not in output

    assert stack.resources() == []


def test_private_key_never_printed(stack, keys, tmp_path):
    key_text = open(keys["private"]).read()
    stack.write_config([machine(keys, sshPort=70000)])
    result = stack.up(check=False)
    body = key_text.splitlines()[1]
    assert result.returncode != 0
    assert body not in result.stdout + result.stderr
