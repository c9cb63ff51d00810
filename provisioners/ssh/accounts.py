"""Which remote account (and key) a gateway user's SSH kernels run as.

A multi-user gateway must not put two users' kernels in one remote account: the
account's files (connection files with HMAC keys, notebooks, caches) and processes
would be each other's. So a kernelspec maps users to accounts, by template
(``user = "{username}"``, ``identity_file = "/keys/{username}"``) or by an explicit
``user_map``; one that maps nobody is refused in a multi-user gateway unless the
operator says ``shared_account``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from orchestrator.errors import KernelStartError, OrchestratorError
from orchestrator.users import user_slug

PLACEHOLDER = "{username}"


@dataclass(frozen=True)
class RemoteAccount:
    """The SSH login of one kernel: user name and identity file ('' : ssh config's)."""

    user: str = ""
    identity_file: str = ""
    owner: str = ""  # the gateway user whose kernel logs in (what a certificate names)

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> RemoteAccount | None:
        if not isinstance(data, dict):
            return None
        return cls(
            str(data.get("user") or ""),
            str(data.get("identity_file") or ""),
            str(data.get("owner") or ""),
        )


def _mapped(owner: str, entry: Any) -> RemoteAccount:
    if isinstance(entry, str):
        entry = {"user": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("user"), str) or not entry["user"]:
        raise KernelStartError(
            f"user_map[{owner!r}] must be an account name or {{user, identity_file}}"
        )
    unknown = set(entry) - {"user", "identity_file"}
    if unknown:
        raise KernelStartError(
            f"user_map[{owner!r}] has unknown keys: {', '.join(sorted(unknown))}"
        )
    return RemoteAccount(entry["user"], str(entry.get("identity_file") or ""))


def account_for(
    owner: str,
    *,
    user: str,
    identity_file: str,
    user_map: dict[str, Any],
    multi_tenant: bool,
    shared_account: bool,
) -> RemoteAccount:
    """The account ``owner``'s kernel logs in as, or a refusal saying what to configure."""
    if owner and owner in user_map:
        return replace(_mapped(owner, user_map[owner]), owner=owner)
    templated = PLACEHOLDER in user
    if (templated or PLACEHOLDER in identity_file) and not owner:
        raise KernelStartError(
            f"ssh-provisioner: user {user!r} / identity_file {identity_file!r} need the"
            " kernel's user name (KERNEL_USERNAME)"
        )
    slug = user_slug(owner) if owner else ""
    if multi_tenant and not templated and not shared_account:
        where = f"user_map has no entry for {owner!r}" if user_map else "no user is mapped"
        raise KernelStartError(
            "ssh-provisioner: the kernels of this gateway's users would share one remote"
            f" account ({where}): set user to a template such as '{PLACEHOLDER}', list the"
            " users in user_map, or set shared_account to accept it"
        )
    return RemoteAccount(
        user.replace(PLACEHOLDER, slug), identity_file.replace(PLACEHOLDER, slug), owner
    )


def static_accounts(user: str, identity_file: str, user_map: dict[str, Any]) -> list[RemoteAccount]:
    """The accounts a kernelspec names outright (for ``gc``, which has no user at hand):
    the mapped ones, plus the plain user when it is not a template."""
    accounts = [_mapped(owner, entry) for owner, entry in user_map.items()]
    if PLACEHOLDER not in user and PLACEHOLDER not in identity_file:
        accounts.append(RemoteAccount(user, identity_file))
    return list(dict.fromkeys(accounts))


def parse_user_map(items: list[str]) -> dict[str, dict[str, str]]:
    """``USER=ACCOUNT[:IDENTITY_FILE]`` arguments as a ``user_map``."""
    mapping: dict[str, dict[str, str]] = {}
    for item in items:
        owner, sep, rest = item.partition("=")
        account, _, identity = rest.partition(":")
        if not sep or not owner or not account:
            raise OrchestratorError(
                f"--user-map {item!r} must look like USER=ACCOUNT[:IDENTITY_FILE]"
            )
        if owner in mapping:
            raise OrchestratorError(f"--user-map names {owner!r} twice")
        mapping[owner] = {"user": account, **({"identity_file": identity} if identity else {})}
    return mapping
