"""Kernels as Slurm batch jobs on compute nodes, reached through the login host.

It is the SSH provisioner's connection, account and environment handling (one SSH
connection per login host and account, known_hosts policy, ProxyJump, per-user
accounts), with Slurm in place of a process on the host:

* ``sbatch`` (never salloc or srun: nothing dies with the SSH connection) submits a
  job named after the kernel, with the kernel id and orchestrator instance in its
  ``--comment``. Its batch process is our supervisor (:mod:`.supervisor`), which starts
  the kernel on the compute node, bound to the node's address on ports it picks, and
  reports them in a file on the shared file system; the orchestrator reads it through
  the login host's agent. No inbound connection, no key in the script, argv, the
  environment or ``scontrol show job``.
* The kernel's ports are forwarded through the login host's SSH connection to
  node:port (``direct-tcpip``); that hop is CurveZMQ-encrypted unless the policy says no.
* The queue wait is its own phase (``queue_timeout``), shown as the start's phase with
  Slurm's reason; the kernel's own start-up has ``startup_timeout``. A start that is
  cancelled or times out in either phase cancels the job.
* One ``squeue`` per login host and account per ``queue_interval`` serves every kernel
  (:mod:`.queue`); a failing squeue is "unknown", retried with backoff, never "gone".
* Interrupt: SIGINT to the supervisor (``scancel --batch --signal=INT``), which passes
  it to the kernel. Restart: a new kernel process in the same job. Shutdown: scancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import signal
import time
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, List, Unicode

from orchestrator.errors import KernelStartError, OrchestratorError
from orchestrator.provisioning.contract import GarbageContext, client_connection_info

from ..common.curve import RELAY_SOURCE
from ..common.entitlement import check_profile_entitlement
from ..common.environment import expanded_on_the_kernel_side
from ..common.kernelspec_files import shipped_files
from ..ssh.agent import RemoteAgent, agent_for
from ..ssh.localhost import local_connection
from ..ssh.provisioner import SSHProvisioner
from . import batch
from .queue import PENDING, RUNNING, ClusterQueue, QueueUnknown, ended_why, queue_for

EXTENSIONS = (str(Path(__file__).with_name("login.py")),)
# The kernel-side helpers first: the supervisor calls them by name.
SUPERVISOR = (
    (Path(__file__).parents[1] / "common" / "kernelside.py").read_text()
    + "\n"
    + Path(__file__).with_name("supervisor.py").read_text()
)
_COMMENT = re.compile(r"kernel-orchestrator instance=(\S*) kernel=(\S+)")


class SlurmProvisioner(SSHProvisioner):
    """One kernel in one Slurm job; see the module docstring."""

    kernelspec_summary = "kernels as Slurm batch jobs on compute nodes, via the login host"

    resources = Dict(
        config=True,
        help="Job resources: partition, account, qos, time, nodes, cpus, mem, gres,"
        " reservation, constraint.",
    )
    profiles = Dict(
        config=True,
        help="Named bundles of resources (and sbatch_args) a start picks with"
        " KERNEL_SLURM_PROFILE.",
    )
    sbatch_args = List(Unicode(), config=True, help="Extra sbatch arguments (--flag=value).")
    user_settable = List(
        Unicode(),
        ["time", "cpus", "mem"],
        config=True,
        help="Resources a start may set with KERNEL_SLURM_<NAME>.",
    )
    choices = Dict(config=True, help="Resource -> allowed values (patterns) for a start's values.")
    maxima = Dict(
        {"time": "08:00:00", "cpus": "16", "mem": "64G"},
        config=True,
        help="Resource -> the largest value a start may ask for (time, mem, cpus, nodes).",
    )
    sbatch_arg_allowlist = List(
        Unicode(), config=True, help="Patterns of sbatch arguments a start may add."
    )
    setup = List(
        Unicode(),
        config=True,
        help="Shell lines run in the job before the kernel (module load ..., conda activate).",
    )
    queue_timeout = Float(
        1800.0, config=True, help="Seconds a job may wait in the queue before the start fails."
    )
    queue_interval = Float(2.0, config=True, help="Seconds between squeue runs per login host.")
    restart_grace = Float(
        60.0,
        config=True,
        help="Seconds a job outlives its kernel process, waiting for a restart.",
    )
    walltime_warning = Float(
        600.0, config=True, help="Warn this many seconds before the job's walltime ends."
    )
    restart_ended_jobs = Bool(
        False,
        config=True,
        help="A restart after the job ended submits a new job (off: the restart fails with"
        " the reason the job ended).",
    )
    on_login_node = Bool(
        False,
        config=True,
        help="The orchestrator runs on the login host itself: Slurm's commands run here"
        " without SSH, and clients connect to the node's ports directly.",
    )
    remote_dir = Unicode(
        "~/.kernel-orchestrator/slurm",
        config=True,
        help="Private directory on the cluster's shared file system for kernels' files.",
    )

    # -------------------------------------------------------------- state
    job_id: str = ""
    node: str = ""
    remote_ports: dict[str, int] | None = None
    generation = 0
    job_state = ""
    job_reason = ""
    end_reason = ""
    time_left: int | None = None
    warned = False
    agent_extensions = EXTENSIONS
    _launching = False
    _ending_since: float | None = None
    _job_request: batch.JobRequest | None = None
    poll_interval = 0.5

    @property
    def has_process(self) -> bool:
        return bool(self.job_id)

    async def _queue(self) -> ClusterQueue:
        return queue_for(await self._agent(), self.remote_dir)

    # ---------------------------------------------- on the login node, no SSH
    async def _connection(self) -> Any:
        if self.on_login_node:
            self._conn = local_connection()  # type: ignore[assignment]
            return self._conn
        return await super()._connection()

    async def _choose_host(self) -> None:
        if self.on_login_node:
            self.host, self._conn = "localhost", local_connection()  # type: ignore[assignment]
            return
        await super()._choose_host()

    def _release_connection(self) -> None:
        if self.on_login_node:
            if self._conn is not None:
                agent_for(self._conn, self.python, EXTENSIONS).untrack(str(self.kernel_id))  # type: ignore[arg-type]
            self._conn = None
            return
        super()._release_connection()

    def gc_hosts(self) -> list[str]:
        return ["localhost"] if self.on_login_node else list(self.hosts)

    async def _collect_on(self, host: str, ctx: GarbageContext) -> list[str]:
        if self.on_login_node:
            agent = agent_for(local_connection(), self.python, EXTENSIONS)  # type: ignore[arg-type]
            return await self._collect_with(agent, host, ctx)
        return await super()._collect_on(host, ctx)

    # ------------------------------------------------------------ launch
    def _check_login_node_account(self) -> None:
        """On the login node every job runs as the orchestrator's own account: refuse a
        configuration that names other accounts (they would be ignored), and a gateway
        whose users would share that account (its home holds the store, its ~/.ssh and
        every kernel's files) unless the operator accepts it with ``shared_account``."""
        if not self.on_login_node:
            return
        me = pwd.getpwuid(os.geteuid()).pw_name
        if self.user or self.user_map or self.identity_file or self.certificate_authority:
            raise KernelStartError(
                "slurm-provisioner: on_login_node submits every job as this process's account"
                f" ({me!r}); user, user_map, identity_file and certificate_authority cannot"
                " apply there: remove them,"
                " or use hosts with per-user accounts instead of on_login_node"
            )
        if getattr(self.parent, "multi_tenant", False) and not self.shared_account:
            raise KernelStartError(
                "slurm-provisioner: on_login_node runs every user's kernels as the gateway's"
                f" own account ({me!r}), so this gateway's users would share it with each"
                " other and with the gateway's secrets: use hosts with per-user accounts"
                " (user '{username}' or user_map), or set shared_account to accept it"
            )

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        self._check_login_node_account()
        kwargs = await super().pre_launch(**kwargs)
        client_env = getattr(self, "_client_env", {})
        profile = client_env.get(batch.ENV_PREFIX + "PROFILE", "").strip()
        if profile in self.profiles:
            check_profile_entitlement(
                "Slurm",
                profile,
                self.profiles[profile],
                client_env,
                bool(getattr(self.parent, "multi_tenant", False)),
            )
        self._job_request = batch.job_request(
            base=dict(self.resources),
            profiles=dict(self.profiles),
            sbatch_args=list(self.sbatch_args),
            client_env=getattr(self, "_client_env", {}),
            overridable=list(self.user_settable),
            choices=dict(self.choices),
            maxima=dict(self.maxima),
            sbatch_arg_allowlist=list(self.sbatch_arg_allowlist),
        )
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        self._cmd = cmd
        self._launching = True
        try:
            if self.job_id and await self._job_holds_allocation():
                await self._restart_in_job()
            else:
                if self.job_id and not self.restart_ended_jobs:
                    raise KernelStartError(
                        f"{self.end_reason or f'job {self.job_id} ended'}; start a new kernel"
                    )
                await self._submit_and_start()
        finally:
            self._launching = False
        self.start_phase = ""  # kept after a failure: the error names the phase it ended in
        await self.state_changed()
        return self.connection_info

    async def _job_holds_allocation(self) -> bool:
        try:
            snap = await (await self._queue()).read(str(self.kernel_id), 0)
        except QueueUnknown:
            return True  # unknown: try the restart; a gone job makes it fail clearly
        job = snap.jobs.get(self.job_id)
        return job is not None and job["state"] in RUNNING

    def _launch_request(self) -> dict[str, Any]:
        km = self.parent
        connection = {
            "key": km.session.key.decode(),
            "signature_scheme": km.session.signature_scheme,
            "kernel_name": km.kernel_name,
            "transport": "tcp",
        }
        relay: dict[str, Any] = {}
        if curve := self.choose_curve(leaves_machine=True):
            connection.update(curve_publickey=curve[0], curve_secretkey=curve[1])
            if self.relayed:  # the kernel ignores keys: a relay beside it uses them
                relay = {
                    "python": self.relay_python or self.python,
                    "interrupt_signal": self.relay_interrupt_signal(),
                }
        assert self._job_request is not None
        kid, instance = str(self.kernel_id), self.orchestrator_instance
        args = [
            f"--job-name=kernel-{kid}",
            f"--comment=kernel-orchestrator instance={instance} kernel={kid}",
            "--no-requeue",
            "--ntasks=1",
            "--open-mode=append",
            *self._job_request.sbatch_args(),
        ]
        return {
            "kernel_id": kid,
            "base_dir": self.remote_dir,
            "instance": instance,
            "connection": connection,
            "launch": {
                "kernel_id": kid,
                "instance": instance,
                "argv": self._cmd,
                "env": self._env or {},
                "expand": expanded_on_the_kernel_side(self._env or {}, self.kernel_spec.env),
                "cwd": self.working_dir,
                "working_dir": self.working_dir_request(),
                "timeout": self.startup_timeout,
                "restart_grace": self.restart_grace,
                "relay": relay,
            },
            "relay_source": RELAY_SOURCE if relay else "",
            "resources": shipped_files(self.spec_files()),
            "supervisor": SUPERVISOR,
            "script": batch.batch_script(self.python, list(self.setup)),
            "args": args,
        }

    async def _submit_and_start(self) -> None:
        self.job_id, self.node, self.remote_ports, self.generation = "", "", None, 0
        self.end_reason = ""
        self.start_phase = "connecting to the login host"
        await self._choose_host()
        try:
            self.start_phase = f"submitting the job on {self.host}"
            reply = await (await self._agent()).call("slurm_submit", self._launch_request(), 60)
            self.job_id = str(reply["job_id"])
            self.log.info("kernel %s: Slurm job %s on %s", self.kernel_id, self.job_id, self.host)
            await self.state_changed()  # the job exists: its record must too
            await self._wait_for_allocation()
            await self._wait_for_ports(0)
            await self._open_tunnel()
            await self._wait_until_ready()
        except BaseException as e:
            await asyncio.shield(self._cancel_job())
            await self._teardown()
            if isinstance(e, OrchestratorError) and not isinstance(e, KernelStartError):
                raise KernelStartError(f"kernel on {self.host}: {e}") from None
            raise

    async def _restart_in_job(self) -> None:
        """A new kernel process in the job we hold: no new wait in the queue."""
        self.generation += 1
        self.start_phase = f"restarting the kernel in job {self.job_id}"
        agent = await self._agent()
        await agent.call(
            "slurm_control",
            {
                "kernel_id": str(self.kernel_id),
                "base_dir": self.remote_dir,
                "job_id": self.job_id,
                "control": "restart",
                "generation": self.generation,
            },
        )
        await self._wait_for_ports(self.generation)
        await self._open_tunnel()
        await self._wait_until_ready()

    # During a start the kernel's state file is read every START_POLL seconds (one agent
    # request, no Slurm command); the shared squeue snapshot at most once a second.
    START_POLL = 0.05

    async def _kernel_state(self) -> dict[str, Any]:
        agent = await self._agent()
        reply = await agent.call(
            "slurm_state", {"kernel_id": str(self.kernel_id), "base_dir": self.remote_dir}, 15
        )
        return reply.get("state") or {}

    async def _job(self) -> dict[str, str]:
        """The job in a snapshot at most a second old; raises QueueUnknown."""
        snap = await (await self._queue()).read(str(self.kernel_id), 1.0)
        job = snap.jobs.get(self.job_id)
        if job is None:
            raise KernelStartError(f"job {self.job_id} left Slurm's queue before it started")
        self.job_state, self.job_reason = job["state"], job["reason"]
        if job["state"] not in RUNNING + PENDING:
            raise KernelStartError(await self._ended_message(job))
        return job

    async def _wait_for_allocation(self) -> None:
        """The queue wait: until the job runs, it ends, or ``queue_timeout`` passes."""
        deadline = time.monotonic() + self.queue_timeout
        last, next_check = "", 0.0
        while True:
            if await self._kernel_state():  # the supervisor runs: so does the job
                self.start_phase = f"job {self.job_id} running"
                return
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                try:
                    job = await self._job()
                except QueueUnknown as e:
                    self.start_phase = f"job {self.job_id}: {e} (retrying)"
                    job = None
                if job is not None and job["state"] in RUNNING:
                    self.start_phase = f"job {self.job_id} running on {job['nodes']}"
                    return
                if job is not None:
                    self.start_phase = f"job {self.job_id} pending ({job['reason']})"
                    if self.start_phase != last:
                        last = self.start_phase
                        self.log.info("kernel %s: %s", self.kernel_id, self.start_phase)
            if time.monotonic() > deadline:
                why = f"reason: {self.job_reason}" if self.job_reason else "state unknown"
                raise KernelStartError(
                    f"job {self.job_id} was still pending after {self.queue_timeout:g}s ({why});"
                    " it has been cancelled"
                )
            await asyncio.sleep(self.START_POLL * 2)

    async def _wait_for_ports(self, generation: int) -> None:
        """Until the supervisor reports the kernel's node and ports for ``generation``."""
        deadline = time.monotonic() + self.startup_timeout
        next_check = time.monotonic() + 1.0
        self.start_phase = f"job {self.job_id} running: starting the kernel"
        while time.monotonic() < deadline:
            state = await self._kernel_state()
            if int(state.get("generation", -1)) == generation:
                if state.get("status") == "running" and state.get("ports"):
                    self.node = str(state["node"])
                    self.remote_ports = {ch: int(p) for ch, p in state["ports"].items()}
                    return
                if state.get("status") == "exited":
                    raise await self._exited_during_start_up(state)
            if time.monotonic() >= next_check:  # the job may have ended meanwhile
                next_check = time.monotonic() + 1.0
                with contextlib.suppress(QueueUnknown):
                    await self._job()
            await asyncio.sleep(self.START_POLL)
        raise KernelStartError(
            f"the kernel in job {self.job_id} did not bind its ports in time"
            f" ({self.startup_timeout:g}s)"
        )

    async def _ended_message(self, job: dict[str, str]) -> str:
        why = ended_why(job["state"])
        reason = job.get("reason") or ""
        self.end_reason = f"job {self.job_id}: {why}" + (
            f" ({reason})" if reason and reason != "None" else ""
        )
        tail = await self.startup_diagnostics()
        return self.end_reason + (f"\n--- last lines of its output ---\n{tail}" if tail else "")

    async def _open_tunnel(self) -> None:
        if not self.on_login_node:
            await super()._open_tunnel()
            return
        assert self.remote_ports is not None  # the node's ports are reachable from here
        self.connection_info = client_connection_info(  # type: ignore[assignment]
            self, self.node, self.remote_ports, self._curve
        )

    def _remote_endpoint(self) -> tuple[str, dict[str, int]]:
        """The kernel listens on its node's address, reached from the login host."""
        assert self.remote_ports is not None
        return self.node, dict(self.remote_ports)

    async def _exited_during_start_up(self, state: dict[str, Any]) -> KernelStartError:
        tail = await self.startup_diagnostics()
        detail = state.get("error") or f"status {state.get('exit')}"
        return KernelStartError(
            f"the kernel in job {self.job_id} exited during start-up ({detail})"
            + (f"\n--- last lines of its output ---\n{tail}" if tail else "")
        )

    async def _wait_until_ready(self) -> None:
        reply = await self.first_answer(
            self.startup_timeout, image=f"{self.python} (job {self.job_id})", address=self.node
        )
        if reply is None:
            # A relay holds the ports as soon as it starts: a kernel behind it that
            # then exits is seen here, not while waiting for the ports.
            state: dict[str, Any] = {}
            with contextlib.suppress(OrchestratorError):  # (then the silence is the news)
                state = await self._kernel_state()
            if int(state.get("generation", -1)) == self.generation and (
                state.get("status") == "exited"
            ):
                raise await self._exited_during_start_up(state)
            raise KernelStartError(
                f"the kernel in job {self.job_id} on {self.node} did not answer through the"
                f" login host within {self.startup_timeout:g}s"
            )

    # --------------------------------------------------------- lifecycle
    def watch_liveness(self, notify: Any) -> None:
        """None: a batch kernel's poll also watches its job (walltime, a kernel exit
        that ends it), so its restarter keeps jupyter_client's timer (the queue
        snapshot it reads is shared: one ``squeue`` per interval for every kernel)."""
        return None

    async def poll(self) -> int | None:
        if not self.job_id:
            return 0
        if self.remote_ports is None and not self._launching:
            self.end_reason = self.end_reason or f"job {self.job_id}: its start never finished"
            return 1
        try:
            snap = await (await self._queue()).read(str(self.kernel_id), self.queue_interval)
        except OrchestratorError as e:  # QueueUnknown among them
            self.log.debug("Slurm status of kernel %s unknown: %s", self.kernel_id, e)
            return None
        job = snap.jobs.get(self.job_id)
        if job is None:
            self._ended(f"job {self.job_id} is no longer in Slurm's queue")
            return 1
        self.job_state, self.job_reason = job["state"], job["reason"]
        state = snap.kernels.get(str(self.kernel_id)) or {}
        kernel_exited = (
            int(state.get("generation", -1)) == self.generation and state.get("status") == "exited"
        )
        if job["state"] in RUNNING:
            self._check_walltime(job)
            if not kernel_exited:
                self._ending_since = None
                return None
            if state.get("error") == "the job was ended":
                # Slurm is ending the job (walltime, preemption, a cancel): its final
                # state, a moment later, says why.
                self._ending_since = self._ending_since or time.monotonic()
                if time.monotonic() - self._ending_since < 60:
                    return None
                self._ended(f"job {self.job_id} was ended")
            return int(state.get("exit") or 1)
        if job["state"] in PENDING:
            return None
        self._ended(f"job {self.job_id}: {ended_why(job['state'])}")
        return 1

    def _ended(self, reason: str) -> None:
        if self.end_reason != reason:
            self.end_reason = reason
            self.log.warning("kernel %s is dead: %s", self.kernel_id, reason)

    def _check_walltime(self, job: dict[str, str]) -> None:
        self.time_left = batch.parse_time_left(job.get("time_left", ""))
        left = self.time_left
        if left is not None and left <= self.walltime_warning and not self.warned:
            self.warned = True
            self.log.warning(
                "kernel %s: job %s reaches its walltime in %s; save your work",
                self.kernel_id,
                self.job_id,
                batch.format_walltime(left),
            )

    def status_fields(self) -> dict[str, Any]:
        """The job, for the gateway's kernel model and the CLI."""
        fields: dict[str, Any] = {
            "job_id": self.job_id,
            "state": self.job_state,
            "reason": self.job_reason,
            "node": self.node,
            "time_left": self.time_left,
        }
        if self.start_phase:
            fields["phase"] = self.start_phase
        if self.warned and self.time_left is not None:
            fields["warning"] = f"walltime ends in {batch.format_walltime(self.time_left)}"
        if self.end_reason:
            fields["ended"] = self.end_reason
        return fields

    async def _job_call(self, action: str, **fields: Any) -> None:
        agent = await self._agent()
        await agent.call(
            action,
            {
                "kernel_id": str(self.kernel_id),
                "base_dir": self.remote_dir,
                "job_id": self.job_id,
                **fields,
            },
        )
        (await self._queue()).invalidate()

    async def send_signal(self, signum: int) -> None:
        if not self.job_id or signum == 0:
            return
        if signum in (signal.SIGKILL, signal.SIGTERM):
            await self.kill()
            return
        await self._job_call("slurm_signal", signal=signal.Signals(signum).name[3:])

    async def kill(self, restart: bool = False) -> None:
        if not self.job_id:
            return
        if restart:  # the kernel process only: the job is kept for the new one
            await self._job_call("slurm_control", control="kill", generation=self.generation)
        else:
            await self._job_call("slurm_cancel", remove=False)

    async def terminate(self, restart: bool = False) -> None:
        await self.kill(restart=restart)

    async def cleanup(self, restart: bool = False) -> None:
        if restart:
            return  # same job, same tunnel: the restart reuses both
        try:
            await self._cancel_job()
        finally:
            await self._teardown()

    async def _cancel_job(self) -> None:
        if not self.host:
            return
        if not self.job_id:  # submitted, perhaps, but its id never came back
            with contextlib.suppress(OrchestratorError):
                await self._job_call("slurm_cancel", job_name=f"kernel-{self.kernel_id}")
            return
        try:
            await self._job_call("slurm_cancel", remove=True)
            (await self._queue()).untrack(str(self.kernel_id))
        except OrchestratorError as e:
            self.log.warning("cancelling job %s of kernel %s: %s", self.job_id, self.kernel_id, e)
            raise
        self.job_id = ""

    async def startup_diagnostics(self, lines: int = 20) -> str:
        if not self.host:
            return ""
        try:
            agent = await self._agent()
            reply = await agent.call(
                "slurm_tail",
                {"kernel_id": str(self.kernel_id), "base_dir": self.remote_dir, "lines": lines},
                15,
            )
        except OrchestratorError:
            return ""
        return "".join(reply.get(k) or "" for k in ("job", "kernel")).strip()

    def release(self) -> None:
        if self._conn is not None:
            queue_for(agent_for(self._conn, self.python, EXTENSIONS), self.remote_dir).untrack(
                str(self.kernel_id)
            )
        super().release()

    def resource_summary(self) -> str:
        return f"Slurm job {self.job_id or '?'} via {self.host or '?'} (node {self.node or '?'})"

    # ------------------------------------------------------- persistence
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(
            job_id=self.job_id,
            node=self.node,
            remote_ports=self.remote_ports,
            generation=self.generation,
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.job_id = str(provisioner_info.get("job_id") or "")
        self.node = str(provisioner_info.get("node") or "")
        ports = provisioner_info.get("remote_ports")
        self.remote_ports = {k: int(v) for k, v in ports.items()} if ports else None
        self.generation = int(provisioner_info.get("generation") or 0)

    async def reconnect(self) -> None:
        if not self.job_id or self.remote_ports is None or not self.host:
            return
        await self._connection()
        await self._open_tunnel()

    # ---------------------------------------------------------------- gc
    entry_point = "slurm-provisioner"

    async def _collect_with(self, agent: RemoteAgent, host: str, ctx: GarbageContext) -> list[str]:
        """Jobs and directories of this deployment on ``host`` that no record owns."""
        found: list[str] = []
        reply = await agent.call("slurm_list", {"base_dir": self.remote_dir}, 60)
        ages = {str(k.get("kernel_id")): float(k.get("age", 0)) for k in reply.get("kernels", [])}
        for job_id, job in (reply.get("jobs") or {}).items():
            m = _COMMENT.fullmatch(job.get("comment", "").strip())
            if not m or m[1] != ctx.instance or m[2] in ctx.owned_kernel_ids:
                continue
            if job["state"] not in PENDING + RUNNING:
                continue
            if ages.get(m[2], ctx.grace_seconds) < ctx.grace_seconds:
                continue
            found.append(f"Slurm job {job_id} (kernel {m[2]}) on {host}")
            if not ctx.dry_run:
                await agent.call(
                    "slurm_cancel",
                    {"kernel_id": m[2], "base_dir": self.remote_dir, "job_id": job_id},
                )
            ages.pop(m[2], None)
        for k in reply.get("kernels", []):
            kid = str(k.get("kernel_id", ""))
            if k.get("instance") != ctx.instance or kid in ctx.owned_kernel_ids:
                continue
            if kid not in ages or ages[kid] < ctx.grace_seconds:
                continue
            found.append(f"kernel directory {kid} on {host}")
            if not ctx.dry_run:
                await agent.call("slurm_cancel", {"kernel_id": kid, "base_dir": self.remote_dir})
        return found

    # ------------------------------------------------------- kernelspecs
    @classmethod
    def add_kernelspec_arguments(cls, parser: Any) -> None:
        super().add_kernelspec_arguments(parser)
        for action in parser._actions:
            if action.dest == "hosts":  # not with --on-login-node
                action.required = False
        g = parser.add_argument_group("slurm-provisioner")
        g.add_argument(
            "--on-login-node",
            action="store_true",
            help="the orchestrator runs on the login host: no SSH (instead of --host)",
        )
        g.add_argument("--partition", required=True)
        g.add_argument("--time", required=True, help="walltime, HH:MM:SS")
        for name in ("account", "qos", "gres", "reservation", "constraint", "cpus", "mem"):
            g.add_argument(f"--{name}", default="")
        g.add_argument(
            "--sbatch-arg", action="append", default=[], dest="sbatch_args", metavar="ARG"
        )
        g.add_argument(
            "--setup", action="append", default=[], help="a shell line run before the kernel"
        )
        g.add_argument("--queue-timeout", type=float, default=None)

    @classmethod
    def kernelspec_config(cls, args: Any) -> dict[str, Any]:
        if bool(args.hosts) == bool(args.on_login_node):
            raise batch.ResourceError("give either --host LOGIN or --on-login-node")
        args.hosts = args.hosts or []
        config = super().kernelspec_config(args)
        if args.on_login_node:
            config.pop("hosts", None)
            config["on_login_node"] = True
        for ssh_only in ("loopback_private", "port_range"):
            config.pop(ssh_only, None)
        names = (
            "partition",
            "time",
            "account",
            "qos",
            "gres",
            "reservation",
            "constraint",
            "cpus",
            "mem",
        )
        resources = {n: batch.check_value(n, getattr(args, n)) for n in names if getattr(args, n)}
        config["resources"] = resources
        if args.sbatch_args:
            config["sbatch_args"] = batch.check_sbatch_args(list(args.sbatch_args), None)
        if args.setup:
            config["setup"] = list(args.setup)
        if args.queue_timeout:
            config["queue_timeout"] = args.queue_timeout
        return config
