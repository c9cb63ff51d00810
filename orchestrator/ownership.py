"""This process as a kernel owner: its identity, its leases, and the keeper that renews them.

A process that starts or takes over a kernel holds a lease on it in the store
(:mod:`orchestrator.store.lease`). The :class:`LeaseKeeper` renews every lease this
process holds with one store write per interval, whatever the number of kernels, on
a thread of its own so that a busy event loop or a blocking ``KernelManager`` between
calls does not let leases lapse. When a renewal shows a kernel is no longer ours
(another process forced a take-over, or the record was removed) the manager is told
at once, stops its restarter and lets the kernel go. Kernels this process would like
to own but another process holds are looked at once per lease, so when their owner
dies its kernels are taken over within a lease of its expiry.

Kernels this process serves without owning them (a client, a gateway replica that
did not start them) are *watched*: the same one read that looks at the wanted
kernels' owners carries each kernel's restart count, and a count that moved tells the
manager to follow the restart another process did, so its tunnels and clients move to
the new kernel process without waiting for a request.

Store traffic is proportional to change: the renewal is one write per interval (none
while this process holds nothing), and the owners are read once per *lease* (every
third interval), in one statement without payloads, for the wanted and watched
kernels, or for all of them when someone listens (a gateway replica looks for kernels
whose owner died in that same read: see :meth:`LeaseKeeper.listen`).

An owner that is visibly dead needs no waiting: if the store names a holder on this
machine (same boot and pid namespace) whose process is gone, its lease is void.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from . import forks, procinfo
from .errors import OwnedElsewhereError, UnknownKernelError
from .store import KernelStore
from .store.lease import Holder, Lease, Ownership

log = logging.getLogger("kernel-orchestrator.ownership")

LEASE_ENV = "KERNEL_ORCHESTRATOR_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 30.0


def default_lease_seconds() -> float:
    """``$KERNEL_ORCHESTRATOR_LEASE_SECONDS``, else 30 s."""
    try:
        value = float(os.environ.get(LEASE_ENV, "") or DEFAULT_LEASE_SECONDS)
    except ValueError:
        return DEFAULT_LEASE_SECONDS
    return value if value > 0 else DEFAULT_LEASE_SECONDS


_holder: Holder | None = None
_holder_lock = threading.Lock()


def this_holder() -> Holder:
    """This process, as the store names owners (one holder id per process)."""
    global _holder
    with _holder_lock:
        if _holder is None or _holder.pid != os.getpid():
            pid = os.getpid()
            _holder = Holder(
                holder_id=uuid.uuid4().hex[:16],
                kind=_holder.kind if _holder is not None else "library",
                host=socket.gethostname(),
                machine=procinfo.machine_id(),
                pid=pid,
                start_ticks=procinfo.start_ticks(pid),
            )
        return _holder


def set_holder_kind(kind: str) -> None:
    """Name what this process is (``cli``, ``gateway``) in the owner it shows others."""
    global _holder
    holder = this_holder()
    with _holder_lock:
        _holder = replace(holder, kind=kind)


def holder_is_dead(owner: Holder) -> bool:
    """True only when ``owner`` provably no longer runs (same machine, process gone)."""
    me = this_holder()
    if not owner.machine or owner.machine != me.machine:
        return False
    if owner.pid == me.pid and owner.holder_id != me.holder_id:
        return True  # our pid, but an earlier holder: a previous process with our pid
    return not procinfo.is_running(owner.pid, owner.start_ticks)


async def claim(
    store: KernelStore, kernel_id: str, lease_seconds: float, *, force: bool = False
) -> Lease:
    """Claim ``kernel_id`` for this process; a dead local owner's lease is void.

    Raises :class:`OwnedElsewhereError` while a live process owns it (unless ``force``).
    """
    holder = this_holder()
    try:
        return await store.claim(kernel_id, holder, lease_seconds, force=force)
    except OwnedElsewhereError as e:
        owner = e.owner
        if not (isinstance(owner, Holder) and holder_is_dead(owner)):
            raise
        record = await store.get(kernel_id)
        if record is None:
            raise
        log.info("kernel %s: its owner %s is gone; taking it over", kernel_id, owner.describe())
        return await store.claim(
            kernel_id, holder, lease_seconds, steal_generation=record.generation
        )


# Renewals per lease (each a third of it); the owners are read at one of them.
READS_PER_LEASE = 3


@dataclass
class _Watch:
    on_change: Callable[..., Any]
    loop: asyncio.AbstractEventLoop | None
    on_gone: Callable[[str], Any] | None = None


class LeaseKeeper:
    """Renews this process's leases in one store; reports lost ones, claims wanted ones."""

    def __init__(self, store: KernelStore, lease_seconds: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self._held: dict[str, tuple[Lease, _Watch]] = {}
        self._wanted: dict[str, _Watch] = {}
        self._watched: dict[str, tuple[int, _Watch]] = {}  # restarts seen, on_restarted
        self._listeners: list[_Watch] = []  # told every owners read, of all kernels
        self._ticks = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0  # consecutive renewals that failed (store down)
        self.last_error = ""

    @property
    def interval(self) -> float:
        return max(0.2, self.lease_seconds / READS_PER_LEASE)

    # ------------------------------------------------------------- register
    def hold(
        self, lease: Lease, on_lost: Callable[[str], Any], loop: asyncio.AbstractEventLoop | None
    ) -> None:
        """Keep ``lease`` renewed; ``on_lost(reason)`` runs (on ``loop``) if it is lost."""
        with self._lock:
            self._wanted.pop(lease.kernel_id, None)
            self._held[lease.kernel_id] = (lease, _Watch(on_lost, loop))
        self._ensure_thread()

    def want(
        self,
        kernel_id: str,
        on_claimed: Callable[[Lease], Any],
        loop: asyncio.AbstractEventLoop | None,
        on_gone: Callable[[str], Any] | None = None,
    ) -> None:
        """Claim ``kernel_id`` as soon as its owner's lease lapses; then ``on_claimed(lease)``.
        If its record is removed meanwhile (shut down by its owner), ``on_gone(reason)``."""
        with self._lock:
            if kernel_id not in self._held:
                self._wanted[kernel_id] = _Watch(on_claimed, loop, on_gone)
        self._ensure_thread()

    def watch(
        self,
        kernel_id: str,
        restarts: int,
        on_restarted: Callable[[int], Any],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        """While this process does not hold ``kernel_id``, call ``on_restarted(count)``
        (on ``loop``) when its restart count in the store moves past ``restarts``."""
        # Weakly: a manager dropped without release() is not kept alive by its watch.
        weak = weakref.WeakMethod(on_restarted)  # type: ignore[arg-type]
        with self._lock:
            self._watched[kernel_id] = (restarts, _Watch(weak, loop))
        self._ensure_thread()

    def unwatch(self, kernel_id: str, on_restarted: Callable[[int], Any]) -> None:
        """Stop the watch ``on_restarted`` was registered with (not another manager's)."""
        with self._lock:
            entry = self._watched.get(kernel_id)
            if entry is not None and entry[1].on_change() in (None, on_restarted):
                del self._watched[kernel_id]

    def listen(
        self,
        on_owners: Callable[[dict[str, Ownership]], Any],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        """Read the owners of *every* kernel (not only the wanted and watched ones) once
        per lease, and hand each read to ``on_owners`` (on ``loop``)."""
        with self._lock:
            self._listeners.append(_Watch(on_owners, loop))
        self._ensure_thread()

    def unlisten(self, on_owners: Callable[[dict[str, Ownership]], Any]) -> None:
        """Stop handing owners reads to ``on_owners`` (a gateway shutting down)."""
        with self._lock:
            self._listeners = [w for w in self._listeners if w.on_change != on_owners]

    def wants(self, kernel_id: str) -> bool:
        """Whether ``kernel_id`` is waiting here for its owner's lease to lapse."""
        with self._lock:
            return kernel_id in self._wanted

    def drop(self, kernel_id: str, lease: Lease | None = None) -> None:
        """Stop renewing ``lease`` (the caller releases it or deletes the record), or,
        without one, stop wanting ``kernel_id``. Another manager of the same kernel in
        this process (an owner next to a client) keeps its own entry."""
        with self._lock:
            if lease is None:
                self._wanted.pop(kernel_id, None)
            elif self._held.get(kernel_id, (None,))[0] == lease:
                del self._held[kernel_id]

    # --------------------------------------------------------------- thread
    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="ko-lease-keeper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while True:
                self._wake.wait(self.interval)
                self._wake.clear()
                with self._lock:
                    idle = not (self._held or self._wanted or self._watched or self._listeners)
                    if idle:
                        self._thread = None
                        return
                try:
                    loop.run_until_complete(self._tick())
                except Exception:  # a bug in one round must not end the renewals
                    log.exception("kernel lease keeper: a round failed")
        finally:
            loop.close()

    async def _tick(self) -> None:
        holder = this_holder()
        self._ticks += 1
        with self._lock:
            mine = dict(self._held)
        held: dict[str, int] = {}
        if mine:
            try:
                held = await self.store.renew(holder.holder_id, self.lease_seconds)
            except Exception as e:  # the store is down: keep trying, leases may lapse
                self.failures += 1
                self.last_error = str(e)
                log.warning("could not renew kernel leases (%d in a row): %s", self.failures, e)
                return
        self.failures, self.last_error = 0, ""
        with self._lock:  # (mine: as renewed; a lease claimed since is judged next time)
            wanted = dict(self._wanted)
            watched = {k: v for k, v in self._watched.items() if k not in self._held}
            listeners = list(self._listeners)
        for kernel_id, (lease, watch) in mine.items():
            if held.get(kernel_id) != lease.generation:
                with self._lock:
                    if self._held.get(kernel_id, (None,))[0] is not lease:
                        continue
                    del self._held[kernel_id]
                reason = (
                    "its record was removed"
                    if kernel_id not in held
                    else f"another process took it over (generation {held[kernel_id]})"
                )
                log.warning("kernel %s is no longer owned by this process: %s", kernel_id, reason)
                _notify(watch, reason)
        if not (wanted or watched or listeners) or self._ticks % READS_PER_LEASE:
            return  # the owners are read once per lease: store traffic stays flat
        try:  # one read for all: an owner that renews costs no claim attempt
            owners = await self.store.ownerships(None if listeners else set(wanted) | set(watched))
        except Exception as e:
            log.debug("could not read the owners of wanted kernels: %s", e)
            return
        for listener in listeners:
            _notify(listener, owners)
        for kernel_id, (seen, watch) in watched.items():
            own = owners.get(kernel_id)
            callback = watch.on_change()  # (a weak method)
            if own is None or callback is None:  # record removed, or its manager gone
                with self._lock:
                    if self._watched.get(kernel_id, (None, None))[1] is watch:
                        del self._watched[kernel_id]
                continue
            if own.restarts == seen:
                continue
            with self._lock:
                if self._watched.get(kernel_id, (None, None))[1] is not watch:
                    continue
                self._watched[kernel_id] = (own.restarts, watch)
            log.info("kernel %s was restarted elsewhere (restart %d)", kernel_id, own.restarts)
            _notify(_Watch(callback, watch.loop), own.restarts)
        now = time.time()
        for kernel_id, watch in wanted.items():
            own = owners.get(kernel_id)
            owner = own.owner if own is not None else None
            if (
                own is not None
                and owner is not None
                and own.live(now)
                and not holder_is_dead(owner)
            ):
                continue
            try:
                lease = await claim(self.store, kernel_id, self.lease_seconds)
            except OwnedElsewhereError:
                continue
            except UnknownKernelError:
                with self._lock:
                    gone = self._wanted.pop(kernel_id, None)
                if gone is not None and gone.on_gone is not None:
                    _notify(_Watch(gone.on_gone, gone.loop), "its record was removed")
                continue
            except Exception as e:
                log.debug("kernel %s: claim failed: %s", kernel_id, e)
                continue
            with self._lock:
                if self._wanted.pop(kernel_id, None) is None:
                    self.store.release_now(lease)  # no longer wanted meanwhile
                    continue
            log.info("kernel %s: its owner's lease expired; this process took it over", kernel_id)
            _notify(watch, lease)


def _notify(watch: _Watch, arg: Any) -> None:
    loop = watch.loop
    if loop is not None:
        # On its loop, or not at all: run here, on the keeper's thread, it would put the
        # manager's work on the keeper's own loop, with sockets of another.
        with contextlib.suppress(RuntimeError):  # closed (its process is ending)
            loop.call_soon_threadsafe(watch.on_change, arg)
        return
    try:
        watch.on_change(arg)
    except Exception:
        log.exception("lease callback failed")


_keepers: dict[int, LeaseKeeper] = {}
_keepers_lock = threading.Lock()


@forks.reset_in_child
def _reset_after_fork() -> None:
    """A forked child is another holder: it renews none of its parent's leases (its
    keeper thread is not there), and names itself anew."""
    global _keepers, _keepers_lock, _holder, _holder_lock
    _keepers = {}
    _keepers_lock = threading.Lock()
    _holder = None
    _holder_lock = threading.Lock()


def keeper_for(store: KernelStore, lease_seconds: float | None = None) -> LeaseKeeper:
    """The one keeper of this process for ``store``."""
    with _keepers_lock:
        keeper = _keepers.get(id(store))
        if keeper is None or keeper.store is not store:
            keeper = _keepers[id(store)] = LeaseKeeper(
                store, lease_seconds or default_lease_seconds()
            )
        return keeper
