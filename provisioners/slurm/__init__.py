"""The Slurm provisioner: kernels as batch jobs on compute nodes, via the login host."""

from .provisioner import SlurmProvisioner

__all__ = ["SlurmProvisioner"]
