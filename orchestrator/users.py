"""Gateway users: who they are, what their names become, and the users file.

A user name travels far: into labels, Kubernetes namespaces, OS account names
(``ko-{username}``), SSH logins and volume paths. Two users must never end up with
the same account or path, so names are checked when the users file is read, before
any request is served: an empty, reserved or malformed name, a duplicate, two names
that become the same slug, or a token too short to resist guessing stops the
gateway with a message that names the entry.

The users file is JSON, either ``{"token": "name", ...}`` or, with groups,
``{"users": [{"name": "alice", "token": "...", "groups": ["physics"]}]}``. It
holds secrets, so a file that others can read is refused as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import OrchestratorError

#: The operator's identity (the gateway's own token); no user may take the name.
ADMIN = "admin"
RESERVED_NAMES = frozenset({ADMIN, "root", "anonymous", "nobody", "pool", "system", "default"})
MIN_TOKEN_LENGTH = 24
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class UsersFileError(OrchestratorError):
    """The users file (or the user tokens in config) cannot be used as it is."""


def user_slug(name: str) -> str:
    """``name`` as it appears in account names, paths and labels: lower case,
    letters, digits and '-' only. Validation guarantees that no two users share one."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


_PLAIN_TENANT = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_MAPPED_TENANT = re.compile(r"-h[0-9a-f]{16}$")
#: Long enough for most names, short enough that ``ko-{name}`` is a Linux account
#: name (at most 32) and a Kubernetes namespace keeps the whole name.
_PLAIN_TENANT_LENGTH = 28


def tenant_name_for(external_name: str) -> str:
    """The gateway's tenant name for a user named elsewhere (a JupyterHub user).

    Such names are not checked when the gateway starts, and they travel as far as the
    users file's (labels, namespaces, accounts, paths: through :func:`user_slug`), so
    the mapping must be one-to-one, slug included, and never yield the operator's or a
    reserved name. A name that is already its own slug (lower-case letters and digits
    joined by single hyphens), not reserved, at most 28 characters, and not shaped like
    a mapped name, is kept: ``alice`` stays ``alice``. Any other becomes the first ten
    characters of its slug, ``-h`` and 16 hex digits of a digest of the whole name
    (28 in all): ``Alice.Smith@uni`` becomes ``alice-smit-h…``, ``admin`` becomes
    ``admin-h…``, and so does a name that merely looks mapped, so no user can pick a
    name that maps onto another's.
    """
    if (
        _PLAIN_TENANT.fullmatch(external_name)
        and len(external_name) <= _PLAIN_TENANT_LENGTH
        and external_name not in RESERVED_NAMES
        and not _MAPPED_TENANT.search(external_name)
    ):
        return external_name
    digest = hashlib.sha256(external_name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    slug = user_slug(external_name)[: _PLAIN_TENANT_LENGTH - 18].strip("-") or "user"
    return f"{slug}-h{digest}"


def is_group_name(name: object) -> bool:
    """Whether ``name`` can be a group in the gateway's policies (``@name``)."""
    return isinstance(name, str) and bool(_GROUP.fullmatch(name))


def memberships(groups: Iterable[str], scopes: Iterable[str] = ()) -> frozenset[str]:
    """What policy entries can name a user by besides their name: ``@group`` for each
    group and each custom scope as it is (``custom:gpu``), in lower case."""
    return frozenset({f"@{g.lower()}" for g in groups} | {s.lower() for s in scopes})


def entitled(entries: Iterable[str], name: str, held: Iterable[str]) -> bool:
    """Whether a policy list (user names, ``@groups``, ``custom:`` scopes) names the user
    ``name`` who holds the ``held`` memberships (see :func:`memberships`)."""
    wanted = {e.lower() for e in entries}
    return (bool(name) and name.lower() in wanted) or bool(wanted & set(held))


@dataclass(frozen=True)
class GatewayUser:
    name: str
    token: str = field(repr=False)
    groups: tuple[str, ...] = ()


def check_user_name(name: object, where: str) -> str:
    """``name`` if it is a usable user name, else a UsersFileError naming ``where``."""
    if not isinstance(name, str) or not name.strip():
        raise UsersFileError(f"{where}: the user name is empty")
    if not _NAME.fullmatch(name):
        raise UsersFileError(
            f"{where}: user name {name!r} must be 1-64 letters, digits or ._@+-"
            " and start with a letter or digit"
        )
    if name.lower() in RESERVED_NAMES or name.lower().startswith("system:"):
        raise UsersFileError(f"{where}: user name {name!r} is reserved")
    if not user_slug(name):
        raise UsersFileError(f"{where}: user name {name!r} has no letters or digits")
    return name


def _entries(raw: object, where: str) -> Iterable[tuple[object, object, object]]:
    """(name, token, groups) from either users-file shape."""
    if isinstance(raw, dict) and set(raw) == {"users"}:
        users = raw["users"]
        if not isinstance(users, list):
            raise UsersFileError(f"{where}: 'users' must be a list")
        for i, entry in enumerate(users):
            if not isinstance(entry, dict):
                raise UsersFileError(f"{where}: users[{i}] must be an object")
            unknown = set(entry) - {"name", "token", "groups"}
            if unknown:
                raise UsersFileError(f"{where}: users[{i}] has unknown keys {sorted(unknown)}")
            yield entry.get("name"), entry.get("token"), entry.get("groups", [])
    elif isinstance(raw, dict):
        for token, name in raw.items():
            yield name, token, []
    else:
        raise UsersFileError(f"{where}: expected a JSON object")


def parse_users(
    raw: object, where: str, *, admin_token: str = "", existing: Iterable[GatewayUser] = ()
) -> list[GatewayUser]:
    """Validated users from a decoded users file (or the ``user_tokens`` dict), which
    must also be consistent with the ``existing`` users from another source."""
    users: list[GatewayUser] = []
    known = list(existing)
    names = {u.name.lower(): u.name for u in known}
    slugs = {user_slug(u.name): u.name for u in known}
    tokens = {u.token for u in known}
    for name, token, groups in _entries(raw, where):
        name = check_user_name(name, where)
        label = f"{where}: user {name!r}"
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
            raise UsersFileError(
                f"{label}: the token must be at least {MIN_TOKEN_LENGTH} characters"
            )
        if token in tokens or (admin_token and token == admin_token):
            raise UsersFileError(f"{label}: the token is already used by another identity")
        if name.lower() in names:
            raise UsersFileError(f"{label}: the name is listed twice")
        slug = user_slug(name)
        if slug in slugs:
            raise UsersFileError(
                f"{label}: the name becomes {slug!r} in account names and paths,"
                f" as {slugs[slug]!r} does"
            )
        if not isinstance(groups, list) or not all(
            isinstance(g, str) and _GROUP.fullmatch(g) for g in groups
        ):
            raise UsersFileError(f"{label}: groups must be a list of names")
        names[name.lower()] = name
        slugs[slug] = name
        tokens.add(token)
        users.append(GatewayUser(name=name, token=token, groups=tuple(groups)))
    return users


def load_users_file(
    path: str | os.PathLike[str], *, admin_token: str = "", existing: Iterable[GatewayUser] = ()
) -> list[GatewayUser]:
    """Read and validate the users file at ``path`` (against ``existing`` users too)."""
    from .paths import SecretFileError, read_secret_file

    where = str(path)
    try:
        text = read_secret_file(path)
    except SecretFileError as e:
        raise UsersFileError(f"{where}: the users file holds tokens but {e}") from None
    except OSError as e:
        raise UsersFileError(f"cannot read the users file {where}: {e.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsersFileError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return parse_users(raw, where, admin_token=admin_token, existing=existing)


# ------------------------------------------------------------------ revocation
# Who is no longer a user, as the gateway's identity sources say (the users file's
# current contents, the Hub's deleted users). Asked before anything long-lived is made
# for a user on their behalf without a request of theirs at hand: an SSH certificate
# minted for a reconnect (:mod:`orchestrator.tunnels.ssh.certificates`).
_revocation_checks: list[Callable[[str], bool]] = []
_revoked: set[str] = set()


def add_revocation_check(check: Callable[[str], bool]) -> None:
    """Register ``check(name) -> True`` when ``name`` is no longer a user."""
    _revocation_checks.append(check)


def remove_revocation_check(check: Callable[[str], bool]) -> None:
    if check in _revocation_checks:
        _revocation_checks.remove(check)


def revoke(name: str) -> bool:
    """Note that ``name`` is gone (a user the Hub deleted); whether that is news."""
    known = name in _revoked
    _revoked.add(name)
    return not known


def reinstate(name: str) -> None:
    """``name`` is a user again (the Hub has a user of that name once more)."""
    _revoked.discard(name)


def is_revoked(name: str) -> bool:
    """Whether ``name`` was removed by any identity source; a check that fails counts
    as a revocation (a certificate is not minted on a guess)."""
    if name in _revoked:
        return True
    for check in list(_revocation_checks):
        try:
            if check(name):
                return True
        except Exception:
            return True
    return False
