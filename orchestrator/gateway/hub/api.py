"""The Hub's REST API, called with the gateway's own service token.

Bulk calls: the users with active servers (one paginated listing per interval,
whatever the number of kernels), and a user's activity (one post per user whose
kernels were active). A user whose kernels the listing does not account for is asked
about once (was the user deleted, or did only a server stop?) before anything is
stopped: a listing cut short by a filtered scope never stops a kernel. The token
needs ``list:users``, ``read:servers``, ``read:users:activity`` and
``users:activity``; a refusal names the scope to grant.
"""

from __future__ import annotations

import datetime as dt
import json
import typing as t
import urllib.parse

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

PAGINATION = "application/jupyterhub-pagination+json"
#: What the gateway's service token must hold, unfiltered (a filtered one would hide
#: users, whose kernels would then look orphaned).
NEEDED_SCOPES = ("list:users", "read:servers", "read:users:activity", "users:activity")
PAGE_SIZE = 200


class HubAPIError(Exception):
    """A Hub API call failed: unreachable, refused, or an answer we cannot use."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def hub_time(stamp: dt.datetime) -> str:
    """A timestamp as the Hub's API writes them (ISO 8601, UTC, ``Z``)."""
    return stamp.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _servers(user: t.Any, call: str) -> set[str]:
    servers = user.get("servers") if isinstance(user, dict) else None
    if servers is None:
        raise HubAPIError(
            f"{call}: the answer has no servers: grant the gateway's service read:servers"
            " (and list:users)",
            403,
        )
    return set(servers)


class HubAPI:
    def __init__(self, api_url: str, token: str, timeout: float = 20.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._timeout = timeout

    async def _call(
        self, method: str, path: str, body: t.Any = None, accept: str = "application/json"
    ) -> t.Any:
        request = HTTPRequest(
            f"{self.api_url}/{path}",
            method=method,
            headers={"Authorization": f"token {self._token}", "Accept": accept},
            body=None if body is None else json.dumps(body),
            request_timeout=self._timeout,
            connect_timeout=self._timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            status = e.code
            detail = ""
            if e.response is not None and e.response.body:
                try:
                    detail = json.loads(e.response.body).get("message", "")
                except (ValueError, AttributeError):
                    detail = ""
            raise HubAPIError(f"{method} {path}: {status} {detail}".strip(), status) from None
        except Exception as e:  # unreachable, reset, timed out
            raise HubAPIError(f"{method} {path}: {e}") from None
        return json.loads(response.body) if response.body else None

    async def active_servers(self) -> dict[str, set[str]]:
        """Hub user name -> the names of their active servers ("" for the default one),
        for every user with one."""
        found: dict[str, set[str]] = {}
        offset = 0
        while True:
            query = urllib.parse.urlencode(
                {"state": "active", "offset": offset, "limit": PAGE_SIZE}
            )
            page = await self._call("GET", f"users?{query}", accept=PAGINATION)
            items = page.get("items") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise HubAPIError("GET users: not a paginated answer (JupyterHub 2.0 or later?)")
            for user in items:
                found[str(user.get("name"))] = _servers(user, "GET users")
            following = (page.get("_pagination") or {}).get("next") or {}
            next_offset = int(following.get("offset", 0) or 0)
            if not items or next_offset <= offset:
                return found
            offset = next_offset

    async def missing_scopes(self) -> list[str]:
        """What the service token lacks of :data:`NEEDED_SCOPES` (empty: nothing)."""
        me = await self._call("GET", "user")
        held = set(me.get("scopes") or ()) if isinstance(me, dict) else set()
        return [scope for scope in NEEDED_SCOPES if scope not in held]

    async def servers_of(self, name: str) -> set[str] | None:
        """The active servers of the user ``name``; None if the Hub has no such user."""
        try:
            user = await self._call("GET", f"users/{urllib.parse.quote(name, safe='')}")
        except HubAPIError as e:
            if e.status == 404:
                return None
            raise
        return _servers(user, f"GET users/{name}")

    async def post_activity(
        self, name: str, servers: dict[str, dt.datetime], latest: dt.datetime
    ) -> None:
        """Tell the Hub that ``name``'s ``servers`` (and the user) were active then."""
        body: dict[str, t.Any] = {"last_activity": hub_time(latest)}
        if servers:
            body["servers"] = {s: {"last_activity": hub_time(at)} for s, at in servers.items()}
        await self._call("POST", f"users/{urllib.parse.quote(name, safe='')}/activity", body)
