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
  other signals are sent to the kernel process by exec into its pod (the pod keeps
  running, as a local kernel's process would); terminate/kill delete the pod with a
  grace period of 10 s / 0 s.
* Every delete carries the pod's (or Secret's) uid as a precondition: a kernel never
  deletes a newer object that reuses its name, and a restart waits for its new pod by
  uid, not by name.
* Namespaces are never deleted (kubespawner's rule): another kernel of the user may be
  starting in it at that very moment.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any

from jupyter_client.provisioning import KernelProvisionerBase
from kubernetes import client
from kubernetes.client.rest import ApiException

from orchestrator.errors import KernelStartError, OrchestratorError
from orchestrator.labels import LABEL_INSTANCE, LABEL_KERNEL_ID
from orchestrator.provisioning.contract import (
    CHANNELS,
    GarbageContext,
    LivenessWatch,
    OrchestratorProvisionerMixin,
    client_connection_info,
    kernelspec_configs,
)

from ..common.curve import RELAY_SOURCE, CurveNegotiation, relay_command
from ..common.entitlement import check_profile_entitlement
from ..common.environment import launch_environment
from ..common.images import check_image
from ..common.kernelspec_files import RemoteKernelCommand, kernel_argv
from ..common.resources import kubernetes_quantity
from ..common.workdir import WorkingDirMapping
from . import gc, kernelspec, namespaces
from .apiclient import ClusterAccess, call_api, connect
from .config import KubernetesConfig
from .names import dns_label, label_value
from .podspec import (
    CONNECTION_FILE,
    CONTAINER_PORTS,
    SECRET_DIR,
    PodSettings,
    SecretFile,
    build_pod,
    build_secret,
    signal_command,
    substitute_username,
)
from .podstatus import api_message, exit_code, refusal, start_error, startup_problem
from .storage import Claim, ClaimsUnreadable, inspect_claims, pending_hint, pinned_affinity
from .watcher import PodWatcher, shared_watcher

LABEL_USER = "kernel-orchestrator.user"


# (jupyter_client's provisioner metaclass derives from traitlets'; mypy cannot tell.)
class KubernetesProvisioner(  # type: ignore[misc, metaclass]
    WorkingDirMapping,
    CurveNegotiation,
    RemoteKernelCommand,
    OrchestratorProvisionerMixin,
    KubernetesConfig,
    KernelProvisionerBase,
):
    """One pod per kernel."""

    kernelspec_summary = "kernels in Kubernetes pods (one pod per kernel)"

    # state
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    secret_uid: str = ""
    pod_ip: str = ""
    settings: PodSettings | None = None
    _claims: list[Claim] = []
    _cmd: list[str] | None = None
    local_ports: dict[str, int] | None = None
    _forwards: Any = None
    _api: client.ApiClient | None = None

    @property
    def has_process(self) -> bool:
        return bool(self.pod_name)

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            raise OrchestratorError("the Kubernetes provisioner is not connected yet")
        return self._api

    async def _connect(self) -> None:
        """Load the cluster configuration (exec plugins included) off the event loop."""
        if self._api is None:
            self._api = await connect(
                ClusterAccess(
                    api_url=self.api_url,
                    kubeconfig=self.kubeconfig,
                    context=self.kube_context,
                    token_file=self.api_token_file,
                    ca_file=self.api_ca_file,
                )
            )

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
        # Every setting is checked (profiles, entitlements, images, quantities) before
        # anything reaches the cluster.
        client_env, environment = launch_environment(
            kwargs.pop("env", None), self.kernel_spec.env, self.environment, self.env_allowlist
        )
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
        profile = client_env.get("KERNEL_PROFILE") or self.default_profile  # '' is no way out
        if profile:
            if profile not in self.profiles:
                raise OrchestratorError(
                    f"unknown profile {profile!r} (choose from: {', '.join(self.profiles)})"
                )
            check_profile_entitlement(
                "kubernetes",
                profile,
                self.profiles[profile],
                client_env,
                bool(getattr(self.parent, "multi_tenant", False)),
            )
            s = s.with_profile(self.profiles[profile])
        if "KERNEL_IMAGE" in client_env:
            s.image = client_env["KERNEL_IMAGE"]
        allowed = list(self.image_allowlist) or [self.image] + [
            str(p.get("image")) for p in self.profiles.values() if p.get("image")
        ]
        check_image(s.image, allowed)
        for setting in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
            if value := getattr(s, setting):
                kubernetes_quantity(setting, str(value), memory=setting.startswith("memory"))
        if s.gpus < 0:
            raise OrchestratorError(f"gpus={s.gpus} must not be negative")
        s.environment = environment
        s.labels = {
            **{str(k): label_value(str(v)) for k, v in self.labels.items()},
            LABEL_KERNEL_ID: label_value(str(self.kernel_id)),
            LABEL_INSTANCE: label_value(self.orchestrator_instance or "unmanaged"),
            "app.kubernetes.io/component": "kernel",
        }
        if safe_user:
            s.labels[LABEL_USER] = safe_user
        s.annotations = {str(k): str(v) for k, v in self.annotations.items()}
        if mapped := self.choose_working_dir(client_env):
            s.working_dir = mapped.path
        self.settings = s
        await self._connect()
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
        self._kernel_argv = self.spec_argv(extra)
        kwargs["cmd"] = self._pod_argv(relayed=False)
        return kwargs

    def _pod_argv(self, *, relayed: bool) -> list[str]:
        """The kernel's argv in its pod (for a relay, ``{connection_file}`` is left for
        the relay to fill)."""
        return kernel_argv(
            self._kernel_argv,
            connection_file=None if relayed else CONNECTION_FILE,
            resource_dir=f"{SECRET_DIR}/resources",
            prefix=self.kernel_prefix,
            where="in a pod",
        )

    # ------------------------------------------------------------- launch
    _kernel_argv: list[str] = []  # the kernelspec's, placeholders unfilled (for a relay)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        assert self.settings is not None
        self._cmd = cmd
        self.pod_name = dns_label(str(self.kernel_id), prefix="kernel-")
        watcher = self._watcher()
        await watcher.ready()
        try:
            await self._ensure_namespace()
            await self._place_near_claims()
            connection = self._connection()
            files = [
                SecretFile(f"resources/{rel}", f.data, f.executable)
                for rel, f in self.spec_files().items()
            ]
            if self.relayed:  # the kernel ignores keys: a relay beside it uses them
                files.append(SecretFile("relay.py", RELAY_SOURCE.encode()))
                cmd = relay_command(
                    self.relay_python or "python3",
                    f"{SECRET_DIR}/relay.py",
                    CONNECTION_FILE,
                    self._pod_argv(relayed=True),
                    self.relay_interrupt_signal(),
                )
            pod = build_pod(
                self.pod_name,
                self.pod_namespace,
                self.settings,
                cmd,
                secret_name=self.pod_name,
                files=files,
            )
            created = await self._create_pod(pod)
            self.pod_uid = created.metadata.uid
            secret = await self._call(
                self.core.create_namespaced_secret,
                self.pod_namespace,
                build_secret(
                    self.pod_name,
                    self.pod_namespace,
                    self.settings.labels,
                    created,
                    connection,
                    files,
                ),
            )
            self.secret_uid = secret.metadata.uid
            await self._wait_running(watcher)
            await self._open_forwards()
            self._set_connection_info()
            await self._wait_kernel()
        except BaseException:
            await self._delete_everything(grace=0)
            raise
        await self.state_changed()
        return self.connection_info

    async def _place_near_claims(self) -> None:
        """Read the claims the pod mounts (a missing one is refused now, not after the
        start-up timeout) and, with ``colocate_with_claims``, pin the pod to the node
        holding its ReadWriteOnce claims (see :mod:`.storage`)."""
        assert self.settings is not None
        volumes = substitute_username(list(self.settings.volumes), self.settings.username)
        try:
            self._claims = await inspect_claims(self.core, self.pod_namespace, volumes)
        except ClaimsUnreadable as e:
            if self.colocate_with_claims:
                raise KernelStartError(f"colocate_with_claims cannot place the pod: {e}") from None
            self.log.info("kernel %s: its claims are not checked: %s", self.kernel_id, e)
            self._claims = []
        if self.colocate_with_claims:
            self.settings.affinity = pinned_affinity(self.settings.affinity, self._claims)

    async def _create_pod(self, pod: Any) -> Any:
        """Create the pod; if an operator deleted the namespace between our check and
        now, wait for it to go, make it again and retry once."""
        try:
            return await call_api(self.core.create_namespaced_pod, self.pod_namespace, pod)
        except ApiException as e:
            gone = e.status == 404 or "being terminated" in api_message(e)
            if not (self.namespace_template and gone):
                raise start_error(e) from None
        namespaces.forget(self.api, self.pod_namespace)
        await self._ensure_namespace()
        return await self._call(self.core.create_namespaced_pod, self.pod_namespace, pod)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await call_api(fn, *args, **kwargs)
        except ApiException as e:
            raise start_error(e) from None

    async def _ensure_namespace(self) -> None:
        """A per-user namespace, made locked down if absent (see :mod:`.namespaces`)."""
        if not self.namespace_template:
            return
        plan = namespaces.NamespacePlan(
            name=self.pod_namespace,
            labels={LABEL_INSTANCE: label_value(self.orchestrator_instance or "unmanaged")},
            role=self.namespace_role,
            service_account=self.orchestrator_service_account,
            network_policy=self.network_policy,
            orchestrator_pod_labels=dict(self.orchestrator_pod_labels),
            egress_allow=list(self.egress_allow),
            kernel_ports=sorted(CONTAINER_PORTS.values()),
        )
        await namespaces.ensure(self.api, plan, self.create_namespace)

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
        # Pod IPs are crossed over the cluster network; a port-forward rides the API
        # server's (TLS) connection instead.
        if curve := self.choose_curve(leaves_machine=self.reachability == "pod-ip"):
            info.update(curve_publickey=curve[0], curve_secretkey=curve[1])
        return info

    async def _wait_running(self, watcher: PodWatcher) -> None:
        key = (self.pod_namespace, self.pod_name)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            watcher.check()
            pod = watcher.get(key, self.pod_uid)  # not an earlier pod of the same name
            if pod is not None:
                problem = startup_problem(pod)
                if problem.startswith("Unschedulable"):  # (a claim's node, often: name them)
                    problem += pending_hint(self._claims, self.colocate_with_claims)
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
            elif self.pod_uid in watcher.deleted_uids:
                raise KernelStartError(f"kernel pod {self.pod_name} was deleted while starting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                phase = ((pod or {}).get("status") or {}).get("phase", "not created")
                raise KernelStartError(
                    f"kernel pod {self.pod_namespace}/{self.pod_name} was not running within"
                    f" {self.startup_timeout:g}s (phase: {phase})"
                    + pending_hint(self._claims, self.colocate_with_claims)
                )
            await watcher.wait_change(min(remaining, 2.0))

    async def _open_forwards(self) -> None:
        if self.reachability != "port-forward":
            return
        from .portforward import PodPortForwards

        if self._forwards is None:
            self._forwards = PodPortForwards()
        self.local_ports = await call_api(
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
        image = self.settings.image if self.settings else "?"
        if await self.first_answer(self.startup_timeout, image=image, address=self.pod_ip):
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
            text = await call_api(
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
        pod = watcher.get(key, self.pod_uid)
        if pod is None:
            return 1 if watcher.is_gone(key, self.pod_uid) else None
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return exit_code(pod)
        return None

    async def wait_for_change(self) -> None:
        await self._watcher().wait_change(1.0)

    def watch_liveness(self, notify: Callable[[], None]) -> LivenessWatch | None:
        """Told by the shared pod watch (see :mod:`.watcher`)."""
        if not self.pod_name:
            return None
        watcher = self._watcher()
        key, uid = (self.pod_namespace, self.pod_name), self.pod_uid
        return LivenessWatch(
            pushed=lambda: (
                (self.pod_namespace, self.pod_name, self.pod_uid) == (*key, uid)
                and watcher.pushed(key, uid)
            ),
            cancel=watcher.subscribe(label_value(str(self.kernel_id)), notify),
        )

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
        await self._signal_by_exec(signum)

    async def _signal_by_exec(self, signum: int) -> None:
        """Send ``signum`` to the kernel process by exec into its pod (the pod stays)."""
        from kubernetes.stream import stream

        # kubernetes.stream swaps the ApiClient's request function while it runs: a
        # client shared with the watch thread would send its requests as websockets.
        core = client.CoreV1Api(client.ApiClient(self.api.configuration))

        def run() -> str:
            resp = stream(
                core.connect_get_namespaced_pod_exec,
                self.pod_name,
                self.pod_namespace,
                container="kernel",
                command=signal_command(signum),
                stderr=True,
                stdout=True,
                stdin=False,
                tty=False,
                _preload_content=False,
            )
            resp.run_forever(timeout=15)
            errors = resp.read_stderr() if resp.peek_stderr() else ""
            code = resp.returncode
            resp.close()
            return errors.strip() if code else ""

        try:
            problem = await call_api(run)
        except ApiException as e:
            status, message = refusal(e)
            hint = " (the chart's kernels.execForSignals grants it)" if status == 403 else ""
            raise OrchestratorError(
                f"cannot signal kernel pod {self.pod_namespace}/{self.pod_name}:"
                f" {status} {message}{hint}"
            ) from None
        if problem:
            raise OrchestratorError(
                f"signal {signal.Signals(signum).name} to kernel pod {self.pod_name} failed:"
                f" {problem}"
            )

    async def kill(self, restart: bool = False) -> None:
        await self._delete_pod(grace=0)

    async def terminate(self, restart: bool = False) -> None:
        await self._delete_pod(grace=10)

    async def _delete_pod(self, grace: int) -> None:
        """Delete this kernel's pod, and only it: the uid precondition makes the API
        server refuse (409) if the name now belongs to a newer pod."""
        if not self.pod_name:
            return
        with contextlib.suppress(ApiException):  # 404: gone already; 409: not ours
            await call_api(
                self.core.delete_namespaced_pod,
                self.pod_name,
                self.pod_namespace,
                body=_delete_options(self.pod_uid, grace),
            )

    async def _delete_everything(self, grace: int = 0) -> None:
        """Pod and Secret (never the namespace: see the module's docstring); then
        wait until the pod is gone, so that a restart's new pod can take its name."""
        if not self.pod_name:
            return
        await self._delete_pod(grace)
        with contextlib.suppress(ApiException):
            await call_api(
                self.core.delete_namespaced_secret,
                self.pod_name,
                self.pod_namespace,
                body=_delete_options(self.secret_uid, 0),
            )
        # Watched, not polled: the pod is gone when the watch shows it go (or a newer
        # pod has its name), with no request of ours.
        watcher, key = self._watcher(), (self.pod_namespace, self.pod_name)
        deadline = time.monotonic() + 30
        while self.pod_uid and not watcher.saw_deleted(key, self.pod_uid):
            if time.monotonic() > deadline:
                break
            await watcher.wait_change(min(1.0, max(0.0, deadline - time.monotonic())))
        self.pod_name = ""

    async def cleanup(self, restart: bool = False) -> None:
        if not restart:
            self._close_forwards()
            self.local_ports = None
        # On restart the next launch creates a fresh pod with the same name and kernel
        # id, and waits for it by its new uid.
        await self._delete_everything(grace=0)

    # -------------------------------------------------------- persistence
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(
            {
                "namespace": self.pod_namespace,
                "pod_name": self.pod_name,
                "pod_uid": self.pod_uid,
                "secret_uid": self.secret_uid,
                "pod_ip": self.pod_ip,
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
        self.secret_uid = provisioner_info.get("secret_uid") or ""
        self.pod_ip = provisioner_info.get("pod_ip") or ""
        self._cmd = provisioner_info.get("cmd")
        settings = provisioner_info.get("settings")
        self.settings = PodSettings(**settings) if settings else None
        ci = self.connection_info or {}
        if ci.get("curve_publickey") and ci.get("curve_secretkey"):
            self._curve = (_text(ci["curve_publickey"]), _text(ci["curve_secretkey"]))
        self.local_ports = provisioner_info.get("local_ports")
        self.reachability = provisioner_info.get("reachability") or self.reachability
        await self._connect()
        if self.pod_name:
            await self._watcher().ready()

    # The port-forwards' local ports are this process's; a follower keeps its own.
    process_local_state = ("local_ports",)

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
        """Delete pods of this deployment that no record owns, in every kernelspec's scope."""
        found: list[str] = []
        for cfg in kernelspec_configs("kubernetes-provisioner"):
            prov = cls(kernel_id="gc", kernel_spec=None, parent=None, **cfg)
            await prov._connect()
            scope = None if prov.namespace_template else prov.namespace
            found += await gc.collect_orphaned_pods(prov.core, scope, ctx)
        return found

    # -------------------------------------------------------- kernelspecs
    @classmethod
    def add_kernelspec_arguments(cls, parser: Any) -> None:
        kernelspec.add_arguments(parser)

    @classmethod
    def kernelspec_config(cls, args: Any) -> dict[str, Any]:
        return kernelspec.config_from(args)


def _delete_options(uid: str, grace: int) -> client.V1DeleteOptions:
    return client.V1DeleteOptions(
        grace_period_seconds=grace,
        propagation_policy="Background",
        preconditions=client.V1Preconditions(uid=uid) if uid else None,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
