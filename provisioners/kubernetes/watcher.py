"""One pod watch per (cluster, namespace scope), shared by every kernel.

Enterprise Gateway listed pods every few seconds per kernel; 500 kernels meant 500
pollers. Here a single watch (in a thread: the kubernetes client is synchronous)
streams changes to every pod of this orchestrator deployment (label selector on the
instance label) and keeps the latest object per pod; kernels wait on it without any
request of their own.

A real API server ends watches (``timeout_seconds``, restarts, load balancers) and
forgets old resourceVersions. The watch resumes from the last resourceVersion it saw
(bookmarks keep that fresh while nothing changes), lists again only when the server
answers 410 Gone, backs off exponentially while the server is unreachable, and after a
few failures in a row reports the failure: :meth:`PodWatcher.ready` and kernels waiting
on their pod fail with the server's reason instead of timing out silently.

Kernels' auto-restarters subscribe by kernel id (:meth:`PodWatcher.subscribe`) and are
told of every change to their pods, and all of them when the watch starts failing,
recovers or lists again: an idle kernel costs no poll.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from orchestrator.errors import OrchestratorError
from orchestrator.forks import reset_in_child
from orchestrator.labels import LABEL_KERNEL_ID

from ..common.backoff import backoff_delay
from ..common.subscribers import Subscribers

log = logging.getLogger("kernel-orchestrator.kubernetes")

PodKey = tuple[str, str]  # (namespace, name)
WATCH_SECONDS = 240  # the server ends each watch after this; we resume at once
PERSISTENT_FAILURES = 4  # failures in a row after which the watch reports itself failing


class RecentUids:
    """The uids of the last ``keep`` pods seen deleted: a long-running gateway deletes
    pods for ever, and only recent deletions are ever asked about (a kernel waiting
    for its own pod to go, or a start whose pod vanished)."""

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self._uids: dict[str, None] = {}  # insertion-ordered: the oldest goes first

    def add(self, uid: str) -> None:
        self._uids[uid] = None
        if len(self._uids) > self.keep:
            del self._uids[next(iter(self._uids))]

    def __contains__(self, uid: object) -> bool:
        return uid in self._uids

    def __len__(self) -> int:
        return len(self._uids)


class PodWatcher:
    """Latest state of this deployment's pods, pushed to async waiters."""

    def __init__(self, api: client.ApiClient, namespace: str | None, selector: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace  # None: all namespaces
        self.selector = selector
        self.pods: dict[PodKey, dict[str, Any]] = {}
        self.deleted_uids = RecentUids()  # pods seen gone, by uid (names are reused)
        self.failure = ""  # why the watch is failing, while it persistently is
        self.lists = 0  # full lists made (the first, then one per 410 Gone)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.subscribers = Subscribers()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"k8s-watch-{namespace or 'all'}"
        )
        self._thread.start()

    @property
    def scope(self) -> str:
        return f"namespace {self.namespace}" if self.namespace else "all namespaces"

    def _list(self) -> str:
        if self.namespace:
            result = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
        else:
            result = self.core.list_pod_for_all_namespaces(label_selector=self.selector)
        sanitized = client.ApiClient().sanitize_for_serialization
        fresh = {(p.metadata.namespace, p.metadata.name): sanitized(p) for p in result.items}
        with self._lock:
            # A re-list after 410 Gone has no DELETED events for pods that went meanwhile.
            live = {p["metadata"].get("uid") for p in fresh.values()}
            for old in self.pods.values():
                if (uid := old.get("metadata", {}).get("uid")) and uid not in live:
                    self.deleted_uids.add(uid)
            self.pods = fresh
            self.lists += 1
        self._notify()
        self.subscribers.tell_all()
        return str(result.metadata.resource_version or "")

    def _watch_kwargs(self, version: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "label_selector": self.selector,
            "resource_version": version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_SECONDS,
            "_request_timeout": (10, WATCH_SECONDS + 30),
        }
        if self.namespace:
            kwargs["namespace"] = self.namespace
            return self.core.list_namespaced_pod, kwargs
        return self.core.list_pod_for_all_namespaces, kwargs

    def _run(self) -> None:
        version, failures = "", 0
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list()
                    self._ready.set()
                    failures = self._healthy()
                func, kwargs = self._watch_kwargs(version)
                w = watch.Watch()
                for event in w.stream(func, **kwargs):
                    if self._stop.is_set():
                        w.stop()
                        break
                    failures = self._healthy() if failures else 0
                    version = self._apply(event, version)
            except ApiException as e:
                if e.status == 410:  # our resourceVersion expired: list again, at once
                    log.info("pod watch (%s): resourceVersion expired, listing again", self.scope)
                    version = ""
                    continue
                failures += 1
                self._failed(failures, f"{e.status} {e.reason}".strip())
            except Exception as e:  # network trouble: back off, resume from `version`
                failures += 1
                self._failed(failures, f"{type(e).__name__}: {e}")

    def _apply(self, event: dict[str, Any], version: str) -> str:
        """Apply one watch event; return the resourceVersion to resume from."""
        obj = event.get("raw_object") or {}
        kind = event.get("type")
        if kind == "ERROR":  # older clients hand the server's Status over as an event
            raise ApiException(status=obj.get("code", 500), reason=obj.get("message", ""))
        meta = obj.get("metadata", {})
        new_version = str(meta.get("resourceVersion") or version)
        if kind == "BOOKMARK":
            return new_version
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            if kind == "DELETED":
                current = self.pods.get(key)
                if current is None or current.get("metadata", {}).get("uid") == meta.get("uid"):
                    self.pods.pop(key, None)
                if meta.get("uid"):
                    self.deleted_uids.add(meta["uid"])
            elif kind in ("ADDED", "MODIFIED"):
                self.pods[key] = obj
        self._notify()
        if kernel_id := (meta.get("labels") or {}).get(LABEL_KERNEL_ID):
            self.subscribers.tell(str(kernel_id))
        return new_version

    def _healthy(self) -> int:
        if self.failure:
            log.warning("pod watch (%s) recovered", self.scope)
            self.failure = ""
            self._notify()
            self.subscribers.tell_all()
        return 0

    def _failed(self, failures: int, reason: str) -> None:
        delay = backoff_delay(failures)
        if failures >= PERSISTENT_FAILURES or reason.startswith(("401", "403")):
            newly = not self.failure
            if newly:
                log.error("pod watch (%s) is failing: %s", self.scope, reason)
            self.failure = reason
            self._notify()
            if newly:
                self.subscribers.tell_all()  # nothing is pushed now: they poll again
        else:
            log.warning(
                "pod watch (%s) interrupted: %s; retrying in %.1fs", self.scope, reason, delay
            )
        self._stop.wait(delay)

    def _notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def get(self, key: PodKey, uid: str = "") -> dict[str, Any] | None:
        """The latest state of pod ``key`` (only if its uid is ``uid``, when given)."""
        with self._lock:
            pod = self.pods.get(key)
        if pod is not None and uid and pod.get("metadata", {}).get("uid") != uid:
            return None  # the name's earlier (or a later) pod
        return pod

    def is_gone(self, key: PodKey, uid: str) -> bool:
        """Whether pod ``key`` with ``uid`` is known to be deleted."""
        with self._lock:
            if uid in self.deleted_uids:
                return True
            pod = self.pods.get(key)
        if pod is None:
            return self._ready.is_set()  # listed, watched, and not there
        return bool(uid) and pod.get("metadata", {}).get("uid") != uid

    def subscribe(self, kernel_label: str, notify: Callable[[], None]) -> Callable[[], None]:
        """Call ``notify`` on changes to the pods labelled with kernel id ``kernel_label``
        and when the watch fails or recovers; returns the cancel."""
        return self.subscribers.add(kernel_label, notify)

    def pushed(self, key: PodKey, uid: str) -> bool:
        """Whether an end of pod ``uid`` would be told: the watch is up and shows it."""
        healthy = self._ready.is_set() and not self.failure and not self._stop.is_set()
        return healthy and self.get(key, uid) is not None

    def saw_deleted(self, key: PodKey, uid: str) -> bool:
        """Whether the watch has seen pod ``uid`` go (stricter than :meth:`is_gone`: a
        pod created a moment ago that the watch has not shown yet is not gone)."""
        with self._lock:
            if uid in self.deleted_uids:
                return True
            pod = self.pods.get(key)
        return pod is not None and pod.get("metadata", {}).get("uid") != uid

    async def wait_change(self, timeout: float) -> None:
        """Return after the next change (or ``timeout``)."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.remove(entry)

    def check(self) -> None:
        """Raise if the watch is persistently failing (kernels would wait in vain)."""
        if self.failure:
            raise OrchestratorError(f"cannot watch kernel pods in {self.scope}: {self.failure}")

    async def ready(self, timeout: float = 30) -> None:
        """Wait for the first list; raise, naming the reason, if it does not come."""
        deadline = time.monotonic() + timeout
        while not self._ready.is_set():
            self.check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OrchestratorError(
                    f"the pod watch ({self.scope}) did not start within {timeout:g}s"
                )
            await self.wait_change(min(remaining, 0.5))

    def stop(self) -> None:
        self._stop.set()


_watchers: dict[tuple[str, str | None, str], PodWatcher] = {}
_watchers_lock = threading.Lock()


def shared_watcher(api: client.ApiClient, namespace: str | None, selector: str) -> PodWatcher:
    key = (api.configuration.host, namespace, selector)
    with _watchers_lock:
        watcher = _watchers.get(key)
        if watcher is None or watcher._stop.is_set():
            watcher = _watchers[key] = PodWatcher(api, namespace, selector)
        return watcher


def open_watchers() -> int:
    with _watchers_lock:
        return sum(1 for w in _watchers.values() if not w._stop.is_set())


def stop_all() -> None:
    with _watchers_lock:
        for w in _watchers.values():
            w.stop()
        _watchers.clear()


@reset_in_child
def _reset_after_fork() -> None:
    """The parent's watch threads do not run in a forked child."""
    global _watchers, _watchers_lock
    _watchers = {}
    _watchers_lock = threading.Lock()
