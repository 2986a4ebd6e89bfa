"""Bad engine options, through the real engine: rejected at preview, nothing created.

Every case fails in ``check``, before any connection, so the machine points
at a closed port on loopback.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.harness.netguard import check_dialable

pytestmark = pytest.mark.engine

ADDRESS = check_dialable("127.0.0.1")
UNUSED_PORT = 1


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    """Return the path of a private key file that no host accepts."""
    path = tmp_path_factory.mktemp("keys") / "id_ed25519"
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def stack(stack_factory):
    """One stack for every case; its state must stay empty."""
    return stack_factory()


# (id, engine mapping, fragments the error must contain)
CASES = [
    ("unknown-option", {"storagedriver": "overlay2"}, ["engine.storagedriver", "unknown engine option"]),
    ("storage-driver", {"storageDriver": "ext4"}, ["engine.storageDriver 'ext4'", "overlay2"]),
    ("owned-key", {"daemonJson": {"tlsverify": False}}, ["engine.daemonJson.tlsverify", "TLS listener"]),
    (
        "named-clash",
        {"logDriver": "local", "daemonJson": {"log-driver": "journald"}},
        ["engine.daemonJson.log-driver", "logDriver"],
    ),
    (
        "hardened-clash",
        {"hardened": True, "daemonJson": {"live-restore": False}},
        ["engine.daemonJson.live-restore", "hardened preset"],
    ),
    ("provider-label", {"labels": {"provider": "mine"}}, ["engine.labels.provider", "driver"]),
    ("mirror-without-scheme", {"registryMirrors": ["mirror.test"]}, ["engine.registryMirrors[0]", "https://"]),
]


@pytest.mark.parametrize(
    ("engine", "fragments"), [pytest.param(*case[1:], id=case[0]) for case in CASES]
)
def test_bad_engine_option_creates_nothing(stack, key_file, engine, fragments):
    stack.write_config(
        [
            {
                "name": "bad-engine",
                "address": ADDRESS,
                "sshPort": UNUSED_PORT,
                "sshPrivateKeyFile": key_file,
                "engine": engine,
            }
        ]
    )
    result = stack.preview(check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} missing from:\n{output}"
    assert "Traceback" not in output
    assert stack.resources() == []
