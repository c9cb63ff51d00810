"""One container event stream per Docker engine, shared by every kernel on it.

Each Docker kernel's restarter polls its kernel every few seconds. With one
``inspect`` per poll, 50 idle kernels cost the gateway 6 % of a core and the engine
another 2.6 %, doing nothing. Here one thread per engine reads the engine's event
stream (``start``, ``die`` and ``destroy`` of containers carrying our kernel label)
and keeps every kernel container's state; a kernel's :meth:`poll` is a dictionary
look-up. The state is healed by one list of our containers per :data:`HEAL_SECONDS`
(an event the engine dropped, a container removed by hand), and rebuilt by a list
each time the stream is opened again.

While the stream is down (the engine restarts, its host is unreachable) the state is
*unknown*: :meth:`ContainerWatcher.status` says so, and the provisioner falls back to
asking the engine about its own container (the old way, which fails as plainly as
before when the engine is gone). A container the watcher has not seen yet (one
created a moment ago) is asked about the same way, once.

Kernels' auto-restarters subscribe (:meth:`ContainerWatcher.subscribe`) and are told
by kernel id (the label every event and list entry carries) when a container of
theirs dies or is destroyed, and all of them when the stream goes down or comes back;
an idle kernel then costs no poll at all.

The watcher has a client of its own, made from the engine's address as resolved when
it started (an ``ssh://`` alias is not looked up again on a reconnect), and ends when
nobody subscribes and no kernel has asked it anything for :data:`UNUSED_SECONDS`: an
engine whose kernels are all gone is not reconnected to for ever.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import docker

from orchestrator.forks import reset_in_child
from orchestrator.labels import LABEL_KERNEL_ID

from ..common.backoff import backoff_delay
from ..common.subscribers import Subscribers
from . import engine

log = logging.getLogger("kernel-orchestrator.docker")

HEAL_SECONDS = 60.0  # one list of our containers per this, to mend missed events
UNUSED_SECONDS = 120.0  # a watcher nobody asked for this long ends
_EVENTS = ["start", "die", "destroy"]  # (a list: the SDK turns a tuple into one string)
_EXITED = re.compile(r"Exited \((-?\d+)\)")
_ALIVE_STATES = ("running", "paused")
_KEEP_GONE = 10_000  # recent destroyed ids remembered (a restart replaces containers)


def exit_status_of_state(state: dict[str, Any] | None) -> int | None:
    """None for a running container, as ``inspect``'s ``State`` shows it, else its exit
    status (1 for a container that does not exist, or where the engine does not say)."""
    if state is None:
        return 1
    if state.get("Running") and not state.get("Restarting"):
        return None
    return int(state.get("ExitCode") or 1)


def exit_status_of_listing(entry: dict[str, Any]) -> int | None:
    """None for a running container of ``docker ps``'s list, else its exit status (1
    where the list does not say: created, dead, restarting)."""
    if entry.get("State") in _ALIVE_STATES:
        return None
    found = _EXITED.match(str(entry.get("Status", "")))
    return int(found.group(1)) if found else 1


def _kernel_of(labels: dict[str, Any] | None) -> str:
    return str((labels or {}).get(LABEL_KERNEL_ID) or "")


class ContainerWatcher:
    """The latest state of this engine's kernel containers, from its event stream."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failure = ""  # why the stream is down, while it is
        self.lists = 0  # lists made (one per (re)connect, one per heal): for benchmarks
        self.events = 0
        self.inspects = 0  # containers asked about one by one (stream down, or not seen yet)
        self._exits: dict[str, int | None] = {}  # id -> None while it runs, else its status
        self._kernels: dict[str, str] = {}  # container id -> its kernel id (the label)
        self._gone: dict[str, None] = {}  # recently destroyed ids, oldest first
        self._changed: dict[str, int] = {}  # id -> number of the last event about it
        self._seq = 0
        self._connected = False
        self._stream: Any = None
        self._client: docker.DockerClient | None = None
        self._asked_at = time.monotonic()
        self.subscribers = Subscribers()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        name = f"docker-events-{url.rsplit('/', 1)[-1]}"[:15]
        threading.Thread(target=self._run, daemon=True, name=name).start()
        threading.Thread(target=self._heal, daemon=True, name=f"{name}-heal"[:15]).start()

    # ------------------------------------------------------------- readers
    def status(self, container_id: str) -> tuple[bool, int | None]:
        """(known, exit status or None while it runs). Unknown while the stream is
        down, and for a container the watcher has not seen (yet)."""
        with self._lock:
            self._asked_at = time.monotonic()
            if not self._connected:
                return False, None
            if container_id in self._exits:
                return True, self._exits[container_id]
            if container_id in self._gone:
                return True, 1
        return False, None

    def subscribe(self, kernel_id: str, notify: Any) -> Any:
        """Call ``notify`` when a container of ``kernel_id`` dies or goes, and when the
        stream goes down or comes back; returns the cancel."""
        return self.subscribers.add(kernel_id, notify)

    def pushed(self, container_id: str) -> bool:
        """Whether an exit of ``container_id`` would be told: the stream is up and the
        container is known to it."""
        with self._lock:
            known = container_id in self._exits or container_id in self._gone
            return self._connected and known and not self._stop.is_set()

    def learn(self, container_id: str, state: dict[str, Any] | None) -> None:
        """Take what the provisioner's own ``inspect`` found (``State``, or None: no such
        container), unless an event about it came in meanwhile."""
        with self._lock:
            self.inspects += 1
            if not self._connected or container_id in self._changed:
                return
            if state is not None and state.get("Status") == "created":
                return  # (not started yet: see _list)
            if state is None:
                self._forget(container_id)
            else:
                self._exits[container_id] = exit_status_of_state(state)

    # -------------------------------------------------------------- thread
    def _unused(self) -> bool:
        return not self.subscribers and time.monotonic() - self._asked_at > UNUSED_SECONDS

    def _run(self) -> None:
        failures, resolved = 0, ""
        while not self._stop.is_set():
            try:
                resolved = resolved or engine.sdk_url(self.url)
                if self._client is not None:
                    self._client.close()
                self._client = client = engine.new_client(self.url, resolved)
                self._stream = client.api.events(
                    decode=True,
                    filters={"type": "container", "label": LABEL_KERNEL_ID, "event": _EVENTS},
                )
                self._list(client, replace=True)  # after the stream opened: nothing falls between
                self.subscribers.tell_all()  # a new picture: what died meanwhile is seen now
                if self.failure:
                    log.warning("container events of %s: back", self.url)
                    self.failure, failures = "", 0
                for event in self._stream:
                    if self._stop.is_set():
                        break  # (below: subscribers are told, then it ends)
                    self._apply(event)
                reason = "the engine ended the event stream"
            except Exception as e:  # the engine is unreachable or restarting
                reason = f"{type(e).__name__}: {engine.explain(e)}"
            with self._lock:
                was_connected, self._connected = self._connected, False
            if was_connected:
                self.subscribers.tell_all()  # nothing is pushed now: they poll again
            if self._stop.is_set() or self._unused():
                self._end()
                return
            failures += 1
            if not self.failure:
                log.warning(
                    "container events of %s: %s; kernels there are asked one by one until"
                    " the stream is back",
                    self.url,
                    reason,
                )
            self.failure = reason
            self._stop.wait(backoff_delay(failures))

    def _heal(self) -> None:
        healed_at = time.monotonic()
        while not self._stop.wait(min(HEAL_SECONDS, UNUSED_SECONDS) / 6):
            if self._unused():
                self._end()
                return
            client = self._client
            if not self._connected or client is None:
                continue
            if time.monotonic() - healed_at < HEAL_SECONDS:
                continue
            healed_at = time.monotonic()
            try:
                self._list(client, replace=False)
            except Exception as e:  # the stream's thread notices and reports it
                log.debug("container list of %s failed: %s", self.url, e)

    def _list(self, client: docker.DockerClient, replace: bool) -> None:
        """Our containers as the engine lists them. ``replace`` (a new stream): the list
        is the whole truth. Otherwise a heal: what an event changed after the list was
        asked for is newer than the list, and kept."""
        with self._lock:
            asked_at = self._seq
        listed = client.api.containers(all=True, filters={"label": LABEL_KERNEL_ID})
        # A container created and not started yet is left unknown: its start event may
        # come a moment after its provisioner, told that it started, asks.
        fresh = {
            entry["Id"]: exit_status_of_listing(entry)
            for entry in listed
            if entry.get("State") != "created"
        }
        kernels = {entry["Id"]: _kernel_of(entry.get("Labels")) for entry in listed}
        mended: set[str] = set()
        with self._lock:
            self.lists += 1
            if replace:
                self._exits, self._changed, self._connected = fresh, {}, True
                self._kernels = kernels
                return
            newer = {cid for cid, seq in self._changed.items() if seq > asked_at}
            for cid in list(self._exits):
                if cid not in fresh and cid not in newer:
                    mended.add(self._kernels.get(cid, ""))
                    self._forget(cid)  # removed without our hearing of it
            for cid, status in fresh.items():
                if cid not in newer:
                    if cid in self._exits and self._exits[cid] != status:
                        mended.add(kernels.get(cid, ""))  # an event we missed
                    self._exits[cid] = status
            self._kernels.update(kernels)
            self._changed = {cid: self._changed[cid] for cid in newer}
        self.subscribers.tell(mended - {""})

    def _apply(self, event: dict[str, Any]) -> None:
        cid = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
        action = str(event.get("Action") or event.get("status") or "")
        if not cid:
            return
        kernel_id = _kernel_of((event.get("Actor") or {}).get("Attributes"))
        with self._lock:
            if kernel_id:
                self._kernels[cid] = kernel_id
            self.events += 1
            self._seq += 1
            self._changed[cid] = self._seq
            if action == "start":
                self._exits[cid] = None
                self._gone.pop(cid, None)
            elif action == "die":
                code = (event.get("Actor") or {}).get("Attributes", {}).get("exitCode")
                self._exits[cid] = int(code) if str(code or "").lstrip("-").isdigit() else 1
            elif action == "destroy":
                self._forget(cid)
        if action in ("die", "destroy") and kernel_id:
            self.subscribers.tell(kernel_id)

    def _forget(self, cid: str) -> None:
        self._exits.pop(cid, None)
        self._kernels.pop(cid, None)
        self._gone[cid] = None
        if len(self._gone) > _KEEP_GONE:
            del self._gone[next(iter(self._gone))]

    def _end(self) -> None:
        """Unused: leave the registry (the next kernel's poll starts a new watcher)."""
        with _watchers_lock:
            if _watchers.get(self.url) is self:
                del _watchers[self.url]
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for closable in (self._stream, self._client):
            if closable is not None:
                try:
                    closable.close()
                except Exception as e:  # (closing what is already broken)
                    log.debug("closing the event stream of %s: %s", self.url, e)


_watchers: dict[str, ContainerWatcher] = {}
_watchers_lock = threading.Lock()


def shared_watcher(url: str) -> ContainerWatcher:
    """This process's watcher of engine ``url`` (started on first use)."""
    with _watchers_lock:
        watcher = _watchers.get(url)
        if watcher is None:
            watcher = _watchers[url] = ContainerWatcher(url)
        return watcher


@reset_in_child
def _reset_after_fork() -> None:
    """The parent's threads do not run in a forked child."""
    global _watchers, _watchers_lock
    _watchers = {}
    _watchers_lock = threading.Lock()
