"""The SSH tunnel layer: one shared, self-healing paramiko connection per host.

* :mod:`.target` resolves destinations against ``~/.ssh/config`` (ProxyJump too);
* :mod:`.connection` keeps one connection alive and rebuilds it with backoff;
* :mod:`.forward` forwards local loopback ports through ``direct-tcpip`` channels;
* :mod:`.pool` shares connections between kernels and exposes the tunneler;
* :mod:`.certificates` mints short-lived user certificates (no stored per-user keys).
"""

from .certificates import CertificateAuthority, CertificateError, CertificateRequest
from .connection import HostKeyError, SSHConnection, SSHError
from .pool import KernelTunnel, SSHTunneler, pool, tunneler_for
from .target import SSHConfigError, SSHTarget, resolve_target

__all__ = [
    "CertificateAuthority",
    "CertificateError",
    "CertificateRequest",
    "HostKeyError",
    "KernelTunnel",
    "SSHConfigError",
    "SSHConnection",
    "SSHError",
    "SSHTarget",
    "SSHTunneler",
    "pool",
    "resolve_target",
    "tunneler_for",
]
