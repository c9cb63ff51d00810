"""Whose kernel is whose: the labels a start puts on a kernel, and who may do what with it.

A kernel belongs to its owner (the tenant name in its ``owner`` label) and, when a Hub
server's token started it, to that server (``server``): a server's token reaches only
that server's kernels, so named servers of one user are kept apart. What a caller may
do with a kernel:

* **use** it (attach a WebSocket, which runs code as the owner): its owner, and the
  operator;
* **see and stop** it (list, get, delete, interrupt, restart): also, for a Hub user's
  kernel, a holder of a kernel-admin scope (``admin:servers``, as Hub admins hold)
  whose reach covers the owner (their Hub user name, or the groups the owner had when
  the kernel started).

Everything else is answered as if the kernel did not exist (404).
"""

from __future__ import annotations

import enum
import typing as t

from ..store.record import TENANT_LABEL as OWNER_LABEL
from ..users import ADMIN

SERVER_LABEL = "server"  # the Hub server a kernel belongs to ("" for the default server)
HUB_USER_LABEL = "hub_user"  # the owner's name in the Hub
GROUPS_LABEL = "groups"  # the owner's groups when the kernel started (comma-separated)


class Need(enum.Enum):
    SEE = "see"
    STOP = "stop"
    USE = "use"


def is_operator(user: t.Any) -> bool:
    return str(getattr(user, "username", "") or "") == ADMIN


def start_labels(user: t.Any) -> dict[str, str]:
    """The labels a kernel ``user`` starts gets (its pool or owner label aside)."""
    hub_user = getattr(user, "hub_user", "")
    if not hub_user:
        return {}
    labels = {HUB_USER_LABEL: hub_user, GROUPS_LABEL: ",".join(getattr(user, "groups", ()))}
    server = getattr(user, "server", None)
    if server is not None:
        labels[SERVER_LABEL] = server
    return labels


def owns(user: t.Any, labels: t.Mapping[str, str]) -> bool:
    """Whether the kernel with ``labels`` is ``user``'s (and their token's server's).
    A Hub user owns only kernels a Hub user of that name started: never one left by a
    users file under the same name."""
    name = str(getattr(user, "username", "") or "")
    if not name or str(labels.get(OWNER_LABEL, "")) != name:
        return False
    hub_user = getattr(user, "hub_user", "")
    if hub_user and labels.get(HUB_USER_LABEL) != hub_user:
        return False
    server = getattr(user, "server", None)
    return server is None or labels.get(SERVER_LABEL) == server


def may(user: t.Any, need: Need, labels: t.Mapping[str, str]) -> bool:
    if is_operator(user) or owns(user, labels):
        return True
    if need is Need.USE:
        return False
    reach = getattr(user, "admin_reach", None)
    if not reach or not labels.get(HUB_USER_LABEL):
        return False  # (pooled, the operator's and a users file's kernels: not theirs)
    groups = [g for g in str(labels.get(GROUPS_LABEL, "")).split(",") if g]
    return bool(reach.covers(str(labels.get(HUB_USER_LABEL, "")), groups))


def model_fields(labels: t.Mapping[str, str]) -> dict[str, t.Any]:
    """Who a kernel belongs to, for its REST model (admins list everyone's)."""
    owner = labels.get(HUB_USER_LABEL) or labels.get(OWNER_LABEL)
    if not owner:
        return {}
    fields: dict[str, t.Any] = {"owner": owner}
    if SERVER_LABEL in labels:
        fields["server"] = labels[SERVER_LABEL]
    return fields
