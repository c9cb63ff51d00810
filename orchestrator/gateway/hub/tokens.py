"""Hub answers about tokens, cached briefly by a digest of the token.

A Hub call per request would tie every kernel request's latency, and the gateway's
availability, to the Hub. So an answer is kept for ``fresh_seconds`` (a refusal for
``refused_seconds``, so that a token the Hub has just issued soon works), concurrent
requests with one token wait for a single Hub call, and while the Hub cannot be
reached a token it vouched for within ``outage_seconds`` keeps working; a token it
never vouched for is refused with :class:`HubUnavailable`, never let through.

Unknown tokens cannot crowd out known ones: their Hub calls share
``max_concurrent_calls`` slots (and a wait for a slot is bounded by ``slot_timeout``),
while re-checking a token the Hub vouched for takes no slot; refusals are kept apart,
at most ``max_refusals`` of them, so a flood of made-up tokens never pushes out a
good answer. Only SHA-256 digests of tokens are held.
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
        max_refusals: int = 2_000,
        max_concurrent_calls: int = 16,
        slot_timeout: float = 10.0,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self._ask = ask
        self.fresh_seconds = fresh_seconds
        self.refused_seconds = refused_seconds
        self.outage_seconds = outage_seconds
        self.max_entries = max_entries
        self.max_refusals = max_refusals
        self.slot_timeout = slot_timeout
        self._clock = clock
        self._vouched: dict[str, _Answer] = {}  # digest -> a user model (newest last)
        self._refused: dict[str, float] = {}  # digest -> when (newest last)
        self._calls: dict[str, asyncio.Future[dict[str, t.Any] | None]] = {}
        self._call_slots = asyncio.Semaphore(max_concurrent_calls)

    @staticmethod
    def digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

    async def identify(self, token: str) -> dict[str, t.Any] | None:
        """The Hub's user model for ``token`` (None: not a valid token)."""
        key = self.digest(token)
        now = self._clock()
        known = self._vouched.get(key)
        if known is not None and now - known.at < self.fresh_seconds:
            return known.model
        refused = self._refused.get(key)
        if refused is not None and now - refused < self.refused_seconds:
            return None
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = asyncio.ensure_future(
                self._call(token, key, vouched=known is not None)
            )
            call.add_done_callback(lambda _: self._calls.pop(key, None))
        try:
            return await asyncio.shield(call)
        except HubUnavailable:
            if known is None or self._clock() - known.at >= self.outage_seconds:
                raise
            return known.model  # vouched for recently: the outage is not theirs

    async def _call(self, token: str, key: str, *, vouched: bool) -> dict[str, t.Any] | None:
        if vouched:  # a re-check of a known token never queues behind unknown ones
            model = await self._ask(token)
        else:
            try:
                await asyncio.wait_for(self._call_slots.acquire(), self.slot_timeout)
            except asyncio.TimeoutError:
                raise HubUnavailable("too many tokens being checked at once") from None
            try:
                model = await self._ask(token)
            finally:
                self._call_slots.release()
        self._remember(key, model)
        return model

    def _remember(self, key: str, model: dict[str, t.Any] | None) -> None:
        self._vouched.pop(key, None)
        self._refused.pop(key, None)
        now = self._clock()
        if model is None:
            self._refused[key] = now
            if len(self._refused) > self.max_refusals:
                self._trim(self._refused, self.max_refusals, lambda at: now - at)
        else:
            self._vouched[key] = _Answer(model, now)
            if len(self._vouched) > self.max_entries:
                self._trim(self._vouched, self.max_entries, lambda a: now - a.at)

    def _trim(self, answers: dict[str, t.Any], most: int, age: t.Callable[[t.Any], float]) -> None:
        """Drop what no rule can use any more, then the oldest until a tenth is free."""
        keep_for = (
            max(self.fresh_seconds, self.outage_seconds)
            if answers is self._vouched
            else self.refused_seconds
        )
        for key in [k for k, a in answers.items() if age(a) >= keep_for]:
            del answers[key]
        for key in list(answers)[: max(0, len(answers) - int(most * 0.9))]:
            del answers[key]
