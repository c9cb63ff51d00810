"""Building a kernel's pod and connection Secret from settings, with typed models only.

Nothing here formats YAML or templates strings into manifests (the source of
Enterprise Gateway's injection advisories): every value lands in a field of a
``kubernetes.client`` model, and client-supplied text only ever reaches fields after
validation (images against the allow-list, names reduced to DNS labels).
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

CONNECTION_DIR = "/var/run/kernel"
CONNECTION_FILE = f"{CONNECTION_DIR}/connection.json"
SECRET_DIR = "/var/run/kernel-secret"
# ipykernel rewrites its connection file at start-up when it holds Curve keys, and a
# Secret volume is read-only: the file is copied, 0600, into a memory-backed emptyDir
# first. The kernel's own argv follows as separate arguments ("$@"): no quoting, no
# templating, nothing user-supplied is ever parsed by the shell.
# The shell also records its pid, which ``exec`` hands on to the kernel, so that a
# signal can be sent to the kernel by exec into the pod (see ``signal_command``).
KERNEL_PID_FILE = f"{CONNECTION_DIR}/kernel.pid"
COPY_THEN_EXEC = (
    f"install -m 600 {SECRET_DIR}/connection.json {CONNECTION_FILE}"
    f' && echo $$ > {KERNEL_PID_FILE} && exec "$@"'
)


def _literal(arg: str) -> str:
    """``arg`` as Kubernetes passes it on: it expands ``$(VAR)`` in a container's
    command and reads ``$$`` as ``$``, so every ``$`` is doubled."""
    return arg.replace("$", "$$")


CONTAINER_PORTS = {"shell": 50001, "iopub": 50002, "stdin": 50003, "control": 50004, "hb": 50005}

# Settings a profile may set (kubespawner's profile_list idea, validated keys only).
PROFILE_KEYS = {
    "image",
    "cpu_request",
    "cpu_limit",
    "memory_request",
    "memory_limit",
    "gpus",
    "gpu_resource",
    "extra_resources",
    "node_selector",
    "tolerations",
    "affinity",
    "priority_class_name",
    "service_account_name",
    "volumes",
    "volume_mounts",
}


@dataclass
class PodSettings:
    """Everything one kernel pod is made of (kernelspec config + profile + overrides)."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = field(default_factory=list)
    cpu_request: str = ""
    cpu_limit: str = ""
    memory_request: str = ""
    memory_limit: str = ""
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    extra_resources: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, Any] = field(default_factory=dict)
    priority_class_name: str = ""
    service_account_name: str = ""
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    run_as_user: int = 1000
    run_as_group: int = 1000
    environment: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    username: str = ""
    working_dir: str = ""  # (from KERNEL_WORKING_DIR, mapped; '' : the image's)

    def with_profile(self, profile: dict[str, Any]) -> PodSettings:
        unknown = set(profile) - PROFILE_KEYS - {"display_name", "description", "allowed"}
        if unknown:
            from orchestrator.errors import OrchestratorError

            raise OrchestratorError(f"profile sets unknown settings: {', '.join(sorted(unknown))}")
        merged = copy.deepcopy(self.__dict__)
        merged.update({k: copy.deepcopy(v) for k, v in profile.items() if k in PROFILE_KEYS})
        return PodSettings(**merged)


def substitute_username(value: Any, username: str) -> Any:
    """``{username}`` in volume definitions (already a DNS-safe name)."""
    if isinstance(value, str):
        return value.replace("{username}", username)
    if isinstance(value, list):
        return [substitute_username(v, username) for v in value]
    if isinstance(value, dict):
        return {k: substitute_username(v, username) for k, v in value.items()}
    return value


def _resources(s: PodSettings) -> client.V1ResourceRequirements:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if s.cpu_request:
        requests["cpu"] = s.cpu_request
    if s.memory_request:
        requests["memory"] = s.memory_request
    if s.cpu_limit:
        limits["cpu"] = s.cpu_limit
    if s.memory_limit:
        limits["memory"] = s.memory_limit
    if s.gpus:
        # Extended resources are set as limits (requests default to them).
        limits[s.gpu_resource] = str(s.gpus)
    for name, amount in s.extra_resources.items():
        limits[name] = str(amount)
    return client.V1ResourceRequirements(requests=requests or None, limits=limits or None)


def signal_command(signum: int) -> list[str]:
    """The command that, exec'd in the kernel's container, sends ``signum`` to the kernel.

    The pod shares one process namespace, so the kernel is not PID 1 there (the pause
    process is) and receives signals it has no handler for, SIGTERM included.
    """
    import signal

    name = signal.Signals(signum).name.removeprefix("SIG")
    # To its process group, as a local kernel's interrupt: the kernel's children (R's,
    # bash_kernel's bash) and a relay's kernel get it too; the pid alone if it leads none.
    pid = f'"$(cat {KERNEL_PID_FILE})"'
    return ["sh", "-c", f"kill -s {name} -- -{pid} 2>/dev/null || kill -s {name} {pid}"]


@dataclass(frozen=True)
class SecretFile:
    """A file of the kernel's Secret besides the connection file: the relay, or one of
    the kernelspec's files (under ``resources/``)."""

    path: str  # relative to SECRET_DIR
    data: bytes
    executable: bool = False


def _secret_keys(files: list[SecretFile]) -> dict[str, SecretFile]:
    """Secret data keys (which may not hold '/') for the files, in a fixed order."""
    return {f"file-{i}": f for i, f in enumerate(sorted(files, key=lambda f: f.path))}


def build_pod(
    name: str,
    namespace: str,
    s: PodSettings,
    command: list[str],
    secret_name: str,
    files: list[SecretFile] | None = None,
) -> client.V1Pod:
    """The kernel pod: one container, connection Secret (and its other files, each at
    its path) mounted read-only."""
    items = None
    if files:
        items = [client.V1KeyToPath(key="connection.json", path="connection.json")] + [
            client.V1KeyToPath(key=key, path=f.path, mode=0o550 if f.executable else 0o440)
            for key, f in _secret_keys(files).items()
        ]
    volumes = [
        client.V1Volume(
            name="kernel-connection-secret",
            secret=client.V1SecretVolumeSource(
                secret_name=secret_name, default_mode=0o440, items=items
            ),
        ),
        client.V1Volume(
            name="kernel-connection",
            empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit="1Mi"),
        ),
    ]
    mounts = [
        client.V1VolumeMount(
            name="kernel-connection-secret", mount_path=SECRET_DIR, read_only=True
        ),
        client.V1VolumeMount(name="kernel-connection", mount_path=CONNECTION_DIR),
    ]
    volumes += [substitute_username(v, s.username) for v in s.volumes]  # operator-defined
    mounts += [substitute_username(m, s.username) for m in s.volume_mounts]
    container = client.V1Container(
        name="kernel",
        image=s.image,
        image_pull_policy=s.image_pull_policy,
        command=[_literal(a) for a in ("sh", "-c", COPY_THEN_EXEC, "kernel", *command)]
        if command
        else None,
        env=[client.V1EnvVar(name=k, value=v) for k, v in sorted(s.environment.items())] or None,
        ports=[
            client.V1ContainerPort(
                name=ch if ch != "control" else "ctrl", container_port=p, protocol="TCP"
            )
            for ch, p in CONTAINER_PORTS.items()
        ],
        resources=_resources(s),
        volume_mounts=mounts,
        working_dir=s.working_dir or None,
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            run_as_non_root=True,
            run_as_user=s.run_as_user,
            run_as_group=s.run_as_group,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )
    spec = client.V1PodSpec(
        containers=[container],
        restart_policy="Never",
        share_process_namespace=True,
        volumes=volumes,
        automount_service_account_token=False,
        enable_service_links=False,
        termination_grace_period_seconds=10,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=s.run_as_user,
            run_as_group=s.run_as_group,
            fs_group=s.run_as_group,
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        node_selector=dict(s.node_selector) or None,
        tolerations=list(s.tolerations) or None,
        affinity=dict(s.affinity) or None,
        priority_class_name=s.priority_class_name or None,
        service_account_name=s.service_account_name or None,
        image_pull_secrets=[client.V1LocalObjectReference(name=n) for n in s.image_pull_secrets]
        or None,
    )
    return client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels=dict(s.labels),
            annotations=dict(s.annotations) or None,
        ),
        spec=spec,
    )


def build_secret(
    name: str,
    namespace: str,
    labels: dict[str, str],
    owner: client.V1Pod,
    connection: dict[str, Any],
    files: list[SecretFile] | None = None,
) -> client.V1Secret:
    """The connection file (and the relay and kernelspec files, if any) as a Secret
    owned by the pod, so it is deleted with it."""
    payload = json.dumps(connection).encode()
    data = {"connection.json": base64.b64encode(payload).decode()}
    for key, f in _secret_keys(list(files or [])).items():
        data[key] = base64.b64encode(f.data).decode()
    return client.V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels=dict(labels),
            owner_references=[
                client.V1OwnerReference(
                    api_version="v1",
                    kind="Pod",
                    name=owner.metadata.name,
                    uid=owner.metadata.uid,
                    block_owner_deletion=True,
                    controller=True,
                )
            ],
        ),
        data=data,
    )
