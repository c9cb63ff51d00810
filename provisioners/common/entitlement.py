"""Who may use a profile: ``allowed`` user names, ``@groups`` and JupyterHub ``custom:``
scopes, as for kernelspecs.

A profile is a named bundle an operator defines in a kernelspec (GPU nodes, a Slurm
account, tolerations, volumes); a start picks one by name (``KERNEL_PROFILE``,
``KERNEL_SLURM_PROFILE``). Without an ``allowed`` list every user may; with one, in a
multi-user gateway, only the users and groups it names. Who the user is and which
groups they have come from the gateway (``KERNEL_USERNAME``, ``KERNEL_USER_GROUPS``),
never from the client: the gateway overwrites both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.errors import KernelStartError, NotEntitledError
from orchestrator.users import ADMIN, entitled, memberships

USERNAME_VAR = "KERNEL_USERNAME"
GROUPS_VAR = "KERNEL_USER_GROUPS"


def held_memberships(env: Mapping[str, str]) -> frozenset[str]:
    """The groups and custom scopes the gateway wrote into ``KERNEL_USER_GROUPS``
    (comma-separated; a ``custom:`` entry is a JupyterHub scope, the rest groups)."""
    entries = [e.strip() for e in env.get(GROUPS_VAR, "").split(",") if e.strip()]
    scopes = [e for e in entries if e.startswith("custom:")]
    return memberships([e for e in entries if not e.startswith("custom:")], scopes)


def allowed_list(profile: Mapping[str, Any], where: str) -> list[str] | None:
    """A profile's ``allowed`` entries in lower case (None: everyone)."""
    allowed = profile.get("allowed")
    if allowed is None:
        return None
    if not isinstance(allowed, list) or not all(isinstance(a, str) and a for a in allowed):
        raise KernelStartError(f"{where}.allowed must be a list of user names and @groups")
    return [a.lower() for a in allowed]


def check_profile_entitlement(
    kind: str, name: str, profile: Mapping[str, Any], env: Mapping[str, str], multi_tenant: bool
) -> None:
    """Refuse (NotEntitledError) a profile the starting user is not among the
    ``allowed`` of; a single-user orchestrator's operator may use every profile."""
    allowed = allowed_list(profile, f"{kind} profile {name!r}")
    if allowed is None or not multi_tenant:
        return
    user = env.get(USERNAME_VAR, "")
    if user == ADMIN or entitled(allowed, user, held_memberships(env)):
        return
    raise NotEntitledError(f"{kind} profile {name!r} is not available to user {user or '?'!r}")
