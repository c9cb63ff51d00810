"""One user's websocket traffic cannot take the gateway's event loop from the others.

Every byte a client sends on a kernel websocket is read, decoded and parsed on the
gateway's one event loop. A tenant who sends as fast as the network allows (on many
sockets at once) would leave other tenants' executes waiting behind it. Each user
gets a byte budget per second (a token bucket shared by all their websockets); a
message past it is delayed before it is handled, and while it waits Tornado reads no
more from that socket, so the client is slowed by TCP itself, with nothing buffered
here beyond the one message.
"""

from __future__ import annotations

import time


def message_bytes(message: str | bytes) -> int:
    """The size of a websocket message as it came: a text frame's UTF-8 bytes, not its
    characters (one character may be four bytes)."""
    return len(message) if isinstance(message, bytes) else len(message.encode("utf-8", "replace"))


class ByteBudget:
    """A token bucket of bytes: ``rate`` per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def delay_for(self, size: int) -> float:
        """Take ``size`` bytes; how many seconds to wait before using them (0: none).
        A message larger than the burst is let through after its share of time."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= size
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class UserBudgets:
    """One :class:`ByteBudget` per user name, made on first use."""

    def __init__(self) -> None:
        self._budgets: dict[str, ByteBudget] = {}

    def delay_for(self, user: str, size: int, rate: float) -> float:
        if rate <= 0:
            return 0.0
        budget = self._budgets.get(user)
        if budget is None or budget.rate != rate:
            budget = self._budgets[user] = ByteBudget(rate, rate)
        return budget.delay_for(size)
