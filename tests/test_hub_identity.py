"""Hub identities without a Hub: names, scopes and the token cache's rules.

The whole path, with a real JupyterHub, is in ``test_hub``; here are the rules that
must hold for every answer a Hub can give, checked one by one.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from tornado import web

from orchestrator.gateway.hub.identity import admin_reach, held_custom_scopes, server_of
from orchestrator.gateway.hub.tokens import HubTokenCache, HubUnavailable
from orchestrator.gateway.tenancy import Need, may
from orchestrator.users import RESERVED_NAMES, check_user_name, tenant_name_for, user_slug


@pytest.mark.parametrize(
    "name",
    [
        "alice",
        "Alice",
        "alice.smith@uni.edu",
        "admin",
        "root",
        "a--b",
        "x" * 80,
        "é",
        "a-h" + "0" * 16,
    ],
)
def test_tenant_names_are_safe_and_one_to_one(name: str) -> None:
    tenant = tenant_name_for(name)
    assert check_user_name(tenant, "test") == tenant  # a valid users-file name
    assert tenant.lower() not in RESERVED_NAMES and user_slug(tenant) == tenant
    assert len(f"ko-{tenant}") <= 32  # an account name Linux takes
    assert tenant == name or re.search(r"-h[0-9a-f]{16}$", tenant)  # kept, or marked mapped


def test_no_hub_name_maps_onto_another() -> None:
    names = ["alice", "Alice", "alice-", "alice.", "ALICE", "admin", "admin-x", "a-b", "a.b"]
    names.append(tenant_name_for("Alice"))  # a user who picks another's mapped name
    tenants = [tenant_name_for(n) for n in names]
    assert len({user_slug(t) for t in tenants}) == len(names)


def test_the_server_is_the_one_the_token_was_issued_for() -> None:
    model = {"name": "alice", "scopes": ["access:servers!server=alice/", "users:activity!user"]}
    assert server_of(model) == ""
    assert server_of({**model, "scopes": ["access:servers!server=alice/gpu"]}) == "gpu"
    # Shared servers of other users, or the user's own servers at large, name none.
    assert server_of({**model, "scopes": ["access:servers!server=bob/"]}) is None
    assert server_of({**model, "scopes": ["access:servers!user=alice"]}) is None
    # A token for two of the user's servers is refused, not widened to all of them.
    two = ["access:servers!server=alice/", "access:servers!server=alice/gpu"]
    with pytest.raises(web.HTTPError, match="several servers"):
        server_of({**model, "scopes": two})


def test_custom_scopes_and_admin_reach_follow_their_filters() -> None:
    model = {
        "name": "alice",
        "scopes": [
            "custom:gpu",
            "custom:big!user=alice",
            "custom:other!user=bob",
            "custom:physics!group=physics",
            "custom:chem!group=chemistry",
            "read:users",
        ],
    }
    assert held_custom_scopes(model, ["physics"]) == ("custom:big", "custom:gpu", "custom:physics")
    assert not admin_reach(model, ["admin:servers"])
    # The token's scopes decide, not the user's admin flag.
    assert not admin_reach({"admin": True, "scopes": []}, ["admin:servers"])
    assert admin_reach({"scopes": ["admin:servers"]}, ["admin:servers"]).everyone
    scoped = {"scopes": ["custom:kernels-admin!group=physics"]}
    reach = admin_reach(scoped, ["custom:kernels-admin"])
    assert reach.covers("bob", ["physics"]) and not reach.covers("bob", ["chemistry"])


def test_admins_see_and_stop_but_only_owners_use() -> None:
    from orchestrator.gateway.hub.identity import HubUser, KernelAdminReach

    labels = {"owner": "bob", "hub_user": "bob", "server": "", "groups": "physics"}
    admin = HubUser(username="carol", hub_user="carol", admin_reach=KernelAdminReach(True))
    assert may(admin, Need.SEE, labels) and may(admin, Need.STOP, labels)
    assert not may(admin, Need.USE, labels)
    bob_gpu = HubUser(username="bob", hub_user="bob", server="gpu")
    assert not may(bob_gpu, Need.SEE, labels)  # another server of the same user
    bob = HubUser(username="bob", hub_user="bob", server=None)
    assert may(bob, Need.USE, labels)  # a token of the user, not of one server
    assert not may(admin, Need.SEE, {"pool": "python3"})  # pooled: the operator's only
    assert not may(admin, Need.SEE, {"owner": "admin"})  # the operator's own
    # A Hub user named like a users-file user does not own that user's kernels.
    assert not may(HubUser(username="dave", hub_user="dave"), Need.USE, {"owner": "dave"})


class Hub:
    """What a Hub answers (a dict per token), counting the questions."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any] | None] = {}
        self.down = False
        self.asked = 0
        self.release = asyncio.Event()
        self.release.set()

    async def ask(self, token: str) -> dict[str, Any] | None:
        self.asked += 1
        await self.release.wait()
        if self.down:
            raise HubUnavailable("connection refused")
        return self.models.get(token)


def cache_for(hub: Hub, clock: list[float]) -> HubTokenCache:
    return HubTokenCache(
        hub.ask,
        fresh_seconds=20,
        refused_seconds=2,
        outage_seconds=600,
        max_entries=100,
        clock=lambda: clock[0],
    )


async def test_one_hub_call_for_concurrent_requests_and_within_the_cache_time() -> None:
    hub, clock = Hub(), [0.0]
    hub.models["t"] = {"name": "alice"}
    cache = cache_for(hub, clock)
    hub.release.clear()
    waiting = [asyncio.ensure_future(cache.identify("t")) for _ in range(50)]
    await asyncio.sleep(0)
    hub.release.set()
    assert all(m == {"name": "alice"} for m in await asyncio.gather(*waiting))
    assert hub.asked == 1
    clock[0] = 19
    await cache.identify("t")
    assert hub.asked == 1
    clock[0] = 21
    await cache.identify("t")
    assert hub.asked == 2


async def test_an_outage_keeps_known_tokens_and_refuses_new_ones() -> None:
    hub, clock = Hub(), [0.0]
    hub.models.update({"known": {"name": "alice"}, "new": {"name": "bob"}})
    cache = cache_for(hub, clock)
    assert await cache.identify("known")
    hub.down = True
    clock[0] = 100  # stale, within the outage allowance
    assert await cache.identify("known") == {"name": "alice"}
    with pytest.raises(HubUnavailable):
        await cache.identify("new")
    clock[0] = 700  # past it: the Hub must vouch again
    with pytest.raises(HubUnavailable):
        await cache.identify("known")


async def test_refusals_are_cached_briefly_and_a_flood_crowds_out_no_one() -> None:
    hub, clock = Hub(), [0.0]
    hub.models["known"] = {"name": "alice"}
    cache = cache_for(hub, clock)
    assert await cache.identify("known")
    assert await cache.identify("bad") is None
    assert await cache.identify("bad") is None
    assert hub.asked == 2
    clock[0] = 3
    assert await cache.identify("bad") is None
    assert hub.asked == 3
    for i in range(1000):
        await cache.identify(f"flood-{i}")
    assert len(cache._refused) <= cache.max_refusals
    assert not any("flood" in key for key in cache._refused)  # digests only
    hub.down = True
    clock[0] = 100  # the known token's answer survived the flood
    assert await cache.identify("known") == {"name": "alice"}


async def test_unknown_tokens_wait_for_a_slot_and_known_ones_do_not() -> None:
    hub, clock = Hub(), [0.0]
    hub.models["known"] = {"name": "alice"}
    cache = HubTokenCache(
        hub.ask,
        fresh_seconds=20,
        refused_seconds=2,
        outage_seconds=600,
        max_concurrent_calls=2,
        slot_timeout=0.2,
        clock=lambda: clock[0],
    )
    assert await cache.identify("known")
    clock[0] = 30  # stale: to be checked again
    hub.release.clear()  # the Hub hangs on every question
    stuck = [asyncio.ensure_future(cache.identify(f"junk-{i}")) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(HubUnavailable, match="too many tokens"):
        await cache.identify("another")
    recheck = asyncio.ensure_future(cache.identify("known"))  # takes no slot
    await asyncio.sleep(0.05)
    hub.release.set()
    assert await recheck == {"name": "alice"}
    assert [await s for s in stuck] == [None, None]
