"""Kernels in Kubernetes pods: one pod per kernel, fail-fast, least privilege.

* The pod is built from typed models (:mod:`.podspec`); the connection info, HMAC key
  and Curve keys included, reaches it through a per-kernel Secret mounted as a file
  and owned by the pod, so nothing secret is in the pod spec and the Secret dies with
  the pod.
* Readiness comes from one shared watch of this deployment's pods (:mod:`.watcher`),
  not a poll per kernel; image-pull failures, an unschedulable pod or a container that
  crashes during start-up fail the start at once with the cluster's own reason, and
  whatever was created is deleted.
* Clients reach the kernel at its pod IP (the orchestrator runs in the cluster), with
  CurveZMQ on by default since that traffic crosses the network.
* Interrupts go as ``interrupt_request`` messages (no exec into the pod needed);
  terminate/kill delete the pod with a grace period of 10 s / 0 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import signal
import time
from typing import Any

from jupyter_client.provisioning import KernelProvisionerBase
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from traitlets import Bool, CaselessStrEnum, Dict, Float, Int, List, Unicode

from orchestrator.encryption import (
    accept_unencrypted,
    keypair,
    resolve_policy,
    should_encrypt,
    without_curve,
)
from orchestrator.errors import KernelStartError, OrchestratorError
from orchestrator.executors import run_blocking
from orchestrator.labels import LABEL_INSTANCE, LABEL_KERNEL_ID
from orchestrator.liveness import wait_for_answer
from orchestrator.provisioning.contract import (
    CHANNELS,
    GarbageContext,
    OrchestratorProvisionerMixin,
    client_connection_info,
    kernelspec_configs,
)

from ..envpolicy import client_variables, validate_env_item
from .names import dns_label, label_value
from .podspec import (
    CONNECTION_FILE,
    CONTAINER_PORTS,
    PodSettings,
    build_pod,
    build_secret,
)
from .watcher import PodWatcher, shared_watcher

FAIL_FAST_REASONS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "ErrImageNeverPull",
}
LABEL_USER = "kernel-orchestrator.user"


def api_client(api_url: str, kubeconfig: str, context: str) -> client.ApiClient:
    """An API client: explicit URL, else in-cluster config, else kubeconfig."""
    if api_url:
        configuration = client.Configuration()
        configuration.host = api_url
        return client.ApiClient(configuration)
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(
                config_file=kubeconfig or None,
                context=context or None,
                client_configuration=configuration,
            )
        except Exception as e:
            raise OrchestratorError(f"no Kubernetes configuration found: {e}") from None
    return client.ApiClient(configuration)


_clients: dict[tuple[str, str, str], client.ApiClient] = {}


# The kubernetes client is synchronous. Its calls get their own pool: on a small
# machine asyncio's default pool has ~6 threads, and 50 concurrent starts would queue
# each kernel's Secret behind other kernels' pods (a pod waits for its Secret volume).
async def _api(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await run_blocking("kubernetes", fn, *args, **kwargs)


def shared_client(api_url: str, kubeconfig: str, context: str) -> client.ApiClient:
    key = (api_url, kubeconfig, context)
    if key not in _clients:
        _clients[key] = api_client(api_url, kubeconfig, context)
    return _clients[key]


class KubernetesProvisioner(OrchestratorProvisionerMixin, KernelProvisionerBase):  # type: ignore[misc]
    """One pod per kernel."""

    kernelspec_summary = "kernels in Kubernetes pods (one pod per kernel)"

    api_url = Unicode("", config=True, help="API server URL ('' : in-cluster, else kubeconfig).")
    kubeconfig = Unicode(
        "", config=True, help="kubeconfig file ('' : $KUBECONFIG, else ~/.kube/config)."
    )
    kube_context = Unicode("", config=True, help="kubeconfig context ('' : its current one).")
    namespace = Unicode("default", config=True, help="Shared kernel namespace.")
    namespace_template = Unicode(
        "", config=True, help="Per-user namespace, e.g. 'kernels-{username}' ('' : shared)."
    )
    create_namespace = Bool(
        False, config=True, help="Create the per-user namespace (and its RoleBinding) if absent."
    )
    namespace_role = Unicode(
        "", config=True, help="ClusterRole bound in created namespaces for the orchestrator."
    )
    orchestrator_service_account = Unicode(
        "", config=True, help="namespace/name of the orchestrator's ServiceAccount."
    )
    image = Unicode(
        "kernel-orchestrator/kernel-python:latest",
        config=True,
        help="Kernel image (a client may choose another within image_allowlist).",
    )
    image_allowlist = List(
        Unicode(), config=True, help="Image patterns (fnmatch) a client may choose from."
    )
    image_pull_policy = Unicode(
        "IfNotPresent", config=True, help="The pod's imagePullPolicy (Always, IfNotPresent, Never)."
    )
    image_pull_secrets = List(
        Unicode(), config=True, help="Names of Secrets in the kernel namespace for pulling."
    )
    cpu_request = Unicode("", config=True, help="CPU request, a Kubernetes quantity ('500m').")
    cpu_limit = Unicode("", config=True, help="CPU limit, a Kubernetes quantity ('2').")
    memory_request = Unicode("", config=True, help="Memory request, a quantity ('1Gi').")
    memory_limit = Unicode("", config=True, help="Memory limit, a quantity ('4Gi').")
    gpus = Int(0, config=True, help="GPUs per kernel, requested as gpu_resource.")
    gpu_resource = Unicode(
        "nvidia.com/gpu", config=True, help="The extended resource that GPUs are counted in."
    )
    extra_resources = Dict(
        config=True, help="Further extended resources: name -> quantity (limits = requests)."
    )
    node_selector = Dict(config=True, help="The pod's nodeSelector: label -> value.")
    tolerations: List[Any] = List(config=True, help="The pod's tolerations (V1Toleration).")
    affinity = Dict(config=True, help="The pod's affinity (V1Affinity as a dict).")
    priority_class_name = Unicode("", config=True, help="The pod's priorityClassName.")
    service_account_name = Unicode(
        "",
        config=True,
        help="The pod's ServiceAccount (its token is never mounted: kernels do not talk to"
        " the API server).",
    )
    volumes: List[Any] = List(config=True, help="V1Volume objects; '{username}' is substituted.")
    volume_mounts: List[Any] = List(
        config=True, help="V1VolumeMount objects; '{username}' substituted."
    )
    run_as_user = Int(1000, config=True, help="uid the kernel runs as (never root).")
    run_as_group = Int(1000, config=True, help="gid the kernel runs as.")
    profiles = Dict(config=True, help="name -> settings a client picks with KERNEL_PROFILE.")
    default_profile = Unicode("", config=True, help="The profile used when a client names none.")
    environment = Dict(config=True, help="Fixed environment for the kernel.")
    env_allowlist = List(
        Unicode(), ["KERNEL_*"], config=True, help="Client variables (fnmatch) passed on."
    )
    labels = Dict(config=True, help="Extra labels on the kernel's pod.")
    annotations = Dict(config=True, help="Extra annotations on the kernel's pod.")
    startup_timeout = Float(
        120.0, config=True, help="Seconds from pod creation until the kernel must answer."
    )
    transport_encryption = Unicode(
        "", config=True, help="CurveZMQ: auto, required or disabled ('' : the manager's)."
    )
    reachability = CaselessStrEnum(
        ["pod-ip", "port-forward"],
        "pod-ip",
        config=True,
        help="pod-ip when the orchestrator runs in the cluster; port-forward (through the API"
        " server) from outside it.",
    )

    # state
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    pod_ip: str = ""
    created_namespace: bool = False
    settings: PodSettings | None = None
    _curve: tuple[str, str] | None = None
    _policy: str = "auto"
    _cmd: list[str] | None = None
    local_ports: dict[str, int] | None = None
    _forwards: Any = None

    @property
    def has_process(self) -> bool:
        return bool(self.pod_name)

    @property
    def api(self) -> client.ApiClient:
        return shared_client(self.api_url, self.kubeconfig, self.kube_context)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def _selector(self) -> str:
        return f"{LABEL_INSTANCE}={label_value(self.orchestrator_instance or 'unmanaged')}"

    def _watcher(self) -> PodWatcher:
        scope = None if self.namespace_template else self.namespace
        return shared_watcher(self.api, scope, self._selector())

    # ----------------------------------------------------------- settings
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        env = kwargs.pop("env", {}) or {}
        client_env = client_variables(env, self.env_allowlist)
        for key, value in self.environment.items():
            validate_env_item(key, value)
        username = client_env.get("KERNEL_USERNAME", "")
        safe_user = dns_label(username) if username else ""
        s = PodSettings(
            image=self.image,
            image_pull_policy=self.image_pull_policy,
            image_pull_secrets=list(self.image_pull_secrets),
            cpu_request=self.cpu_request,
            cpu_limit=self.cpu_limit,
            memory_request=self.memory_request,
            memory_limit=self.memory_limit,
            gpus=self.gpus,
            gpu_resource=self.gpu_resource,
            extra_resources=dict(self.extra_resources),
            node_selector=dict(self.node_selector),
            tolerations=list(self.tolerations),
            affinity=dict(self.affinity),
            priority_class_name=self.priority_class_name,
            service_account_name=self.service_account_name,
            volumes=list(self.volumes),
            volume_mounts=list(self.volume_mounts),
            run_as_user=self.run_as_user,
            run_as_group=self.run_as_group,
            username=safe_user,
        )
        profile = client_env.get("KERNEL_PROFILE", self.default_profile)
        if profile:
            if profile not in self.profiles:
                raise OrchestratorError(
                    f"unknown profile {profile!r} (choose from: {', '.join(self.profiles)})"
                )
            s = s.with_profile(self.profiles[profile])
        if "KERNEL_IMAGE" in client_env:
            s.image = client_env["KERNEL_IMAGE"]
        allowed = list(self.image_allowlist) or [self.image] + [
            str(p.get("image")) for p in self.profiles.values() if p.get("image")
        ]
        if not any(fnmatch.fnmatchcase(s.image, pattern) for pattern in allowed):
            raise OrchestratorError(
                f"image {s.image!r} is not allowed (allowed: {', '.join(allowed)})"
            )
        spec_env = {k: env[k] for k in (self.kernel_spec.env or {}) if k in env}
        s.environment = {**spec_env, **self.environment, **client_env}
        s.labels = {
            **{str(k): label_value(str(v)) for k, v in self.labels.items()},
            LABEL_KERNEL_ID: label_value(str(self.kernel_id)),
            LABEL_INSTANCE: label_value(self.orchestrator_instance or "unmanaged"),
            "app.kubernetes.io/component": "kernel",
        }
        if safe_user:
            s.labels[LABEL_USER] = safe_user
        s.annotations = {str(k): str(v) for k, v in self.annotations.items()}
        self.settings = s
        if self.namespace_template:
            if not safe_user:
                raise OrchestratorError(
                    "this kernelspec runs kernels in per-user namespaces: KERNEL_USERNAME"
                    " must be given"
                )
            self.pod_namespace = dns_label(self.namespace_template.replace("{username}", safe_user))
        else:
            self.pod_namespace = self.namespace
        extra = kwargs.pop("extra_arguments", []) or []
        argv = list(self.kernel_spec.argv or []) + list(extra)
        kwargs["cmd"] = [a.replace("{connection_file}", CONNECTION_FILE) for a in argv]
        return kwargs

    # ------------------------------------------------------------- launch
    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        assert self.settings is not None
        self._cmd = cmd
        self.pod_name = dns_label(str(self.kernel_id), prefix="kernel-")
        watcher = self._watcher()
        await watcher.ready()
        try:
            await self._ensure_namespace()
            pod = build_pod(
                self.pod_name, self.pod_namespace, self.settings, cmd, secret_name=self.pod_name
            )
            created = await self._call(self.core.create_namespaced_pod, self.pod_namespace, pod)
            self.pod_uid = created.metadata.uid
            await self._call(
                self.core.create_namespaced_secret,
                self.pod_namespace,
                build_secret(
                    self.pod_name,
                    self.pod_namespace,
                    self.settings.labels,
                    created,
                    self._connection(),
                ),
            )
            await self._wait_running(watcher)
            await self._open_forwards()
            self._set_connection_info()
            await self._wait_kernel()
        except BaseException:
            await self._delete_everything(grace=0)
            raise
        await self.state_changed()
        return self.connection_info

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await _api(fn, *args, **kwargs)
        except ApiException as e:
            raise KernelStartError(
                f"Kubernetes API: {e.status} {e.reason}: {_message(e)}"
            ) from None

    async def _ensure_namespace(self) -> None:
        if not self.namespace_template:
            return
        try:
            await _api(self.core.read_namespace, self.pod_namespace)
            return
        except ApiException as e:
            if e.status != 404:
                raise KernelStartError(
                    f"cannot read namespace {self.pod_namespace}: {_message(e)}"
                ) from None
        if not self.create_namespace:
            raise KernelStartError(f"namespace {self.pod_namespace} does not exist")
        ns = client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=self.pod_namespace,
                labels={
                    LABEL_INSTANCE: label_value(self.orchestrator_instance or "unmanaged"),
                    LABEL_KERNEL_ID: label_value(str(self.kernel_id)),
                },
            )
        )
        await self._call(self.core.create_namespace, ns)
        self.created_namespace = True
        if self.namespace_role and self.orchestrator_service_account:
            sa_ns, _, sa_name = self.orchestrator_service_account.partition("/")
            binding = client.V1RoleBinding(
                metadata=client.V1ObjectMeta(
                    name="kernel-orchestrator", namespace=self.pod_namespace
                ),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io",
                    kind="ClusterRole",
                    name=self.namespace_role,
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name=sa_name, namespace=sa_ns)
                ],
            )
            await self._call(
                client.RbacAuthorizationV1Api(self.api).create_namespaced_role_binding,
                self.pod_namespace,
                binding,
            )

    def _connection(self) -> dict[str, Any]:
        km = self.parent
        info: dict[str, Any] = {f"{ch}_port": CONTAINER_PORTS[ch] for ch in CHANNELS}
        info.update(
            ip="0.0.0.0",
            transport="tcp",
            key=km.session.key.decode(),
            signature_scheme=km.session.signature_scheme,
            kernel_name=km.kernel_name,
        )
        self._policy = resolve_policy(self.transport_encryption, km)
        # Pod IPs are crossed over the cluster network; a port-forward rides the API
        # server's (TLS) connection instead.
        leaves = self.reachability == "pod-ip"
        self._curve = keypair(km) if should_encrypt(self._policy, leaves_machine=leaves) else None
        if self._curve:
            info.update(curve_publickey=self._curve[0], curve_secretkey=self._curve[1])
        return info

    async def _wait_running(self, watcher: PodWatcher) -> None:
        key = (self.pod_namespace, self.pod_name)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            pod = watcher.get(key)
            if pod is not None:
                problem = _startup_problem(pod)
                if problem:
                    tail = await self._log_tail()
                    raise KernelStartError(
                        f"kernel pod {self.pod_namespace}/{self.pod_name} failed to start:"
                        f" {problem}" + (f"\n--- last lines of its log ---\n{tail}" if tail else "")
                    )
                status = pod.get("status") or {}
                if status.get("phase") == "Running" and status.get("podIP"):
                    self.pod_ip = status["podIP"]
                    return
            elif key in watcher.deleted:
                raise KernelStartError(f"kernel pod {self.pod_name} was deleted while starting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                phase = ((pod or {}).get("status") or {}).get("phase", "not created")
                raise KernelStartError(
                    f"kernel pod {self.pod_namespace}/{self.pod_name} was not running within"
                    f" {self.startup_timeout:g}s (phase: {phase})"
                )
            await watcher.wait_change(min(remaining, 2.0))

    async def _open_forwards(self) -> None:
        if self.reachability != "port-forward":
            return
        from .portforward import PodPortForwards

        if self._forwards is None:
            self._forwards = PodPortForwards()
        self.local_ports = await _api(
            self._forwards.open,
            self.api,
            self.pod_namespace,
            self.pod_name,
            dict(CONTAINER_PORTS),
            self.local_ports,
        )

    def _close_forwards(self) -> None:
        if self._forwards is not None:
            self._forwards.close()
            self._forwards = None

    def _set_connection_info(self) -> None:
        if self.reachability == "port-forward" and self.local_ports:
            ip, ports = "127.0.0.1", self.local_ports
        else:
            ip, ports = self.pod_ip, dict(CONTAINER_PORTS)
        self.connection_info = client_connection_info(  # type: ignore[assignment]
            self, ip, ports, self._curve
        )

    async def _wait_kernel(self) -> None:
        async def running() -> bool:
            return await self.poll() is None

        answer = await wait_for_answer(
            self.connection_info, self.parent.session, self.startup_timeout, alive=running
        )
        if answer is not None:
            if self._curve and not answer.encrypted:
                image = self.settings.image if self.settings else "?"
                accept_unencrypted(self._policy, self.log, str(self.kernel_id), image, self.pod_ip)
                self._curve = None
                self.connection_info = without_curve(dict(self.connection_info))  # type: ignore[assignment]
            return
        status = await self.poll()
        if status is not None:
            tail = await self._log_tail()
            raise KernelStartError(
                f"kernel pod {self.pod_name} exited during start-up (exit code {status})"
                + (f"\n--- last lines of its log ---\n{tail}" if tail else "")
            )
        raise KernelStartError(
            f"kernel in pod {self.pod_name} did not answer within {self.startup_timeout:g}s"
        )

    async def _log_tail(self, lines: int = 20) -> str:
        try:
            text = await _api(
                self.core.read_namespaced_pod_log,
                self.pod_name,
                self.pod_namespace,
                tail_lines=lines,
            )
        except Exception:
            return ""
        return str(text or "").rstrip()

    async def startup_diagnostics(self, lines: int = 20) -> str:
        return await self._log_tail(lines)

    # ---------------------------------------------------------- lifecycle
    async def poll(self) -> int | None:
        if not self.pod_name:
            return 0
        watcher = self._watcher()
        key = (self.pod_namespace, self.pod_name)
        pod = watcher.get(key)
        if pod is None:
            return 1 if key in watcher.deleted or watcher._ready.is_set() else None
        if pod.get("metadata", {}).get("uid") not in (None, self.pod_uid) and self.pod_uid:
            return 1  # a different pod with the same name
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return _exit_code(pod)
        return None

    async def wait_for_change(self) -> None:
        await self._watcher().wait_change(1.0)

    async def send_signal(self, signum: int) -> None:
        if not self.pod_name or signum == 0:
            return
        if signum == signal.SIGINT:
            # No exec into the pod: an interrupt_request does what SIGINT would.
            km = self.parent
            msg = km.session.msg("interrupt_request", content={})
            km._connect_control_socket()
            km.session.send(km._control_socket, msg)
            return
        await self._delete_pod(grace=0 if signum == signal.SIGKILL else 10)

    async def kill(self, restart: bool = False) -> None:
        await self._delete_pod(grace=0)

    async def terminate(self, restart: bool = False) -> None:
        await self._delete_pod(grace=10)

    async def _delete_pod(self, grace: int) -> None:
        if not self.pod_name:
            return
        with contextlib.suppress(ApiException):
            await _api(
                self.core.delete_namespaced_pod,
                self.pod_name,
                self.pod_namespace,
                grace_period_seconds=grace,
                propagation_policy="Background",
            )

    async def _delete_everything(self, grace: int = 0) -> None:
        """Pod, Secret, and the namespace if this kernel created it; then confirm."""
        if not self.pod_name:
            return
        await self._delete_pod(grace)
        with contextlib.suppress(ApiException):
            await _api(self.core.delete_namespaced_secret, self.pod_name, self.pod_namespace)
        if self.created_namespace:
            with contextlib.suppress(ApiException):
                await _api(self.core.delete_namespace, self.pod_namespace)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                await _api(self.core.read_namespaced_pod, self.pod_name, self.pod_namespace)
            except ApiException as e:
                if e.status == 404:
                    break
            await asyncio.sleep(0.2)
        self.pod_name = ""

    async def cleanup(self, restart: bool = False) -> None:
        if not restart:
            self._close_forwards()
            self.local_ports = None
        if restart:
            # The next launch creates a fresh pod with the same name and kernel id.
            await self._delete_everything_but_namespace()
            return
        await self._delete_everything(grace=0)

    async def _delete_everything_but_namespace(self) -> None:
        created, self.created_namespace = self.created_namespace, False
        await self._delete_everything(grace=0)
        self.created_namespace = created

    # -------------------------------------------------------- persistence
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(
            {
                "namespace": self.pod_namespace,
                "pod_name": self.pod_name,
                "pod_uid": self.pod_uid,
                "pod_ip": self.pod_ip,
                "created_namespace": self.created_namespace,
                "cmd": self._cmd,
                "local_ports": self.local_ports,
                "reachability": self.reachability,
                "settings": dict(self.settings.__dict__) if self.settings else None,
            }
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.pod_namespace = provisioner_info.get("namespace") or ""
        self.pod_name = provisioner_info.get("pod_name") or ""
        self.pod_uid = provisioner_info.get("pod_uid") or ""
        self.pod_ip = provisioner_info.get("pod_ip") or ""
        self.created_namespace = bool(provisioner_info.get("created_namespace"))
        self._cmd = provisioner_info.get("cmd")
        settings = provisioner_info.get("settings")
        self.settings = PodSettings(**settings) if settings else None
        ci = self.connection_info or {}
        if ci.get("curve_publickey") and ci.get("curve_secretkey"):
            self._curve = (_text(ci["curve_publickey"]), _text(ci["curve_secretkey"]))
        self.local_ports = provisioner_info.get("local_ports")
        self.reachability = provisioner_info.get("reachability") or self.reachability
        if self.pod_name:
            await self._watcher().ready()

    async def reconnect(self) -> None:
        """Re-open the port-forwards of a re-attached kernel (pod IPs need none)."""
        if self.pod_name and self.reachability == "port-forward":
            await self._open_forwards()
            self._set_connection_info()

    def release(self) -> None:
        self._close_forwards()

    # ----------------------------------------------------------------- gc
    @classmethod
    async def collect_garbage(cls, ctx: GarbageContext) -> list[str]:
        found: list[str] = []
        for cfg in kernelspec_configs("kubernetes-provisioner"):
            prov = cls(kernel_id="gc", kernel_spec=None, parent=None, **cfg)
            selector = f"{LABEL_INSTANCE}={label_value(ctx.instance)}"
            try:
                if prov.namespace_template:
                    pods = await _api(
                        prov.core.list_pod_for_all_namespaces, label_selector=selector
                    )
                else:
                    pods = await _api(
                        prov.core.list_namespaced_pod, prov.namespace, label_selector=selector
                    )
            except Exception as e:
                ctx.log.warning("gc: cannot list pods: %s", e)
                continue
            for pod in pods.items:
                kid = (pod.metadata.labels or {}).get(LABEL_KERNEL_ID, "")
                if kid in {label_value(k) for k in ctx.owned_kernel_ids}:
                    continue
                created = pod.metadata.creation_timestamp
                if created is not None and (time.time() - created.timestamp() < ctx.grace_seconds):
                    continue
                found.append(f"pod {pod.metadata.namespace}/{pod.metadata.name} (kernel {kid})")
                if not ctx.dry_run:
                    with contextlib.suppress(ApiException):
                        await _api(
                            prov.core.delete_namespaced_pod,
                            pod.metadata.name,
                            pod.metadata.namespace,
                            grace_period_seconds=0,
                        )
        return found

    # -------------------------------------------------------- kernelspecs
    @classmethod
    def add_kernelspec_arguments(cls, parser: Any) -> None:
        g = parser.add_argument_group("kubernetes-provisioner")
        g.add_argument("--image", default="kernel-orchestrator/kernel-python:latest")
        g.add_argument("--allow-image", action="append", default=[], metavar="PATTERN")
        g.add_argument("--namespace", default="default")
        g.add_argument("--namespace-template", default="", help="e.g. kernels-{username}")
        g.add_argument("--create-namespace", action="store_true")
        g.add_argument("--api-url", default="")
        g.add_argument("--cpu-request", default="")
        g.add_argument("--cpu-limit", default="")
        g.add_argument("--memory-request", default="")
        g.add_argument("--memory-limit", default="")
        g.add_argument("--gpus", type=int, default=0)
        g.add_argument("--gpu-resource", default="nvidia.com/gpu")
        g.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE")
        g.add_argument("--priority-class", default="")
        g.add_argument("--service-account", default="")
        g.add_argument("--startup-timeout", type=float, default=120.0)
        g.add_argument("--reachability", choices=["pod-ip", "port-forward"], default="pod-ip")

    @classmethod
    def kernelspec_config(cls, args: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {"image": args.image, "namespace": args.namespace}
        if args.allow_image:
            cfg["image_allowlist"] = [args.image, *args.allow_image]
        for key in (
            "namespace_template",
            "api_url",
            "cpu_request",
            "cpu_limit",
            "memory_request",
            "memory_limit",
        ):
            if getattr(args, key):
                cfg[key] = getattr(args, key)
        if args.create_namespace:
            cfg["create_namespace"] = True
        if args.gpus:
            cfg["gpus"] = args.gpus
            cfg["gpu_resource"] = args.gpu_resource
        if args.node_selector:
            pairs = [p.partition("=") for p in args.node_selector]
            cfg["node_selector"] = {k: v for k, _, v in pairs}
        if args.priority_class:
            cfg["priority_class_name"] = args.priority_class
        if args.service_account:
            cfg["service_account_name"] = args.service_account
        if args.startup_timeout != 120.0:
            cfg["startup_timeout"] = args.startup_timeout
        if args.reachability != "pod-ip":
            cfg["reachability"] = args.reachability
        return cfg


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _message(e: ApiException) -> str:
    import json

    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except Exception:
        return str(e.reason)


def _startup_problem(pod: dict[str, Any]) -> str:
    """The cluster's reason a starting pod will not come up, or ''."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return f"Unschedulable: {condition.get('message', '')}".strip()
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FAIL_FAST_REASONS:
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip()
        terminated = state.get("terminated") or {}
        if terminated:
            return (
                f"container terminated ({terminated.get('reason', 'Error')}, exit code"
                f" {terminated.get('exitCode')})"
            )
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"pod phase {status['phase']}"
    return ""


def _exit_code(pod: dict[str, Any]) -> int:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        if terminated:
            return int(terminated.get("exitCode") or 1)
    return 1
