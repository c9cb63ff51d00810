"""Hub answers about tokens, cached briefly by a digest of the token.

A Hub call per request would tie every kernel request's latency, and the gateway's
availability, to the Hub. So an answer is kept for ``fresh_seconds`` (a refusal for
less, so that a token the Hub has just issued soon works), concurrent requests with
one token wait for a single Hub call, and while the Hub cannot be reached a token it
vouched for within ``outage_seconds`` keeps working; a token it never vouched for is
refused with :class:`HubUnavailable`, never let through. Only SHA-256 digests of
tokens are held, and at most ``max_entries`` of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import typing as t


class HubUnavailable(Exception):
    """The Hub could not be asked (down, unreachable, or answering with an error)."""


#: Asks the Hub about a token: its answer (the user model), or None when the Hub says
#: the token is not valid; HubUnavailable when it cannot tell.
Ask = t.Callable[[str], t.Awaitable["dict[str, t.Any] | None"]]


@dataclasses.dataclass
class _Answer:
    model: dict[str, t.Any] | None
    at: float


class HubTokenCache:
    def __init__(
        self,
        ask: Ask,
        *,
        fresh_seconds: float,
        refused_seconds: float,
        outage_seconds: float,
        max_entries: int = 20_000,
        max_concurrent_calls: int = 16,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self._ask = ask
        self.fresh_seconds = fresh_seconds
        self.refused_seconds = refused_seconds
        self.outage_seconds = outage_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._answers: dict[str, _Answer] = {}
        self._calls: dict[str, asyncio.Future[dict[str, t.Any] | None]] = {}
        self._call_slots = asyncio.Semaphore(max_concurrent_calls)
        #: Hub calls made (the benchmark counts them).
        self.calls = 0

    @staticmethod
    def digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

    async def identify(self, token: str) -> dict[str, t.Any] | None:
        """The Hub's user model for ``token`` (None: not a valid token)."""
        key = self.digest(token)
        known = self._answers.get(key)
        now = self._clock()
        if known is not None:
            ttl = self.fresh_seconds if known.model is not None else self.refused_seconds
            if now - known.at < ttl:
                return known.model
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = asyncio.ensure_future(self._call(token, key))
            call.add_done_callback(lambda _: self._calls.pop(key, None))
        try:
            return await asyncio.shield(call)
        except HubUnavailable:
            if known is None or known.model is None:
                raise
            if self._clock() - known.at >= self.outage_seconds:
                raise
            return known.model  # vouched for recently: the outage is not theirs

    async def _call(self, token: str, key: str) -> dict[str, t.Any] | None:
        async with self._call_slots:
            self.calls += 1
            model = await self._ask(token)
        self._remember(key, model)
        return model

    def _remember(self, key: str, model: dict[str, t.Any] | None) -> None:
        self._answers.pop(key, None)
        self._answers[key] = _Answer(model, self._clock())  # (newest last)
        if len(self._answers) > self.max_entries:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        """Drop expired answers, then the oldest until a tenth of the room is free."""
        now = self._clock()
        keep_for = max(self.fresh_seconds, self.outage_seconds)
        for key in [k for k, a in self._answers.items() if now - a.at >= keep_for]:
            del self._answers[key]
        excess = len(self._answers) - int(self.max_entries * 0.9)
        for key in list(self._answers)[: max(0, excess)]:
            del self._answers[key]

    def forget(self, token: str) -> None:
        self._answers.pop(self.digest(token), None)
