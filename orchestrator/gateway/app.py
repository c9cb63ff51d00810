"""``kernel-orchestrator serve``: a kernel gateway built on Jupyter Server.

It serves the standard kernels and kernelspecs REST API and the kernel WebSocket
channels (what Jupyter Server's ``--gateway-url`` client and JupyterLab speak) with
our multi-kernel manager behind them, and nothing else (no contents, no terminals).

Unlike a notebook server, stopping the gateway does not stop its kernels: they are
detached, their last activity saved, and the next gateway process re-attaches them,
so clients reconnect to the same kernels with the same state.
"""

from __future__ import annotations

import os
import secrets
import sys
import typing as t

from jupyter_server.serverapp import ServerApp
from traitlets import Bool, Float, Int, List, Unicode, default

from .auth import OrchestratorIdentityProvider

TOKEN_ENV = "KERNEL_ORCHESTRATOR_TOKEN"


class GatewayApp(ServerApp):
    """Jupyter Server, reduced to a kernel gateway over kernel-orchestrator's managers."""

    name = "kernel-orchestrator-gateway"
    description = "Serve remote Jupyter kernels over the standard kernels API."
    default_services = ("api", "auth", "kernels", "kernelspecs", "security")  # type: ignore[assignment]

    no_auth = Bool(False, config=True, help="Serve without authentication (never in production).")
    hub = Bool(
        config=True,
        help="Serve a JupyterHub's users: every request's Hub token is checked with the Hub"
        " (HubIdentityProvider), kernels belong to (user, server) and follow the Hub's"
        " servers (HubLifetime). Default: on when the gateway runs as a Hub service"
        " ($JUPYTERHUB_SERVICE_NAME and $JUPYTERHUB_API_URL set).",
    )
    json_logs = Bool(False, config=True, help="Log JSON lines with a kernel_id field.")
    default_kernelspecs = Bool(
        True,
        config=True,
        help="Install kernelspecs for the provisioners this machine has (Docker when an"
        " engine answers) if missing.",
    )
    max_request_body = Int(
        1024 * 1024,
        config=True,
        help="Largest request body in bytes; larger ones get 413 before authentication,"
        " without being buffered.",
    )
    max_websocket_message = Int(
        1024 * 1024,
        config=True,
        help="Largest websocket message in bytes a client may send (larger: the socket is"
        " closed with 1009 before the message is read); Tornado's default is 10 MiB. With"
        " max_websockets_per_user it bounds what one user's sockets make the gateway buffer"
        " at once (a frame costs about three times its size while it is decoded). Raise it"
        " for widgets that send files to the kernel.",
    )
    websocket_bytes_per_second = Int(
        16 * 1024 * 1024,
        config=True,
        help="What one user's kernel websockets may send per second, together; past it"
        " their messages are delayed (TCP slows the client), so no user takes the event"
        " loop from the others. 0: no limit. The operator's token has none.",
    )
    shared_host = Bool(
        False,
        config=True,
        help="Other accounts run processes on the gateway's host (a login node, a shared"
        " server): kernel ports forwarded to its loopback (Docker, SSH, Kubernetes"
        " port-forward) then carry CurveZMQ too. Implied by host kernels in multi-user"
        " mode; off, the host is taken to run nothing but the gateway (a VM, a pod).",
    )
    max_kernel_message = Int(
        64 * 1024 * 1024,
        config=True,
        help="Largest message part in bytes the gateway accepts from a kernel (zmq's"
        " MAXMSGSIZE on every kernel socket it opens; a larger one drops that connection,"
        " which reconnects). Bounds what one kernel can make the gateway allocate at once.",
    )
    kernel_receive_queue = Int(
        32,
        config=True,
        help="Messages a kernel's IOPub socket in the gateway queues while the gateway falls"
        " behind (zmq's RCVHWM; zmq's default is 1,000). Past it zmq stops reading that"
        " connection, so the rest waits on the kernel's side (and is dropped there past the"
        " kernel's own queue, as for any slow subscriber): a kernel flooding its output"
        " while the gateway is busy costs the gateway at most this many messages per IOPub"
        " socket. 0: zmq's default.",
    )
    max_websockets_per_user = Int(
        24,
        config=True,
        help="Most kernel websockets one user may have open at once, across their kernels"
        " (each holds five zmq sockets); 0: no cap. The operator's token has none.",
    )
    header_timeout = Float(
        30.0,
        config=True,
        help="Seconds a client has to send a request's headers, and that an idle"
        " keep-alive connection stays open (Tornado's default: an hour, which lets a slow"
        " client hold a file descriptor per connection).",
    )
    body_timeout = Float(60.0, config=True, help="Seconds a client has to send a request's body.")
    kernel_env_passthrough = List(
        Unicode(),
        ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ"],
        config=True,
        help="The only variables of the gateway's own environment that kernels get"
        " (besides the client's allow-listed ones): never its token or secrets.",
    )
    env_allowlist = List(
        Unicode(),
        ["KERNEL_*"],
        config=True,
        help="Client environment variables accepted in a start request.",
    )

    @default("extra_services")
    def _default_extra_services(self) -> list[str]:
        return ["orchestrator.gateway.handlers"]

    @default("contents_manager_class")
    def _default_contents_manager_class(self) -> t.Any:
        from .contents import NoContentsManager

        return NoContentsManager

    @default("root_dir")
    def _default_root_dir(self) -> str:
        return private_root_dir(self.runtime_dir)

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> t.Any:
        from .kernelmanager import OrchestratorMappingKernelManager

        return OrchestratorMappingKernelManager

    @default("kernel_websocket_connection_class")
    def _default_kernel_websocket_connection_class(self) -> t.Any:
        from .channels import RestartProofWebsocketConnection

        return RestartProofWebsocketConnection

    @default("kernel_spec_manager_class")
    def _default_kernel_spec_manager_class(self) -> t.Any:
        from .kernelspecs import GatewayKernelSpecManager

        return GatewayKernelSpecManager

    @default("hub")
    def _default_hub(self) -> bool:
        from .hub.identity import running_as_hub_service

        return running_as_hub_service()

    @default("identity_provider_class")
    def _default_identity_provider_class(self) -> t.Any:
        if self.hub:
            from .hub.identity import HubIdentityProvider

            return HubIdentityProvider
        return OrchestratorIdentityProvider

    def find_server_extensions(self) -> None:
        """No server extensions: a gateway serves kernels, not terminals or files."""
        self.jpserver_extensions = {}

    @default("config_file_name")
    def _default_config_file_name(self) -> str:
        return "jupyter_server_config"  # what the Helm chart mounts

    @default("open_browser")
    def _default_open_browser(self) -> bool:
        return False

    def init_logging(self) -> None:
        super().init_logging()
        if self.json_logs:
            from .logs import use_json_logs

            use_json_logs(self.log)

    def init_resources(self) -> None:
        """jupyter_server raises the open-files soft limit to its floor (4,096); every
        kernel costs descriptors, so the gateway takes all that the hard limit allows."""
        super().init_resources()
        from ..fdlimit import raise_soft_limit, raise_zmq_socket_limit

        if raised := raise_soft_limit():
            self.log.info("open files: soft limit raised from %d to %d (the hard limit)", *raised)
        if raised := raise_zmq_socket_limit():
            self.log.info("zmq sockets: limit raised from %d to %d", *raised)

    def init_configurables(self) -> None:
        from ..ownership import set_holder_kind

        # Other replicas sharing the store see our leases as a gateway's: theirs to take
        # over for a request, not a CLI's to leave alone.
        set_holder_kind("gateway")
        if self.default_kernelspecs:
            from .defaults import ensure_default_kernelspecs

            ensure_default_kernelspecs()
        token = os.environ.get(TOKEN_ENV, "")
        idp_config = self.config.setdefault("IdentityProvider", {})
        if self.no_auth:
            idp_config["token"] = ""
            self.log.warning(
                "!!! AUTHENTICATION IS OFF (--no-auth): anyone who can reach %s:%s can run"
                " code as this service !!!",
                self.ip,
                self.port,
            )
        elif "token" not in idp_config or not idp_config["token"]:
            generated = not token
            idp_config["token"] = token or secrets.token_urlsafe(32)
            per_user = self.hub or self.config.get("OrchestratorIdentityProvider", {}).get(
                "user_tokens_file"
            )
            if generated and per_user:
                # Users have their own tokens: no admin token unless one is given (the
                # random one stands for "nobody", and is shown nowhere).
                self.log.info("no admin token: only the users' own tokens are accepted")
            elif generated:
                # Shown once, on the terminal only (never in a log file).
                print(
                    f"kernel-orchestrator gateway token: {idp_config['token']}",
                    file=sys.stderr,
                    flush=True,
                )
        from ..users import UsersFileError

        try:
            super().init_configurables()
        except UsersFileError as e:
            print(f"kernel-orchestrator serve: {e}", file=sys.stderr, flush=True)
            self.exit(2)
        idp: t.Any = self.identity_provider
        ksm: t.Any = self.kernel_spec_manager
        if hasattr(ksm, "multi_user"):
            ksm.multi_user = bool(idp.multi_user)
        self._open_store()
        self._cap_kernel_messages()

    def _cap_kernel_messages(self) -> None:
        """Every kernel socket of this process (the shared contexts make them all) takes
        messages of at most ``max_kernel_message`` bytes a part; IOPub sockets, where a
        kernel's output floods in, queue at most ``kernel_receive_queue`` of them."""
        import zmq
        import zmq.asyncio

        if self.max_kernel_message > 0:
            contexts: list[t.Any] = [zmq.Context.instance(), zmq.asyncio.Context.instance()]
            for context in contexts:
                context.setsockopt(zmq.MAXMSGSIZE, self.max_kernel_message)
        km: t.Any = self.kernel_manager
        km.iopub_receive_queue = max(0, self.kernel_receive_queue)

    def _open_store(self) -> None:
        """Open (create, migrate) the kernel store now: a gateway whose store is unusable
        refuses to start, saying why, rather than serve and fail every request."""
        from ..errors import OrchestratorError

        km: t.Any = self.kernel_manager
        try:
            store = km.kernel_store
        except OrchestratorError as e:
            print(f"kernel-orchestrator serve: {e}", file=sys.stderr, flush=True)
            self.exit(2)
        self.log.info("kernel store: %s (schema version %d)", store.url, store.schema_version)

    def init_webapp(self) -> None:
        super().init_webapp()
        from .routes import RouteError, enforce

        try:
            removed = enforce(self.web_app)
        except RouteError as e:
            print(f"kernel-orchestrator serve: {e}", file=sys.stderr, flush=True)
            self.exit(2)
        self.log.debug("routes not served by a gateway: %s", ", ".join(removed))
        from .bodylimit import cap_request_bodies
        from .environment import base_environment
        from .redact import install

        idp: t.Any = self.identity_provider
        install([self.log], idp.known_tokens)
        cap_request_bodies(self.web_app, self.max_request_body)
        self.web_app.settings["orchestrator_env_allowlist"] = list(self.env_allowlist)
        self.web_app.settings["websocket_max_message_size"] = self.max_websocket_message
        self.web_app.settings["orchestrator_max_websockets"] = self.max_websockets_per_user
        self.web_app.settings["orchestrator_websocket_rate"] = self.websocket_bytes_per_second
        km: t.Any = self.kernel_manager
        km.base_environment = base_environment(self.kernel_env_passthrough)
        ksm: t.Any = self.kernel_spec_manager
        km.multi_tenant = bool(idp.multi_user)
        if self.shared_host or (idp.multi_user and getattr(ksm, "host_kernelspecs", None)):
            # Other users' processes (host kernels, or the host's other accounts) share
            # this machine's loopback: kernel ports forwarded there are encrypted too.
            km.shared_loopback = True
        # Probes hit /healthz and /readyz every few seconds; a 503 while kernels are
        # being restored is expected, not an error worth a header dump in the log.
        from .handlers import HealthHandler

        original = self.web_app.settings.get("log_function")

        def log_request(handler: t.Any) -> None:
            if isinstance(handler, HealthHandler):
                self.log.debug(
                    "%s %s %s", handler.get_status(), handler.request.method, handler.request.uri
                )
            elif original is not None:
                original(handler)

        self.web_app.settings["log_function"] = log_request

    def init_httpserver(self) -> None:
        super().init_httpserver()
        # No connection is held open by a client that sends nothing (slowloris).
        params = self.http_server.conn_params
        params.header_timeout = self.header_timeout
        params.body_timeout = self.body_timeout

    def start_ioloop(self) -> None:
        self.io_loop.add_callback(self._restore_kernels)
        super().start_ioloop()

    async def _restore_kernels(self) -> None:
        km: t.Any = self.kernel_manager
        report = await km.restored()
        if report is not None:
            self.log.info("gateway ready: %d kernel(s) re-attached", len(report.reattached))
        if self.hub:
            self._follow_hub()
        await km.fill_pools()

    _hub_lifetime: t.Any = None

    def _follow_hub(self) -> None:
        """Stop kernels with their Hub servers and report their activity to the Hub."""
        from .hub.api import HubAPI
        from .hub.lifetime import HubLifetime

        idp: t.Any = self.identity_provider
        if not idp.api_token:
            self.log.warning(
                "no JupyterHub service token (HubIdentityProvider.api_token,"
                " $JUPYTERHUB_API_TOKEN): kernels are not stopped with their Hub servers"
                " and send the Hub no activity"
            )
            return
        api = HubAPI(idp.api_url, idp.api_token)
        self._hub_lifetime = HubLifetime(self.kernel_manager, api, parent=self)
        self._hub_lifetime.start()

    async def cleanup_kernels(self) -> None:
        """Keep kernels running across a gateway restart: detach, don't shut down."""
        if self._hub_lifetime is not None:
            await self._hub_lifetime.stop()
        km = self.kernel_manager
        try:
            await km.save_activity()  # type: ignore[attr-defined]
        except Exception as e:  # the store may be the reason we stop
            self.log.warning("could not save kernel activity: %s", e)
        km.detach_all()  # type: ignore[attr-defined]
        self.log.info("kernels detached; the next gateway process re-attaches them")


def private_root_dir(runtime_dir: str) -> str:
    """An empty directory only this account can enter, as Jupyter Server's ``root_dir``.

    Nothing is served from it (no contents manager reads disk), but jupyter_server
    resolves a start request's ``path`` below it: the gateway's working directory
    (the users file, the store, ``/`` under systemd) must never be that root.
    """
    import stat

    root = os.path.join(runtime_dir, "kernel-orchestrator-root")
    os.makedirs(root, mode=0o700, exist_ok=True)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise RuntimeError(f"{root} is not a directory of this account: remove it")
    os.chmod(root, 0o700)
    return root


def main(argv: list[str] | None = None) -> None:
    GatewayApp.launch_instance(argv=argv)


if __name__ == "__main__":
    main()
