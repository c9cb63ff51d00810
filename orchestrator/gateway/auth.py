"""Who is calling: tokens mapped to users.

The gateway's own token (``--token`` / ``$KERNEL_ORCHESTRATOR_TOKEN``) belongs to the
operator, who sees every kernel; ``user_tokens`` (token -> user name, from config or
a JSON file) give each user their own identity, and a user only ever sees and
touches their own kernels. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
import typing as t
from pathlib import Path

from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web
from traitlets import Dict, Unicode

ADMIN = "admin"


class OrchestratorIdentityProvider(IdentityProvider):
    """Token authentication with one identity per token."""

    user_tokens = Dict(config=True, help="token -> user name.")
    user_tokens_file = Unicode("", config=True, help="JSON file {token: user name}.")

    def _tokens(self) -> dict[str, str]:
        tokens = dict(self.user_tokens)
        if self.user_tokens_file:
            tokens.update(json.loads(Path(self.user_tokens_file).read_text()))
        return tokens

    async def get_user(self, handler: web.RequestHandler) -> User | None:  # type: ignore[override]
        offered = self.get_token(handler) or ""
        if not offered:
            return None if self.token else User(username=ADMIN)
        user: User | None = None
        if self.token and hmac.compare_digest(offered, str(self.token)):
            user = User(username=ADMIN)
        else:
            for token, name in self._tokens().items():
                if hmac.compare_digest(offered, token):
                    user = User(username=str(name))
        if user is not None:
            # A token in the request authenticates it: no XSRF cookie is involved.
            handler._token_authenticated = True  # type: ignore[attr-defined]
        return user

    @property
    def auth_enabled(self) -> bool:
        return bool(self.token) or bool(self._tokens())

    def is_admin(self, user: t.Any) -> bool:
        return getattr(user, "username", "") == ADMIN
