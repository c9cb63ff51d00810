"""Kernels in Docker containers, on a local or remote Docker Engine.

One container per kernel. The orchestrator chooses the connection info, HMAC key
included, and copies it into the container as a 0600 file before the container
starts, so the key is in neither the command line nor ``docker inspect``. The kernel
listens on fixed ports inside its own network namespace; clients reach them by one of:

* ``auto`` (default): ``ssh`` for an ``ssh://`` engine, else ``loopback``;
* ``loopback``: ports published on the engine host's 127.0.0.1;
* ``network``: the container's address on a shared Docker network (when the
  orchestrator runs in a container on that network);
* ``ssh``: ports published on the remote engine host's loopback and carried back
  by the SSH tunnel layer (for ``DOCKER_HOST=ssh://...``).

A restart replaces the container by a new one with the same name, labels and host
ports, so clients keep their connection info. ``start_kernel`` returns only when the
kernel answers ``kernel_info``; a container that exits during start-up fails at once
with the last lines of its log, and nothing is left behind.
"""

from __future__ import annotations

import io
import json
import re
import signal
import tarfile
import time
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import docker.errors
from docker.types import DeviceRequest
from jupyter_client.provisioning import KernelProvisionerBase

from orchestrator.errors import KernelStartError, OrchestratorError
from orchestrator.provisioning.contract import (
    CHANNELS,
    GarbageContext,
    LivenessWatch,
    OrchestratorProvisionerMixin,
    client_connection_info,
)
from orchestrator.tunnels import get_tunneler

from ..common.curve import RELAY_SOURCE, CurveNegotiation, relay_command
from ..common.environment import launch_environment
from ..common.images import check_image
from ..common.kernelspec_files import RemoteKernelCommand, kernel_argv
from ..common.resources import MIN_CPUS, MIN_PIDS, docker_size, positive_number
from ..common.workdir import VARIABLE as WORKING_DIR_VARIABLE
from ..common.workdir import WorkingDirMapping
from . import egress, engine, gc, kernelspec, watcher
from .config import DockerConfig
from .settings import ContainerSettings, SettingsError, apply_overrides, memory_bytes
from .volumes import UserMount, ensure_named_volumes, user_mounts

#: The disk cap of ``disk = "auto"``, where the engine can enforce one.
AUTO_DISK = "10g"
#: Engines whose storage driver refused a disk cap (``auto`` then means none).
_ENGINES_WITHOUT_DISK_QUOTA: set[str] = set()
# Inside its own network namespace every kernel can use the same ports.
CONTAINER_PORTS = {"shell": 50001, "iopub": 50002, "stdin": 50003, "control": 50004, "hb": 50005}
CONNECTION_DIR = "/run/kernel"
CONNECTION_FILE = f"{CONNECTION_DIR}/connection.json"
RESOURCE_DIR = f"{CONNECTION_DIR}/resources"  # the kernelspec's own files


def container_name_for(kernel_id: str) -> str:
    """A valid, recognisable container name, whatever characters the kernel id holds."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", kernel_id)[:100].strip("-.") or "x"
    return f"kernel-{safe}"


def _connection_tar(
    payload: bytes, uid: int, gid: int, extra_files: dict[str, tuple[bytes, int]] | None = None
) -> bytes:
    """A tar holding the connection file (0600), and the relay and the kernelspec's
    files if any (``{path: (data, mode)}``), owned by the kernel's user."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        made: set[str] = set()
        entries = {"connection.json": (payload, 0o600), **(extra_files or {})}
        for name, (data, mode) in entries.items():
            parents = PurePosixPath(name).parents
            for parent in reversed([str(p) for p in parents if str(p) != "."]):
                if parent not in made:
                    made.add(parent)
                    info = tarfile.TarInfo(parent)
                    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o700, uid, gid
                    info.mtime = int(time.time())
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# (jupyter_client's provisioner metaclass derives from traitlets'; mypy cannot tell.)
class DockerProvisioner(  # type: ignore[misc, metaclass]
    WorkingDirMapping,
    CurveNegotiation,
    RemoteKernelCommand,
    OrchestratorProvisionerMixin,
    DockerConfig,
    KernelProvisionerBase,
):
    """One Docker container per kernel."""

    kernelspec_summary = "kernels in Docker containers (local or remote engine)"

    # ------------------------------------------------------------- state
    container_id: str | None = None
    _kernel_argv: list[str] = []  # the kernelspec's, placeholders unfilled (for a relay)
    container_name: str = ""
    engine_url: str = ""
    address: str = ""
    host_ports: dict[str, int] | None = None  # what clients connect to
    published_ports: dict[str, int] | None = None  # on the engine host's loopback
    settings: ContainerSettings | None = None
    mounts: list[UserMount] = []
    _cmd: list[str] | None = None

    @property
    def has_process(self) -> bool:
        return self.container_id is not None

    # -------------------------------------------------------- preparation
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        client_env, environment = launch_environment(
            kwargs.pop("env", None), self.kernel_spec.env, self.environment, self.env_allowlist
        )
        base = ContainerSettings(
            image=self.image,
            cpus=self.cpus,
            memory=self.memory,
            working_dir=self.working_dir,
            startup_timeout=min(self.startup_timeout, self.max_startup_timeout),
        )
        overridable = dict(client_env)
        if self.working_dir_map:  # the notebook's directory is mapped, not taken as is
            overridable.pop(WORKING_DIR_VARIABLE, None)
        settings = apply_overrides(
            base,
            overridable,
            allowed=list(self.allowed_overrides),
            max_cpus=self.max_cpus,
            max_memory=self.max_memory,
            max_startup_timeout=self.max_startup_timeout,
        )
        check_image(settings.image, list(self.image_allowlist) or [self.image])
        if settings.memory:
            memory_bytes(settings.memory)
        if settings.cpus:
            positive_number("cpus", settings.cpus, minimum=MIN_CPUS)
        positive_number("pids_limit", self.pids_limit, minimum=MIN_PIDS)
        settings.environment = environment
        if mapped := self.choose_working_dir(client_env):
            settings.working_dir = mapped.path
        self.mounts = user_mounts(
            list(self.volumes),
            client_env.get("KERNEL_USERNAME", ""),
            multi_tenant=bool(getattr(self.parent, "multi_tenant", False)),
            volume_roots=list(self.volume_roots),
            local_engine=engine.engine_url(self.docker_host).startswith("unix://"),
        )
        self.settings = settings
        extra = kwargs.pop("extra_arguments", []) or []
        kwargs["cmd"] = self._kernel_command(extra)
        return kwargs

    def _kernel_command(self, extra: list[str], *, relayed: bool = False) -> list[str]:
        """The kernel's argv in its container (for a relay, with ``{connection_file}``
        left for the relay to fill)."""
        if not relayed:
            self._kernel_argv = self.spec_argv(extra)
        return kernel_argv(
            self._kernel_argv,
            connection_file=None if relayed else CONNECTION_FILE,
            resource_dir=RESOURCE_DIR,
            prefix=self.kernel_prefix,
            where="in a container",
        )

    def _uid_gid(self) -> tuple[int, int]:
        uid, _, gid = self.user.partition(":")
        try:
            return int(uid), int(gid or uid)
        except ValueError:
            raise SettingsError(
                f"user {self.user!r} must be numeric uid[:gid] (the connection file is owned by it)"
            ) from None

    # ------------------------------------------------------------- launch
    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        assert self.settings is not None
        self.engine_url = engine.engine_url(self.docker_host)
        self.container_name = container_name_for(str(self.kernel_id))
        self._cmd = cmd
        try:
            await self._ensure_image(self.settings.image)
            await self._create_and_start(cmd)
            await self._wait_until_ready()
        except BaseException:
            await self._remove_container()
            raise
        await self.state_changed()
        return self.connection_info

    async def _ensure_image(self, image: str) -> None:
        def have(client: Any) -> bool:
            try:
                client.images.get(image)
                return True
            except docker.errors.ImageNotFound:
                return False

        present = await engine.call(self.engine_url, have)
        if present and self.pull_policy != "always":
            return
        if self.pull_policy == "never" or (present and self.pull_policy == "if-not-present"):
            if not present:
                raise KernelStartError(
                    f"image {image!r} is not present on the Docker engine {self.engine_url}"
                    " (pull_policy is 'never')"
                )
            return
        try:
            await engine.call(self.engine_url, lambda c: c.images.pull(image))
        except docker.errors.APIError as e:
            if present:
                self.log.warning(
                    "pulling %s failed (%s); using the local copy", image, engine.explain(e)
                )
                return
            raise KernelStartError(
                f"image {image!r} is not on the Docker engine {self.engine_url} and cannot be"
                f" pulled: {engine.explain(e)}"
            ) from None

    def _create_kwargs(self, cmd: list[str]) -> dict[str, Any]:
        assert self.settings is not None
        s = self.settings
        labels = {str(k): str(v) for k, v in self.labels.items()}
        labels.update(self.resource_labels())
        create: dict[str, Any] = {
            "image": s.image,
            "command": cmd or None,
            "name": self.container_name,
            "labels": labels,
            "environment": [f"{k}={v}" for k, v in s.environment.items()],
            "user": self.user,
            "detach": True,
            "init": self.init or None,
            "security_opt": ["no-new-privileges"],
            "cap_drop": ["ALL"],
            "stop_signal": "SIGTERM",
            "pids_limit": int(self.pids_limit),
        }
        if s.working_dir:
            create["working_dir"] = s.working_dir
        disk = self.disk
        if disk == "auto":
            disk = "" if self.engine_url in _ENGINES_WITHOUT_DISK_QUOTA else AUTO_DISK
        if disk:
            docker_size("disk", disk)
            create["storage_opt"] = {"size": disk}
        if s.cpus:
            create["nano_cpus"] = int(s.cpus * 1e9)
        if s.memory:
            create["mem_limit"] = s.memory
        if self.gpus:
            create["device_requests"] = [
                DeviceRequest(driver=self.gpu_driver, count=self.gpus, capabilities=[["gpu"]])
            ]
        if self.mounts:
            create["mounts"] = [m.to_docker() for m in self.mounts]
        create["network"] = self.network or engine.KERNEL_NETWORK
        if self.mode in ("loopback", "ssh", "published"):
            previous = self.published_ports or {}
            bind = self.publish_address if self.mode == "published" else "127.0.0.1"
            create["ports"] = {
                f"{CONTAINER_PORTS[ch]}/tcp": (bind, previous.get(ch)) for ch in CHANNELS
            }
        return create

    def _prepare_kernel_network(self, client: Any) -> None:
        """Our kernels' bridge: isolated (no kernel reaches another) and, unless the
        operator manages it, fenced (no kernel reaches the engine host, private or
        link-local networks; see :mod:`.egress`)."""
        bridge = engine.ensure_isolated_network(client, self.engine_url, engine.KERNEL_NETWORK)
        if self.egress == "unmanaged":
            return
        allowed = egress.check_networks(self.egress_allow, "DockerProvisioner.egress_allow")
        if why := egress.can_manage(self.engine_url):
            raise KernelStartError(
                "docker-provisioner: kernels could reach the engine host's services and"
                f" private or metadata addresses, and this process cannot fence them ({why}):"
                " firewall the engine host's kernel bridge yourself and set egress ="
                " 'unmanaged' in the kernelspec's provisioner config (DockerProvisioner.egress)"
            )
        egress.fence(bridge, allowed)

    async def _create_and_start(self, cmd: list[str]) -> None:
        uid, gid = self._uid_gid()
        km = self.parent
        inside = {
            **{f"{ch}_port": CONTAINER_PORTS[ch] for ch in CHANNELS},
            "ip": "0.0.0.0",
            "transport": "tcp",
            "key": km.session.key.decode(),
            "signature_scheme": km.session.signature_scheme,
            "kernel_name": km.kernel_name,
        }
        extra_files = {
            f"resources/{rel}": (f.data, 0o700 if f.executable else 0o600)
            for rel, f in self.spec_files().items()
        }
        if curve := self.choose_curve(leaves_machine=self.ports_reachable_by_others):
            inside.update(curve_publickey=curve[0], curve_secretkey=curve[1])
            if self.relayed:  # the kernel ignores keys: a relay beside it uses them
                extra_files["relay.py"] = (RELAY_SOURCE.encode(), 0o600)
                cmd = relay_command(
                    self.relay_python or "python3",
                    f"{CONNECTION_DIR}/relay.py",
                    CONNECTION_FILE,
                    self._kernel_command([], relayed=True),
                    self.relay_interrupt_signal(),
                )
        payload = json.dumps(inside).encode()
        create = self._create_kwargs(cmd)

        if self.network and self.egress != "unmanaged":
            # The orchestrator's fence is for its own bridge: on an operator's network
            # the gateway itself may be a member, and only the operator knows its rules.
            raise KernelStartError(
                f"docker-provisioner: kernels on the network {self.network!r} could reach the"
                " engine host's services and private or metadata addresses, and the"
                " orchestrator fences only its own kernel bridge: firewall that network and"
                " set egress = 'unmanaged' in the kernelspec's provisioner config"
                " (DockerProvisioner.egress)"
            )

        def create_container(client: Any) -> str:
            if not self.network:
                self._prepare_kernel_network(client)
            ensure_named_volumes(client, self.mounts)
            try:
                return str(client.containers.create(**create).id)
            except docker.errors.NotFound as e:
                if self.network or "network" not in str(e):
                    raise
                # Our network was removed since we last checked (a prune): make it again.
                engine.forget_network(self.engine_url, engine.KERNEL_NETWORK)
                self._prepare_kernel_network(client)
                return str(client.containers.create(**create).id)
            except docker.errors.APIError as e:
                if "storage-opt" in str(e) and self.disk == "auto" and "storage_opt" in create:
                    # This engine's storage driver cannot cap a container's disk.
                    _ENGINES_WITHOUT_DISK_QUOTA.add(self.engine_url)
                    self.log.info("docker %s: no disk quota (%s)", self.engine_url, e)
                    del create["storage_opt"]
                    return str(client.containers.create(**create).id)
                if create.get("ports") and self.published_ports and "port is already" in str(e):
                    # Our old ports were taken meanwhile: take new ones rather than fail.
                    create["ports"] = {k: (v[0], None) for k, v in create["ports"].items()}
                    return str(client.containers.create(**create).id)
                raise

        try:
            self.container_id = await engine.call(self.engine_url, create_container)
        except docker.errors.APIError as e:
            if "storage-opt" in str(e) and "storage_opt" in create:
                raise KernelStartError(
                    f"docker-provisioner: disk = {self.disk!r} cannot be enforced by this"
                    f" engine ({engine.explain(e)}): set disk to 'auto' (a cap where the"
                    " engine can enforce one) or '' in the kernelspec's provisioner config"
                ) from None
            raise KernelStartError(
                f"cannot create a container from {create['image']!r}: {engine.explain(e)}"
            ) from None
        cid = self.container_id

        def copy_and_start(client: Any) -> dict[str, Any]:
            client.api.put_archive(
                cid, CONNECTION_DIR, _connection_tar(payload, uid, gid, extra_files)
            )
            client.api.start(cid)
            return client.api.inspect_container(cid)  # type: ignore[no-any-return]

        try:
            attrs = await engine.call(self.engine_url, copy_and_start)
        except docker.errors.APIError as e:
            raise KernelStartError(
                f"cannot start the kernel container: {engine.explain(e)}"
            ) from None
        if not (attrs.get("State") or {}).get("Running"):
            # Exited already (a fast crash): it has no published ports to look at.
            tail = await self.startup_diagnostics()
            image = create["image"]
            raise KernelStartError(
                f"kernel container {self.container_name} ({image}) exited during start-up"
                + (f"\n--- last lines of its log ---\n{tail}" if tail else "")
            )
        await self._record_addresses(attrs)

    async def _record_addresses(self, attrs: dict[str, Any]) -> None:
        net = attrs["NetworkSettings"]
        if self.mode == "network":
            networks: dict[str, Any] = net.get("Networks") or {}
            chosen: dict[str, Any] = networks.get(str(self.network)) or {} if self.network else {}
            chosen = chosen or next(iter(networks.values()), {})
            ip = str(chosen.get("IPAddress") or net.get("IPAddress") or "")
            self.address = self.container_name if self.network_address == "name" else ip
            self.host_ports = dict(CONTAINER_PORTS)
        else:
            published = net.get("Ports") or {}
            ports: dict[str, int] = {}
            for ch in CHANNELS:
                bindings = published.get(f"{CONTAINER_PORTS[ch]}/tcp") or []
                if not bindings:
                    raise KernelStartError(f"the engine published no port for {ch}")
                ports[ch] = int(bindings[0]["HostPort"])
            self.published_ports = ports
            self.address = _url_host(self.engine_url) if self.mode == "published" else "127.0.0.1"
            self.host_ports = await self._tunnel(ports) if self.mode == "ssh" else ports
        self._set_connection_info()

    def _set_connection_info(self) -> None:
        assert self.host_ports is not None
        self.connection_info = client_connection_info(  # type: ignore[assignment]
            self, self.address, self.host_ports, self._curve
        )

    @property
    def mode(self) -> str:
        """The reachability in effect (``auto`` resolved by the engine URL)."""
        if self.reachability != "auto":
            return str(self.reachability)
        url = self.engine_url or engine.engine_url(self.docker_host)
        if url.startswith("ssh://"):
            return "ssh"
        if url.startswith(("tcp://", "http://", "https://")) and not _is_loopback_url(url):
            return "published"
        return "loopback"

    @property
    def ports_reachable_by_others(self) -> bool:
        """Whether anything but the orchestrator can connect to the kernel's ports: the
        members of an operator's network, or anyone who reaches a published interface.
        (Other tenants on a shared loopback count too: ``choose_curve`` judges that for
        every provisioner.)"""
        return self.mode in ("network", "published") or bool(self.network)

    @property
    def encrypting(self) -> bool:
        """Whether this kernel's connection carries CurveZMQ keys."""
        return bool((self.connection_info or {}).get("curve_secretkey"))

    async def _tunnel(self, published: dict[str, int]) -> dict[str, int]:
        """Forward the ports published on the remote engine host to local loopback ports."""
        tunneler = get_tunneler(self.ssh_destination or self.engine_url)
        return await tunneler.open(str(self.kernel_id), published, self.host_ports)

    async def _wait_until_ready(self) -> None:
        assert self.settings is not None
        timeout = self.settings.startup_timeout
        if await self.first_answer(timeout, image=self.settings.image, address=self.address):
            return
        exited = await self.poll() is not None
        tail = await self.startup_diagnostics()
        what = "exited during start-up" if exited else f"was not ready within {timeout:g}s"
        message = f"kernel container {self.container_name} ({self.settings.image}) {what}"
        if tail:
            message += "\n--- last lines of its log ---\n" + tail
        raise KernelStartError(message)

    async def startup_diagnostics(self, lines: int = 20) -> str:
        cid = self.container_id
        if not cid:
            return ""
        try:
            raw = await engine.call(
                self.engine_url, lambda c: c.api.logs(cid, stdout=True, stderr=True, tail=lines)
            )
        except Exception:
            return ""
        return raw.decode(errors="replace").rstrip() if isinstance(raw, bytes) else str(raw)

    # --------------------------------------------------------- lifecycle
    async def _state(self) -> dict[str, Any] | None:
        cid = self.container_id
        if not cid:
            return None
        try:
            attrs = await engine.call(self.engine_url, lambda c: c.api.inspect_container(cid))
        except docker.errors.NotFound:
            return None
        return attrs["State"]  # type: ignore[no-any-return]

    async def poll(self) -> int | None:
        """From the engine's shared event stream (no request while the kernel idles);
        the container is inspected only while the stream is down or has not shown it."""
        cid = self.container_id
        if not cid:
            return 0
        containers = watcher.shared_watcher(self.engine_url)
        known, status = containers.status(cid)
        if known:
            return status
        state = await self._state()
        containers.learn(cid, state)
        return watcher.exit_status_of_state(state)

    def watch_liveness(self, notify: Callable[[], None]) -> LivenessWatch | None:
        """Told by the engine's shared event stream (see :mod:`.watcher`)."""
        if not self.container_id:
            return None
        containers = watcher.shared_watcher(self.engine_url)
        cid = self.container_id
        return LivenessWatch(
            pushed=lambda: cid == self.container_id and containers.pushed(cid),
            cancel=containers.subscribe(str(self.kernel_id), notify),
        )

    async def send_signal(self, signum: int) -> None:
        cid = self.container_id
        if not cid or signum == 0:
            return
        try:
            await engine.call(self.engine_url, lambda c: c.api.kill(cid, signal=int(signum)))
        except (docker.errors.NotFound, docker.errors.APIError) as e:
            if isinstance(e, docker.errors.NotFound) or "is not running" in str(e):
                return
            raise

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def _remove_container(self) -> None:
        name = self.container_id or self.container_name
        if not name or not self.engine_url:
            return
        try:
            await engine.call(
                self.engine_url, lambda c: c.api.remove_container(name, force=True, v=True)
            )
        except docker.errors.NotFound:
            pass
        except Exception as e:  # e.g. engine gone: gc will find it by its labels
            self.log.warning("could not remove container %s: %s", name, engine.explain(e))
        self.container_id = None

    async def cleanup(self, restart: bool = False) -> None:
        await self._remove_container()
        if not restart:
            if self.mode == "ssh" and self.host_ports:
                await get_tunneler(self.ssh_destination or self.engine_url).close(
                    str(self.kernel_id)
                )
            self.host_ports = None
            self.published_ports = None

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 5.0)

    # -------------------------------------------------------- persistence
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(
            {
                "engine_url": self.engine_url,
                "container_id": self.container_id,
                "container_name": self.container_name,
                "address": self.address,
                "host_ports": self.host_ports,
                "published_ports": self.published_ports,
                "reachability": self.mode,
                "settings": dict(self.settings.__dict__) if self.settings else None,
                "cmd": self._cmd,
            }
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.engine_url = provisioner_info.get("engine_url") or ""
        self.container_id = provisioner_info.get("container_id")
        self.container_name = provisioner_info.get("container_name") or ""
        self.address = provisioner_info.get("address") or ""
        self.host_ports = provisioner_info.get("host_ports")
        self.published_ports = provisioner_info.get("published_ports")
        self.reachability = provisioner_info.get("reachability") or self.reachability
        settings = provisioner_info.get("settings")
        self.settings = ContainerSettings(**settings) if settings else None
        self._cmd = provisioner_info.get("cmd")

    @property
    def process_local_state(self) -> tuple[str, ...]:  # type: ignore[override]
        """Through an SSH engine, ``host_ports`` are this process's tunnel's local ports."""
        return ("host_ports",) if self.mode == "ssh" else ()

    async def reconnect(self) -> None:
        """A new process: rebuild the tunnel, on the same local ports if still free."""
        if self.mode == "ssh" and self.container_id and self.published_ports:
            self.host_ports = await self._tunnel(self.published_ports)
            self._set_connection_info()

    def release(self) -> None:
        """Close this kernel's tunnel (remote engines); the container keeps running."""
        if self.mode == "ssh" and self.host_ports:
            tunneler = get_tunneler(self.ssh_destination or self.engine_url)
            tunneler.close_now(str(self.kernel_id))

    def resource_summary(self) -> str:
        return f"container {self.container_name or self.container_id} on {self.engine_url}"

    # ------------------------------------------------------------------ gc
    @classmethod
    async def collect_garbage(cls, ctx: GarbageContext) -> list[str]:
        return await gc.collect_garbage(ctx)

    # ------------------------------------------------------- kernelspecs
    @classmethod
    def add_kernelspec_arguments(cls, parser: Any) -> None:
        kernelspec.add_arguments(parser)

    @classmethod
    def kernelspec_config(cls, args: Any) -> dict[str, Any]:
        return kernelspec.config_from(args)


def _url_host(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).hostname or "127.0.0.1"


def _is_loopback_url(url: str) -> bool:
    import ipaddress

    host = _url_host(url)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["DockerProvisioner", "OrchestratorError"]
