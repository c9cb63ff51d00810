"""Kernels on remote hosts over SSH, their five ZMQ channels tunnelled back.

* A host is picked from the kernelspec's pool (round-robin or fewest kernels); an
  unreachable host is skipped with a message saying why.
* The launcher (stdlib Python, sent over stdin) starts the kernel detached in its own
  session on the remote host, lets it bind free ports itself on the remote loopback
  (no port collisions on shared login nodes), and reports ports and pids back over
  the same channel: no inbound connection to the orchestrator, no key in argv.
* The kernel's ports are forwarded from local loopback ports through the shared SSH
  connection; if it drops, the tunnel layer rebuilds it on the same local ports. While
  the tunnel is down the kernel is reported alive-but-unreachable, never dead, so the
  restarter leaves it alone.
* Status, signals and cleanup of every kernel on a host go to one remote agent on the
  shared connection (:mod:`.agent`): polling idle kernels starts no remote process.
* Each gateway user can have a remote account (and key) of their own
  (:mod:`.accounts`); the kernel's connection file is 0600 in a 0700 directory of that
  account, and its loopback ports are CurveZMQ-encrypted unless the operator says no
  other account runs on the hosts (``loopback_private``).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import signal
from collections.abc import Callable
from typing import Any

from jupyter_client.provisioning import KernelProvisionerBase
from traitlets import Bool, CaselessStrEnum, Dict, Float, List, Unicode

from orchestrator.errors import KernelStartError, OrchestratorError
from orchestrator.executors import run_blocking
from orchestrator.provisioning.contract import (
    GarbageContext,
    LivenessWatch,
    OrchestratorProvisionerMixin,
    client_connection_info,
    kernelspec_configs,
)
from orchestrator.tunnels.ssh import (
    CertificateAuthority,
    CertificateRequest,
    KernelTunnel,
    SSHConnection,
    SSHTarget,
    pool,
    resolve_target,
)

from ..common.curve import RELAY_SOURCE, CurveNegotiation
from ..common.environment import expanded_on_the_kernel_side, launch_environment
from ..common.kernelspec_files import RemoteKernelCommand, kernel_argv, shipped_files
from ..common.workdir import WorkingDirMapping
from .accounts import RemoteAccount, account_for, parse_user_map, static_accounts
from .agent import RemoteAgent, agent_for

_round_robin = itertools.count()


class SSHProvisioner(  # type: ignore[misc, metaclass]
    WorkingDirMapping,
    CurveNegotiation,
    RemoteKernelCommand,
    OrchestratorProvisionerMixin,
    KernelProvisionerBase,
):
    """One kernel process on a remote host, reached through a shared SSH connection."""

    kernelspec_summary = "kernels on remote hosts over SSH (tunnelled, re-attachable)"

    hosts = List(Unicode(), config=True, help="Host pool: aliases or [user@]host[:port].")
    host_selection = CaselessStrEnum(
        ["round-robin", "fewest-kernels"],
        "round-robin",
        config=True,
        help="How a host of the pool is picked for a new kernel.",
    )
    user = Unicode(
        "",
        config=True,
        help="SSH user (default: from ssh config, else ours); '{username}' becomes the"
        " gateway user's name, so every user has a remote account of their own.",
    )
    port = Unicode("", config=True, help="SSH port (default: from ssh config, else 22).")
    identity_file = Unicode(
        "",
        config=True,
        help="Private key (default: ssh config, ~/.ssh/id_*); may hold '{username}'.",
    )
    user_map = Dict(
        config=True,
        help="Gateway user -> remote account name, or {user, identity_file}; wins over the"
        " user and identity_file templates.",
    )
    shared_account = Bool(
        False,
        config=True,
        help="Let the kernels of several gateway users share one remote account (they can"
        " then read each other's files). Off: a multi-user gateway refuses such kernelspecs.",
    )
    loopback_private = Bool(
        False,
        config=True,
        help="No other account runs processes on the hosts (a machine per user): kernel"
        " ports on the remote loopback are then left unencrypted under policy auto.",
    )
    transport_encryption = Unicode(
        "",
        config=True,
        help="CurveZMQ: auto (encrypt unless loopback_private), required, disabled;"
        " '' : the orchestrator's setting.",
    )
    known_hosts = Unicode("", config=True, help="known_hosts file (default ~/.ssh/known_hosts).")
    host_key_policy = CaselessStrEnum(
        ["reject", "accept-new"],
        "reject",
        config=True,
        help="Unknown host keys: reject, or accept-new (trust and record a first-seen key;"
        " a changed key is always refused).",
    )
    certificate_authority = Unicode(
        "",
        config=True,
        help="Certificate mode: path of an OpenSSH CA private key (mode 600) that the hosts'"
        " sshd trusts (TrustedUserCAKeys). Each connection then logs in with a short-lived"
        " certificate minted for its account; no per-user key is stored, and identity_file"
        " and the SSH agent are not used for the host (jump hosts log in with their own).",
    )
    certificate_validity = Float(
        300.0,
        config=True,
        help="Certificate mode: seconds a minted certificate stays valid (30..86400); sshd"
        " checks it at login only, so a connection outlives it.",
    )
    certificate_source_addresses = List(
        Unicode(),
        config=True,
        help="Certificate mode: the gateway's addresses or CIDRs as the hosts see them"
        " (the certificate's source-address); a certificate is then worthless elsewhere.",
    )
    proxy_jump = Unicode("", config=True, help="ProxyJump chain: user@host:port[,...].")
    ssh_config = Unicode("", config=True, help="ssh config file (default ~/.ssh/config).")
    python = Unicode("python3", config=True, help="Remote Python for the launcher and kernel.")
    remote_dir = Unicode(
        "~/.kernel-orchestrator/kernels",
        config=True,
        help="Private directory on the remote host for kernels' files.",
    )
    port_range = Unicode("", config=True, help="lo-hi: remote ports to use ('' : any free).")
    environment = Dict(config=True, help="Fixed environment for the kernel.")
    env_allowlist = List(
        Unicode(), ["KERNEL_*"], config=True, help="Client variables (fnmatch) passed on."
    )
    working_dir = Unicode(
        "",
        config=True,
        help="Remote working directory (default: home); a KERNEL_WORKING_DIR mapped by"
        " working_dir_map wins.",
    )
    startup_timeout = Float(
        60.0, config=True, help="Seconds from launch until the kernel must answer."
    )
    connect_timeout = Float(10.0, config=True, help="Seconds an SSH connection attempt may take.")

    # -------------------------------------------------------------- state
    host: str = ""
    account: RemoteAccount | None = None  # whose account on the hosts the kernel runs as
    remote: dict[str, Any] | None = None  # pid, pgid, start, ports, dir
    local_ports: dict[str, int] | None = None
    _target: SSHTarget | None = None
    _conn: SSHConnection | None = None
    _tunnel: KernelTunnel | None = None
    _env: dict[str, str] | None = None
    _cmd: list[str] | None = None
    poll_interval = 0.2

    @property
    def has_process(self) -> bool:
        return self.remote is not None

    @property
    def tunnel_state(self) -> str:
        """'up', 'stalled', 'reconnecting', 'connecting' or 'closed': the tunnel, not
        the kernel."""
        return self._tunnel.state if self._tunnel is not None else "closed"

    async def _connection(self) -> SSHConnection:
        """This kernel's share of the host's SSH connection (acquired on first use)."""
        if self._conn is None:
            if self._target is None:
                self._target = self._resolve(self.host)
            self._conn = await run_blocking("ssh-connect", pool.acquire, self._target)
        return self._conn

    # Actions the remote agent gets beyond the launcher's (see remote.program).
    agent_extensions: tuple[str, ...] = ()

    async def _agent(self) -> RemoteAgent:
        return agent_for(await self._connection(), self.python, self.agent_extensions)

    # ----------------------------------------------------------- targets
    def _resolve(self, destination: str) -> SSHTarget:
        account = self.account or RemoteAccount(self.user, self.identity_file)
        target = resolve_target(
            destination,
            user=account.user or None,
            port=int(self.port) if self.port else None,
            identity_file=account.identity_file or None,
            known_hosts=self.known_hosts or None,
            proxy_jump=self.proxy_jump or None,
            host_key_policy=self.host_key_policy,
            ssh_config=self.ssh_config or None,
            connect_timeout=self.connect_timeout,
        )
        if not self.certificate_authority:
            return target
        return dataclasses.replace(
            target,
            identity_files=(),
            use_agent=False,
            certificate=CertificateRequest(
                authority=self.certificate_authority,
                principal=target.user,
                owner=account.owner,
                validity=self.certificate_validity,
                source_addresses=tuple(self.certificate_source_addresses),
            ),
        )

    async def _candidate_hosts(self, client_env: dict[str, str]) -> list[str]:
        if not self.hosts:
            raise OrchestratorError("ssh-provisioner: the kernelspec names no hosts")
        wanted = client_env.get("KERNEL_SSH_HOST")
        if wanted:
            if wanted not in self.hosts:
                raise OrchestratorError(
                    f"KERNEL_SSH_HOST={wanted!r} is not in this kernelspec's hosts"
                    f" ({', '.join(self.hosts)})"
                )
            return [wanted]
        hosts = list(self.hosts)
        if self.host_selection == "fewest-kernels":
            load = await self._kernels_per_host()
            return sorted(hosts, key=lambda h: (load.get(h, 0), hosts.index(h)))
        start = next(_round_robin) % len(hosts)
        return hosts[start:] + hosts[:start]

    async def _kernels_per_host(self) -> dict[str, int]:
        store = getattr(self.parent, "kernel_store", None)
        counts: dict[str, int] = {}
        if store is None:
            return counts
        for record in await store.list():
            host = (record.provisioner_info or {}).get("host")
            if record.provisioner_name == "ssh-provisioner" and host:
                counts[host] = counts.get(host, 0) + 1
        return counts

    # ------------------------------------------------------------ launch
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        self._client_env, self._env = launch_environment(
            kwargs.pop("env", None), self.kernel_spec.env, self.environment, self.env_allowlist
        )
        self.account = account_for(
            self._client_env.get("KERNEL_USERNAME", ""),
            user=self.user,
            identity_file=self.identity_file,
            user_map=dict(self.user_map),
            multi_tenant=bool(getattr(self.parent, "multi_tenant", False)),
            shared_account=self.shared_account,
        )
        self.choose_working_dir(self._client_env)
        if self.certificate_authority:  # a clear refusal before any login is tried
            await run_blocking("ssh-ca", CertificateAuthority.load, self.certificate_authority)
        argv = self.spec_argv(kwargs.pop("extra_arguments", []) or [])
        if argv and argv[0] in ("python", "python3"):
            argv[0] = self.python  # the remote Python (never the orchestrator's)
        # {connection_file} and {resource_dir} are the kernel's directory there, filled
        # by the launcher; {prefix} is the operator's word for the remote side.
        kwargs["cmd"] = kernel_argv(
            argv,
            connection_file=None,
            resource_dir=None,
            prefix=self.kernel_prefix,
            where=f"on the remote host ({type(self).__name__})",
        )
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        self._cmd = cmd
        if self.remote is not None or self._conn is None:
            await self._choose_host()
        assert self._conn is not None
        km = self.parent
        request = {
            "kernel_id": str(self.kernel_id),
            "base_dir": self.remote_dir,
            "instance": self.orchestrator_instance,
            "argv": cmd,
            "env": self._env or {},
            "expand": expanded_on_the_kernel_side(self._env or {}, self.kernel_spec.env),
            "resources": shipped_files(self.spec_files()),
            "cwd": self.working_dir,
            "working_dir": self.working_dir_request(),
            "key": km.session.key.decode(),
            "signature_scheme": km.session.signature_scheme,
            "kernel_name": km.kernel_name,
            "timeout": self.startup_timeout,
            "port_range": self._port_range(),
        }
        if curve := self.choose_curve(leaves_machine=not self.loopback_private):
            request.update(curve_publickey=curve[0], curve_secretkey=curve[1])
            if self.relayed:  # the kernel ignores keys: a relay beside it uses them
                request["relay"] = {
                    "python": self.relay_python or self.python,
                    "source": RELAY_SOURCE,
                    "interrupt_signal": self.relay_interrupt_signal(),
                }
        try:
            agent = await self._agent()
            self.remote = await agent.call("launch", request, self.startup_timeout + 30)
            await self._open_tunnel()
            await self._wait_until_ready()
        except BaseException as e:
            if self.remote is None:
                # The launch was sent but not answered (a cancelled start): the cleanup
                # finds its process, if it got one, from the kernel's own directory.
                self.remote = {}
            await self._remove_remote()
            await self._teardown()
            if isinstance(e, OrchestratorError) and not isinstance(e, KernelStartError):
                raise KernelStartError(f"kernel on {self.host}: {e}") from None
            raise
        await self.state_changed()
        return self.connection_info

    def _port_range(self) -> list[int] | None:
        if not self.port_range:
            return None
        m = re.fullmatch(r"(\d+)-(\d+)", self.port_range.strip())
        if not m or not 0 < int(m[1]) <= int(m[2]) < 65536:
            raise OrchestratorError(f"port_range {self.port_range!r} must look like 50000-50100")
        return [int(m[1]), int(m[2])]

    async def _choose_host(self) -> None:
        failures: list[str] = []
        for host in await self._candidate_hosts(getattr(self, "_client_env", {})):
            try:
                target = self._resolve(host)
                conn = await run_blocking("ssh-connect", pool.acquire, target)
            except OrchestratorError as e:
                self.log.warning("ssh-provisioner: skipping host %s: %s", host, e)
                failures.append(f"{host}: {e}")
                continue
            self._release_connection()
            self.host, self._target, self._conn = host, target, conn
            return
        raise KernelStartError("no host of the pool can be reached: " + "; ".join(failures))

    def _remote_endpoint(self) -> tuple[str, dict[str, int]]:
        """Where the kernel listens, as seen from the SSH host: its loopback here."""
        assert self.remote is not None
        return "127.0.0.1", {ch: int(p) for ch, p in self.remote["ports"].items()}

    async def _open_tunnel(self) -> None:
        assert self._target is not None
        remote_host, remote_ports = self._remote_endpoint()
        if self._tunnel is not None and self._tunnel.forwards:
            # A restart: same local ports, pointed at the new remote ports.
            for ch, fwd in self._tunnel.forwards.items():
                fwd.remote_host, fwd.remote_port = remote_host, remote_ports[ch]
        else:
            self._tunnel = KernelTunnel(self._target)
            self.local_ports = await run_blocking(
                "ssh", self._tunnel.open, remote_ports, self.local_ports, remote_host
            )
        self.local_ports = {ch: f.local_port for ch, f in self._tunnel.forwards.items()}
        self.connection_info = client_connection_info(  # type: ignore[assignment]
            self, "127.0.0.1", self.local_ports, self._curve
        )

    async def _wait_until_ready(self) -> None:
        reply = await self.first_answer(
            self.startup_timeout, image=f"{self.python} on {self.host}", address=self.host
        )
        if reply is None:
            why = (
                "exited during start-up"
                if await self.poll() is not None
                else f"did not answer through the tunnel within {self.startup_timeout:g}s"
            )
            message = f"kernel on {self.host} {why}"
            if output := await self.startup_diagnostics():
                message += "\n--- last lines of its output ---\n" + output
            raise KernelStartError(message)

    async def startup_diagnostics(self, lines: int = 20) -> str:
        try:
            agent = await self._agent()
            reply = await agent.call("tail", self._request(lines=lines), 30)
        except OrchestratorError:
            return ""
        return str(reply.get("text") or "").rstrip()

    # --------------------------------------------------------- lifecycle
    def _request(self, **extra: Any) -> dict[str, Any]:
        remote = self.remote or {}
        return {
            "kernel_id": str(self.kernel_id),
            "base_dir": self.remote_dir,
            "pid": remote.get("pid"),
            "pgid": remote.get("pgid"),
            "start": remote.get("start"),
            **extra,
        }

    async def poll(self) -> int | None:
        if self.remote is None:
            return 0
        try:
            conn = await self._connection()
            if conn.state != "up":
                return None  # tunnel down or being rebuilt: unknown, not dead
            remote = self.remote
            running = await agent_for(conn, self.python).running(
                str(self.kernel_id), remote.get("pid"), remote.get("start")
            )
        except OrchestratorError as e:
            self.log.debug("ssh status of %s unknown: %s", self.kernel_id, e)
            return None
        return None if running else 1

    def watch_liveness(self, notify: Callable[[], None]) -> LivenessWatch | None:
        """Told by the host agent's refresher (see :mod:`.agent`): one status request
        per host every few seconds, whatever the number of kernels."""
        conn, remote = self._conn, self.remote
        if conn is None or remote is None:
            return None
        agent = agent_for(conn, self.python)  # (the one poll asks)
        cancel = agent.watch(str(self.kernel_id), remote.get("pid"), remote.get("start"), notify)
        return LivenessWatch(
            pushed=lambda: (
                self.remote is remote and conn.state == "up" and agent.refresher.healthy()
            ),
            cancel=cancel,
        )

    async def send_signal(self, signum: int) -> None:
        if self.remote is None or signum == 0:
            return
        agent = await self._agent()
        agent.invalidate()
        await agent.call("signal", self._request(signum=int(signum)), 15)

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        try:
            await self._remove_remote()
        finally:
            if not restart:  # a restart keeps the tunnel: same local ports for clients
                await self._teardown()

    async def _remove_remote(self) -> None:
        """Stop the remote kernel if it still runs and remove its files there."""
        if self.remote is not None and self.host:
            try:
                agent = await self._agent()
                agent.invalidate()
                await agent.call("cleanup", self._request(), 30)
                agent.untrack(str(self.kernel_id))
            except OrchestratorError as e:
                self.log.warning(
                    "remote cleanup of kernel %s on %s failed: %s", self.kernel_id, self.host, e
                )
                self.remote = None
                raise
        self.remote = None

    async def _teardown(self) -> None:
        """Close this kernel's tunnel and release its share of the SSH connection."""
        await run_blocking("ssh", self.release)

    def release(self) -> None:
        """Close the tunnel and give back this kernel's share of the connection."""
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        self._release_connection()

    def _release_connection(self) -> None:
        if self._conn is not None and self._target is not None:
            agent_for(self._conn, self.python, self.agent_extensions).untrack(str(self.kernel_id))
            pool.release(self._target)
        self._conn = None

    def resource_summary(self) -> str:
        remote = self.remote or {}
        return (
            f"process {remote.get('pid', '?')} and directory"
            f" {remote.get('dir') or self.remote_dir} on host {self.host or '?'}"
        )

    # ------------------------------------------------------- persistence
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(
            {
                "host": self.host,
                "account": self.account.to_json() if self.account else None,
                "remote": self.remote,
                "local_ports": self.local_ports,
                "cmd": self._cmd,
                "env": self._env,
            }
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        """Load the saved state only; :meth:`reconnect` rebuilds the tunnel."""
        await super().load_provisioner_info(provisioner_info)
        self.host = provisioner_info.get("host") or ""
        self.account = RemoteAccount.from_json(provisioner_info.get("account"))
        self.remote = provisioner_info.get("remote")
        self.local_ports = provisioner_info.get("local_ports")
        self._cmd = provisioner_info.get("cmd")
        self._env = provisioner_info.get("env")
        if self.host:
            self._target = self._resolve(self.host)

    # The tunnel's local ports are this process's; a follower keeps its own.
    process_local_state = ("local_ports",)

    async def follow(self, saved: dict[str, Any]) -> None:
        """Point this process's tunnel at the kernel process a restart elsewhere made
        (new remote ports, or a new node for a batch job), on the same local ports."""
        if (saved.get("host") or "") != self.host:
            self.release()  # the tunnel and connection lead to the old host
        await super().follow(saved)

    async def reconnect(self) -> None:
        """Rebuild the tunnel, on the same local ports if they are still free."""
        if self.remote is None or not self.host:
            return
        saved = self.local_ports
        await self._connection()
        await self._open_tunnel()
        if self.local_ports != saved:
            self.log.warning(
                "kernel %s: old local ports taken, tunnel moved to %s",
                self.kernel_id,
                self.local_ports,
            )

    # ---------------------------------------------------------------- gc
    # The entry-point name gc looks for in kernelspecs (a subclass sets its own).
    entry_point = "ssh-provisioner"

    @classmethod
    async def collect_garbage(cls, ctx: GarbageContext) -> list[str]:
        found: list[str] = []
        for config in kernelspec_configs(cls.entry_point):
            prov = cls(kernel_id="gc", kernel_spec=None, parent=None, **config)
            accounts = static_accounts(prov.user, prov.identity_file, dict(prov.user_map))
            if not accounts:
                ctx.log.info(
                    "gc: the accounts of user template %r are not known; list them in"
                    " user_map to have gc visit them",
                    prov.user,
                )
            for account in accounts:
                prov.account = account
                for host in prov.gc_hosts():
                    found += await prov._collect_on(host, ctx)
        return found

    def gc_hosts(self) -> list[str]:
        """The hosts gc visits for this kernelspec."""
        return list(self.hosts)

    async def _collect_on(self, host: str, ctx: GarbageContext) -> list[str]:
        """Orphans of this deployment in the current account on ``host``."""
        try:
            target = self._resolve(host)
            conn = await run_blocking("ssh-connect", pool.acquire, target)
        except OrchestratorError as e:
            ctx.log.warning("gc: cannot reach %s: %s", host, e)
            return []
        try:
            agent = agent_for(conn, self.python, self.agent_extensions)
            return await self._collect_with(agent, host, ctx)
        finally:
            pool.release(target)

    async def _collect_with(self, agent: RemoteAgent, host: str, ctx: GarbageContext) -> list[str]:
        found: list[str] = []
        reply = await agent.call("list", {"base_dir": self.remote_dir})
        for k in reply.get("kernels", []):
            kid = str(k.get("kernel_id", ""))
            if k.get("instance") != ctx.instance or kid in ctx.owned_kernel_ids:
                continue
            if float(k.get("age", 0)) < ctx.grace_seconds:
                continue
            who = f" as {self.account.user}" if self.account and self.account.user else ""
            found.append(f"remote kernel {kid} on {host}{who} (pid {k.get('pid')})")
            if not ctx.dry_run:
                await agent.call("cleanup", {"kernel_id": kid, "base_dir": self.remote_dir})
        return found

    # ------------------------------------------------------- kernelspecs
    @classmethod
    def add_kernelspec_arguments(cls, parser: Any) -> None:
        g = parser.add_argument_group("ssh-provisioner")
        g.add_argument(
            "--host",
            action="append",
            required=True,
            dest="hosts",
            help="host of the pool (repeatable): alias or [user@]host[:port]",
        )
        g.add_argument(
            "--user", default="", help="remote account; '{username}' is the gateway user's name"
        )
        g.add_argument("--port", default="")
        g.add_argument("--identity-file", default="", help="private key; may hold '{username}'")
        g.add_argument(
            "--user-map",
            action="append",
            default=[],
            metavar="USER=ACCOUNT[:IDENTITY_FILE]",
            help="the remote account (and key) of one gateway user (repeatable)",
        )
        g.add_argument(
            "--shared-account",
            action="store_true",
            help="let several gateway users' kernels share one remote account",
        )
        g.add_argument(
            "--loopback-private",
            action="store_true",
            help="no other account runs on the hosts: leave remote loopback unencrypted",
        )
        g.add_argument(
            "--certificate-authority",
            default="",
            metavar="CA_KEY",
            help="log in with short-lived certificates minted from this CA key (mode 600),"
            " which the hosts' sshd trusts, instead of stored keys",
        )
        g.add_argument(
            "--certificate-validity", type=float, default=300.0, help="seconds (30..86400)"
        )
        g.add_argument("--known-hosts", default="")
        g.add_argument("--host-key-policy", choices=["reject", "accept-new"], default="reject")
        g.add_argument("--proxy-jump", default="", help="user@host:port[,user@host:port]")
        g.add_argument(
            "--host-selection", choices=["round-robin", "fewest-kernels"], default="round-robin"
        )
        g.add_argument("--remote-dir", default="")
        g.add_argument("--port-range", default="", help="lo-hi remote ports")
        g.add_argument("--working-dir", default="")

    @classmethod
    def kernelspec_config(cls, args: Any) -> dict[str, Any]:
        from orchestrator.tunnels.ssh.target import parse_destination

        for host in args.hosts:
            parse_destination(host)  # fail now, not at the first start
        config: dict[str, Any] = {"hosts": list(args.hosts)}
        if args.python:
            config["python"] = args.python
        for key in (
            "user",
            "port",
            "identity_file",
            "known_hosts",
            "proxy_jump",
            "remote_dir",
            "port_range",
            "working_dir",
            "certificate_authority",
        ):
            if getattr(args, key):
                config[key] = getattr(args, key)
        if args.certificate_validity != 300.0:
            config["certificate_validity"] = args.certificate_validity
        if args.host_key_policy != "reject":
            config["host_key_policy"] = args.host_key_policy
        if args.host_selection != "round-robin":
            config["host_selection"] = args.host_selection
        if args.user_map:
            config["user_map"] = parse_user_map(args.user_map)
        for flag in ("shared_account", "loopback_private"):
            if getattr(args, flag):
                config[flag] = True
        return config
