"""Who is calling: tokens mapped to users (and their groups).

The gateway's own token (``--token`` / ``$KERNEL_ORCHESTRATOR_TOKEN``) belongs to the
operator, who sees every kernel; the users file (or ``user_tokens`` in config) gives
each user their own identity, and a user only ever sees and touches their own
kernels. Both are validated before the first request (see ``orchestrator.users``);
a users file changed while the gateway runs is re-read, and a broken edit keeps the
last good list rather than locking everyone out. Tokens are compared in constant
time and never logged.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import typing as t

from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web
from traitlets import Dict, Unicode

from ..users import (
    ADMIN,
    GatewayUser,
    UsersFileError,
    add_revocation_check,
    load_users_file,
    parse_users,
)


@dataclasses.dataclass
class GroupedUser(User):
    """jupyter_server's User with the groups the users file gives it."""

    groups: tuple[str, ...] = ()


class OrchestratorIdentityProvider(IdentityProvider):
    """Token authentication with one identity per token."""

    user_tokens = Dict(config=True, help="token -> user name.")
    user_tokens_file = Unicode(
        "",
        config=True,
        help='Users file: JSON {token: name} or {"users": [{name, token, groups}]}, mode 600.',
    )

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self._users: list[GatewayUser] = []
        self._file_stamp: tuple[int, int] | None = None
        self.load_users()
        if self.user_tokens or self.user_tokens_file:  # (a Hub's users are the Hub's)
            add_revocation_check(self.no_longer_a_user)

    def no_longer_a_user(self, name: str) -> bool:
        """Whether ``name`` has left the users file (or the configured tokens)."""
        return name != ADMIN and all(u.name != name for u in self._current_users())

    def load_users(self) -> list[GatewayUser]:
        """Validate and load every user; a UsersFileError stops the gateway's start."""
        users = parse_users(dict(self.user_tokens), "user_tokens", admin_token=str(self.token))
        if self.user_tokens_file:
            users += load_users_file(
                self.user_tokens_file, admin_token=str(self.token), existing=users
            )
            self._file_stamp = self._stamp()
        self._users = users
        return users

    def _stamp(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.user_tokens_file)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size)

    def _current_users(self) -> list[GatewayUser]:
        if self.user_tokens_file and self._stamp() != self._file_stamp:
            previous = self._users
            try:
                self.load_users()
                self.log.info(
                    "users file %s re-read: %d users", self.user_tokens_file, len(self._users)
                )
            except UsersFileError as e:
                self._file_stamp = self._stamp()
                self._users = previous
                self.log.error("users file changed but is not usable, keeping the last one: %s", e)
        return self._users

    @property
    def multi_user(self) -> bool:
        """Whether the gateway serves users other than its operator."""
        return bool(self._users) or bool(self.user_tokens_file)

    async def get_user(self, handler: web.RequestHandler) -> User | None:  # type: ignore[override]
        offered = self.get_token(handler) or ""
        if not offered:
            return None if self.auth_enabled else User(username=ADMIN)
        user: User | None = None
        if self.token and hmac.compare_digest(offered.encode(), str(self.token).encode()):
            user = User(username=ADMIN)
        for known in self._current_users():  # no early exit: constant time over the list
            if hmac.compare_digest(offered.encode(), known.token.encode()):
                user = GroupedUser(username=known.name, groups=known.groups)
        if user is not None:
            # A token in the request authenticates it: no XSRF cookie is involved.
            handler._token_authenticated = True  # type: ignore[attr-defined]
        return user

    @property
    def auth_enabled(self) -> bool:
        return bool(self.token) or bool(self._users)

    def is_admin(self, user: t.Any) -> bool:
        return getattr(user, "username", "") == ADMIN

    def known_tokens(self) -> list[str]:
        """Every secret a log line must never show."""
        return [str(self.token)] * bool(self.token) + [u.token for u in self._users]
