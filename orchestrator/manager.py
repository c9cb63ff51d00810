"""Kernel managers that persist what they start and can re-attach to it later.

These are jupyter_client's own managers with a few steps added, so code written
against jupyter_client (nbclient, Jupyter Server, test suites) drives them unchanged:

* when a kernel starts or restarts, its :class:`KernelRecord` is saved to the kernel
  store; when it is shut down for good, the record is removed;
* :meth:`reattach` re-attaches a fresh manager, in any process, to a kernel that is
  still running, from its saved record, without restarting it;
* a failed start cleans up whatever the provisioner had already created.

As in jupyter_client, the work is written once as ``_async_*`` coroutines; the async
classes expose them directly and the sync classes wrap them with ``run_sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
import typing as t
import uuid
import weakref

import zmq
from jupyter_client import manager as jc_manager
from jupyter_client.ioloop import manager as jc_ioloop
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.session import Session
from jupyter_core.paths import jupyter_runtime_dir
from jupyter_core.utils import ensure_dir_exists, run_sync
from traitlets import Bool, Dict, DottedObjectName, Float, Instance, Type, Unicode, default
from traitlets.config import LoggingConfigurable

from . import faults, forks, interrupts, lifetime, ownership
from .endpoint import Endpoint
from .errors import (
    FencedError,
    KernelGoneError,
    OrchestratorError,
    OwnedElsewhereError,
    ReattachError,
    StoreError,
    UnknownKernelError,
)
from .liveness import kernel_info
from .provisioning import create_provisioner, provisioner_stanza
from .store import KernelRecord, KernelStore, default_store_url, open_store
from .tenure import KernelTenureMixin

log = logging.getLogger("kernel-orchestrator")

# Provisioners we run in place of stock ones because the stock ones cannot be
# re-attached from another process.
DEFAULT_PROVISIONER_ALIASES = {"local-provisioner": "orchestrator-local-provisioner"}

_stores: dict[str, KernelStore] = {}


def shared_store(url: str | None) -> KernelStore:
    """One store object per URL per process: many managers, one connection."""
    key = url or default_store_url()
    if key not in _stores:
        _stores[key] = open_store(key)
    return _stores[key]


_KERNEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_kernel_id(kernel_id: str) -> None:
    """Kernel ids become file, container and pod names: refuse anything but a safe token."""
    if not _KERNEL_ID.fullmatch(kernel_id or ""):
        raise OrchestratorError(
            f"invalid kernel id {kernel_id!r}: use up to 128 letters, digits, '.', '_' or '-'"
        )


def spec_to_dict(spec: KernelSpec) -> dict[str, t.Any]:
    """A kernelspec as saved in a record (with its resource dir, for ``{resource_dir}``)."""
    data = spec.to_dict()
    data["resource_dir"] = spec.resource_dir
    return data


def spec_from_dict(data: dict[str, t.Any]) -> KernelSpec:
    return KernelSpec(**data)


class PersistentKernelManagerMixin(KernelTenureMixin, LoggingConfigurable):
    """What our managers add to jupyter_client's. Mixed in before the stock class.

    A kernel's life in this process is a handful of transitions, each one method here:
    *start* (jupyter_client's, then the record inserted), *restart* (jupyter_client's,
    then the clients rejoined; a failure drops the kernel), *re-attach*
    (:meth:`_async_reattach`), *follow* (:meth:`follow_record`: another process
    restarted it), *take-over* (:mod:`orchestrator.tenure`: the lease claimed, then
    follow), *release* and *drop*. Each moves the provisioner (its contract:
    :mod:`orchestrator.provisioning.contract`), the manager's connection info and this
    process's clients (:mod:`orchestrator.endpoint`) together; the lease and the
    record are the tenure's (:mod:`orchestrator.tenure`).
    """

    kernel_store = Instance(  # type: ignore[call-overload]
        KernelStore,
        allow_none=True,
        help="Where kernel records are saved. Defaults to the store named by store_url.",
    )
    store_url = Unicode(
        "",
        config=True,
        help="Kernel store URL (sqlite:///path.db, memory:). Empty: $KERNEL_ORCHESTRATOR_STORE,"
        " else an SQLite file in the Jupyter data dir.",
    )
    persist = Bool(True, config=True, help="Save kernel records to the kernel store.")
    provisioner_aliases = Dict(
        DEFAULT_PROVISIONER_ALIASES,
        config=True,
        help="Provisioner names replaced by others when a kernel is created, e.g. the stock"
        " local-provisioner by our re-attachable subclass.",
    )
    labels = Dict(help="Free-form labels saved with the kernel record (owner, session, ...).")
    reattach_timeout = Float(
        10.0, config=True, help="Seconds a re-attached kernel has to answer kernel_info."
    )
    lease_seconds = Float(
        config=True,
        help="Seconds this process's ownership of a kernel lasts without renewal (it is"
        " renewed every third of that). When the owner dies, another process takes the"
        " kernel over after at most this long. Default: $KERNEL_ORCHESTRATOR_LEASE_SECONDS,"
        " else 30.",
    )
    outlive_process = Bool(
        False,
        config=True,
        help="Keep kernels running when this process exits normally without shutting them"
        " down (as if detach() had been called). Off by default, as with jupyter_client:"
        " a kernel neither shut down nor detached is shut down at interpreter exit. A"
        " process that dies without exiting (kill -9, a crash) always leaves its kernels"
        " running, to be re-attached.",
    )
    multi_tenant = Bool(
        False,
        config=True,
        help="Kernels are started for several users who must not reach each other (a"
        " multi-user gateway sets it): provisioners then refuse settings that would put"
        " two users' kernels in one account.",
    )
    shared_loopback = Bool(
        False,
        config=True,
        help="Processes of other users or tenants can connect to this machine's loopback"
        " (a multi-user gateway with host kernels, a shared login node). Then policy auto"
        " encrypts kernel ports published on loopback too, since IOPub needs no key to read.",
    )
    remote_transport_encryption = Unicode(
        "",
        config=True,
        help="CurveZMQ policy for kernels reached over a network (auto, required, disabled);"
        " a kernelspec's provisioner config overrides it. Empty: auto.",
    )

    @default("kernel_store")
    def _default_kernel_store(self) -> KernelStore | None:
        if not self.persist:
            return None
        return shared_store(self.store_url or None)

    @default("lease_seconds")
    def _default_lease_seconds(self) -> float:
        return ownership.default_lease_seconds()

    # Set in the real classes by jupyter_client; declared for type checkers.
    if t.TYPE_CHECKING:
        kernel_id: str
        kernel_name: str
        provisioner: t.Any
        connection_file: str
        _launch_args: dict[str, t.Any] | None
        _kernel_spec: KernelSpec | None
        _connection_file_written: bool
        _attempted_start: bool
        _ready: t.Any
        shutting_down: bool
        session: t.Any
        log: t.Any
        kernel_spec: KernelSpec | None
        _control_socket: t.Any
        _shutdown_status: t.Any

        def load_connection_info(self, info: t.Any) -> None: ...
        def write_connection_file(self, **kwargs: t.Any) -> None: ...
        def cleanup_connection_file(self) -> None: ...
        def start_restarter(self) -> None: ...
        def stop_restarter(self) -> None: ...
        def _close_control_socket(self) -> None: ...

    _record_created: float | None = None
    _restart_count: int = 0
    _provisioner_name: str = ""
    _endpoint: Endpoint | None = None  # where this process's clients reach the kernel
    _endpoint_callbacks: list[t.Callable[[], t.Any]] | None = None
    _clients: weakref.WeakSet[t.Any] | None = None  # clients handed out, to retarget
    _dropped: str = ""  # why the kernel was given up for good here ('' while it is not)
    _dropped_callbacks: list[t.Callable[[str], t.Any]] | None = None
    _cleaned_up: bool = False  # a failed start's clean-up ran
    _relaunching: bool = False  # a restart got as far as starting the new process
    _stopping_for_restart: bool = False  # inside the shutdown half of a restart
    _follow_lock: asyncio.Lock | None = None

    # ----------------------------------------------------------- provisioners
    def _create_provisioner_for(self, kernel_id: str, spec: KernelSpec, name: str | None = None):  # type: ignore[no-untyped-def]
        stanza_name, config = provisioner_stanza(spec)
        name = name or self.provisioner_aliases.get(stanza_name, stanza_name)
        self._provisioner_name = name
        return create_provisioner(name, kernel_id, spec, config, parent=self)

    @property
    def orchestrator_instance(self) -> str:
        """The id of the store's deployment, used to label what provisioners create."""
        return self.kernel_store.instance_id if self.kernel_store is not None else ""

    # ---------------------------------------------------------------- records
    def _launch_args_for_record(self) -> dict[str, t.Any]:
        """The launch arguments a later restart needs, minus what is not data.

        ``env`` is saved as the entries that differ from this process's own
        environment (what the caller really asked for) plus the *names* of those it
        took unchanged from it (``env_inherited``): the orchestrator's environment
        (tokens, the store's URL) stays out of the store, and a restart by another
        process gives the kernel the same variables, never that process's others.
        """
        saved: dict[str, t.Any] = {}
        for key, value in (self._launch_args or {}).items():
            if key == "env" and isinstance(value, dict):
                strings = {k: v for k, v in value.items() if isinstance(v, str)}
                saved["env"] = {k: v for k, v in strings.items() if os.environ.get(k) != v}
                saved["env_inherited"] = sorted(set(strings) - set(saved["env"]))
            elif isinstance(value, (str, int, float, bool, list, dict)) or value is None:
                saved[key] = value
        return saved

    @staticmethod
    def _launch_args_from_record(saved: dict[str, t.Any]) -> dict[str, t.Any]:
        args = dict(saved)
        inherited = args.pop("env_inherited", None)
        if args.pop("env_inherits", False) and inherited is None:
            # A record of an older version, which saved no names: all of them, as then.
            inherited = list(os.environ)
        if inherited is not None:
            env = {k: os.environ[k] for k in inherited if k in os.environ}
            env.update(args.get("env") or {})
            args["env"] = env
        return args

    async def build_record(self) -> KernelRecord:
        """The record describing this manager's kernel as it is now."""
        assert self.provisioner is not None and self.kernel_spec is not None
        info = await self.provisioner.get_provisioner_info()
        now = time.time()
        if self._record_created is None:
            self._record_created = now
        return KernelRecord(
            kernel_id=self.kernel_id,
            kernel_name=self.kernel_name,
            provisioner_name=self._provisioner_name,
            provisioner_info=info,
            kernel_spec=spec_to_dict(self.kernel_spec),
            launch_args=self._launch_args_for_record(),
            connection_file=self.connection_file,
            instance=self.orchestrator_instance,
            labels=dict(self.labels),
            created=self._record_created,
            last_activity=now,
            restarts=self._restart_count,
        )

    async def touch_activity(self) -> None:
        """Note activity on this kernel in the store (culling survives restarts)."""
        if self.kernel_store is not None and self.kernel_id:
            await self.kernel_store.touch(self.kernel_id)

    async def follow_record(self, record: KernelRecord) -> None:
        """Catch up with a restart another process did: our provisioner state is that
        of the kernel process (or container, pod, job) it replaced.

        The provisioner moves what this process holds (tunnels, forwards) to the new
        process, keeping this process's own local ports; the manager then takes the
        endpoint the provisioner gives, and if it moved (a new pod IP), every client
        of this process is told (:mod:`orchestrator.endpoint`).
        """
        if record.restarts <= self._restart_count or self.provisioner is None:
            return  # (an older record than what this process follows: nothing to do)
        if self._follow_lock is None:
            self._follow_lock = asyncio.Lock()
        async with self._follow_lock:  # a request, a websocket and the keeper at once
            if record.restarts > self._restart_count:
                await self._follow(record)

    async def _follow(self, record: KernelRecord) -> None:
        assert self.provisioner is not None
        follow = getattr(self.provisioner, "follow", None)
        if follow is not None:
            await follow(record.provisioner_info)
        else:  # a provisioner without our contract: its state is all it has
            await self.provisioner.load_provisioner_info(record.provisioner_info)
        self.log.info("kernel %s was restarted by another process; following it", self.kernel_id)
        if self.provisioner.connection_info:
            self.load_connection_info(self.provisioner.connection_info)
        self._publish_endpoint()
        await self._rejoin_clients()
        # Counted as followed once the clients are on the new process: a caller that
        # waits for the count (and then sends a cell) must not race their rejoin.
        self._restart_count = record.restarts

    # -------------------------------------------------------------- endpoint
    def on_endpoint_changed(self, callback: t.Callable[[], t.Any]) -> None:
        """Call ``callback()`` when the kernel's endpoint in this process moves."""
        if self._endpoint_callbacks is None:
            self._endpoint_callbacks = []
        self._endpoint_callbacks.append(callback)

    @property
    def endpoint(self) -> Endpoint | None:
        """Where this process's clients reach the kernel now."""
        return self._endpoint

    def _publish_endpoint(self) -> None:
        """Note the current endpoint; when it moved, tell everyone who asked."""
        new = Endpoint.of(self.get_connection_info(session=False))  # type: ignore[attr-defined]
        old, self._endpoint = self._endpoint, new
        if old is None or new is None or new == old:
            return
        self.log.info("kernel %s moved from %s to %s", self.kernel_id, old, new)
        for callback in self._endpoint_callbacks or []:
            try:
                callback()
            except Exception:
                log.exception("endpoint-changed callback failed")

    async def _rejoin_clients(self, timeout: float = 10.0) -> None:
        """A new kernel process is behind the endpoint: the clients this manager handed
        out get new sockets there, and the restart returns once their iopub is joined
        (see :mod:`orchestrator.client`), so their next cell's output is not lost."""
        clients = list(self._clients or ())
        if not clients:
            return
        info = self.get_connection_info(session=False)  # type: ignore[attr-defined]

        async def rejoin(kc: t.Any) -> None:
            try:
                if not await kc.rejoin(info, timeout):
                    self.log.warning(
                        "kernel %s: a client's iopub did not join within %gs",
                        self.kernel_id,
                        timeout,
                    )
            except Exception as e:
                self.log.warning("kernel %s: a client could not follow it: %s", self.kernel_id, e)

        await asyncio.gather(*(rejoin(kc) for kc in clients))

    def client(self, **kwargs: t.Any) -> t.Any:
        """jupyter_client's ``client()``, kept track of so that it follows the kernel
        when a restart moves it (see :mod:`orchestrator.client`).

        Each client gets a session of its own (same key): jupyter_client hands every
        client the manager's session, whose id is also the shell socket's zmq identity,
        so a second client of one manager (a kept one and a new one) collides with the
        first at the kernel's ROUTER socket, which drops one of them.
        """
        if "session" not in kwargs:
            kwargs["session"] = Session(
                key=self.session.key,
                signature_scheme=self.session.signature_scheme,
                username=self.session.username,
            )
        kc = super().client(**kwargs)  # type: ignore[misc]
        if hasattr(kc, "rejoin"):  # (a client_class of the user's may lack it)
            if self._clients is None:
                self._clients = weakref.WeakSet()
            self._clients.add(kc)
        return kc

    # ---------------------------------------------------- lifecycle overrides
    async def _async_pre_start_kernel(self, **kw: t.Any) -> t.Any:
        if self.provisioner is None:
            self.kernel_id = self.kernel_id or kw.get("kernel_id") or str(uuid.uuid4())
            check_kernel_id(self.kernel_id)
            if self.kernel_spec is None:
                raise OrchestratorError(f"no kernelspec for kernel name {self.kernel_name!r}")
            if self.kernel_store is not None and await self.kernel_store.get(self.kernel_id):
                raise OrchestratorError(f"kernel id {self.kernel_id!r} is already in use")
            self.provisioner = self._create_provisioner_for(self.kernel_id, self.kernel_spec)
        if not self.connection_file:
            # A predictable place (like MultiKernelManager's), not a random temp file,
            # so the file can be found and cleaned up by any process.
            runtime_dir = jupyter_runtime_dir()
            ensure_dir_exists(runtime_dir, 0o700)
            self.connection_file = os.path.join(runtime_dir, f"kernel-{self.kernel_id}.json")
        return await super()._async_pre_start_kernel(**kw)  # type: ignore[misc]

    async def _async_post_start_kernel(self, **kw: t.Any) -> None:
        await super()._async_post_start_kernel(**kw)  # type: ignore[misc]
        # The control socket is opened when a message goes out on it (a shutdown or
        # interrupt request; jupyter_client connects it first): held for every idle
        # kernel, it cost two descriptors and a connection each.
        self._close_control_socket()
        await self.save_record()
        self._publish_endpoint()
        self._watch_restarts()
        lifetime.remember(self)

    async def _async_start_kernel(self, **kw: t.Any) -> None:
        self._relaunching = True  # (within a restart: the old process is gone by now)
        faults.checkpoint("before-launch")
        try:
            await super()._async_start_kernel(**kw)  # type: ignore[misc]
        except BaseException:
            # A half-started kernel must not outlive the failed call.
            await self._cleanup_failed_start()
            raise

    async def _cleanup_failed_start(self) -> None:
        await self._remove_remains("cleanup after a failed start")
        lifetime.forget(self)

    async def _remove_remains(self, occasion: str) -> None:
        """Remove what is left of the kernel: its process if it still runs, what the
        provisioner made, the connection file, then the record. If the remains cannot
        be removed now (an engine or host down), the record stays, for ``gc`` or the
        next restore. Never raises (it runs after a failure it must not mask)."""
        removed = True
        try:
            if self.provisioner is not None:
                if self.provisioner.has_process:
                    await self.provisioner.kill()
                    try:
                        await asyncio.wait_for(self.provisioner.wait(), 10)
                    except asyncio.TimeoutError:
                        self.log.warning("kernel %s did not exit after kill", self.kernel_id)
                await self.provisioner.cleanup(restart=False)
        except Exception as e:
            removed = False
            self.log.warning(
                "kernel %s: %s: what is left of it could not be removed (its record stays"
                " for gc): %s",
                self.kernel_id,
                occasion,
                e,
            )
        self._close_control_socket()
        with contextlib.suppress(Exception):
            self.cleanup_connection_file()
        if removed:
            try:
                await self.forget_record()
            except Exception as e:  # the store is down: gc finds the record later
                self.log.warning(
                    "kernel %s: %s: its record could not be removed: %s",
                    self.kernel_id,
                    occasion,
                    e,
                )
        self._cleaned_up = True

    async def _async_restart_kernel(self, now: bool = False, newports: bool = False, **kw: t.Any):  # type: ignore[no-untyped-def]
        """Restart in place; a restart that fails gives the kernel up (see :meth:`_async_drop`).

        The count goes up with the new process (the record saved once it runs carries
        it, so other processes follow), and back down if there is none: nobody may
        follow a restart that did not happen.
        """
        await self._ensure_owner()
        self._restart_count += 1
        self._relaunching = False
        try:
            await super()._async_restart_kernel(now=now, newports=newports, **kw)  # type: ignore[misc]
        except BaseException as e:
            self._restart_count -= 1
            # Given up only when the new process could not be started. A restart that
            # failed before (ownership lost to another process, the store down, a
            # cancelled call) leaves the kernel as it is: it may be someone else's now.
            if self._relaunching and not isinstance(
                e, (asyncio.CancelledError, FencedError, OwnedElsewhereError, StoreError)
            ):
                await self._async_drop(f"its restart failed: {e or type(e).__name__}")
            raise
        finally:
            self._relaunching = False
        await self._rejoin_clients()

    async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        await self._ensure_owner()
        if not restart:
            faults.checkpoint("before-shutdown")
        self._stopping_for_restart = restart
        try:
            await super()._async_shutdown_kernel(now=now, restart=restart)  # type: ignore[misc]
        finally:
            self._stopping_for_restart = False

    async def _async_kill_kernel(self, restart: bool = False) -> None:
        """jupyter_client's kill, told when it is part of a restart.

        A restart with ``now=True`` (the auto-restarter's, or a caller's) kills without
        saying so, and a provisioner that keeps its allocation over a restart (a Slurm
        job) would give it up: the new process then had nowhere to start.
        """
        restart = restart or self._stopping_for_restart
        await super()._async_kill_kernel(restart=restart)  # type: ignore[misc]

    async def _async_send_kernel_sigterm(self, restart: bool = False) -> None:
        """jupyter_client's SIGTERM to a kernel slow to end, told when it is part of a
        restart (the graceful restart's wait sends it without saying so: see above)."""
        restart = restart or self._stopping_for_restart
        await super()._async_send_kernel_sigterm(restart=restart)  # type: ignore[misc]

    async def _async_interrupt_kernel(self) -> None:
        if not self.shutting_down:  # jupyter_client interrupts as part of a shutdown
            await self._ensure_owner()
        spec = self.kernel_spec
        if spec is not None and spec.interrupt_mode == "signal":
            signum = interrupts.interrupt_signal(spec)
            if signum is None:  # a signal would end it (a xeus kernel)
                if self.shutting_down:
                    return  # the shutdown request, then signals, end it anyway
                raise interrupts.cannot_interrupt(str(self.kernel_id), self.kernel_name)
            if getattr(self.provisioner, "relayed", False) and self.has_kernel:
                # The relay beside the kernel serves it: an encrypted, signed message
                # instead of a signal sent to a container, pod, host or job.
                msg = self.session.msg("interrupt_request", content={})
                self._connect_control_socket()
                try:
                    self.session.send(self._control_socket, msg)
                except zmq.Again:
                    if self.shutting_down:
                        return
                    raise OrchestratorError(
                        f"kernel {self.kernel_id}: its control channel is not connected;"
                        " no interrupt was sent"
                    ) from None
                return
            if signum != signal.SIGINT:
                if not self.has_kernel:
                    raise RuntimeError("Cannot interrupt kernel. No kernel is running!")
                await self._async_signal_kernel(signum)  # type: ignore[attr-defined]
                return
        try:
            await super()._async_interrupt_kernel()  # type: ignore[misc]
        except zmq.Again:  # its control connection is gone (see _connect_control_socket)
            if self.shutting_down:
                return  # the shutdown goes on: a gone kernel is stopped by signal
            raise OrchestratorError(
                f"kernel {self.kernel_id}: its control channel is not connected (the kernel"
                " may have exited); no interrupt was sent"
            ) from None

    def _connect_control_socket(self) -> None:
        """jupyter_client's control socket, whose sends never block.

        A DEALER whose peer went away blocks a send until a peer comes back. jupyter_client
        sends on it from the event loop (a shutdown request, a message-mode interrupt), so
        one kernel that exited (a xeus kernel on the SIGINT a shutdown sends it first) held
        the whole gateway's loop forever. Here such a send fails at once (``zmq.Again``)
        and the caller goes on: a shutdown stops the kernel by signal instead.
        """
        super()._connect_control_socket()  # type: ignore[misc]
        if self._control_socket is not None:
            self._control_socket.sndtimeo = 0

    async def _async_request_shutdown(self, restart: bool = False) -> None:
        try:
            await super()._async_request_shutdown(restart=restart)  # type: ignore[misc]
        except zmq.Again:
            self.log.info(
                "kernel %s: its control channel is gone; stopping it by signal", self.kernel_id
            )
            assert self.provisioner is not None
            await self.provisioner.shutdown_requested(restart=restart)
            self._shutdown_status = jc_manager._ShutdownStatus.ShutdownRequest

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        faults.checkpoint("mid-restart" if restart else "after-kill")
        await super()._async_cleanup_resources(restart=restart)  # type: ignore[misc]
        if not restart:
            await self.forget_record()
            if self.kernel_store is not None and self.kernel_id:
                self._keeper().unwatch(self.kernel_id, self._restarted_elsewhere)
            lifetime.forget(self)

    def __del__(self) -> None:
        # The stock manager deletes the connection file when the *object* goes away.
        # Our kernels outlive the object (another process re-attaches to them), so the
        # file is removed only by a real shutdown (cleanup_resources).
        self._close_control_socket()
        if self.kernel_store is None:
            self.cleanup_connection_file()

    # ------------------------------------------------------------- re-attach
    async def _async_reattach(
        self,
        record: KernelRecord,
        *,
        verify: bool = True,
        timeout: float | None = None,
        own: bool | None = True,
        connect: bool = True,
    ) -> None:
        """Take over the running kernel described by ``record``, without restarting it.

        ``own``: True claims ownership (raising :class:`OwnedElsewhereError` while a
        live process owns the kernel), None claims it if free and otherwise attaches
        as a client that takes over when the owner's lease lapses, False attaches as
        a client (to execute code: clients need no ownership). ``connect=False`` only
        loads the provisioner's state, to ask whether the kernel runs, and opens no
        tunnel or socket.

        Raises :class:`KernelGoneError` if the kernel is no longer running (the
        provisioner is loaded, so :meth:`discard` can still clean up after it), and
        :class:`ReattachError` if it runs but does not answer within ``timeout``.
        """
        self.kernel_id = record.kernel_id
        self.kernel_name = record.kernel_name
        self._recorded = True
        if own and self.kernel_store is not None:
            await self.claim_ownership()
        elif own is None and self.kernel_store is not None:
            with contextlib.suppress(OwnedElsewhereError):
                await self.claim_ownership()
        self._kernel_spec = spec_from_dict(record.kernel_spec)
        self._launch_args = self._launch_args_from_record(record.launch_args)
        self._record_created = record.created
        self._restart_count = record.restarts
        self.labels = dict(record.labels)
        self.provisioner = self._create_provisioner_for(
            record.kernel_id, self._kernel_spec, name=record.provisioner_name
        )
        await self.provisioner.load_provisioner_info(record.provisioner_info)
        if not self.provisioner.has_process or await self.provisioner.poll() is not None:
            raise KernelGoneError(f"kernel {record.kernel_id} is no longer running")
        if not connect:
            return
        reconnect = getattr(self.provisioner, "reconnect", None)
        if reconnect is not None:
            await reconnect()
        self.load_connection_info(self.provisioner.connection_info)
        if record.connection_file:
            self.connection_file = record.connection_file
        if os.path.exists(self.connection_file):
            self._connection_file_written = True
        else:
            self.write_connection_file()

        if verify:
            wait = self.reattach_timeout if timeout is None else timeout
            info = dict(self.get_connection_info(session=False))  # type: ignore[attr-defined]
            if await kernel_info(info, self.session, wait) is None:
                if await self.provisioner.poll() is not None:
                    raise KernelGoneError(f"kernel {record.kernel_id} is no longer running")
                raise ReattachError(
                    f"kernel {record.kernel_id} is running but did not answer kernel_info"
                    f" within {wait:g}s"
                )
        self._attempted_start = True
        self.shutting_down = False
        self._ready = jc_manager._get_future()
        self._ready.set_result(None)
        if self.is_owner:
            self.start_restarter()
        elif own is None:
            self.want_ownership()
        self._publish_endpoint()
        self._watch_restarts()
        lifetime.remember(self)

    async def _async_discard(self) -> bool:
        """Release everything a gone kernel left (provisioner resources, files, record).

        Only the owner cleans up: a kernel that a live process owns is left to it (that
        process's restarter or shutdown deals with the death), and False is returned.
        """
        if not self.is_owner:
            try:
                await self.claim_ownership()
            except OwnedElsewhereError:
                self.release()
                return False
        try:
            if self.provisioner is not None:
                await self.provisioner.cleanup(restart=False)
        finally:
            self._close_control_socket()
            self._connection_file_written = os.path.exists(self.connection_file)
            self.cleanup_connection_file()
            await self.forget_record()
            lifetime.forget(self)
        return True

    # ------------------------------------------------------------------ drop
    @property
    def dropped_reason(self) -> str:
        """Why the kernel was given up for good here ('' while it was not)."""
        return self._dropped

    def on_dropped(self, callback: t.Callable[[str], t.Any]) -> None:
        """Call ``callback(reason)`` when the kernel is given up for good (a restart
        failed, the restart limit was reached): a multi-kernel manager drops it."""
        if self._dropped_callbacks is None:
            self._dropped_callbacks = []
        self._dropped_callbacks.append(callback)

    async def _async_drop(self, reason: str, *, tell_clients: bool = True) -> None:
        """Give the kernel up for good: its restart failed or it died past the restart
        limit. Whatever is left of it is removed (its process, container, pod or job,
        the record), everything this process holds for it is released (tunnels,
        forwards, the lease), its clients are told it is dead (the restarter's "dead"
        callbacks), and whoever keeps a map of kernels is told to drop it. Nothing is
        left for a later DELETE to trip over: that finds no kernel. (If what is left
        cannot be removed now, an engine or host being down, the record stays, owned
        by nobody, for ``gc`` or the next restore.)
        """
        if self._dropped:
            return
        self._dropped = reason or "it is gone"
        self.log.warning("kernel %s given up: %s", self.kernel_id, self._dropped)
        with contextlib.suppress(Exception):
            self.stop_restarter()
        if not self._cleaned_up and self.is_owner:  # (not a kernel someone else owns now)
            await self._remove_remains("given up")
        self.release()
        restarter = getattr(self, "_restarter", None)
        if tell_clients and restarter is not None:
            restarter._fire_callbacks("dead")
        for callback in self._dropped_callbacks or []:
            try:
                callback(self._dropped)
            except Exception:
                log.exception("kernel-dropped callback failed")

    def release(self) -> None:
        """Let go of everything this process holds for the kernel, without stopping it:
        restarter, sockets, the provisioner's tunnels and connections, the lease."""
        self._released = True
        with contextlib.suppress(Exception):
            self.stop_restarter()
        self._close_control_socket()
        self._connection_file_written = False
        release = getattr(self.provisioner, "release", None)
        if release is not None:
            try:
                release()
            except Exception as e:
                self.log.warning("kernel %s: releasing its resources: %s", self.kernel_id, e)
        lease = self._let_go()
        if self.kernel_store is not None and self.kernel_id:
            self._keeper().unwatch(self.kernel_id, self._restarted_elsewhere)
        mine = lease is not None and lease.holder_id == ownership.this_holder().holder_id
        if lease is not None and mine and self.kernel_store is not None:
            try:  # (a lease inherited across fork() is the parent's to give up)
                self.kernel_store.release_now(lease)
            except Exception as e:  # the lease then lapses on its own
                self.log.warning("kernel %s: could not release ownership: %s", self.kernel_id, e)
        lifetime.forget(self)

    def detach(self) -> None:
        """Let go of the kernel without stopping it (another process may re-attach).

        Releases what this process holds for it (see :meth:`release`) and its
        ownership at once, so the next process can do lifecycle work without waiting;
        the kernel, its connection file and its record stay.
        """
        self.release()


def _client_traits(name: str) -> tuple[DottedObjectName, Type]:  # type: ignore[type-arg]
    """``client_class`` and ``client_factory`` for our client class ``name`` (see
    :mod:`orchestrator.client`): km.client() makes clients that follow the kernel."""
    dotted = f"orchestrator.client.{name}"
    return (
        DottedObjectName(
            dotted,
            config=True,
            help="The client class km.client() makes; ours follows the kernel when a"
            " restart moves it.",
        ),
        Type(klass=dotted, config=True, help="The client class itself; see client_class."),
    )


class KernelManager(PersistentKernelManagerMixin, jc_manager.KernelManager):
    """jupyter_client's blocking ``KernelManager``, persisted and re-attachable."""

    client_class, client_factory = _client_traits("BlockingKernelClient")  # type: ignore[assignment]

    start_kernel = run_sync(PersistentKernelManagerMixin._async_start_kernel)
    pre_start_kernel = run_sync(PersistentKernelManagerMixin._async_pre_start_kernel)
    post_start_kernel = run_sync(PersistentKernelManagerMixin._async_post_start_kernel)
    restart_kernel = run_sync(PersistentKernelManagerMixin._async_restart_kernel)
    shutdown_kernel = run_sync(PersistentKernelManagerMixin._async_shutdown_kernel)
    interrupt_kernel = run_sync(PersistentKernelManagerMixin._async_interrupt_kernel)
    cleanup_resources = run_sync(PersistentKernelManagerMixin._async_cleanup_resources)
    reattach = run_sync(PersistentKernelManagerMixin._async_reattach)
    discard = run_sync(PersistentKernelManagerMixin._async_discard)
    claim = run_sync(PersistentKernelManagerMixin.claim_ownership)


class AsyncKernelManager(PersistentKernelManagerMixin, jc_manager.AsyncKernelManager):
    """jupyter_client's ``AsyncKernelManager``, persisted and re-attachable."""

    client_class, client_factory = _client_traits("AsyncKernelClient")  # type: ignore[assignment]

    start_kernel = PersistentKernelManagerMixin._async_start_kernel  # type: ignore[assignment]
    pre_start_kernel = PersistentKernelManagerMixin._async_pre_start_kernel  # type: ignore[assignment]
    post_start_kernel = PersistentKernelManagerMixin._async_post_start_kernel  # type: ignore[assignment]
    restart_kernel = PersistentKernelManagerMixin._async_restart_kernel  # type: ignore[assignment]
    shutdown_kernel = PersistentKernelManagerMixin._async_shutdown_kernel  # type: ignore[assignment]
    interrupt_kernel = PersistentKernelManagerMixin._async_interrupt_kernel  # type: ignore[assignment]
    cleanup_resources = PersistentKernelManagerMixin._async_cleanup_resources  # type: ignore[assignment]
    reattach = PersistentKernelManagerMixin._async_reattach
    discard = PersistentKernelManagerMixin._async_discard
    claim = PersistentKernelManagerMixin.claim_ownership


class IOLoopKernelManager(KernelManager, jc_ioloop.IOLoopKernelManager):
    """The blocking manager with an auto-restarter (used by MultiKernelManager) that
    restarts only kernels this process still owns."""

    restarter_class = Type(  # type: ignore[assignment]
        "orchestrator.restarter.OwnerRestarter",
        klass="jupyter_client.ioloop.IOLoopKernelRestarter",
        config=True,
        help="The auto-restarter; ours restarts only kernels this process still owns.",
    )


class AsyncIOLoopKernelManager(AsyncKernelManager, jc_ioloop.AsyncIOLoopKernelManager):
    """The async manager with an auto-restarter (used by AsyncMultiKernelManager) that
    restarts only kernels this process still owns."""

    restarter_class = Type(  # type: ignore[assignment]
        "orchestrator.restarter.AsyncOwnerRestarter",
        klass="jupyter_client.ioloop.AsyncIOLoopKernelRestarter",
        config=True,
        help="The auto-restarter; ours restarts only kernels this process still owns.",
    )


async def attach(
    kernel_id: str,
    *,
    store: KernelStore | None = None,
    verify: bool = True,
    timeout: float | None = None,
    manager_class: type[AsyncKernelManager] = AsyncKernelManager,
    own: bool | None = True,
    **manager_kwargs: t.Any,
) -> AsyncKernelManager:
    """A manager re-attached to the stored kernel ``kernel_id``.

    ``own`` as for :meth:`AsyncKernelManager.reattach`: by default the manager becomes
    the kernel's owner (:class:`OwnedElsewhereError` while a live process owns it).
    A gone kernel is discarded (its resources and record cleaned up) and reported as
    :class:`KernelGoneError`; on any other failure nothing is left held.
    """
    store = store or shared_store(None)
    record = await store.get(kernel_id)
    if record is None:
        raise UnknownKernelError(f"unknown kernel id {kernel_id!r}")
    km = manager_class(kernel_store=store, kernel_name=record.kernel_name, **manager_kwargs)
    try:
        await km.reattach(record, verify=verify, timeout=timeout, own=own)
    except KernelGoneError:
        await km.discard()
        raise
    except BaseException:
        km.release()
        raise
    return km


@forks.reset_in_child
def _reset_after_fork() -> None:
    """A forked child opens its own store connections (the parent's are its parent's)."""
    global _stores
    _stores = {}
