"""TEST INFRASTRUCTURE: a stateful stand-in for the Kubernetes API server.

No real cluster runs in this sandbox, so the Kubernetes provisioner's tests talk to
this instead: a real HTTP/1.1 server on 127.0.0.1 (random port, background threads,
chunked streaming for watches) that the official ``kubernetes`` client (sync, and
``kubernetes.aio``) uses unmodified through :meth:`StandInApiServer.configuration`,
:meth:`StandInApiServer.api_client` or a kubeconfig from
:meth:`StandInApiServer.write_kubeconfig`.

It is *not* Kubernetes.  What it does:

* resources: core/v1 pods (+ ``/status``, ``/binding``, ``/log``, ``/portforward``), secrets,
  configmaps, serviceaccounts, services, events, namespaces (+ ``/status``);
  rbac.authorization.k8s.io/v1 roles and rolebindings; networking.k8s.io/v1
  networkpolicies (stored, not enforced: no network plugin here);
* verbs: create, get, list, watch, replace (PUT), patch (merge, strategic merge —
  approximated —, JSON patch), delete, deletecollection, with ``dryRun=All``;
* metadata: uid, resourceVersion (one global, monotonically increasing counter),
  creationTimestamp, generation, generateName, optimistic concurrency on
  resourceVersion (409 Conflict), finalizers, deletionTimestamp;
* defaults the real registry applies (pod restartPolicy, imagePullPolicy, requests
  from limits, qosClass, phase Pending, service clusterIP, secret type, ...); the pod
  and namespace status only change through ``/status`` (or :meth:`Store.mutate`);
* pods: spec immutability on update, graceful deletion (a pod bound to a node keeps
  a deletionTimestamp until its kubelet — tests/kube/podrunner.py — deletes it with
  grace 0; an unbound or finished pod goes at once, as on a real cluster);
* garbage collection by ownerReferences (uid), Background/Foreground/Orphan;
  namespace deletion: Terminating, then everything in it, then the namespace;
  create in a missing namespace is 404, in a terminating one 403;
* list/watch with label selectors (=, ==, !=, in, notin, exists, !exists), field
  selectors (metadata.name, metadata.namespace, and what the real server indexes),
  limit/continue, watch from a resourceVersion (410 Expired after :meth:`Store.compact`),
  ``timeoutSeconds``, ``allowWatchBookmarks``, ``sendInitialEvents``; an object that
  stops/starts matching a filtered watch is sent as DELETED/ADDED like the real cacher;
* validation of every stored object against the official schemas
  (``kubernetes-validate``) plus semantic checks (tests/kube/validation.py); errors
  are Status objects (kind Status, reason, code, details.causes) like the real API;
* test hooks: :attr:`StandInApiServer.requests` records every request (method, path,
  query, body, status); :attr:`StandInApiServer.open_watches` counts live watch
  connections; :meth:`Store.subscribe` calls back on every change.

Not done: authentication/authorization beyond an optional bearer token, admission
(no ServiceAccount token mounting, no quota/limit ranges), server-side apply
(``application/apply-patch+yaml`` is a 415), protobuf, other resources and API
groups, discovery beyond ``/version``, ``/api``, ``/api/v1`` and ``/apis``,
exec/attach.  Port-forward: websocket with the v4.channel.k8s.io framing that
``kubernetes.stream.portforward`` speaks (no SPDY), relayed to podIP:port.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import hashlib
import json
import random
import select
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import validation
from .selectors import (
    PatchError,
    SelectorError,
    fields_match,
    json_patch,
    labels_match,
    merge_patch,
    parse_field_selector,
    parse_label_selector,
    strategic_merge_patch,
)

Obj = dict[str, Any]


# ------------------------------------------------------------------ resources
@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool = False  # status only changes through the /status subresource
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def base_path(self, namespace: str | None = None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{root}/namespaces/{namespace}/{self.plural}"
        return f"{root}/{self.plural}"


RBAC = "rbac.authorization.k8s.io"
NETWORKING = "networking.k8s.io"
RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "pods", "Pod", True, True, ("po",)),
    ResourceType("", "v1", "secrets", "Secret", True),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, False, ("cm",)),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, False, ("sa",)),
    ResourceType("", "v1", "services", "Service", True, True, ("svc",)),
    ResourceType("", "v1", "events", "Event", True, False, ("ev",)),
    ResourceType("", "v1", "namespaces", "Namespace", False, True, ("ns",)),
    ResourceType(RBAC, "v1", "roles", "Role", True),
    ResourceType(RBAC, "v1", "rolebindings", "RoleBinding", True),
    ResourceType(NETWORKING, "v1", "networkpolicies", "NetworkPolicy", True, False, ("netpol",)),
)
SUBRESOURCES = {
    "pods": {"status", "binding", "log", "portforward"},
    "namespaces": {"status"},
    "services": {"status"},
}
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PORTFORWARD_PROTOCOL = "v4.channel.k8s.io"


def resource(name: str | ResourceType) -> ResourceType:
    """A ResourceType by plural ("pods"), qualified name ("roles.rbac...") or kind."""
    if isinstance(name, ResourceType):
        return name
    for r in RESOURCES:
        if name in (r.plural, r.qualified, r.kind) or name in r.short_names:
            return r
    raise KeyError(f"the stand-in API server does not serve {name!r}")


def now_iso(offset: float = 0) -> str:
    t = datetime.now(timezone.utc) + timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------- errors
class ApiError(Exception):
    """An error answered as a metav1.Status, like the real API server's."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    # constructors shaped like k8s.io/apimachinery/pkg/api/errors
    @classmethod
    def not_found(cls, rtype: ResourceType, name: str) -> ApiError:
        details: Obj = {"name": name, "kind": rtype.plural}
        if rtype.group:
            details["group"] = rtype.group
        return cls(404, "NotFound", f'{rtype.qualified} "{name}" not found', details)

    @classmethod
    def already_exists(cls, rtype: ResourceType, name: str) -> ApiError:
        details: Obj = {"name": name, "kind": rtype.plural}
        if rtype.group:
            details["group"] = rtype.group
        return cls(409, "AlreadyExists", f'{rtype.qualified} "{name}" already exists', details)

    @classmethod
    def conflict(cls, rtype: ResourceType, name: str, why: str) -> ApiError:
        details: Obj = {"name": name, "kind": rtype.plural}
        if rtype.group:
            details["group"] = rtype.group
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {rtype.qualified} "{name}": {why}',
            details,
        )

    @classmethod
    def invalid(cls, rtype: ResourceType, name: str, causes: list[validation.Cause]) -> ApiError:
        text = str(causes[0]) if len(causes) == 1 else "[" + ", ".join(str(c) for c in causes) + "]"
        details: Obj = {"name": name, "kind": rtype.kind, "causes": [c.as_dict() for c in causes]}
        if rtype.group:
            details["group"] = rtype.group
        return cls(422, "Invalid", f'{rtype.kind} "{name}" is invalid: {text}', details)

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def forbidden(cls, rtype: ResourceType, name: str, why: str) -> ApiError:
        details: Obj = {"name": name, "kind": rtype.plural}
        if rtype.group:
            details["group"] = rtype.group
        return cls(403, "Forbidden", f'{rtype.qualified} "{name}" is forbidden: {why}', details)


# ----------------------------------------------------------------------- store
@dataclass(frozen=True)
class WatchEvent:
    """One change: ``obj`` is the object after it (the last state for DELETED)."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    resource: ResourceType
    obj: Obj
    old: Obj | None = None

    @property
    def namespace(self) -> str:
        return (self.obj.get("metadata") or {}).get("namespace", "")

    @property
    def name(self) -> str:
        return (self.obj.get("metadata") or {}).get("name", "")


class Store:
    """The in-memory object store, with one global resourceVersion counter.

    Stored objects are never mutated in place (every write stores a new dict), so
    events can share them; everything handed out is a deep copy.
    """

    def __init__(self, history_limit: int = 100_000, validate: bool = True) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._rv = 0
        self._history: list[WatchEvent] = []
        self._history_rvs: list[int] = []
        self._history_limit = history_limit
        self._compacted_rv = 0
        self._subscribers: list[Callable[[WatchEvent], None]] = []
        self._validate = validate
        self._next_ip = 1
        self.closed = False

    # -------------------------------------------------------------- public
    @property
    def resource_version(self) -> int:
        return self._rv

    def subscribe(self, callback: Callable[[WatchEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` after every change, in order, under the store lock.

        Callbacks must be quick and must not block (hand work to a queue).
        Returns a function that unsubscribes.
        """
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def compact(self) -> int:
        """Forget the event history (watches from an older resourceVersion get 410)."""
        with self._lock:
            self._compacted_rv = self._rv
            self._history.clear()
            self._history_rvs.clear()
            return self._rv

    def try_get(self, rtype: str | ResourceType, namespace: str | None, name: str) -> Obj | None:
        r = resource(rtype)
        with self._lock:
            obj = self._objects.get(self._key(r, namespace, name))
            return self._out(r, obj) if obj is not None else None

    def get(self, rtype: str | ResourceType, namespace: str | None, name: str) -> Obj:
        r = resource(rtype)
        obj = self.try_get(r, namespace, name)
        if obj is None:
            raise ApiError.not_found(r, name)
        return obj

    def list(
        self,
        rtype: str | ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], int]:
        """Matching objects (full, with kind/apiVersion) and the list's resourceVersion."""
        r = resource(rtype)
        labels, fields = self.selectors(r, label_selector, field_selector)
        with self._lock:
            items = [
                self._out(r, o)
                for o in self._scan(r, namespace)
                if labels_match(labels, o) and fields_match(fields, o)
            ]
            return items, self._rv

    @staticmethod
    def selectors(
        r: ResourceType, label_selector: str | None, field_selector: str | None
    ) -> tuple[Any, Any]:
        try:
            return (
                parse_label_selector(label_selector),
                parse_field_selector(field_selector, r.kind),
            )
        except SelectorError as e:
            raise ApiError.bad_request(str(e)) from None

    def create(
        self,
        rtype: str | ResourceType,
        body: Obj,
        namespace: str | None = None,
        *,
        dry_run: bool = False,
    ) -> Obj:
        r = resource(rtype)
        obj = copy.deepcopy(body)
        self._fill_type(r, obj)
        meta = obj.setdefault("metadata", {}) or {}
        obj["metadata"] = meta
        if r.namespaced:
            if namespace is None:
                namespace = meta.get("namespace") or "default"
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise ApiError.bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            meta["namespace"] = namespace
        if meta.get("resourceVersion"):
            raise ApiError.invalid(
                r,
                meta.get("name", ""),
                [
                    validation.invalid(
                        "metadata.resourceVersion", meta["resourceVersion"], "must be empty"
                    )
                ],
            )
        for server_field in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ):
            meta.pop(server_field, None)
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
            meta["name"] = meta["generateName"] + suffix
        self._defaults(r, obj)
        self._check(r, obj)
        name = meta["name"]
        with self._lock:
            if r.namespaced:
                ns = self._objects.get(self._key(resource("namespaces"), None, namespace))
                if ns is None:
                    raise ApiError.not_found(resource("namespaces"), namespace or "")
                if (ns.get("status") or {}).get("phase") == "Terminating":
                    raise ApiError.forbidden(
                        r,
                        name,
                        f"unable to create new content in namespace {namespace} because it is "
                        "being terminated",
                    )
            key = self._key(r, namespace, name)
            if key in self._objects:
                raise ApiError.already_exists(r, name)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_iso()
            meta["generation"] = 1
            if r.plural == "services":
                self._allocate_cluster_ip(obj)
            if dry_run:
                meta["resourceVersion"] = str(self._rv)
                return self._out(r, obj)
            self._put(r, obj, "ADDED", None)
            return self._out(r, obj)

    def replace(
        self,
        rtype: str | ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        subresource: str | None = None,
        *,
        dry_run: bool = False,
    ) -> Obj:
        r = resource(rtype)
        new = copy.deepcopy(body)
        self._fill_type(r, new)
        meta = new.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise ApiError.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        if r.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise ApiError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        with self._lock:
            old = self._require(r, namespace, name)
            return self._update(r, old, new, subresource, dry_run=dry_run)

    def patch(
        self,
        rtype: str | ResourceType,
        namespace: str | None,
        name: str,
        patch: Any,
        patch_type: str = "merge",
        subresource: str | None = None,
        *,
        dry_run: bool = False,
    ) -> Obj:
        """``patch_type``: "merge", "strategic" or "json"."""
        r = resource(rtype)
        with self._lock:
            old = self._require(r, namespace, name)
            base = self._out(r, old)
            try:
                if patch_type == "json":
                    new = json_patch(base, patch)
                elif patch_type == "strategic":
                    new = strategic_merge_patch(base, patch)
                else:
                    new = merge_patch(base, patch)
            except PatchError as e:
                raise ApiError(
                    422,
                    "Invalid",
                    f"the server rejected our request due to an error in our request: {e}",
                ) from None
            if not isinstance(new, dict):
                raise ApiError.bad_request("the patched object is not an object")
            self._fill_type(r, new)
            return self._update(r, old, new, subresource, dry_run=dry_run)

    def mutate(
        self,
        rtype: str | ResourceType,
        namespace: str | None,
        name: str,
        fn: Callable[[Obj], Obj | None],
        subresource: str | None = "status",
    ) -> Obj:
        """Read-modify-write under the lock: ``fn`` gets a copy, changes or returns it.

        With ``subresource="status"`` (the default) only the status is taken, as
        for a PUT on ``/status``; ``subresource=None`` is a normal update.
        """
        r = resource(rtype)
        with self._lock:
            old = self._require(r, namespace, name)
            new = self._out(r, old)
            out = fn(new)
            return self._update(r, old, new if out is None else out, subresource)

    def bind(self, namespace: str, name: str, node: str) -> Obj:
        """What the scheduler does through pods/binding: set spec.nodeName once."""
        r = resource("pods")
        with self._lock:
            old = self._require(r, namespace, name)
            if (old.get("spec") or {}).get("nodeName"):
                raise ApiError.conflict(
                    r, name, f'pod {name} is already assigned to node "{old["spec"]["nodeName"]}"'
                )
            if (old.get("metadata") or {}).get("deletionTimestamp"):
                raise ApiError.conflict(
                    r, name, "pod is being deleted, cannot be assigned to a host"
                )
            new = copy.deepcopy(old)
            new["spec"]["nodeName"] = node
            self._put(r, new, "MODIFIED", old)
            return self._out(r, new)

    def delete(
        self,
        rtype: str | ResourceType,
        namespace: str | None,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
        preconditions: Obj | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Delete like the real registry: returns (last state, removed now?)."""
        r = resource(rtype)
        if propagation_policy not in (None, "Background", "Foreground", "Orphan"):
            raise ApiError.invalid(
                r,
                name,
                [
                    validation.not_supported(
                        "propagationPolicy",
                        propagation_policy,
                        ["Foreground", "Background", "Orphan"],
                    )
                ],
            )
        with self._lock:
            old = self._require(r, namespace, name)
            meta = old["metadata"]
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise ApiError.conflict(
                    r,
                    name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                    f"meta: {meta['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise ApiError.conflict(
                    r,
                    name,
                    "Precondition failed: ResourceVersion in precondition: "
                    f"{pre['resourceVersion']}, "
                    f"ResourceVersion in object meta: {meta['resourceVersion']}",
                )
            if dry_run:
                return self._out(r, old), True
            if r.plural == "namespaces":
                return self._delete_namespace(old), False
            grace = 0
            if r.plural == "pods":
                grace = self._pod_grace(old, grace_period_seconds)
            if propagation_policy == "Orphan":
                self._collect_dependents(meta["uid"], orphan=True)
            elif propagation_policy == "Foreground":
                # simplification: dependents go first, then the owner (no finalizer)
                self._collect_dependents(meta["uid"], orphan=False)
            if meta.get("deletionTimestamp"):
                # already terminating: only a shorter grace period changes anything
                if r.plural == "pods" and grace < (meta.get("deletionGracePeriodSeconds") or 0):
                    new = copy.deepcopy(old)
                    new["metadata"]["deletionGracePeriodSeconds"] = grace
                    self._put(r, new, "MODIFIED", old)
                    return self._after_mark(r, new)
                return self._out(r, old), False
            old = self._require(r, namespace, name)
            meta = old["metadata"]
            if grace == 0 and not meta.get("finalizers"):
                self._remove(r, old)
                return self._out(r, old), True
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now_iso(grace)
            new["metadata"]["deletionGracePeriodSeconds"] = grace
            self._put(r, new, "MODIFIED", old)
            return self._after_mark(r, new)

    def wait_for(
        self,
        rtype: str | ResourceType,
        namespace: str | None,
        name: str,
        predicate: Callable[[Obj | None], bool],
        timeout: float = 30,
    ) -> Obj | None:
        """Block until ``predicate(object or None)`` holds; returns the object."""
        r = resource(rtype)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                obj = self._objects.get(self._key(r, namespace, name))
                out = self._out(r, obj) if obj is not None else None
                if predicate(out):
                    return out
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{r.plural} {namespace}/{name}: condition not met in {timeout}s; "
                        f"last: {out}"
                    )
                self._cond.wait(min(left, 0.5))

    def events(
        self,
        since: int,
        *,
        deadline: float | None = None,
        tick: float = 0.5,
        stop: threading.Event | None = None,
    ) -> Iterator[WatchEvent | None]:
        """Every change after resourceVersion ``since``; yields None on idle ticks.

        Raises ApiError 410 if ``since`` is older than the retained history.
        Ends at ``deadline`` (time.monotonic()), on ``stop``, or when the store closes.
        """
        last = since
        while True:
            with self._cond:
                if last < self._compacted_rv:
                    raise ApiError(
                        410,
                        "Expired",
                        f"too old resource version: {last} ({self._compacted_rv + 1})",
                    )
                idx = bisect.bisect_right(self._history_rvs, last)
                batch = self._history[idx:]
                if not batch:
                    if self.closed or (stop is not None and stop.is_set()):
                        return
                    wait = tick
                    if deadline is not None:
                        wait = min(wait, deadline - time.monotonic())
                        if wait <= 0:
                            return
                    self._cond.wait(wait)
                    idx = bisect.bisect_right(self._history_rvs, last)
                    batch = self._history[idx:]
            if batch:
                last = batch[-1].rv
                yield from batch
            else:
                yield None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------ internals
    @staticmethod
    def _key(r: ResourceType, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (r.qualified, (namespace or "") if r.namespaced else "", name)

    def _scan(self, r: ResourceType, namespace: str | None) -> list[Obj]:
        out = [
            o
            for (q, ns, _), o in self._objects.items()
            if q == r.qualified and (not namespace or not r.namespaced or ns == namespace)
        ]
        out.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return out

    def _require(self, r: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._objects.get(self._key(r, namespace, name))
        if obj is None:
            raise ApiError.not_found(r, name)
        return obj

    @staticmethod
    def _out(r: ResourceType, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"] = r.api_version
        out["kind"] = r.kind
        return out

    @staticmethod
    def _fill_type(r: ResourceType, obj: Obj) -> None:
        """Missing apiVersion/kind default to the endpoint's, like the real decoder."""
        if not isinstance(obj, dict):
            raise ApiError.bad_request("the body of the request was in an unknown format")
        if obj.get("apiVersion") and obj["apiVersion"] != r.api_version:
            raise ApiError.bad_request(
                f"the API version in the data ({obj['apiVersion']}) does not match the "
                f"expected API version ({r.api_version})"
            )
        if obj.get("kind") and obj["kind"] != r.kind:
            raise ApiError.bad_request(
                f"the kind in the data ({obj['kind']}) does not match the expected kind ({r.kind})"
            )
        obj["apiVersion"] = r.api_version
        obj["kind"] = r.kind

    def _check(self, r: ResourceType, obj: Obj) -> None:
        if not self._validate:
            return
        name = (obj.get("metadata") or {}).get("name") or ""
        try:
            causes = validation.validate(obj, namespaced=r.namespaced)
        except validation.DecodeError as e:
            raise ApiError.bad_request(str(e)) from None
        if causes:
            raise ApiError.invalid(r, name, causes)

    def _put(self, r: ResourceType, obj: Obj, kind: str, old: Obj | None) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        obj.pop("apiVersion", None)
        obj.pop("kind", None)
        key = self._key(r, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if kind == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = obj
        self._record(
            WatchEvent(
                self._rv, kind, r, self._out(r, obj), None if old is None else self._out(r, old)
            )
        )

    def _record(self, event: WatchEvent) -> None:
        self._history.append(event)
        self._history_rvs.append(event.rv)
        if len(self._history) > self._history_limit:
            drop = len(self._history) // 2
            self._compacted_rv = self._history_rvs[drop - 1]
            del self._history[:drop]
            del self._history_rvs[:drop]
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                traceback.print_exc()
        self._cond.notify_all()

    def _update(
        self,
        r: ResourceType,
        old: Obj,
        new: Obj,
        subresource: str | None,
        *,
        dry_run: bool = False,
    ) -> Obj:
        name = old["metadata"]["name"]
        new_meta = new.get("metadata") or {}
        rv = new_meta.get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise ApiError.conflict(
                r,
                name,
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
            )
        if subresource == "status":
            result = copy.deepcopy(old)
            result["status"] = copy.deepcopy(new.get("status"))
            if result["status"] is None:
                result.pop("status")
        elif subresource is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        else:
            result = copy.deepcopy(new)
            meta = result.setdefault("metadata", {})
            for keep in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ):
                if keep in old["metadata"]:
                    meta[keep] = old["metadata"][keep]
                else:
                    meta.pop(keep, None)
            if r.has_status:
                result["status"] = copy.deepcopy(old.get("status"))
                if result["status"] is None:
                    result.pop("status")
            self._update_rules(r, old, result)
        result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        self._check(r, self._out(r, result))
        if result == old:
            return self._out(r, old)  # a no-op update does not bump the resourceVersion
        if r.plural == "pods" and (old.get("spec") != result.get("spec")):
            result["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if dry_run:
            return self._out(r, result)
        self._put(r, result, "MODIFIED", old)
        meta = result["metadata"]
        terminating = meta.get("deletionTimestamp") and not meta.get("finalizers")
        if terminating and (r.plural != "pods" or meta.get("deletionGracePeriodSeconds") == 0):
            self._remove(r, result)
        return self._out(r, result)

    def _update_rules(self, r: ResourceType, old: Obj, new: Obj) -> None:
        name = old["metadata"]["name"]
        if r.plural == "pods":
            self._defaults(r, new, create=False)

            def comparable(spec: Obj) -> Obj:
                spec = copy.deepcopy(spec or {})
                for group in ("containers", "initContainers"):
                    for c in spec.get(group) or []:
                        c.pop("image", None)
                for mutable in ("activeDeadlineSeconds", "tolerations"):
                    spec.pop(mutable, None)
                return spec

            if comparable(old.get("spec")) != comparable(new.get("spec")):
                raise ApiError.invalid(
                    r,
                    name,
                    [
                        validation.forbidden(
                            "spec",
                            "pod updates may not change fields other than "
                            "`spec.containers[*].image`,"
                            "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                            "`spec.tolerations` (only additions to existing tolerations),"
                            "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if "
                            "it was previously negative)",
                        )
                    ],
                )
        elif r.plural in ("secrets", "configmaps"):
            if r.plural == "secrets":
                self._defaults(r, new, create=False)
                if new.get("type") != old.get("type"):
                    raise ApiError.invalid(
                        r, name, [validation.invalid("type", new.get("type"), "field is immutable")]
                    )
            if old.get("immutable"):
                fields = ("data", "binaryData") if r.plural == "configmaps" else ("data",)
                for f in fields:
                    if new.get(f) != old.get(f):
                        raise ApiError.invalid(
                            r,
                            name,
                            [validation.forbidden(f, "field is immutable when `immutable` is set")],
                        )
                if not new.get("immutable"):
                    raise ApiError.invalid(
                        r,
                        name,
                        [
                            validation.forbidden(
                                "immutable", "field is immutable when `immutable` is set"
                            )
                        ],
                    )
        elif r.plural == "rolebindings":
            if new.get("roleRef") != old.get("roleRef"):
                raise ApiError.invalid(
                    r,
                    name,
                    [validation.invalid("roleRef", new.get("roleRef"), "cannot change roleRef")],
                )
        elif r.plural == "services":
            spec = new.setdefault("spec", {})
            for keep in ("clusterIP", "clusterIPs"):
                if not spec.get(keep) and (old.get("spec") or {}).get(keep):
                    spec[keep] = old["spec"][keep]
            if spec.get("clusterIP") != (old.get("spec") or {}).get("clusterIP"):
                raise ApiError.invalid(
                    r,
                    name,
                    [
                        validation.invalid(
                            "spec.clusterIP", spec.get("clusterIP"), "field is immutable"
                        )
                    ],
                )
        elif r.plural == "namespaces":
            new.setdefault("metadata", {}).setdefault("labels", {})[
                "kubernetes.io/metadata.name"
            ] = name

    def _defaults(self, r: ResourceType, obj: Obj, create: bool = True) -> None:
        if r.plural == "pods":
            spec = obj.setdefault("spec", {})
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("dnsPolicy", "ClusterFirst")
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("securityContext", {})
            spec.setdefault("enableServiceLinks", True)
            spec.setdefault("priority", 0)
            for vol in spec.get("volumes") or []:
                if "secret" in vol and vol["secret"] is not None:
                    vol["secret"].setdefault("defaultMode", 0o644)
            for group in ("initContainers", "containers"):
                for c in spec.get(group) or []:
                    image = c.get("image") or ""
                    tag = image.rsplit("/", 1)[-1]
                    latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
                    c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
                    c.setdefault("terminationMessagePath", "/dev/termination-log")
                    c.setdefault("terminationMessagePolicy", "File")
                    res = c.setdefault("resources", {})
                    limits = res.get("limits") or {}
                    if limits:
                        requests = res.setdefault("requests", {})
                        for k, v in limits.items():
                            requests.setdefault(k, v)
                    for p in c.get("ports") or []:
                        p.setdefault("protocol", "TCP")
            if create:
                obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}
        elif r.plural == "secrets":
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                data = obj.setdefault("data", {}) or {}
                obj["data"] = data
                for k, v in string_data.items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
        elif r.plural == "namespaces" and create:
            name = obj["metadata"].get("name", "")
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        elif r.plural == "services" and create:
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            spec.setdefault("internalTrafficPolicy", "Cluster")
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            for p in spec.get("ports") or []:
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))
            obj["status"] = {"loadBalancer": {}}

    def _allocate_cluster_ip(self, svc: Obj) -> None:
        spec = svc["spec"]
        if spec.get("clusterIP") in (None, ""):
            # an address for the object only: nothing routes to it
            n = self._next_ip
            self._next_ip += 1
            spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
        if spec["clusterIP"] != "None":
            spec.setdefault("clusterIPs", [spec["clusterIP"]])

    @staticmethod
    def _pod_grace(pod: Obj, requested: int | None) -> int:
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0  # never ran or already finished: nothing to wait for
        grace = (
            requested if requested is not None else spec.get("terminationGracePeriodSeconds", 30)
        )
        return max(0, int(grace))

    def _after_mark(self, r: ResourceType, obj: Obj) -> tuple[Obj, bool]:
        meta = obj["metadata"]
        if not meta.get("finalizers") and (
            r.plural != "pods" or meta.get("deletionGracePeriodSeconds") == 0
        ):
            self._remove(r, obj)
            return self._out(r, obj), True
        return self._out(r, obj), False

    def _remove(self, r: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        gone = copy.deepcopy(obj)
        self._put(r, gone, "DELETED", obj)
        self._collect_dependents(meta["uid"], orphan=False)
        ns = meta.get("namespace")
        if r.namespaced and ns:
            self._maybe_finish_namespace(ns)

    def _collect_dependents(self, uid: str, *, orphan: bool) -> None:
        """The garbage collector: dependents whose owners are all gone are deleted."""
        live_uids = {o["metadata"]["uid"] for o in self._objects.values()}
        for (q, ns, name), obj in list(self._objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == uid for ref in refs):
                continue
            r = resource(q)
            if orphan:
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = [ref for ref in refs if ref.get("uid") != uid]
                if not new["metadata"]["ownerReferences"]:
                    new["metadata"].pop("ownerReferences")
                self._put(r, new, "MODIFIED", obj)
            elif (q, ns, name) in self._objects and not any(
                ref.get("uid") in live_uids for ref in refs if ref.get("uid") != uid
            ):
                self.delete(r, ns or None, name)

    def _delete_namespace(self, ns_obj: Obj) -> Obj:
        r = resource("namespaces")
        name = ns_obj["metadata"]["name"]
        if not ns_obj["metadata"].get("deletionTimestamp"):
            new = copy.deepcopy(ns_obj)
            new["metadata"]["deletionTimestamp"] = now_iso()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new.setdefault("status", {})["phase"] = "Terminating"
            self._put(r, new, "MODIFIED", ns_obj)
            ns_obj = new
        result = self._out(r, ns_obj)
        for q, ns, obj_name in list(self._objects):
            if ns == name and (q, ns, obj_name) in self._objects:
                rt = resource(q)
                if rt.namespaced:
                    self.delete(rt, ns, obj_name)
        self._maybe_finish_namespace(name)
        return result

    def _maybe_finish_namespace(self, name: str) -> None:
        r = resource("namespaces")
        ns_obj = self._objects.get(self._key(r, None, name))
        if ns_obj is None or (ns_obj.get("status") or {}).get("phase") != "Terminating":
            return
        if any(ns == name for (_, ns, _) in self._objects):
            return
        if ns_obj["metadata"].get("finalizers"):
            return
        self._put(r, copy.deepcopy(ns_obj), "DELETED", ns_obj)


def _qos_class(spec: Obj) -> str:
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        if limits or requests:
            any_set = True
        for rname in ("cpu", "memory"):
            if rname not in limits or requests.get(rname, limits[rname]) != limits[rname]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


# ------------------------------------------------------------------------ HTTP
@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]
    status: int | None = None
    watch: bool = False

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, api: StandInApiServer) -> None:
        self.api = api
        self.conn_lock = threading.Lock()
        self.conns: dict[socket.socket, threading.Thread] = {}
        self.counter = 0
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.counter += 1
            t = threading.Thread(
                target=self._serve_conn,
                args=(request, client_address),
                name=f"kube-standin-http-{self.counter}",
                daemon=True,
            )
            self.conns[request] = t
        t.start()

    def _serve_conn(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.conn_lock:
                self.conns.pop(request, None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY every response
    # waits ~40 ms for a delayed ACK (a real API server sets it too).
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        api = self.server.api
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        rec = RecordedRequest(method, url.path, query, body, dict(self.headers.items()))
        api._record_request(rec)
        try:
            if api.token is not None and self.headers.get("Authorization") != f"Bearer {api.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            api._route(self, method, url.path, query, body, rec)
        except ApiError as e:
            self.send_json(e.code, e.status(), rec)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in the stand-in: say so loudly
            traceback.print_exc()
            self.send_json(
                500, ApiError(500, "InternalError", f"stand-in bug: {e!r}").status(), rec
            )

    def send_json(self, code: int, body: Any, rec: RecordedRequest | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)
        if rec is not None:
            rec.status = code

    def send_text(self, code: int, text: bytes, rec: RecordedRequest) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)
        rec.status = code

    def start_stream(self, content_type: str, rec: RecordedRequest) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.flush()
        rec.status = 200

    def chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def client_gone(self) -> bool:
        """True if the client closed its end (a readable socket with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


def _read_frame(rfile: Any) -> tuple[int, bytes] | None:
    """One (client-masked) websocket frame: (opcode, payload), None at EOF."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, masked, n = head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(rfile.read(2), "big")
    elif n == 127:
        n = int.from_bytes(rfile.read(8), "big")
    mask = rfile.read(4) if masked else b"\0\0\0\0"
    data = rfile.read(n)
    if len(data) < n:
        return None
    if masked:
        key = (mask * (n // 4 + 1))[:n]
        data = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return opcode, data


LogProvider = Callable[..., "bytes | Iterator[bytes]"]


class StandInApiServer:
    """TEST INFRASTRUCTURE: the stand-in API server (see the module docstring).

    >>> with StandInApiServer() as server:
    ...     v1 = kubernetes.client.CoreV1Api(server.api_client())
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        namespaces: tuple[str, ...] = ("default", "kube-system", "kube-public"),
        history_limit: int = 100_000,
        bookmark_interval: float = 5.0,
        validate: bool = True,
    ) -> None:
        self.token = token
        self.store = Store(history_limit=history_limit, validate=validate)
        self.bookmark_interval = bookmark_interval
        #: called as provider(namespace, pod, container, follow=, tail_lines=,
        #: timestamps=, previous=, since_seconds=) for pods/log; set by the pod runner
        self.log_provider: LogProvider | None = None
        self.requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._open_watches = 0
        self.watch_connections_total = 0
        self._open_portforwards = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._api_clients: list[Any] = []
        for ns in namespaces:
            self.store.create("namespaces", {"metadata": {"name": ns}})

    # ---------------------------------------------------------- lifecycle
    def start(self) -> StandInApiServer:
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="kube-standin-accept",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: ends every watch, closes every connection, joins every thread."""
        self.store.close()
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        for client in self._api_clients:
            with contextlib.suppress(Exception):
                client.close()
        with self._httpd.conn_lock:
            conns = dict(self._httpd.conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for t in [*conns.values(), self._thread]:
            if t is not None:
                t.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> StandInApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def threads(self) -> list[threading.Thread]:
        """This server's live threads (empty after stop())."""
        return [t for t in threading.enumerate() if t.name.startswith("kube-standin-")]

    # ---------------------------------------------------------- clients
    def configuration(self) -> Any:
        import kubernetes

        conf = kubernetes.client.Configuration()
        conf.host = self.url
        if self.token is not None:
            conf.api_key = {"BearerToken": self.token}
            conf.api_key_prefix = {"BearerToken": "Bearer"}
        return conf

    def aio_configuration(self) -> Any:
        """The same for ``kubernetes.aio`` (make its ApiClient inside the event loop)."""
        from kubernetes.aio import client as aio_client

        conf = aio_client.Configuration()
        conf.host = self.url
        if self.token is not None:
            conf.api_key = {"BearerToken": self.token}
            conf.api_key_prefix = {"BearerToken": "Bearer"}
        return conf

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient for this server (closed by stop())."""
        import kubernetes

        client = kubernetes.client.ApiClient(self.configuration())
        self._api_clients.append(client)
        return client

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """A kubeconfig pointing at this server, for code that loads one."""
        user: Obj = {"token": self.token} if self.token is not None else {"username": "standin"}
        conf = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": user}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
                }
            ],
            "current-context": "standin",
        }
        p = Path(path)
        p.write_text(json.dumps(conf, indent=2))
        return p

    # ---------------------------------------------------------- test hooks
    @property
    def open_watches(self) -> int:
        """Watch connections open right now."""
        return self._open_watches

    @property
    def open_portforwards(self) -> int:
        """Port-forward websockets open right now."""
        return self._open_portforwards

    def requests_containing(self, needle: str | bytes) -> list[RecordedRequest]:
        """Recorded requests whose path, query or body contains ``needle``."""
        raw = needle.encode() if isinstance(needle, str) else needle
        with self._requests_lock:
            return [
                r
                for r in self.requests
                if raw in r.body or raw.decode(errors="replace") in r.path + json.dumps(r.query)
            ]

    def clear_requests(self) -> None:
        with self._requests_lock:
            self.requests.clear()

    def wait_for_watches(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self._open_watches != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._open_watches} watches open, expected {count}")
            time.sleep(0.02)

    def _record_request(self, rec: RecordedRequest) -> None:
        with self._requests_lock:
            self.requests.append(rec)

    # ---------------------------------------------------------- routing
    def _route(
        self,
        h: _Handler,
        method: str,
        path: str,
        q: dict[str, str],
        body: bytes,
        rec: RecordedRequest,
    ) -> None:
        parts = [p for p in path.split("/") if p]
        if path in ("/healthz", "/readyz", "/livez"):
            return h.send_text(200, b"ok", rec)
        if path.rstrip("/") == "/version":
            return h.send_json(200, self._version(), rec)
        if path == "/api":
            return h.send_json(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                    ],
                },
                rec,
            )
        if path == "/apis":
            return h.send_json(200, self._api_groups(), rec)
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return h.send_text(404, b"404 page not found\n", rec)
        if not rest:
            return h.send_json(200, self._resource_list(group, version), rec)
        namespace = None
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and self._lookup(group, version, rest[2], namespaced=True)
        ):
            namespace, rest = rest[1], rest[2:]
        r = self._lookup(group, version, rest[0])
        if r is None or len(rest) > 3 or (namespace is None and r.namespaced and len(rest) > 1):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in SUBRESOURCES.get(r.plural, ()):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        dry_run = q.get("dryRun") == "All"
        store = self.store

        if name is None:
            if method == "GET":
                if q.get("watch", "").lower() in ("true", "1"):
                    rec.watch = True
                    return self._watch(h, r, namespace, q, rec)
                return h.send_json(200, self._list(r, namespace, q), rec)
            if method == "POST":
                if r.namespaced and namespace is None:
                    raise ApiError(
                        405,
                        "MethodNotAllowed",
                        "the server does not allow this method on the requested resource",
                    )
                obj = store.create(r, self._body(body), namespace, dry_run=dry_run)
                return h.send_json(201, obj, rec)
            if method == "DELETE":
                listed = self._list(r, namespace, q)
                opts = self._delete_options(body, q)
                for item in listed["items"]:
                    with contextlib.suppress(ApiError):
                        store.delete(
                            r, namespace, item["metadata"]["name"], dry_run=dry_run, **opts
                        )
                return h.send_json(200, listed, rec)
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )

        if sub == "log":
            return self._log(h, namespace or "", name, q, rec)
        if sub == "portforward":
            return self._portforward(h, namespace or "", name, q, rec)
        if sub == "binding":
            if method != "POST":
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            binding = self._body(body)
            store.bind(namespace or "", name, ((binding.get("target") or {}).get("name")) or "")
            return h.send_json(
                201,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "code": 201,
                },
                rec,
            )
        if method == "GET":
            return h.send_json(200, store.get(r, namespace, name), rec)
        if method == "PUT":
            return h.send_json(
                200, store.replace(r, namespace, name, self._body(body), sub, dry_run=dry_run), rec
            )
        if method == "PATCH":
            ctype = (h.headers.get("Content-Type") or "").split(";")[0].strip()
            kinds = {
                "application/merge-patch+json": "merge",
                "application/strategic-merge-patch+json": "strategic",
                "application/json-patch+json": "json",
            }
            if ctype not in kinds:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(kinds)}",
                )
            patch = self._body(body, allow_list=True)
            return h.send_json(
                200, store.patch(r, namespace, name, patch, kinds[ctype], sub, dry_run=dry_run), rec
            )
        if method == "DELETE":
            if sub is not None:
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            obj, removed = store.delete(
                r, namespace, name, dry_run=dry_run, **self._delete_options(body, q)
            )
            if r.plural in ("pods", "namespaces", "services"):
                return h.send_json(200, obj, rec)  # these registries return the object
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": r.group,
                    "kind": r.plural,
                    "uid": obj["metadata"]["uid"],
                },
            }
            return h.send_json(200, status if removed else obj, rec)
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    @staticmethod
    def _lookup(
        group: str, version: str, plural: str, namespaced: bool = False
    ) -> ResourceType | None:
        for r in RESOURCES:
            if (
                r.group == group
                and r.version == version
                and r.plural == plural
                and (r.namespaced or not namespaced)
            ):
                return r
        return None

    @staticmethod
    def _body(body: bytes, allow_list: bool = False) -> Any:
        try:
            data = json.loads(body or b"null")
        except ValueError as e:
            raise ApiError.bad_request(
                f"the body of the request was in an unknown format: {e}"
            ) from None
        if not isinstance(data, dict) and not (allow_list and isinstance(data, list)):
            raise ApiError.bad_request("the body of the request was in an unknown format")
        return data

    @staticmethod
    def _delete_options(body: bytes, q: dict[str, str]) -> dict[str, Any]:
        opts: Obj = {}
        if body:
            with contextlib.suppress(ValueError):
                opts = json.loads(body) or {}
        grace = q.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
        policy = q.get("propagationPolicy", opts.get("propagationPolicy"))
        if policy is None and (
            q.get("orphanDependents", opts.get("orphanDependents")) in (True, "true")
        ):
            policy = "Orphan"
        return {
            "grace_period_seconds": None if grace is None else int(grace),
            "propagation_policy": policy,
            "preconditions": opts.get("preconditions"),
        }

    def _list(self, r: ResourceType, namespace: str | None, q: dict[str, str]) -> Obj:
        items, rv = self.store.list(r, namespace, q.get("labelSelector"), q.get("fieldSelector"))
        meta: Obj = {"resourceVersion": str(rv)}
        cont = q.get("continue")
        if cont:
            try:
                start_after = json.loads(base64.urlsafe_b64decode(cont.encode()))
            except ValueError:
                raise ApiError.bad_request("continue key is not valid") from None
            items = [
                i
                for i in items
                if [i["metadata"].get("namespace", ""), i["metadata"]["name"]] > start_after
            ]
        limit = int(q.get("limit") or 0)
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            token = json.dumps([last.get("namespace", ""), last["name"]]).encode()
            meta["continue"] = base64.urlsafe_b64encode(token).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        for item in items:  # list items carry no kind/apiVersion on the real server
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {
            "kind": f"{r.kind}List",
            "apiVersion": r.api_version,
            "metadata": meta,
            "items": items,
        }

    def _watch(
        self,
        h: _Handler,
        r: ResourceType,
        namespace: str | None,
        q: dict[str, str],
        rec: RecordedRequest,
    ) -> None:
        labels, fields = self.store.selectors(r, q.get("labelSelector"), q.get("fieldSelector"))
        timeout = q.get("timeoutSeconds")
        deadline = time.monotonic() + float(timeout) if timeout else None
        bookmarks = q.get("allowWatchBookmarks", "").lower() == "true"
        initial_events = q.get("sendInitialEvents", "").lower() == "true"
        rv_param = q.get("resourceVersion", "")
        if rv_param and not rv_param.isdigit():
            raise ApiError.bad_request(f"invalid resource version: {rv_param}")

        def selected(obj: Obj | None) -> bool:
            if obj is None:
                return False
            ns_ok = not namespace or (obj.get("metadata") or {}).get("namespace") == namespace
            return ns_ok and labels_match(labels, obj) and fields_match(fields, obj)

        initial: list[Obj] = []
        with self.store._lock:
            if rv_param in ("", "0") or initial_events:
                initial, since = self.store.list(r, namespace)
                initial = [o for o in initial if selected(o)]
            else:
                since = int(rv_param)
            events = self.store.events(since, deadline=deadline)

        with self._watch_lock:
            self._open_watches += 1
            self.watch_connections_total += 1
        try:
            h.start_stream("application/json", rec)

            def send(kind: str, obj: Obj) -> None:
                h.chunk(
                    json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode()
                    + b"\n"
                )

            def bookmark(rv: int, extra: Obj | None = None) -> None:
                meta: Obj = {"resourceVersion": str(rv)}
                if extra:
                    meta["annotations"] = extra
                send("BOOKMARK", {"kind": r.kind, "apiVersion": r.api_version, "metadata": meta})

            for obj in initial:
                send("ADDED", obj)
            if initial_events:
                bookmark(since, {"k8s.io/initial-events-end": "true"})
            last_rv = since
            last_bookmark = time.monotonic()
            try:
                for event in events:
                    if event is not None:
                        last_rv = event.rv
                        if event.resource != r:
                            continue
                        was, now = selected(event.old), selected(event.obj)
                        if event.type == "ADDED" and now:
                            send("ADDED", event.obj)
                        elif event.type == "DELETED" and (now or was):
                            send("DELETED", event.obj)
                        elif event.type == "MODIFIED":
                            if was and now:
                                send("MODIFIED", event.obj)
                            elif now:
                                send("ADDED", event.obj)
                            elif was:
                                send("DELETED", event.obj)
                    elif h.client_gone():
                        h.close_connection = True
                        return
                    if bookmarks and time.monotonic() - last_bookmark >= self.bookmark_interval:
                        bookmark(last_rv)
                        last_bookmark = time.monotonic()
            except ApiError as e:
                send("ERROR", e.status())
            if bookmarks and deadline is not None:
                bookmark(self.store.resource_version)
            h.end_stream()
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True
        finally:
            with self._watch_lock:
                self._open_watches -= 1

    def _log(
        self, h: _Handler, namespace: str, name: str, q: dict[str, str], rec: RecordedRequest
    ) -> None:
        pod = self.store.get("pods", namespace, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = q.get("container") or (containers[0] if len(containers) == 1 else "")
        if not container:
            raise ApiError.bad_request(
                f"a container name must be specified for pod {name}, choose one of: "
                f"[{' '.join(containers)}]"
            )
        if container not in containers:
            raise ApiError.bad_request(f"container {container} is not valid for pod {name}")
        provider = self.log_provider
        out = None
        if provider is not None:
            out = provider(
                namespace,
                name,
                container,
                follow=q.get("follow", "").lower() == "true",
                tail_lines=int(q["tailLines"]) if q.get("tailLines") else None,
                timestamps=q.get("timestamps", "").lower() == "true",
                previous=q.get("previous", "").lower() == "true",
                since_seconds=int(q["sinceSeconds"]) if q.get("sinceSeconds") else None,
            )
        if out is None:
            reason = "ContainerCreating"
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                if cs.get("name") == container and (cs.get("state") or {}).get("waiting"):
                    reason = cs["state"]["waiting"].get("reason", reason)
            raise ApiError.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        if isinstance(out, bytes):
            return h.send_text(200, out, rec)
        h.start_stream("text/plain", rec)
        try:
            for data in out:
                h.chunk(data)
            h.end_stream()
        except OSError:
            h.close_connection = True

    def _portforward(
        self, h: _Handler, namespace: str, name: str, q: dict[str, str], rec: RecordedRequest
    ) -> None:
        """pods/portforward over a websocket, framed as v4.channel.k8s.io (what the
        kubernetes client's ``kubernetes.stream.portforward`` speaks): per requested
        port i, data channel 2i and error channel 2i+1, each opened with a frame
        carrying the port; one TCP connection to podIP:port per port."""
        pod = self.store.get("pods", namespace, name)
        if (h.headers.get("Upgrade") or "").lower() != "websocket":
            raise ApiError.bad_request("Upgrade request required")
        try:
            ports = [int(p) for p in (q.get("ports") or "").split(",") if p]
        except ValueError:
            raise ApiError.bad_request(f"invalid port: {q.get('ports')}") from None
        if not ports or not all(0 < p < 65536 for p in ports):
            raise ApiError.bad_request("at least one valid port is required (ports=...)")
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if status.get("phase") != "Running" or not ip:
            raise ApiError.bad_request(f"unable to upgrade connection: pod {name} is not running")
        offered = [p.strip() for p in (h.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
        if PORTFORWARD_PROTOCOL not in offered:
            raise ApiError.bad_request(f"websocket subprotocol {PORTFORWARD_PROTOCOL} required")
        key = h.headers.get("Sec-WebSocket-Key") or ""
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        h.send_response(101, "Switching Protocols")
        h.send_header("Upgrade", "websocket")
        h.send_header("Connection", "Upgrade")
        h.send_header("Sec-WebSocket-Accept", accept)
        h.send_header("Sec-WebSocket-Protocol", PORTFORWARD_PROTOCOL)
        h.end_headers()
        h.wfile.flush()
        rec.status = 101
        h.close_connection = True
        lock = threading.Lock()

        def send(payload: bytes, opcode: int = 2) -> None:
            n = len(payload)
            if n < 126:
                head = bytes([0x80 | opcode, n])
            elif n < 65536:
                head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
            else:
                head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
            with lock:
                h.wfile.write(head + payload)
                h.wfile.flush()

        conns: dict[int, socket.socket] = {}
        pumps: list[threading.Thread] = []
        closed = threading.Event()

        def pump(channel: int, conn: socket.socket) -> None:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    send(bytes([channel]) + data)
            except OSError:
                pass
            if all(not t.is_alive() or t is threading.current_thread() for t in pumps):
                with contextlib.suppress(OSError):  # the pod side is done: close the websocket
                    if not closed.is_set():
                        send(b"\x03\xe8", opcode=8)
                        closed.set()

        with self._watch_lock:
            self._open_portforwards += 1
        try:
            for i, port in enumerate(ports):
                for channel in (2 * i, 2 * i + 1):
                    send(bytes([channel]) + port.to_bytes(2, "little"))
                try:
                    conn = socket.create_connection((ip, port), timeout=5)
                    conn.settimeout(None)
                except OSError as e:
                    uid = pod["metadata"]["uid"]
                    msg = f"error forwarding port {port} to pod {uid}, uid : {e}"
                    send(bytes([2 * i + 1]) + msg.encode())
                    continue
                conns[2 * i] = conn
                t = threading.Thread(
                    target=pump,
                    args=(2 * i, conn),
                    name=f"kube-standin-pf-{name}-{port}",
                    daemon=True,
                )
                pumps.append(t)
            for t in pumps:
                t.start()
            while True:
                frame = _read_frame(h.rfile)
                if frame is None:
                    break
                opcode, payload = frame
                if opcode == 8:
                    with contextlib.suppress(OSError):
                        if not closed.is_set():
                            send(payload[:2], opcode=8)
                            closed.set()
                    break
                if opcode == 9:
                    send(payload, opcode=10)
                elif opcode in (0, 1, 2) and payload and payload[0] in conns:
                    conns[payload[0]].sendall(payload[1:])
        except OSError:
            pass
        finally:
            for conn in conns.values():
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            for t in pumps:
                t.join(timeout=5)
            with self._watch_lock:
                self._open_portforwards -= 1

    # ---------------------------------------------------------- discovery
    @staticmethod
    def _version() -> Obj:
        major, minor = validation.SCHEMA_VERSION.split(".")[:2]
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{validation.SCHEMA_VERSION}-standin",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2000-01-01T00:00:00Z",
            "goVersion": "n/a",
            "compiler": "python",
            "platform": "linux/amd64",
        }

    @staticmethod
    def _api_groups() -> Obj:
        groups = []
        for name in (RBAC, NETWORKING):
            gv = {"groupVersion": f"{name}/v1", "version": "v1"}
            groups.append({"name": name, "versions": [gv], "preferredVersion": gv})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    @staticmethod
    def _resource_list(group: str, version: str) -> Obj:
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        resources = []
        for r in RESOURCES:
            if r.group == group and r.version == version:
                resources.append(
                    {
                        "name": r.plural,
                        "singularName": r.kind.lower(),
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": verbs,
                        "shortNames": list(r.short_names),
                    }
                )
                for sub in sorted(SUBRESOURCES.get(r.plural, ())):
                    resources.append(
                        {
                            "name": f"{r.plural}/{sub}",
                            "singularName": "",
                            "namespaced": r.namespaced,
                            "kind": r.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
        if not resources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }


__all__ = [
    "RESOURCES",
    "ApiError",
    "RecordedRequest",
    "ResourceType",
    "StandInApiServer",
    "Store",
    "WatchEvent",
    "resource",
]
