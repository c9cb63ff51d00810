"""The Docker provisioner: one container per kernel."""

from .provisioner import DockerProvisioner

__all__ = ["DockerProvisioner"]
