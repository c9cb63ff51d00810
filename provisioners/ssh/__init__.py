"""The SSH provisioner: kernels on remote hosts, tunnelled over one shared connection."""

from .provisioner import SSHProvisioner

__all__ = ["SSHProvisioner"]
