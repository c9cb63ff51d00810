"""The Kubernetes provisioner: one pod per kernel."""

from .provisioner import KubernetesProvisioner

__all__ = ["KubernetesProvisioner"]
