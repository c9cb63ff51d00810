"""Who is calling, as JupyterHub says: every request's Hub token, checked with the Hub.

A single-user server sends the token the Hub gave it (``JUPYTERHUB_API_TOKEN``, set as
``JUPYTER_GATEWAY_AUTH_TOKEN`` by the shipped Hub configuration) with every REST call
and WebSocket upgrade. The gateway asks the Hub who holds it (``GET
/hub/api/user`` with that token, through JupyterHub's own ``HubAuth``):

* the tenant is the Hub user (:func:`~orchestrator.users.tenant_name_for` makes the
  name safe for accounts, labels and paths, one-to-one); nothing the client says about
  identity counts (``KERNEL_USERNAME`` is overwritten as in every mode);
* the server is the one named by the token's ``access:servers!server=<user>/<name>``
  scope (the scope a server's own token carries): kernels belong to (user, server),
  and a token of the user without such a scope acts for all of the user's servers;
* the token must hold ``access_scopes`` (by default ``access:services!service=<our
  service name>``): a token a server got through OAuth for a visitor, or any token of
  a user the operator did not grant the gateway to, is refused;
* holders of ``kernel_admin_scopes`` in the token (by default ``admin:servers``, what
  lets Hub admins stop servers; unfiltered, or filtered to ``!group=`` or ``!user=``)
  may see and stop the Hub kernels in their reach, never attach to them;
* the user's Hub groups and ``custom:`` scopes are what ``@group`` and ``custom:``
  entries of kernelspec access, profiles and caps match.

The gateway's own token (``--token``) stays the operator's. The users file is the
non-Hub mode: the two are not combined.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import os
import re
import typing as t

from tornado import web
from traitlets import Float, List, Unicode, default

from ...users import ADMIN, UsersFileError, is_group_name, reinstate, tenant_name_for
from ..auth import GroupedUser, OrchestratorIdentityProvider
from .tokens import HubTokenCache, HubUnavailable

DEFAULT_SERVICE_NAME = "kernel-gateway"
_CUSTOM_SCOPE = re.compile(r"custom:[a-z0-9][a-z0-9_:.-]{0,127}")


def running_as_hub_service() -> bool:
    """Whether a JupyterHub started this process as one of its services (a single-user
    server, which has ``$JUPYTERHUB_USER``, is not one)."""
    env = os.environ
    return bool(
        env.get("JUPYTERHUB_SERVICE_NAME")
        and env.get("JUPYTERHUB_API_URL")
        and not env.get("JUPYTERHUB_USER")
    )


@dataclasses.dataclass(frozen=True)
class KernelAdminReach:
    """Whose kernels a Hub admin or a holder of a kernel-admin scope may see and stop."""

    everyone: bool = False
    users: frozenset[str] = frozenset()  # Hub user names
    groups: frozenset[str] = frozenset()  # Hub group names

    def __bool__(self) -> bool:
        return self.everyone or bool(self.users or self.groups)

    def covers(self, hub_user: str, groups: t.Iterable[str]) -> bool:
        return self.everyone or hub_user in self.users or bool(self.groups & set(groups))


@dataclasses.dataclass
class HubUser(GroupedUser):
    """A Hub user calling through a token: jupyter_server's User with what the Hub said."""

    hub_user: str = ""  # the name in the Hub (``username`` is the tenant name)
    server: str | None = None  # the Hub server the token is for (None: any of the user's)
    scopes: tuple[str, ...] = ()  # the custom: scopes held (policy entries)
    admin_reach: KernelAdminReach = dataclasses.field(default_factory=KernelAdminReach)


def server_of(model: dict[str, t.Any]) -> str | None:
    """The server a token is for: the one ``access:servers!server=<user>/<name>`` scope
    naming the token's own user (a server's token has exactly that one); None for a
    token of the user at large. Scopes for other users' servers (shared with this user)
    do not count; a token for several of the user's servers is refused (403), never
    widened to all of them."""
    name = model.get("name", "")
    scopes = set(model.get("scopes") or ())
    prefix = f"access:servers!server={name}/"
    servers = {s[len(prefix) :] for s in scopes if s.startswith(prefix)}
    if {"access:servers", f"access:servers!user={name}"} & scopes or not servers:
        return None
    if len(servers) > 1:
        raise web.HTTPError(
            403, "this Hub token is for several servers: use one server's own token"
        )
    return servers.pop()


def held_custom_scopes(model: dict[str, t.Any], groups: t.Iterable[str]) -> tuple[str, ...]:
    """The ``custom:`` scopes the token holds for its own user: unfiltered, or filtered
    to the user (``!user=``) or to one of their groups (``!group=``)."""
    name, groups = model.get("name", ""), set(groups)
    held: set[str] = set()
    for scope in model.get("scopes") or ():
        base, _, restriction = str(scope).partition("!")
        if not _CUSTOM_SCOPE.fullmatch(base):
            continue
        kind, _, value = restriction.partition("=")
        mine = kind == "user" and value == name
        if not restriction or mine or (kind == "group" and value in groups):
            held.add(base)
    return tuple(sorted(held))


def admin_reach(model: dict[str, t.Any], admin_scopes: t.Iterable[str]) -> KernelAdminReach:
    """Whose kernels the caller may see and stop (an empty reach: only their own): what
    the token holds of ``admin_scopes``, with its filters. The token's, not the user's:
    a Hub admin's server token, or a token they scoped down, has no such reach."""
    wanted = set(admin_scopes)
    users: set[str] = set()
    groups: set[str] = set()
    for scope in model.get("scopes") or ():
        base, _, restriction = str(scope).partition("!")
        if base not in wanted:
            continue
        kind, _, value = restriction.partition("=")
        if not restriction:
            return KernelAdminReach(everyone=True)
        if kind == "user":
            users.add(value)
        elif kind == "group":
            groups.add(value)
    return KernelAdminReach(users=frozenset(users), groups=frozenset(groups))


class HubIdentityProvider(OrchestratorIdentityProvider):
    """Hub tokens as identities (see the module docstring)."""

    api_url = Unicode(
        config=True,
        help="The Hub's API URL ($JUPYTERHUB_API_URL when the Hub starts the gateway);"
        " required: whoever answers there decides who every caller is.",
    )
    service_name = Unicode(
        config=True,
        help="The gateway's name as a Hub service ($JUPYTERHUB_SERVICE_NAME); the default"
        " access scope names it.",
    )
    access_scopes = List(
        Unicode(),
        config=True,
        help="Scopes a token must hold (any one of them) to use the gateway; default"
        " access:services!service=<service_name>. An empty list lets any Hub token in"
        " (every server's OAuth tokens for visitors included): never on a shared Hub.",
    )
    cache_seconds = Float(
        20.0,
        config=True,
        help="Seconds a Hub answer about a token is reused (a stopped server's token is"
        " accepted this long after the Hub revoked it).",
    )
    refused_cache_seconds = Float(
        2.0, config=True, help="Seconds a token the Hub refused is refused without asking."
    )
    outage_seconds = Float(
        600.0,
        config=True,
        help="While the Hub cannot be reached, a token it vouched for within this many"
        " seconds keeps working; others get 503 until it is back.",
    )
    request_timeout = Float(
        10.0, config=True, help="Seconds the Hub has to answer about a token (then: 503)."
    )
    kernel_admin_scopes = List(
        Unicode(),
        ["admin:servers"],
        config=True,
        help="Hub scopes whose holders (in the token) may list, inspect and stop the Hub"
        " kernels of the users the scope's filter reaches (!group=, !user=; unfiltered:"
        " everyone's); never attach to them. Default: admin:servers, as Hub admins hold.",
    )
    api_token = Unicode(
        config=True,
        help="The gateway's own Hub service token ($JUPYTERHUB_API_TOKEN), to follow the"
        " Hub's servers and report activity; it needs list:users, read:servers,"
        " read:users:activity and users:activity.",
    )

    @default("api_url")
    def _default_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    @default("service_name")
    def _default_service_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "") or DEFAULT_SERVICE_NAME

    @default("access_scopes")
    def _default_access_scopes(self) -> list[str]:
        return [f"access:services!service={self.service_name}"]

    @default("api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        if self.user_tokens or self.user_tokens_file:
            raise UsersFileError(
                "a users file and JupyterHub tokens cannot be combined: the Hub's users are"
                " the gateway's users (drop --users-file, or GatewayApp.hub)"
            )
        if not self.api_url:
            raise UsersFileError(
                "JupyterHub mode needs the Hub's API URL: $JUPYTERHUB_API_URL or"
                " HubIdentityProvider.api_url (e.g. http://127.0.0.1:8081/hub/api)"
            )
        try:
            from jupyterhub.services.auth import HubAuth, check_scopes
        except ImportError:
            raise UsersFileError(
                "JupyterHub mode needs the jupyterhub package: pip install"
                " 'kernel-orchestrator[hub]'"
            ) from None
        self._check_scopes = check_scopes
        self._hub_auth = HubAuth(api_url=self.api_url, api_token=self.api_token, cache_max_age=0)
        self.tokens = HubTokenCache(
            self._ask_hub,
            fresh_seconds=self.cache_seconds,
            refused_seconds=self.refused_cache_seconds,
            outage_seconds=self.outage_seconds,
        )
        if not self.access_scopes:
            self.log.warning(
                "HubIdentityProvider.access_scopes is empty: any token the Hub issued may"
                " start kernels as its user, OAuth tokens of visitors included"
            )

    async def _ask_hub(self, token: str) -> dict[str, t.Any] | None:
        # Twice: a pooled connection to a Hub that restarted fails once, then a new
        # one is made (a Hub that is down refuses both at once).
        for attempt in (1, 2):
            try:
                model = await asyncio.wait_for(
                    self._hub_auth.user_for_token(token, use_cache=False, sync=False),
                    self.request_timeout,
                )
            except asyncio.TimeoutError:
                raise HubUnavailable(f"no answer within {self.request_timeout:g} s") from None
            except Exception as e:  # HubAuth raises tornado's HTTPError, or aiohttp's errors
                if attempt == 2:
                    reason = getattr(e, "log_message", None) or str(e) or type(e).__name__
                    raise HubUnavailable(reason) from None
                continue
            return model if isinstance(model, dict) else None
        raise AssertionError("unreachable")

    @property
    def multi_user(self) -> bool:
        return True

    @property
    def auth_enabled(self) -> bool:
        return True

    async def get_user(self, handler: web.RequestHandler) -> t.Any:  # type: ignore[override]
        offered = self.get_token(handler) or ""
        if not offered:
            return None
        if self.token and hmac.compare_digest(offered.encode(), str(self.token).encode()):
            handler._token_authenticated = True  # type: ignore[attr-defined]
            return GroupedUser(username=ADMIN)
        try:
            model = await self.tokens.identify(offered)
        except HubUnavailable as e:
            self.log.warning("JupyterHub at %s cannot check a token: %s", self.api_url, e)
            raise web.HTTPError(
                503,
                "JupyterHub cannot be asked about this token now; tokens it checked"
                " recently keep working (HubIdentityProvider.api_url, outage_seconds)",
            ) from None
        if model is None:
            return None
        user = self.user_from_model(model)
        handler._token_authenticated = True  # type: ignore[attr-defined]
        return user

    def user_from_model(self, model: dict[str, t.Any]) -> HubUser:
        """The caller a Hub answer describes; 403 for what may not use the gateway."""
        if model.get("kind", "user") != "user" or not isinstance(model.get("name"), str):
            raise web.HTTPError(403, "only Hub users' tokens may use the gateway, not services'")
        scopes = set(model.get("scopes") or ())
        if self.access_scopes and not self._check_scopes(set(self.access_scopes), scopes):
            raise web.HTTPError(
                403,
                f"this Hub token lacks the scope {' or '.join(self.access_scopes)}"
                " (grant it to users, and add it to Spawner.server_token_scopes;"
                " HubIdentityProvider.access_scopes)",
            )
        groups = tuple(g for g in model.get("groups") or () if is_group_name(g))
        tenant = tenant_name_for(model["name"])
        reinstate(tenant)  # (a user the Hub deleted, and has again)
        return HubUser(
            username=tenant,
            groups=groups,
            hub_user=model["name"],
            server=server_of(model),
            scopes=held_custom_scopes(model, groups),
            admin_reach=admin_reach(model, self.kernel_admin_scopes),
        )

    def known_tokens(self) -> list[str]:
        return [*super().known_tokens(), *([self.api_token] if self.api_token else [])]
