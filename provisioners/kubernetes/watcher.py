"""One pod watch per (cluster, namespace scope), shared by every kernel.

Enterprise Gateway listed pods every few seconds per kernel; 500 kernels meant 500
pollers. Here a single watch (in a thread: the kubernetes client is synchronous)
streams changes to every pod of this orchestrator deployment (label selector on the
instance label) and keeps the latest object per pod; kernels wait on it without any
request of their own. The watch resumes from its last resourceVersion and re-lists
when the server says that version is gone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from orchestrator.executors import run_blocking

log = logging.getLogger("kernel-orchestrator.kubernetes")

PodKey = tuple[str, str]  # (namespace, name)


class PodWatcher:
    """Latest state of this deployment's pods, pushed to async waiters."""

    def __init__(self, api: client.ApiClient, namespace: str | None, selector: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace  # None: all namespaces
        self.selector = selector
        self.pods: dict[PodKey, dict[str, Any]] = {}
        self.deleted: set[PodKey] = set()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"k8s-watch-{namespace or 'all'}"
        )
        self._thread.start()

    def _list(self) -> str:
        if self.namespace:
            result = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
        else:
            result = self.core.list_pod_for_all_namespaces(label_selector=self.selector)
        sanitized = client.ApiClient().sanitize_for_serialization
        with self._lock:
            self.pods = {
                (p.metadata.namespace, p.metadata.name): sanitized(p) for p in result.items
            }
        self._notify()
        return str(result.metadata.resource_version or "")

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list()
                    self._ready.set()
                w = watch.Watch()
                func: Callable[..., Any]
                kwargs: dict[str, Any] = {
                    "label_selector": self.selector,
                    "resource_version": version,
                    "timeout_seconds": 30,
                    "_request_timeout": 60,
                }
                if self.namespace:
                    func = self.core.list_namespaced_pod
                    kwargs["namespace"] = self.namespace
                else:
                    func = self.core.list_pod_for_all_namespaces
                for event in w.stream(func, **kwargs):
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = event["raw_object"]
                    meta = obj.get("metadata", {})
                    key = (meta.get("namespace", ""), meta.get("name", ""))
                    version = meta.get("resourceVersion", version)
                    with self._lock:
                        if event["type"] == "DELETED":
                            self.pods.pop(key, None)
                            self.deleted.add(key)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self.pods[key] = obj
                            self.deleted.discard(key)
                    self._notify()
            except ApiException as e:
                if e.status == 410:  # our resourceVersion is too old: list again
                    version = ""
                    continue
                log.warning("pod watch failed: %s; retrying", e.reason)
                self._stop.wait(1.0)
            except Exception as e:  # network trouble: back off, resume
                log.warning("pod watch interrupted: %s; retrying", e)
                self._stop.wait(1.0)
                version = ""

    def _notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def get(self, key: PodKey) -> dict[str, Any] | None:
        with self._lock:
            return self.pods.get(key)

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

    async def ready(self, timeout: float = 30) -> None:
        await run_blocking("kubernetes", self._ready.wait, timeout)

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
