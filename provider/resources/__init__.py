"""The dynamic resources: CertAuthority, Host and DockerDaemonConfig."""

from provider.resources.cert_authority import CertAuthority
from provider.resources.docker_daemon import DockerDaemonConfig
from provider.resources.host import Host

__all__ = ["CertAuthority", "DockerDaemonConfig", "Host"]
