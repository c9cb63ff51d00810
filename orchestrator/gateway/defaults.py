"""Kernelspecs a gateway offers out of the box, for the provisioners this machine has.

Local kernels always (ipykernel's ``python3``); a Docker kernelspec when a Docker
engine answers and the kernel image is present. Existing kernelspecs are never
overwritten.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

log = logging.getLogger("kernel-orchestrator.gateway")
DOCKER_SPEC = "python3-docker"
DOCKER_IMAGE = "kernel-orchestrator/kernel-python:latest"


def _docker_ready() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            client.ping()
            client.images.get(DOCKER_IMAGE)
            return True
        finally:
            client.close()
    except Exception:
        return False


def ensure_default_kernelspecs() -> list[str]:
    """Install missing default kernelspecs into the user's data dir; return their names."""
    ksm = KernelSpecManager()
    installed: list[str] = []
    try:
        ksm.get_kernel_spec(DOCKER_SPEC)
        return installed
    except NoSuchKernel:
        pass
    if not _docker_ready():
        return installed
    spec = {
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (Docker)",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "docker-provisioner",
                "config": {"image": DOCKER_IMAGE},
            }
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(spec, indent=2))
        ksm.install_kernel_spec(tmp, kernel_name=DOCKER_SPEC, user=True)
    log.info("installed kernelspec %s (a Docker engine is reachable)", DOCKER_SPEC)
    installed.append(DOCKER_SPEC)
    return installed
