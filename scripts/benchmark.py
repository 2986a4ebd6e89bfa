"""Time fleets of light hosts and print each figure beside its peer.

Run as root through scripts/benchmark.sh, which installs what is needed. On
16 light hosts (see tests/harness/lighthosts.py) it measures, in one run:

- ``pulumi up`` of this project with 1 machine and with 16 machines, then a
  no-op up, a preview and a refresh of the 16;
- the engine floor: the same commands on a stack of trivial dynamic
  resources, as many as the 16-machine stack has (2 per machine and the CA);
- the configure floor: a minimal asyncssh script that opens one SSH
  connection, runs ``systemctl restart docker`` and waits for one mutual-TLS
  handshake on the engine port, on 1 host and on 16 at once;
- Ansible (``ansible-core``, scripts/bench/requirements.txt, in a venv of its
  own) running scripts/bench/configure-docker-tls.yml, which does the
  configure's job, on 1 host and on 16 at once;
- the peak resident memory (VmHWM) of the provider processes during the
  16-machine up;
- the start-up of one provider process: the imports of the Python SDK's
  dynamic provider server, then unpickling this project's three providers,
  which imports their modules (median of several new processes).

Each figure is a wall-clock time in seconds of one run, so expect some noise
on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncssh
import yaml

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))

from provider import daemon_config, operation_log, pki  # noqa: E402
from provider.resources.cert_authority import CertAuthorityProvider  # noqa: E402
from provider.resources.docker_daemon import DockerDaemonConfigProvider  # noqa: E402
from provider.resources.host import HostProvider  # noqa: E402
from tests.harness.lighthosts import LightHostFleet  # noqa: E402
from tests.harness.netguard import check_dialable  # noqa: E402
from tests.harness.pulumi_cli import PulumiStack, machine_config  # noqa: E402

HOSTS = 16
ENGINE_PORT = 2376
PARALLEL = str(2 * HOSTS)
BENCH_DIR = PROJECT_DIR / "scripts" / "bench"
BENCH_VENV = Path.home() / ".cache" / "pulumi-docker-machine" / "bench-venv"
TLS_WAIT_SECONDS = 60.0
TLS_POLL_SECONDS = 0.05
PROVIDER_LOAD_RUNS = 5

# The start-up of one provider process before its first check: the imports
# of pulumi/dynamic/__main__.py (pulumi 3.272), then dill.loads of each
# provider in the state, given as base64 arguments. Prints both times.
PROVIDER_LOAD_PROGRAM = """
import sys, time
start = time.perf_counter()
import base64
import dill
import grpc
from google.protobuf import empty_pb2
from pulumi.metadata import get_project
from pulumi.runtime import configure, proto, rpc, Settings
from pulumi.runtime.proto import provider_pb2_grpc
from pulumi.dynamic import ResourceProvider
sdk_done = time.perf_counter()
for text in sys.argv[1:]:
    dill.loads(base64.b64decode(text))
print(sdk_done - start, time.perf_counter() - sdk_done)
"""

TRIVIAL_PROGRAM = '''\
import pulumi
from pulumi.dynamic import CreateResult, Resource, ResourceProvider


class Trivial(ResourceProvider):
    def create(self, props):
        return CreateResult("trivial", props)


class TrivialResource(Resource):
    def __init__(self, name):
        super().__init__(Trivial(), name, {"value": name})


for index in range(pulumi.Config().require_int("count")):
    TrivialResource(f"trivial-{index}")
'''


def log(message: str) -> None:
    """Print a progress line to stderr."""
    print(f"benchmark: {message}", file=sys.stderr, flush=True)


def timed(action) -> float:
    """Run ``action`` and return its wall-clock time in seconds."""
    start = time.monotonic()
    action()
    seconds = time.monotonic() - start
    log(f"took {seconds:.2f} s")
    return seconds


# The engine floor


def trivial_stack(workdir: Path, count: int) -> PulumiStack:
    """Return a stack of ``count`` dynamic resources that do nothing."""
    project = workdir / "trivial-project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: trivial-floor\nruntime: python\n")
    (project / "__main__.py").write_text(TRIVIAL_PROGRAM)
    stack = PulumiStack(workdir / "trivial-stack", project_dir=project)
    document = {**(stack.base_config or {}), "config": {"trivial-floor:count": count}}
    stack.config_file.write_text(yaml.safe_dump(document))
    return stack


def measure_engine_floor(workdir: Path, count: int) -> dict[str, float]:
    """Time up, no-op up, preview and refresh of ``count`` trivial resources."""
    stack = trivial_stack(workdir, count)
    try:
        return {
            "up": timed(lambda: stack.up("--parallel", PARALLEL)),
            "noop_up": timed(lambda: stack.up("--parallel", PARALLEL)),
            "preview": timed(lambda: stack.preview("--parallel", PARALLEL)),
            "refresh": timed(lambda: stack.refresh("--skip-preview", "--parallel", PARALLEL)),
        }
    finally:
        stack.destroy(check=False)
        stack.remove()


# This project


class ProviderMemorySampler:
    """Sample VmHWM of the dynamic provider processes of one stack until stopped.

    A process counts when its environment contains ``marker``, the stack's own
    operation log setting, so other stacks on the machine are left out.
    """

    def __init__(self, marker: str, interval: float = 0.2) -> None:
        self.marker = marker.encode()
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProviderMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid_dir in Path("/proc").glob("[0-9]*"):
                try:
                    cmdline = (pid_dir / "cmdline").read_bytes()
                    if b"pulumi.dynamic" not in cmdline:
                        continue
                    if self.marker not in (pid_dir / "environ").read_bytes():
                        continue
                    status = (pid_dir / "status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        kilobytes = int(line.split()[1])
                        pid = int(pid_dir.name)
                        self.peaks[pid] = max(self.peaks.get(pid, 0), kilobytes)


def machines_stack(workdir: Path, hosts) -> PulumiStack:
    """Return a stack of this project with one machine per light host."""
    stack = PulumiStack(workdir)
    stack.env[operation_log.LOG_ENVIRONMENT_VARIABLE] = str(workdir / "operations.jsonl")
    stack.write_config(
        [machine_config(host, f"bench-{index:02d}") for index, host in enumerate(hosts)]
    )
    return stack


def configure_durations(stack: PulumiStack) -> list[float]:
    """Return the duration of each configure in the stack's operation log."""
    path = Path(stack.env[operation_log.LOG_ENVIRONMENT_VARIABLE])
    starts: dict[str, float] = {}
    durations = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["operation"] != "configure":
            continue
        if entry["event"] == "start":
            starts[entry["machine"]] = entry["time"]
        else:
            durations.append(entry["time"] - starts.pop(entry["machine"]))
    return durations


def measure_one_machine(workdir: Path, host) -> dict[str, float]:
    """Time ``pulumi up`` of one machine, then destroy it."""
    stack = machines_stack(workdir, [host])
    try:
        seconds = timed(lambda: stack.up("--parallel", PARALLEL))
        return {"up": seconds, "configure": max(configure_durations(stack))}
    finally:
        stack.destroy(check=False)
        stack.remove()


def measure_fleet(workdir: Path, hosts) -> tuple[dict[str, float], PulumiStack]:
    """Time up, no-op up, preview and refresh of one machine per host."""
    stack = machines_stack(workdir, hosts)
    marker = f"{operation_log.LOG_ENVIRONMENT_VARIABLE}={stack.env[operation_log.LOG_ENVIRONMENT_VARIABLE]}"
    with ProviderMemorySampler(marker) as sampler:
        up = timed(lambda: stack.up("--parallel", PARALLEL))
    figures = {
        "up": up,
        "noop_up": timed(lambda: stack.up("--parallel", PARALLEL)),
        "preview": timed(lambda: stack.preview("--parallel", PARALLEL)),
        "refresh": timed(lambda: stack.refresh("--skip-preview", "--parallel", PARALLEL)),
        "provider_processes": len(sampler.peaks),
        "peak_rss_max_mib": max(sampler.peaks.values(), default=0) / 1024,
        "peak_rss_sum_mib": sum(sampler.peaks.values()) / 1024,
    }
    return figures, stack


def measure_provider_load() -> tuple[float, float]:
    """Return the median seconds of the SDK's imports and of loading our providers.

    Each run is a new Python process in the project directory, as the
    engine starts one per provider resource in every preview and up.
    """
    from pulumi.dynamic.dynamic import serialize_provider

    pickled = [
        serialize_provider(provider())
        for provider in (CertAuthorityProvider, HostProvider, DockerDaemonConfigProvider)
    ]
    sdk_times, load_times = [], []
    for _ in range(PROVIDER_LOAD_RUNS):
        completed = subprocess.run(
            [sys.executable, "-c", PROVIDER_LOAD_PROGRAM, *pickled],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        sdk_seconds, load_seconds = (float(word) for word in completed.stdout.split())
        sdk_times.append(sdk_seconds)
        load_times.append(load_seconds)
    return statistics.median(sdk_times), statistics.median(load_times)


# The configure floor: one SSH connection, one restart, one mTLS handshake


def client_tls_context(stack: PulumiStack, workdir: Path) -> ssl.SSLContext:
    """Return a client TLS context with the stack's CA and client certificate."""
    outputs = stack.outputs(show_secrets=True)
    name = sorted(outputs["machines"])[0]
    public = outputs["machines"][name]
    key_path = workdir / "client-key.pem"
    key_path.write_text(outputs["machineSecrets"][name]["clientKeyPem"])
    key_path.chmod(0o600)
    cert_path = workdir / "client-cert.pem"
    cert_path.write_text(public["clientCertPem"])
    context = ssl.create_default_context(cadata=public["caCertPem"])
    context.check_hostname = False
    context.load_cert_chain(cert_path, key_path)
    return context


async def restart_and_handshake(host, context: ssl.SSLContext) -> None:
    """Run ``systemctl restart docker`` over SSH, then wait for one mTLS handshake."""
    address = check_dialable(host.address)
    async with asyncssh.connect(
        address,
        username=host.user,
        client_keys=[str(host.private_key_path)],
        known_hosts=None,
        config=None,
        agent_path=None,
    ) as connection:
        await connection.run("systemctl restart docker", check=True)
    deadline = time.monotonic() + TLS_WAIT_SECONDS
    while True:
        try:
            reader, writer = await asyncio.open_connection(
                address, ENGINE_PORT, ssl=context, server_hostname=address
            )
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(TLS_POLL_SECONDS)
            continue
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return


def measure_script_floor(hosts, context: ssl.SSLContext) -> float:
    """Time the floor on ``hosts`` at once."""

    async def run_all() -> None:
        await asyncio.gather(*(restart_and_handshake(host, context) for host in hosts))

    return timed(lambda: asyncio.run(run_all()))


# Ansible


def ensure_ansible() -> Path:
    """Install ansible-core into its own venv if needed; return ansible-playbook."""
    playbook = BENCH_VENV / "bin" / "ansible-playbook"
    if not playbook.exists():
        log(f"installing ansible-core into {BENCH_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run(
            [
                str(BENCH_VENV / "bin" / "pip"), "install", "-q",
                "--disable-pip-version-check", "-r", str(BENCH_DIR / "requirements.txt"),
            ],
            check=True,
        )
    return playbook


def write_ansible_files(workdir: Path, fleet: LightHostFleet, hosts) -> Path:
    """Write per-host certificates and configuration and the inventory."""
    ca = pki.create_ca()
    unit_text = (fleet.root / "lib/systemd/system/docker.service").read_text()
    inventory = {}
    for index, host in enumerate(hosts):
        files_dir = workdir / f"files-{index:02d}"
        files_dir.mkdir()
        server = pki.issue_server_certificate(
            ca.cert_pem, ca.key_pem, pki.server_sans(host.address), common_name=host.name
        )
        contents = {
            "ca.pem": ca.cert_pem,
            "server.pem": server.cert_pem,
            "server-key.pem": server.key_pem,
            "daemon.json": daemon_config.render_daemon_json({}, ENGINE_PORT),
            "dropin.conf": daemon_config.render_dropin(unit_text),
        }
        for name, text in contents.items():
            (files_dir / name).write_text(text)
            (files_dir / name).chmod(0o600)
        inventory[host.name] = {
            "ansible_host": check_dialable(host.address),
            "ansible_user": host.user,
            "ansible_ssh_private_key_file": str(host.private_key_path),
            "files_dir": str(files_dir),
        }
    path = workdir / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": inventory}}))
    return path


def measure_ansible(workdir: Path, fleet: LightHostFleet, hosts, playbook: Path) -> float:
    """Time one ansible-playbook run of the configure play on ``hosts``."""
    workdir.mkdir(parents=True)
    inventory = write_ansible_files(workdir, fleet, hosts)
    env = {
        **os.environ,
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": str(len(hosts)),
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local"),
        "ANSIBLE_SSH_ARGS": "-o UserKnownHostsFile=/dev/null -o ControlMaster=auto "
        "-o ControlPersist=60s",
    }
    command = [str(playbook), "-i", str(inventory), str(BENCH_DIR / "configure-docker-tls.yml")]
    start = time.monotonic()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    if completed.returncode != 0:
        raise RuntimeError(
            f"ansible-playbook exited {completed.returncode}:\n{completed.stdout[-4000:]}"
        )
    log(f"Ansible on {len(hosts)} hosts took {seconds:.2f} s")
    return seconds


# Report


def machine_description() -> str:
    """Describe the CPU, core count, memory and OS this ran on."""
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_kib / 1024**2:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def print_table(rows: list[tuple[str, float, str, float | None, str]]) -> None:
    """Print figure, time, peer, peer time, ratio and goal as a Markdown table."""
    print("| figure | seconds | peer | peer seconds | ratio | goal |")
    print("| --- | ---: | --- | ---: | ---: | --- |")
    for figure, seconds, peer, peer_seconds, goal in rows:
        if peer_seconds:
            ratio = f"{seconds / peer_seconds:.2f}"
            peer_text = f"{peer_seconds:.2f}"
        else:
            ratio = peer_text = "-"
        print(f"| {figure} | {seconds:.2f} | {peer} | {peer_text} | {ratio} | {goal} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip-ansible", action="store_true", help="leave out the Ansible peer"
    )
    args = parser.parse_args()
    if shutil.which("pulumi") is None:
        sys.exit("pulumi not on PATH: run scripts/benchmark.sh")
    playbook = None if args.skip_ansible else ensure_ansible()
    workdir = Path(tempfile.mkdtemp(prefix="pdm-bench-"))
    started = datetime.datetime.now(datetime.timezone.utc)

    log(f"starting {HOSTS} light hosts")
    with LightHostFleet(HOSTS, with_python=playbook is not None) as fleet:
        hosts = fleet.hosts
        log("engine floor: trivial dynamic resources")
        floor = measure_engine_floor(workdir, 2 * HOSTS + 1)
        log("pulumi up of 1 machine")
        one = measure_one_machine(workdir / "one", hosts[0])
        log(f"pulumi up, no-op up, preview and refresh of {HOSTS} machines")
        fleet_figures, stack = measure_fleet(workdir / "fleet", hosts)
        log("configure floor: restart and one mTLS handshake by a minimal script")
        context = client_tls_context(stack, workdir)
        script_one = measure_script_floor(hosts[:1], context)
        script_all = measure_script_floor(hosts, context)
        log(f"destroying the {HOSTS} machines")
        stack.destroy(check=False)
        stack.remove()
        ansible_one = ansible_all = None
        if playbook is not None:
            log("Ansible on 1 host")
            ansible_one = measure_ansible(workdir / "ansible-one", fleet, hosts[:1], playbook)
            log(f"Ansible on {HOSTS} hosts")
            ansible_all = measure_ansible(workdir / "ansible-all", fleet, hosts, playbook)

    log("provider process start-up")
    sdk_seconds, load_seconds = measure_provider_load()

    resources = 2 * HOSTS + 1
    print(f"Benchmark of {started:%Y-%m-%d %H:%M} UTC on: {machine_description()}")
    print(f"Engine: {subprocess.run(['pulumi', 'version'], capture_output=True, text=True).stdout.strip()}, `--parallel {PARALLEL}`")
    print()
    print_table(
        [
            (f"up, {HOSTS} machines", fleet_figures["up"], "up, 1 machine", one["up"], "<= 2"),
            ("configure, 1 machine", one["configure"], "script floor, 1 host", script_one, "<= 1.5"),
            (f"up, {HOSTS} machines", fleet_figures["up"], f"script floor, {HOSTS} hosts", script_all, "-"),
            (f"up, {HOSTS} machines", fleet_figures["up"], f"Ansible, {HOSTS} hosts", ansible_all, "<= 0.5"),
            ("up, 1 machine", one["up"], "Ansible, 1 host", ansible_one, "<= 0.5"),
            ("configure, 1 machine", one["configure"], "Ansible, 1 host", ansible_one, "<= 0.5"),
            (f"no-op up, {HOSTS} machines", fleet_figures["noop_up"], f"no-op up, {resources} trivial", floor["noop_up"], "<= 1.2"),
            (f"preview, {HOSTS} machines", fleet_figures["preview"], f"preview, {resources} trivial", floor["preview"], "<= 1.2"),
            (f"refresh, {HOSTS} machines", fleet_figures["refresh"], f"refresh, {resources} trivial", floor["refresh"], "-"),
            (f"up (create), {resources} trivial", floor["up"], "-", None, "-"),
        ]
    )
    print()
    print(
        f"Provider processes during the {HOSTS}-machine up: "
        f"{fleet_figures['provider_processes']}; peak resident memory "
        f"{fleet_figures['peak_rss_max_mib']:.0f} MiB in the largest, "
        f"{fleet_figures['peak_rss_sum_mib']:.0f} MiB summed."
    )
    print(
        f"Provider process start-up (median of {PROVIDER_LOAD_RUNS}): "
        f"{sdk_seconds:.2f} s for the SDK's imports, then {load_seconds:.2f} s "
        f"to unpickle this project's providers. Load average at the end: "
        f"{os.getloadavg()[0]:.1f}."
    )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
