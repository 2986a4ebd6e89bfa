"""The dynamic resources: CertAuthority, Host and DockerDaemonConfig."""

from provider.resources.cert_authority import CertAuthority
from provider.resources.docker_daemon import DockerDaemonConfig
from provider.resources.host import Host
from provider.worker_pool import widen_server_pool

# Importing this package is what unpickling a provider does in a provider
# process, before its first call.
widen_server_pool()

__all__ = ["CertAuthority", "DockerDaemonConfig", "Host"]
