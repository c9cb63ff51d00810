"""What the conformance suite needs to know of each provisioner, and no more."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import procinfo
from orchestrator.labels import ENV_INSTANCE, ENV_KERNEL_ID, LABEL_INSTANCE, LABEL_KERNEL_ID

from ..conftest import KERNEL_IMAGE


def processes_of(instance: str) -> set[str]:
    """Kernel ids of running processes of this deployment (local, and remote on the
    test hosts, which share this machine's pid space)."""
    found = set()
    for pid in procinfo.all_pids():
        env = procinfo.environ(pid)
        if env.get(ENV_INSTANCE) == instance and procinfo.is_running(pid):
            found.add(env.get(ENV_KERNEL_ID, "?"))
    return found


def containers_of(instance: str) -> set[str]:
    import docker

    client = docker.from_env()
    try:
        return {
            c.labels.get(LABEL_KERNEL_ID, "?")
            for c in client.containers.list(all=True, filters={"label": LABEL_INSTANCE})
            if c.labels.get(LABEL_INSTANCE) == instance
        }
    finally:
        client.close()


@dataclass
class Backend:
    """One provisioner under the conformance suite."""

    name: str
    provisioner: str
    python: str  # argv[0] of its kernels
    config: dict[str, Any]  # a working kernelspec's provisioner config
    broken: dict[str, Any]  # config overrides that make every start fail
    broken_message: str  # ... with this in the error
    running: Callable[[str], set[str]]  # instance -> ids of its kernels that still exist
    startup_timeout: bool = True  # has a provisioner-level start-up timeout
    filters_client_env: bool = True  # remote kernels get validated client variables only
    pushes_liveness: bool = False  # tells the restarter of an exit (no timer while idle)
    extra: dict[str, Any] = field(default_factory=dict)


def local() -> Backend:
    return Backend(
        name="local",
        pushes_liveness=True,
        provisioner="orchestrator-local-provisioner",
        python=sys.executable,
        config={},
        broken={},  # a local kernel has no target to get wrong: see its argv test
        broken_message="",
        running=processes_of,
        startup_timeout=False,  # jupyter_client returns once launched; the CLI bounds it
        filters_client_env=False,  # a local kernel inherits its environment, as stock
    )


def docker_backend() -> Backend:
    return Backend(
        name="docker",
        pushes_liveness=True,
        provisioner="docker-provisioner",
        python="python",
        config={"image": KERNEL_IMAGE},
        broken={"image": "kernel-orchestrator/no-such-image:1", "pull_policy": "never"},
        broken_message="pull_policy is 'never'",
        running=containers_of,
    )


def ssh_backend(sshnet: Any, remote_dir: str) -> Backend:
    return Backend(
        name="ssh",
        pushes_liveness=True,
        provisioner="ssh-provisioner",
        python="python",
        config={
            "hosts": ["hosta"],
            "ssh_config": str(sshnet.ssh_config),
            "python": sys.executable,
            "remote_dir": remote_dir,
            "connect_timeout": 5,
        },
        broken={"hosts": ["root@127.0.0.1:1"]},  # loopback, nothing listening
        broken_message="no host of the pool can be reached",
        running=processes_of,
        extra={"net": sshnet},
    )


def kubernetes_backend(config: dict[str, Any], pods_of: Callable[[str], set[str]]) -> Backend:
    """On the real cluster, as the chart's ServiceAccount (``config``: the chart's
    kernelspec config with the token and CA to reach the API server)."""
    return Backend(
        name="kubernetes",
        pushes_liveness=True,
        provisioner="kubernetes-provisioner",
        python="python",
        config={**config, "image": KERNEL_IMAGE},
        # Never pulled: the node reaches no registry (nor may a test).
        broken={
            "image": "nowhere/ghost:1.0",
            "image_allowlist": ["nowhere/*"],
            "image_pull_policy": "Never",
        },
        broken_message="ErrImageNeverPull",
        running=pods_of,
    )


def slurm_backend(slurmnet: Any, remote_dir: str) -> Backend:
    from ..test_slurm import slurm_config

    def jobs_and_processes(instance: str) -> set[str]:
        """Kernel ids of this deployment's live jobs, and of its kernel processes."""
        jobs = {
            j["comment"].rsplit("kernel=", 1)[-1]
            for j in slurmnet.live_jobs()
            if f"instance={instance} " in j["comment"]
        }
        return jobs | processes_of(instance)

    return Backend(
        name="slurm",
        provisioner="slurm-provisioner",
        python="python",
        config=slurm_config(slurmnet, remote_dir),
        broken={"resources": {"partition": "nowhere", "time": "00:10:00"}},
        broken_message="invalid partition specified",
        running=jobs_and_processes,
        extra={"net": slurmnet},
    )


BACKENDS = ["local", "docker", "ssh", "kubernetes", "slurm"]


def open_backend(request: Any, tmp_path: Path, name: str) -> Iterator[Backend]:
    """The back-end ``name``, its infrastructure brought up only when it is asked for
    (the session's shared fixtures: one sshd network, one Slurm cluster, one cluster)."""
    if name == "local":
        yield local()
    elif name == "docker":
        request.getfixturevalue("docker_engine")
        yield docker_backend()
    elif name == "ssh":
        sshnet = request.getfixturevalue("sshnet")
        yield ssh_backend(sshnet, str(tmp_path / "remote-kernels"))
    elif name == "slurm":
        slurmnet = request.getfixturevalue("slurmnet")
        yield slurm_backend(slurmnet, str(tmp_path / "slurm-kernels"))
    else:
        from provisioners.kubernetes.names import label_value

        from ..kubecluster import forget_provisioner_state

        release = request.getfixturevalue("kube_release")
        core = release.cluster.core()

        def pods_of(instance: str) -> set[str]:
            selector = f"{LABEL_INSTANCE}={label_value(instance)}"
            return {
                p.metadata.name
                for p in core.list_pod_for_all_namespaces(label_selector=selector).items
                if not p.metadata.deletion_timestamp
            } | {
                s.metadata.name
                for s in core.list_secret_for_all_namespaces(label_selector=selector).items
            }

        yield kubernetes_backend(release.config(), pods_of)
        forget_provisioner_state()  # as if this process had exited
