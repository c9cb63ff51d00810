"""Names shared by every provisioner for marking what it creates.

The same keys label Docker containers, Kubernetes pods and (as environment
variables) local and remote kernel processes, so that ``kernel-orchestrator gc`` can
tell what this orchestrator deployment owns from everything else on a host.
"""

from __future__ import annotations

LABEL_KERNEL_ID = "kernel-orchestrator.kernel-id"
LABEL_INSTANCE = "kernel-orchestrator.instance"

ENV_KERNEL_ID = "KERNEL_ORCHESTRATOR_KERNEL_ID"
ENV_INSTANCE = "KERNEL_ORCHESTRATOR_INSTANCE"
