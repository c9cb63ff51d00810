"""A shared source that must be asked, asked once per interval for everyone.

Some back-ends push nothing: the state of an SSH host's kernels is known only by
asking its agent. Without this, every kernel's auto-restarter asked on its own timer
(the answers were batched, but the timers were per kernel). Here one thread per source
asks every ``interval`` seconds while anyone subscribes, and tells by kernel id those
whose answer changed, and everyone when the source stops answering or answers again;
it ends when the last subscriber leaves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from orchestrator.forks import reset_in_child

from .subscribers import Subscribers

log = logging.getLogger("kernel-orchestrator")

_live: set[Refresher] = set()


class Refresher:
    """Asks ``ask()`` (kernel id -> its state, or an exception) every ``interval``."""

    def __init__(self, name: str, interval: float, ask: Callable[[], Mapping[str, object]]) -> None:
        self.name = name
        self.interval = interval
        self.ask = ask
        self.subscribers = Subscribers()
        self.answers = 0  # asked and answered (for benchmarks)
        self._last: dict[str, object] = {}
        self._answered_at = 0.0  # monotonic time of the last answer (0: failing)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def subscribe(self, kernel_id: str, notify: Callable[[], None]) -> Callable[[], None]:
        """Call ``notify`` when ``kernel_id``'s answer changes or the source fails or
        recovers; returns the cancel."""
        with self._lock:  # (the thread leaves under it when nobody subscribes)
            cancel = self.subscribers.add(kernel_id, notify)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name=self.name[:15])
                self._thread.start()
                _live.add(self)
        return cancel

    def healthy(self) -> bool:
        """Whether a change would be told: the source answered its last question (a
        failure is told to everyone, so a quiet subscriber never waits on a source
        that stopped answering) and the thread runs."""
        return self._answered_at > 0 and self._thread is not None

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                if not self.subscribers:
                    self._thread = None
                    _live.discard(self)
                    return
            try:
                answer = dict(self.ask())
            except Exception as e:  # the host is unreachable: polls say "unknown"
                if self._answered_at:
                    log.debug("%s: no answer: %s", self.name, e)
                    self._answered_at = 0.0
                    self.subscribers.tell_all()  # nothing is pushed now: they poll again
                continue
            self.answers += 1
            recovered = not self._answered_at
            self._answered_at = time.monotonic()
            changed = {
                k for k in answer.keys() | self._last.keys() if answer.get(k) != self._last.get(k)
            }
            self._last = answer
            if recovered:
                self.subscribers.tell_all()
            elif changed:
                self.subscribers.tell(changed)


@reset_in_child
def _reset_after_fork() -> None:
    """The parent's threads do not run in a forked child: a subscription there starts
    its own."""
    for refresher in list(_live):
        refresher._thread = None
        refresher._lock = threading.Lock()
        refresher.subscribers = Subscribers()  # (its lock may have been held)
    _live.clear()
