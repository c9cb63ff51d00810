"""Who wants to hear when a shared source's view of a kernel changes.

A back-end's shared liveness source (the Docker engine's event stream, the pod watch)
runs in a thread of its own and tells each kernel's auto-restarter, by kernel id, when
that kernel may have ended, and everyone when the source itself goes down or comes
back. The callbacks are the restarters' thread-safe notices; they are called outside
the lock, so one that blocks or fails cannot stall the source.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("kernel-orchestrator")


class Subscribers:
    """Callbacks by kernel id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_kernel: dict[str, list[Callable[[], None]]] = {}

    def add(self, kernel_id: str, notify: Callable[[], None]) -> Callable[[], None]:
        """Subscribe ``notify`` to news of ``kernel_id``; returns the cancel (idempotent)."""
        with self._lock:
            self._by_kernel.setdefault(kernel_id, []).append(notify)

        def cancel() -> None:
            with self._lock:
                callbacks = self._by_kernel.get(kernel_id)
                if callbacks and notify in callbacks:
                    callbacks.remove(notify)
                    if not callbacks:
                        del self._by_kernel[kernel_id]

        return cancel

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._by_kernel)

    def tell(self, kernel_ids: object) -> None:
        """Tell the subscribers of each id in ``kernel_ids`` (a str is one id)."""
        ids = [kernel_ids] if isinstance(kernel_ids, str) else list(kernel_ids)  # type: ignore[call-overload]
        with self._lock:
            callbacks = [cb for kid in ids for cb in self._by_kernel.get(str(kid), ())]
        self._call(callbacks)

    def tell_all(self) -> None:
        """Tell everyone (the source went down, or came back with a new picture)."""
        with self._lock:
            callbacks = [cb for cbs in self._by_kernel.values() for cb in cbs]
        self._call(callbacks)

    @staticmethod
    def _call(callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception as e:  # (a restarter whose loop is closed)
                log.debug("liveness notice failed: %s", e)
