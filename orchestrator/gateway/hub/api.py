"""The Hub's REST API, called with the gateway's own service token.

Two calls only, both in bulk: the users with active servers (one paginated listing
per interval, whatever the number of kernels; every user's only when a kernel that
belongs to no server must be checked), and a user's activity (one post per user
whose kernels were active). The token needs ``list:users``, ``read:servers``,
``read:users:activity`` and ``users:activity``; a refusal names the scope to grant.
"""

from __future__ import annotations

import datetime as dt
import json
import typing as t
import urllib.parse

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

PAGINATION = "application/jupyterhub-pagination+json"
PAGE_SIZE = 200


class HubAPIError(Exception):
    """A Hub API call failed: unreachable, refused, or an answer we cannot use."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def hub_time(stamp: dt.datetime) -> str:
    """A timestamp as the Hub's API writes them (ISO 8601, UTC, ``Z``)."""
    return stamp.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


class HubAPI:
    def __init__(self, api_url: str, token: str, timeout: float = 20.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        #: Calls made (the benchmark counts them).
        self.calls = 0

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
        self.calls += 1
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

    async def users(self, state: str | None = "active") -> dict[str, set[str]]:
        """Hub user name -> the names of their active servers ("" for the default one),
        for every user with one (``state="active"``) or every user (``None``)."""
        found: dict[str, set[str]] = {}
        offset = 0
        while True:
            query = {"offset": offset, "limit": PAGE_SIZE, **({"state": state} if state else {})}
            page = await self._call(
                "GET", f"users?{urllib.parse.urlencode(query)}", accept=PAGINATION
            )
            items = page.get("items") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise HubAPIError("GET users: not a paginated answer (JupyterHub 2.0 or later?)")
            for user in items:
                servers = user.get("servers")
                if servers is None:
                    raise HubAPIError(
                        "GET users: the answer has no servers: grant the gateway's service"
                        " read:servers (and list:users)",
                        403,
                    )
                found[str(user.get("name"))] = set(servers)
            following = (page.get("_pagination") or {}).get("next")
            if not following or not items:
                return found
            offset = int(following.get("offset", offset + len(items)))

    async def post_activity(
        self, name: str, servers: dict[str, dt.datetime], latest: dt.datetime
    ) -> None:
        """Tell the Hub that ``name``'s ``servers`` (and the user) were active then."""
        body: dict[str, t.Any] = {"last_activity": hub_time(latest)}
        if servers:
            body["servers"] = {s: {"last_activity": hub_time(at)} for s, at in servers.items()}
        await self._call("POST", f"users/{urllib.parse.quote(name, safe='')}/activity", body)
