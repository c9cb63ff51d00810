"""The kernels REST API and WebSocket channels, with ownership, limits and validation.

They subclass jupyter_server's own handlers (so the wire protocol is exactly what
Jupyter Server's gateway client and JupyterLab speak) and add, before anything
happens: the caller owns the kernel (else 404, as if it did not exist), the start
request is small and its environment holds only allow-listed, valid variables, and
the limits on kernels in total and per user are respected (4xx with a clear message).

Any replica of the gateway answers for any kernel of the store: one that another
replica started is attached to here first (``serve_kernel``), and lifecycle
actions take its lease over from the replica that held it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
import itertools
import json
import re
import typing as t
import uuid

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler, PrometheusMetricsHandler
from jupyter_server.kernelspecs import handlers as resource_handlers
from jupyter_server.services.kernels import handlers as kernel_handlers
from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
from jupyter_server.services.kernelspecs import handlers as spec_handlers
from jupyter_server.utils import ensure_async, url_escape, url_path_join
from tornado import web

from ..errors import (
    FencedError,
    KernelLimitError,
    NotEntitledError,
    OrchestratorError,
    OwnedElsewhereError,
    UnknownKernelError,
)
from ..users import ADMIN, memberships
from .environment import kernel_environment
from .fairness import UserBudgets, message_bytes
from .tenancy import Need, may, start_labels

MAX_BODY = 64 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _km(handler: JupyterHandler) -> t.Any:
    """The gateway's kernel manager (an OrchestratorMappingKernelManager)."""
    return handler.kernel_manager


def _username(handler: JupyterHandler) -> str:
    user = handler.current_user
    return str(getattr(user, "username", "") or "")


def _is_admin(handler: JupyterHandler) -> bool:
    return _username(handler) == ADMIN


async def _check_access(handler: JupyterHandler, kernel_id: str, need: Need) -> None:
    """404 unless the kernel exists and the caller may do what ``need`` says with it
    (see ``tenancy``); then have it served here.

    Judged by the store, whichever replica started the kernel (or handed it out of a
    pool moments ago), then attached to: never a 404 for a kernel that exists and is
    yours, and a foreign kernel looks exactly like a missing one.
    """
    user = handler.current_user

    def allowed(record: t.Any) -> bool:
        return may(user, need, record.labels)

    try:
        served = await _km(handler).serve_kernel(kernel_id, allowed)
    except OrchestratorError as e:  # the store is down, or the kernel unreachable from here
        raise web.HTTPError(503, _for_caller(handler, f"kernel {kernel_id}: {e}")) from None
    if not served:
        raise web.HTTPError(404, f"Kernel does not exist: {kernel_id}")


_INTERNAL = (
    re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"]+"),  # engine, store and host URLs
    re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"),  # IPv4 addresses
    re.compile(r"\[[0-9a-f:.]+\](?::\d+)?|\b[0-9a-f]*::[0-9a-f:]*", re.IGNORECASE),  # IPv6
    re.compile(r"\b[\w.-]+@[\w.-]+(?::\d+)?"),  # user@host[:port]
    re.compile(r"\b(?:[a-z0-9-]+\.)+[a-z][a-z0-9-]+\b", re.IGNORECASE),  # DNS names
    re.compile(r"(?<![\w.-])/(?:[\w.@+~-]+/)*[\w.@+~-]+"),  # absolute (and ~/) paths
)


def _for_caller(handler: JupyterHandler, message: str) -> str:
    """An error message as the caller may see it. The operator gets it whole; a tenant
    gets it without the addresses, URLs and paths of the gateway's back-ends (engine
    sockets, hosts, DNS servers, key files), and a reference to the whole text, which
    goes to the log."""
    if _is_admin(handler):
        return message
    reference = uuid.uuid4().hex[:10]
    handler.log.warning("error for %s (reference %s): %s", _username(handler), reference, message)
    for pattern in _INTERNAL:
        message = pattern.sub("[internal]", message)
    return f"{message} (reference {reference}: the operator's log has the details)"


class MainKernelHandler(kernel_handlers.MainKernelHandler):
    @web.authenticated
    async def get(self) -> None:
        km = _km(self)
        # The operator sees every kernel, pooled ones included; a user only their own
        # (their server's, with a Hub server's token), a Hub admin everyone's; all
        # whichever replica serves them.
        user = self.current_user
        try:
            models = await km.kernel_models_of(lambda labels: may(user, Need.SEE, labels))
        except OrchestratorError as e:
            raise web.HTTPError(503, _for_caller(self, str(e))) from None
        self.finish(json.dumps(models, default=str))

    @web.authenticated
    async def post(self) -> None:
        if len(self.request.body or b"") > MAX_BODY:
            raise web.HTTPError(413, f"request body larger than {MAX_BODY} bytes")
        km = _km(self)
        model = self.get_json_body() or {}
        if not isinstance(model, dict):
            raise web.HTTPError(400, "request body must be a JSON object")
        requested = model.get("name") or km.default_kernel_name
        name = _spec_allowed(self, requested)
        if name is None:
            raise web.HTTPError(404, f"no such kernelspec: {requested}")
        path = model.get("path")
        if path is not None and not _valid_path(path):
            raise web.HTTPError(
                400, "path must be a relative API path of at most 4096 characters, without '..'"
            )
        env = model.get("env", {})
        env = {} if env is None else env
        if not isinstance(env, dict):
            raise web.HTTPError(400, "env must be an object of strings")
        allow = self.settings.get("orchestrator_env_allowlist", ["KERNEL_*"])
        clean: dict[str, str] = {}
        for key, value in env.items():
            if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
                raise web.HTTPError(400, f"environment variable {key!r} is not a valid name")
            if not any(fnmatch.fnmatchcase(str(key), p) for p in allow):
                raise web.HTTPError(400, f"environment variable {key!r} is not allowed")
            if not isinstance(value, str) or "\0" in value or len(value) > 32768:
                raise web.HTTPError(400, f"environment variable {key!r} has an invalid value")
            clean[str(key)] = value
        owner, user = _username(self), self.current_user
        groups = tuple(getattr(user, "groups", ()))
        scopes = tuple(getattr(user, "scopes", ()))
        env = kernel_environment(km.base_environment, clean, owner, groups, scopes)
        try:
            kernel_id = await km.start_kernel_for(
                owner,
                kernel_name=name,
                path=path,
                env=env,
                labels=start_labels(user),
                memberships=memberships(groups, scopes),
            )
        except KernelLimitError as e:
            raise web.HTTPError(429, _for_caller(self, str(e))) from None
        except NotEntitledError as e:
            raise web.HTTPError(403, str(e)) from None
        except OrchestratorError as e:
            raise web.HTTPError(400, _for_caller(self, f"kernel start failed: {e}")) from None
        except KeyError as e:
            raise web.HTTPError(404, f"no such kernelspec: {name}") from e
        model = await ensure_async(km.kernel_model(kernel_id))
        self.set_header(
            "Location", url_path_join(self.base_url, "api", "kernels", url_escape(kernel_id))
        )
        self.set_status(201)
        self.finish(json.dumps(model, default=str))

    def write_error(self, status_code: int, **kwargs: t.Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "reason": self._reason}))


class KernelHandler(kernel_handlers.KernelHandler):
    @web.authenticated
    async def get(self, kernel_id: str) -> None:
        await _check_access(self, kernel_id, Need.SEE)
        await super().get(kernel_id)  # type: ignore[misc]

    @web.authenticated
    async def delete(self, kernel_id: str) -> None:
        await _check_access(self, kernel_id, Need.STOP)
        async with _lifecycle(self, kernel_id):
            await super().delete(kernel_id)  # type: ignore[misc]


class KernelActionHandler(kernel_handlers.KernelActionHandler):
    @web.authenticated
    async def post(self, kernel_id: str, action: str) -> None:
        await _check_access(self, kernel_id, Need.STOP)
        async with _lifecycle(self, kernel_id):
            await super().post(kernel_id, action)  # type: ignore[misc]


@contextlib.asynccontextmanager
async def _lifecycle(handler: JupyterHandler, kernel_id: str) -> t.AsyncIterator[None]:
    """Own the kernel for lifecycle work (taking it over from another replica); work
    on a kernel a CLI or library process owns is a 409 naming that owner.

    Lifecycle requests on one kernel take their turn here (two DELETEs at once would
    otherwise run two shutdowns of one manager, and one would fail half-way); each
    that waited checks again that the kernel is still there once it is its turn.
    """
    km = _km(handler)
    lock = km.lifecycle_lock(kernel_id)
    waited = lock.locked()  # (the caller's check just read the store: read again only after a wait)
    try:
        async with lock:
            if waited and not await km.serve_kernel(kernel_id):
                raise UnknownKernelError(f"unknown kernel id {kernel_id!r}")
            await km.get_kernel(kernel_id).take_over()
            yield
    except (OwnedElsewhereError, FencedError, UnknownKernelError) as e:
        # Shut down meanwhile (through another replica, or another request here): gone,
        # a 404 as for any kernel that does not exist. Owned by a CLI or library
        # process: a 409 naming it.
        exists = True
        with contextlib.suppress(OrchestratorError):
            exists = await _km(handler).serve_kernel(kernel_id)
        if isinstance(e, UnknownKernelError) or not exists:
            raise web.HTTPError(404, f"Kernel does not exist: {kernel_id}") from None
        raise web.HTTPError(409, _for_caller(handler, str(e))) from None


class ChannelsHandler(KernelWebsocketHandler):
    #: session key -> the arrival number of its newest connection being checked
    _arrivals: t.ClassVar[dict[str, int]] = {}
    _arrival_numbers = itertools.count()
    #: user name -> their open kernel websockets (each holds five zmq sockets)
    _open_by_user: t.ClassVar[collections.Counter[str]] = collections.Counter()
    _counted = False

    def _websocket_cap(self) -> int:
        """Most open kernel websockets per user (0: no cap; never for the operator)."""
        return 0 if _is_admin(self) else int(self.settings.get("orchestrator_max_websockets", 0))

    def _over_cap(self, extra: int = 0) -> str:
        cap = self._websocket_cap()
        if cap and self._open_by_user[_username(self)] + extra > cap:
            return (
                f"{_username(self)} has {cap} kernel websockets open, the most a user may"
                " (GatewayApp.max_websockets_per_user)"
            )
        return ""

    async def pre_get(self) -> None:
        # Before jupyter_server's pre_get: that one registers the session with the
        # kernel and sends it a request, which a foreign socket must never get to do.
        if self.current_user is None:
            raise web.HTTPError(403)
        if refusal := self._over_cap(extra=1):
            raise web.HTTPError(429, refusal)
        session_id = self.get_argument("session_id", "")
        if not session_id:
            await _check_access(self, self.kernel_id, Need.USE)
            await super().pre_get()
            return
        # jupyter_server lets a session's newest connection replace (close) an older
        # one. Our check awaits the store, so connections can finish it out of order:
        # one the client has already given up for a newer one (Jupyter Server's gateway
        # client reconnects at once when a kernel starts) must not close that newer
        # one, or the messages sent on it are lost.
        key, number = f"{self.kernel_id}:{session_id}", next(self._arrival_numbers)
        self._arrivals[key] = number
        try:
            await _check_access(self, self.kernel_id, Need.USE)
            if self._arrivals.get(key) != number:
                raise web.HTTPError(409, "a newer connection of this session replaced it")
            await super().pre_get()
        finally:
            if self._arrivals.get(key) == number:
                del self._arrivals[key]

    #: per-user byte budgets of what clients send (see ``fairness``)
    _budgets = UserBudgets()

    async def on_message(self, message: str | bytes) -> None:  # type: ignore[override]
        rate = float(self.settings.get("orchestrator_websocket_rate", 0))
        if rate > 0 and not _is_admin(self):  # (sizing a message costs an encode)
            delay = self._budgets.delay_for(_username(self), message_bytes(message), rate)
            if delay > 0:
                # Tornado reads nothing more from this socket until we return.
                await asyncio.sleep(delay)
        if self.connection is not None:
            super().on_message(message)

    async def open(self, kernel_id: str) -> None:  # type: ignore[override]
        # Counted once open: connections checked at the same moment may each have
        # passed pre_get's check, so the cap is enforced again here, exactly.
        self._open_by_user[_username(self)] += 1
        self._counted = True
        if refusal := self._over_cap():
            self.log.warning("kernel websocket refused: %s", refusal)
            self.close(1008, "too many kernel websockets for this user")
            return
        await super().open(kernel_id)

    def on_close(self) -> None:
        if self._counted:
            self._counted = False
            user = _username(self)
            self._open_by_user[user] -= 1
            if self._open_by_user[user] <= 0:
                del self._open_by_user[user]
        super().on_close()


def _spec_allowed(handler: JupyterHandler, kernel_name: object) -> str | None:
    """The canonical name of ``kernel_name`` if the caller may see and start it: every
    check, look-up and start uses that one spelling (see ``kernelspecs``)."""
    resolve = getattr(handler.kernel_spec_manager, "resolve", None)
    if resolve is None:  # not our kernelspec manager: only its own names
        return kernel_name if isinstance(kernel_name, str) else None
    return t.cast("str | None", resolve(kernel_name, handler.current_user))


#: What a tenant may fetch of a kernelspec's resources: logos, the front-end's
#: JavaScript and CSS; never kernel.json (the operator's configuration).
PUBLIC_RESOURCES = frozenset({"png", "svg", "ico", "js", "css"})
_PUBLIC_SPEC_KEYS = ("display_name", "language", "interrupt_mode")


def _public_spec(spec: dict[str, t.Any]) -> dict[str, t.Any]:
    """What a tenant sees of a kernelspec: its name, language and interrupt mode, not
    its argv, environment or provisioner configuration (hosts, user maps, key paths)."""
    public = {key: spec[key] for key in _PUBLIC_SPEC_KEYS if key in spec}
    metadata = spec.get("metadata") or {}
    public.update(
        argv=[], env={}, metadata={k: metadata[k] for k in ("debugger",) if k in metadata}
    )
    return public


def _valid_path(path: object) -> bool:
    """A start request's ``path`` (the notebook's API path): a string, relative, with
    no '..' segment, NUL or backslash, that cannot leave the server's root."""
    if not isinstance(path, str) or len(path) > 4096 or "\0" in path or "\\" in path:
        return False
    return ".." not in path.split("/")


class MainKernelSpecHandler(spec_handlers.MainKernelSpecHandler):
    """The kernelspecs this user may use (others are not even named)."""

    @web.authenticated
    async def get(self) -> None:
        ksm = self.kernel_spec_manager
        specs = {}
        admin = _is_admin(self)
        for name, info in (await ensure_async(ksm.get_all_specs())).items():
            if _spec_allowed(self, name) == name:
                spec = info["spec"] if admin else _public_spec(info["spec"])
                specs[name] = spec_handlers.kernelspec_model(self, name, spec, info["resource_dir"])
        default = _km(self).default_kernel_name
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"default": default, "kernelspecs": specs}))


class KernelSpecHandler(spec_handlers.KernelSpecHandler):
    @web.authenticated
    async def get(self, kernel_name: str) -> None:
        name = _spec_allowed(self, kernel_name)
        if name is None:
            raise web.HTTPError(404, f"Kernel spec {kernel_name} not found")
        if _is_admin(self):
            await super().get(name)  # type: ignore[misc]
            return
        try:
            spec = await ensure_async(self.kernel_spec_manager.get_kernel_spec(name))
        except KeyError:
            raise web.HTTPError(404, f"Kernel spec {kernel_name} not found") from None
        model = spec_handlers.kernelspec_model(
            self, name, _public_spec(spec.to_dict()), spec.resource_dir
        )
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model))


class KernelSpecResourceHandler(resource_handlers.KernelSpecResourceHandler):
    @web.authenticated
    async def get(self, kernel_name: str, path: str, include_body: bool = True) -> None:  # type: ignore[override]
        name = _spec_allowed(self, kernel_name)
        public = path.rsplit(".", 1)[-1].lower() in PUBLIC_RESOURCES and "/." not in f"/{path}"
        if name is None or not (public or _is_admin(self)):
            raise web.HTTPError(404, f"Kernel spec {kernel_name} not found")
        await super().get(name, path, include_body)  # type: ignore[misc]


class PathResolverHandler(APIHandler):
    """``/api/resolvePath``: a gateway serves no files, so only a kernel of the caller's
    own resolves; a foreign kernel is reported exactly as a missing one."""

    @web.authenticated
    async def get(self) -> None:
        path = self.get_query_argument("path")
        kernel_id = self.get_query_argument("kernel", default=None)
        response: dict[str, t.Any] = {"resolved": []}
        if kernel_id:
            try:
                await _check_access(self, kernel_id, Need.USE)
                kernel = _km(self).get_kernel(kernel_id)
                resolve = getattr(kernel, "resolve_path", None)
                resolved = await ensure_async(resolve(path)) if resolve else None
                if resolved is not None:
                    response["resolved"].append({"scope": "kernel", "path": resolved})
            except web.HTTPError:
                response["unresolved"] = [
                    {"scope": "kernel", "reason": f"Kernel {kernel_id} could not be found"}
                ]
        self.finish(json.dumps(response))


class HealthHandler(APIHandler):
    """Liveness: the process serves requests. No authentication."""

    def check_xsrf_cookie(self) -> None:
        pass

    async def prepare(self, *args: t.Any, **kwargs: t.Any) -> None:  # type: ignore[override]
        # liveness and readiness need no authentication
        pass

    @allow_unauthenticated
    def get(self) -> None:
        self.finish({"status": "ok"})


class ReadyHandler(HealthHandler):
    """Readiness: saved kernels have been restored and the store answers."""

    @allow_unauthenticated
    async def get(self) -> None:  # type: ignore[override]
        ready, detail = await self._readiness()
        user = await ensure_async(self.identity_provider.get_user(self))
        if getattr(user, "username", "") != ADMIN or not self.identity_provider.auth_enabled:
            # Anonymous probes learn ready or not, nothing about kernels or errors.
            detail = {"status": "ready" if ready else "not ready"}
        self.set_status(200 if ready else 503)
        self.finish(detail)

    async def _readiness(self) -> tuple[bool, dict[str, t.Any]]:
        km = _km(self)
        error = getattr(km, "restore_error", "")
        if error:
            return False, {"status": f"restoring kernels failed, retrying: {error}"}
        if not getattr(km, "restore_done", False):
            return False, {"status": "restoring kernels"}
        try:
            await km.kernel_store.change_count()  # the store answers (a tiny read)
        except Exception as e:
            return False, {"status": f"kernel store unavailable: {e}"}
        return True, {"status": "ready", "kernels": len(km)}


class MetricsHandler(PrometheusMetricsHandler):
    """``/metrics`` for the operator only: its kernelspec names and counts are every
    tenant's. A tenant gets the 404 of a route that does not exist; scraping without
    a token needs ``ServerApp.authenticate_prometheus = False``."""

    @allow_unauthenticated
    def get(self) -> None:
        if self.settings["authenticate_prometheus"]:
            if not self.logged_in:
                raise web.HTTPError(403)
            if not _is_admin(self):
                raise web.HTTPError(404)
        super().get()


_kid = kernel_handlers._kernel_id_regex
_action = kernel_handlers._kernel_action_regex

default_handlers = [
    (r"/healthz", HealthHandler),
    (r"/readyz", ReadyHandler),
    (r"/metrics", MetricsHandler),
    (r"/api/resolvePath", PathResolverHandler),
    (r"/api/kernelspecs", MainKernelSpecHandler),
    (rf"/api/kernelspecs/{spec_handlers.kernel_name_regex}", KernelSpecHandler),
    (rf"/kernelspecs/{spec_handlers.kernel_name_regex}/(?P<path>.*)", KernelSpecResourceHandler),
    (r"/api/kernels", MainKernelHandler),
    (rf"/api/kernels/{_kid}", KernelHandler),
    (rf"/api/kernels/{_kid}/{_action}", KernelActionHandler),
    (rf"/api/kernels/{_kid}/channels", ChannelsHandler),
]
