"""What a kernel started through the gateway gets of the gateway's environment.

Almost nothing: the gateway's environment holds its admin token, store location and
cloud credentials, and a kernel runs user code. A kernel gets only the variables the
operator lists (``kernel_env_passthrough``: PATH, locale, time zone by default), the
client's allow-listed ``KERNEL_*`` values and ``KERNEL_USERNAME``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable

from ..users import ADMIN

#: Never passed on, whatever the pass-through list says: the gateway's own settings
#: (token, store, lease) and the tokens of a hub or server around it.
GATEWAY_SECRETS = ("JUPYTER_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_API_TOKEN")
GATEWAY_PREFIX = "KERNEL_ORCHESTRATOR_"


def _secret(name: str) -> bool:
    return name in GATEWAY_SECRETS or name.startswith(GATEWAY_PREFIX)


def base_environment(
    passthrough: Iterable[str], source: dict[str, str] | None = None
) -> dict[str, str]:
    """The gateway variables (by name or fnmatch pattern) a kernel may see."""
    source = dict(os.environ if source is None else source)
    patterns = list(passthrough)
    return {
        k: v
        for k, v in source.items()
        if not _secret(k) and any(fnmatch.fnmatchcase(k, p) for p in patterns)
    }


def kernel_environment(
    base: dict[str, str],
    client: dict[str, str],
    owner: str,
    groups: Iterable[str] = (),
    scopes: Iterable[str] = (),
) -> dict[str, str]:
    """The whole environment of a kernel that ``owner`` (a member of ``groups``, holding
    the JupyterHub ``custom:`` ``scopes``) starts.

    Who the kernel belongs to, and the groups and scopes that entitle them to profiles,
    are the gateway's say, not the client's: both variables are always set here."""
    env = {**base, **client}
    env["KERNEL_USERNAME"] = owner or ADMIN
    env["KERNEL_USER_GROUPS"] = ",".join([*groups, *scopes])
    return {k: v for k, v in env.items() if not _secret(k)}
