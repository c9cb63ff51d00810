"""Kernels live as long as their Hub server, and keep it alive while they work.

Every ``interval`` seconds one replica-local round asks the Hub (one bulk listing,
:meth:`HubAPI.active_servers`) which servers are active. A kernel this replica owns
whose server is no longer active is shut down once it has been so for
``grace_seconds`` (a server that restarts within the grace finds its kernels again;
below zero, such kernels are kept); a kernel whose user the Hub no longer has is shut
down at once (a new user given the old name must not find them). What the listing
does not account for is confirmed with the Hub first, and nothing is stopped on what
the Hub did not say: while it cannot be asked, or refuses, every kernel stays.

Every ``activity_interval`` seconds, the kernels that were busy or active since the
last post have their activity posted for their (user, server), one call per user, so
that the Hub's idle culler sees a server whose remote kernel is working as active.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import typing as t

from traitlets import Float
from traitlets.config import LoggingConfigurable

from ...users import revoke, tenant_name_for
from ..tenancy import HUB_USER_LABEL, SERVER_LABEL
from .api import HubAPI, HubAPIError


class HubLifetime(LoggingConfigurable):
    """Follows the Hub's servers for the kernels this replica owns (see above)."""

    interval = Float(
        30.0, config=True, help="Seconds between two looks at the Hub's active servers (0: never)."
    )
    grace_seconds = Float(
        120.0,
        config=True,
        help="Seconds a kernel outlives its stopped Hub server (or deleted user) before it"
        " is shut down; below 0: such kernels are kept (until the gateway's own culler).",
    )
    activity_interval = Float(
        60.0,
        config=True,
        help="Seconds between posts of busy kernels' activity to the Hub (0: never); keep"
        " it well below the Hub idle culler's timeout.",
    )

    def __init__(self, kernels: t.Any, api: HubAPI, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self.kernels = kernels  # the gateway's OrchestratorMappingKernelManager
        self.api = api
        self._missing_since: dict[str, float] = {}
        self._posted: dict[str, dt.datetime] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._complaints: dict[str, str] = {}  # round -> the failure last logged for it
        self._missing_scopes: list[str] | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._tasks.append(asyncio.ensure_future(self._every(self.interval, self.reconcile)))
        if self.activity_interval > 0:
            self._tasks.append(
                asyncio.ensure_future(self._every(self.activity_interval, self.post_activity))
            )

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _every(self, seconds: float, work: t.Callable[[], t.Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except HubAPIError as e:
                # Said once per round and kind of failure: a Hub that is down for an
                # hour is not an hour of identical lines (the other round's success,
                # which may ask the Hub nothing, does not count as its recovery).
                if str(e) != self._complaints.get(work.__name__):
                    self._complaints[work.__name__] = str(e)
                    self.log.warning("JupyterHub API: %s (kernels are left as they are)", e)
            except Exception:
                self.log.exception("JupyterHub round failed")
            else:
                self._complaints.pop(work.__name__, None)

    def _hub_kernels(self) -> list[tuple[str, t.Any, str, str | None]]:
        """(kernel id, manager, Hub user, server or None) of the Hub kernels owned here."""
        found = []
        for kernel_id, km in list(self.kernels._kernels.items()):
            labels = getattr(km, "labels", {}) or {}
            hub_user = labels.get(HUB_USER_LABEL)
            if hub_user and km.is_owner:
                found.append((kernel_id, km, str(hub_user), labels.get(SERVER_LABEL)))
        return found

    async def reconcile(self) -> None:
        """Shut down the kernels whose server has been gone for the grace, and those of
        users the Hub no longer has at once; what the listing leaves out is confirmed
        with the Hub first, one call per user."""
        kernels = self._hub_kernels()
        if not kernels:
            self._missing_since.clear()
            return
        if not await self._scopes_suffice():
            return
        active = await self.api.active_servers()
        confirmed: dict[str, set[str] | None] = {}
        now = time.monotonic()
        gone_now: set[str] = set()
        for kernel_id, _km, hub_user, server in kernels:
            servers = active.get(hub_user)
            if servers is None or (server is not None and server not in servers):
                if hub_user not in confirmed:
                    confirmed[hub_user] = await self.api.servers_of(hub_user)
                servers = confirmed[hub_user]
            if servers is None:  # the user is gone: nobody will come back for these
                if revoke(tenant := tenant_name_for(hub_user)):
                    self.log.info(
                        "user %s is gone from JupyterHub: tenant %s is revoked (no SSH"
                        " certificate is minted for it)",
                        hub_user,
                        tenant,
                    )
                await self._shut_down(kernel_id, f"user {hub_user} is gone from JupyterHub")
                continue
            if server is None or server in servers:
                self._missing_since.pop(kernel_id, None)
                continue
            gone_now.add(kernel_id)
            since = self._missing_since.setdefault(kernel_id, now)
            if self.grace_seconds >= 0 and now - since >= self.grace_seconds:
                await self._shut_down(kernel_id, f"server {server!r} of {hub_user} stopped")
        for kernel_id in set(self._missing_since) - gone_now:
            del self._missing_since[kernel_id]

    async def _scopes_suffice(self) -> bool:
        """Whether the service token holds what a round needs (asked once)."""
        if self._missing_scopes is None:
            self._missing_scopes = await self.api.missing_scopes()
            if self._missing_scopes:
                self.log.error(
                    "the gateway's JupyterHub service token lacks %s (unfiltered): kernels"
                    " are not stopped with their servers; grant them to its role",
                    ", ".join(self._missing_scopes),
                )
        return not self._missing_scopes

    async def _shut_down(self, kernel_id: str, reason: str) -> None:
        async with self.kernels.lifecycle_lock(kernel_id):
            km = self.kernels._kernels.get(kernel_id)
            if km is None or not km.is_owner:
                return
            self.log.info("kernel %s: shutting down, %s", kernel_id, reason)
            try:
                await self.kernels.shutdown_kernel(kernel_id)
            except Exception as e:
                self.log.warning("kernel %s: shutdown failed: %s", kernel_id, e)
        self._missing_since.pop(kernel_id, None)
        self._posted.pop(kernel_id, None)

    async def post_activity(self) -> None:
        """Post the activity of kernels busy now or active since the last post."""
        now = dt.datetime.now(dt.timezone.utc)
        by_user: dict[str, dict[str | None, dt.datetime]] = {}
        stamps: dict[str, dt.datetime] = {}
        for kernel_id, km, hub_user, server in self._hub_kernels():
            last = getattr(km, "last_activity", None)
            seen = self._posted.get(kernel_id)
            if getattr(km, "execution_state", "") == "busy":
                stamp = now
            elif last is not None and seen is not None and last > seen:
                stamp = last
            else:
                if seen is None and last is not None:
                    # First sight (started, or re-attached after a gateway restart):
                    # what happened before was the server's own activity, or posted.
                    self._posted[kernel_id] = last
                continue
            servers = by_user.setdefault(hub_user, {})
            servers[server] = max(stamp, servers.get(server, stamp))
            stamps[kernel_id] = stamp
        for hub_user, servers in by_user.items():
            named = {s: at for s, at in servers.items() if s is not None}
            try:
                await self.api.post_activity(hub_user, named, max(servers.values()))
            except HubAPIError as e:
                if e.status not in (400, 404):  # a server or user gone meanwhile
                    raise
                self.log.info("activity of %s not posted: %s", hub_user, e)
        self._posted.update(stamps)
        for kernel_id in set(self._posted) - set(self.kernels._kernels):
            del self._posted[kernel_id]
