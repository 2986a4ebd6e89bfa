"""A stack that uses a Docker host made by a pulumi-docker-machine stack.

It reads the machine through a StackReference: DOCKER_HOST and the CA and
client certificates from the plain ``machines`` output, the client key from
the secret ``machineSecrets`` output. During ``pulumi up`` it connects to the
daemon over mutual TLS with the docker SDK and exports what the daemon reports.

Configuration:
  machineStack  the machine stack, as ORG/PROJECT/STACK on this backend
  machine       the machine name in that stack
"""

from __future__ import annotations

import os
import tempfile

import docker
import pulumi

config = pulumi.Config()
machine_stack = pulumi.StackReference(config.require("machineStack"))
machine_name = config.require("machine")


def pick_machine(machines: dict) -> dict:
    """Return the named machine's entry, or fail naming the ones there are."""
    if machine_name not in machines:
        raise pulumi.RunError(
            f"machine {machine_name!r} not found in stack "
            f"{config.require('machineStack')}; its machines are "
            f"{', '.join(sorted(machines)) or 'none'}"
        )
    return machines[machine_name]


def pick_client_key(secrets: dict) -> str:
    """Return the named machine's client key, or fail saying which is missing."""
    entry = secrets.get(machine_name) or {}
    if not entry.get("clientKeyPem"):
        raise pulumi.RunError(
            f"machine {machine_name!r} has no clientKeyPem in the machineSecrets "
            f"output of stack {config.require('machineStack')}; run `pulumi up` "
            f"on that stack"
        )
    return entry["clientKeyPem"]


machine = machine_stack.require_output("machines").apply(pick_machine)
client_key_pem = machine_stack.require_output("machineSecrets").apply(pick_client_key)


def write_private(path: str, text: str) -> None:
    """Write ``text`` to a new file that only this user can read."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


class StackCAClient(docker.APIClient):
    """A docker API client that verifies the daemon with the given CA file only.

    In requests (seen in 2.34.2, ``Session.merge_environment_settings``) a set
    ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` replaces the session's CA
    file. The daemon's certificate, signed by the machine stack's own CA, then
    fails verification.
    """

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify
        return settings


def daemon_info(args: list) -> dict | None:
    """Return a summary of the daemon's ``docker info``, over mutual TLS."""
    machine, key_pem = args
    if pulumi.runtime.is_dry_run():
        return None
    # The docker SDK loads TLS material from files only, so the key goes to
    # a private temporary directory that is removed right after the call.
    with tempfile.TemporaryDirectory(prefix="consumer-tls-") as directory:
        paths = {name: os.path.join(directory, name) for name in ("ca", "cert", "key")}
        write_private(paths["ca"], machine["caCertPem"])
        write_private(paths["cert"], machine["clientCertPem"])
        write_private(paths["key"], key_pem)
        tls = docker.tls.TLSConfig(
            client_cert=(paths["cert"], paths["key"]), ca_cert=paths["ca"], verify=True
        )
        client = StackCAClient(
            base_url=machine["DOCKER_HOST"], tls=tls, version="auto", timeout=30
        )
        try:
            info = client.info()
        finally:
            client.close()
    return {
        "serverVersion": info["ServerVersion"],
        "name": info["Name"],
        "operatingSystem": info["OperatingSystem"],
        "containers": info["Containers"],
    }


info = pulumi.Output.all(machine, client_key_pem).apply(daemon_info)

pulumi.export("dockerHost", machine["DOCKER_HOST"])
# Built with the key but contains none of it, so it needs no secret marking.
pulumi.export("daemonInfo", pulumi.Output.unsecret(info))
