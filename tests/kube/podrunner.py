"""TEST INFRASTRUCTURE: a pod runner that plays the scheduler and the kubelet of a
single node for the stand-in API server (tests/kube/apiserver.py), running pods as
real containers on the local Docker Engine.

It is *not* a kubelet.  Per pod (one worker thread each) it:

* schedules: the node has labels (default ``kubernetes.io/hostname=standin-node``,
  ``kubernetes.io/os=linux``, ``kubernetes.io/arch=amd64``), cpu/memory capacity and
  optional extended resources (``nvidia.com/gpu``...).  A pod whose nodeSelector or
  required node affinity doesn't match, or whose requests don't fit, stays Pending
  with ``PodScheduled=False`` reason ``Unschedulable`` and a ``FailedScheduling``
  event (retried every ``schedule_retry`` seconds); otherwise it is bound
  (``spec.nodeName``) with a ``Scheduled`` event.  Pods for another node or scheduler
  are left alone.
* pulls nothing: the image must exist locally.  If it doesn't, the container waits
  with reason ``ErrImagePull`` then ``ImagePullBackOff`` (and ``Failed``/``BackOff``
  events) and the image is looked for again every ``image_retry`` seconds
  (``imagePullPolicy: Never``: ``ErrImageNeverPull``).
* starts a sandbox container (the pod's image running a sleep loop, or
  ``sandbox_image``) that owns the pod's network namespace and hostname, like the
  pause container: podIP is the sandbox's address on the Docker bridge (reachable
  from the host), stays the same across container restarts, and is known before
  the app container starts (``fieldRef: status.podIP`` works).
* runs the pod's FIRST container (others are ignored) with its command/args (with
  ``$(VAR)`` expansion), env (``value``, ``secretKeyRef``, ``configMapKeyRef``,
  ``fieldRef``), ``workingDir``, resource limits (cpu -> nano_cpus, memory ->
  mem_limit, cpu request -> cpu_shares), securityContext (runAsUser/runAsGroup ->
  user, fsGroup/supplementalGroups -> group_add, runAsNonRoot check,
  capabilities, readOnlyRootFilesystem, allowPrivilegeEscalation, privileged), and
  volumes: ``secret`` (files written like the kubelet's atomic writer, see
  :func:`write_secret_volume`), ``emptyDir``; a file at terminationMessagePath.
* reports status like a kubelet: phase, conditions (PodScheduled,
  PodReadyToStartContainers, Initialized, ContainersReady, Ready), podIP(s),
  hostIP(s), startTime, containerStatuses (state waiting/running/terminated,
  lastState, ready, started, restartCount, containerID, imageID), and events
  (Scheduled, Pulled, Created, Started, Killing, BackOff, Failed, FailedMount).
  Readiness: a running container is ready at once unless it has a readinessProbe
  (tcpSocket, httpGet and exec are run every periodSeconds).
* on exit: restartPolicy Never (or OnFailure and exit 0) -> terminated with
  exitCode and reason Completed/Error/OOMKilled, phase Succeeded/Failed; Always /
  OnFailure -> restarted (new container, restartCount+1) after a CrashLoopBackOff
  wait, at most ``max_restarts`` times, then it stays in CrashLoopBackOff.
* on deletion (deletionTimestamp): Killing event, ``docker stop`` with the pod's
  grace period capped at ``grace_cap`` (SIGTERM, then SIGKILL), terminal status, then
  the final delete (grace 0) that removes the pod from the API; containers and
  volume files are removed.  A force-deleted pod just has its containers removed.
* serves ``pods/log`` through the API server's ``log_provider`` hook.

Every container carries the label ``kernel-orchestrator.test-pod=<namespace>/<name>``
(and ``kernel-orchestrator.test-runner=<runner id>``); :meth:`PodRunner.stop` removes
all of this runner's containers.  Not supported: init containers, more than one
container, probes other than readiness, other volume types, image pulls, exec/attach,
pod resize, ephemeral containers, node objects.  (Port-forward is served by the API
server, which relays to podIP.)
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import queue
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .apiserver import ApiError, StandInApiServer, WatchEvent, now_iso, resource
from .validation import quantity_value

LABEL_POD = "kernel-orchestrator.test-pod"
LABEL_RUNNER = "kernel-orchestrator.test-runner"
LABEL_ROLE = "kernel-orchestrator.test-pod-role"
PREEMPTION = "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
SANDBOX_COMMAND = [
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
]

Obj = dict[str, Any]


class _Stop(Exception):
    """The worker must stop: the pod is being deleted, is gone, or the runner stops."""


class _Wait(Exception):
    """The container can't start yet: (reason, message) for its waiting state."""

    def __init__(self, reason: str, message: str, event: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.event = event


def _docker_time(value: str | None) -> str:
    """Docker's RFC 3339 nano timestamps -> Kubernetes' second precision."""
    if not value or value.startswith("0001-"):
        return now_iso()
    return value.split(".")[0].rstrip("Z") + "Z"


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: $$ escapes, unknown references stay as they are."""
    out = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i):
            end = text.find(")", i)
            name = text[i + 2 : end] if end != -1 else ""
            if end != -1 and name in env:
                out.append(env[name])
                i = end + 1
            else:
                out.append(text[i : end + 1] if end != -1 else text[i:])
                i = end + 1 if end != -1 else len(text)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def write_secret_volume(
    root: Path,
    files: list[tuple[str, bytes, int]],
    fs_group: int | None,
) -> None:
    """Write a secret volume the way the kubelet does.

    The kubelet's AtomicWriter layout: the files live in ``..<timestamp>/``,
    ``..data`` links to it and every top-level name links into ``..data``.  Files
    are owned by root with the requested mode (defaultMode/item mode, default 0644),
    so a 0600 file is NOT readable by a non-root container user — exactly as on a
    real node.  With a pod fsGroup the kubelet gives the files to that group and adds
    read permission for it (mode | 0440, directories setgid): then runAsUser 1000 with
    fsGroup 1000 can read a 0600-requested file (it becomes 0640 root:1000).  Keeping
    these semantics means a manifest that works here works on a real cluster.
    """
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(root, 0o1777)  # the kubelet's volume dir is a world-writable sticky tmpfs
    stamp = root / datetime.now(timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    stamp.mkdir(mode=0o755)
    top: set[str] = set()
    for rel, data, mode in files:
        path = stamp / rel
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
        top.add(rel.split("/")[0])
    (root / "..data").symlink_to(stamp.name)
    for name in sorted(top):
        (root / name).symlink_to(f"..data/{name}")
    if fs_group is not None:
        for dirpath, _dirs, filenames in os.walk(stamp):
            os.chown(dirpath, 0, fs_group)
            os.chmod(dirpath, os.stat(dirpath).st_mode | 0o2550)
            for f in filenames:
                p = os.path.join(dirpath, f)
                os.chown(p, 0, fs_group)
                os.chmod(p, os.stat(p).st_mode | 0o440)
        os.chown(root, 0, fs_group)
        os.chmod(root, 0o3777)


class PodRunner:
    """TEST INFRASTRUCTURE: a one-node scheduler + kubelet on Docker (see the module doc).

    >>> with StandInApiServer() as server, PodRunner(server) as runner:
    ...     ...  # pods created through the API now run as containers
    """

    def __init__(
        self,
        server: StandInApiServer,
        *,
        node_name: str = "standin-node",
        node_labels: dict[str, str] | None = None,
        cpu: str | None = None,
        memory: str | None = None,
        extended_resources: dict[str, int] | None = None,
        max_restarts: int = 3,
        restart_backoff: float = 0.5,
        image_retry: float = 2.0,
        schedule_retry: float = 1.0,
        grace_cap: float = 5.0,
        sandbox_image: str | None = None,
        network: str = "bridge",
        docker_client: Any = None,
    ) -> None:
        self.server = server
        self.store = server.store
        self.node_name = node_name
        self.node_labels = (
            dict(node_labels)
            if node_labels is not None
            else {
                "kubernetes.io/hostname": node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            }
        )
        mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.capacity: dict[str, Any] = {
            "cpu": quantity_value(cpu) if cpu else os.cpu_count() or 1,
            "memory": quantity_value(memory) if memory else mem_total,
            "pods": 110,
            "ephemeral-storage": 100 * 2**30,
        }
        for name, count in (extended_resources or {}).items():
            self.capacity[name] = count
        self.max_restarts = max_restarts
        self.restart_backoff = restart_backoff
        self.image_retry = image_retry
        self.schedule_retry = schedule_retry
        self.grace_cap = grace_cap
        self.sandbox_image = sandbox_image
        self.network = network
        self.runner_id = uuid.uuid4().hex[:12]
        self.docker = docker_client or docker.from_env()
        self._own_docker = docker_client is None
        self._queue: queue.Queue[WatchEvent | None] = queue.Queue()
        self._workers: dict[str, _PodWorker] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Any = None
        self._tmp: Path | None = None
        self.host_ip = ""

    # ------------------------------------------------------------- lifecycle
    def start(self) -> PodRunner:
        self._tmp = Path(tempfile.mkdtemp(prefix="kube-podrunner-"))
        net = self.docker.networks.get(self.network)
        configs = (net.attrs.get("IPAM") or {}).get("Config") or [{}]
        self.host_ip = configs[0].get("Gateway", "127.0.0.1")
        self._unsubscribe = self.store.subscribe(self._on_event)
        pods, _ = self.store.list("pods")
        for pod in pods:
            self._queue.put(WatchEvent(0, "ADDED", resource("pods"), pod))
        self.server.log_provider = self._logs
        self._thread = threading.Thread(
            target=self._dispatch, name=f"kube-podrunner-{self.runner_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop every worker and remove every container and file this runner made."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.server.log_provider == self._logs:
            self.server.log_provider = None
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.shutdown()
        for w in workers:
            w.join(timeout=15)
        for c in self.containers():
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if self._own_docker:
            self.docker.close()

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def containers(self) -> list[Any]:
        """This runner's containers (sandboxes included), running or not."""
        # ignore_removed: a container removed between the listing and its inspect
        # (a pod being cleaned up right now) is not an error.
        return self.docker.containers.list(
            all=True, filters={"label": f"{LABEL_RUNNER}={self.runner_id}"}, ignore_removed=True
        )

    def pod_containers(self, namespace: str, name: str) -> list[Any]:
        return self.docker.containers.list(
            all=True,
            ignore_removed=True,
            filters={
                "label": [f"{LABEL_POD}={namespace}/{name}", f"{LABEL_RUNNER}={self.runner_id}"]
            },
        )

    def threads(self) -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t.name.startswith(f"kube-podrunner-{self.runner_id}")
        ]

    # ------------------------------------------------------------- dispatch
    def _on_event(self, event: WatchEvent) -> None:
        if event.resource.plural == "pods":
            self._queue.put(event)  # called under the store lock: only enqueue

    def _dispatch(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            pod = event.obj
            uid = pod["metadata"]["uid"]
            with self._lock:
                worker = self._workers.get(uid)
            if event.type == "DELETED":
                if worker is not None:
                    worker.gone_from_api()
                continue
            if worker is not None:
                worker.update(pod)
                continue
            spec = pod.get("spec") or {}
            phase = (pod.get("status") or {}).get("phase")
            if spec.get("nodeName") not in (None, "", self.node_name):
                continue
            if spec.get(
                "schedulerName", "default-scheduler"
            ) != "default-scheduler" and not spec.get("nodeName"):
                continue
            if phase in ("Succeeded", "Failed") or (event.rv == 0 and spec.get("nodeName")):
                continue  # finished, or left over by another runner
            worker = _PodWorker(self, pod)
            with self._lock:
                self._workers[uid] = worker
            worker.start()

    def _forget(self, uid: str) -> None:
        with self._lock:
            self._workers.pop(uid, None)

    # ------------------------------------------------------------- scheduling
    def unschedulable(self, pod: Obj) -> str | None:
        """Why the node can't take ``pod`` (the scheduler's message), or None."""
        spec = pod.get("spec") or {}
        fits = all(
            self.node_labels.get(k) == v for k, v in (spec.get("nodeSelector") or {}).items()
        )
        required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        ) or {}
        terms = required.get("nodeSelectorTerms")
        if terms:
            fits = fits and any(self._term_matches(t) for t in terms)
        if not fits:
            return (
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
                + PREEMPTION
            )
        taken = self._requested_by_others(pod["metadata"]["uid"])
        short = []
        for rname, amount in self._requests(pod).items():
            cap = self.capacity.get(rname, 0)
            if amount + taken.get(rname, 0) > cap:
                short.append(f"1 Insufficient {rname}")
        if short:
            return f"0/1 nodes are available: {', '.join(sorted(short))}. {PREEMPTION}"
        return None

    def _term_matches(self, term: Obj) -> bool:
        for expr in term.get("matchExpressions") or []:
            key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
            have = self.node_labels.get(key)
            ok = {
                "In": have is not None and have in values,
                "NotIn": have is None or have not in values,
                "Exists": have is not None,
                "DoesNotExist": have is None,
                "Gt": have is not None
                and have.isdigit()
                and bool(values)
                and int(have) > int(values[0]),
                "Lt": have is not None
                and have.isdigit()
                and bool(values)
                and int(have) < int(values[0]),
            }.get(op, False)
            if not ok:
                return False
        for expr in term.get("matchFields") or []:
            if expr.get("key") == "metadata.name":
                inside = self.node_name in (expr.get("values") or [])
                if inside != (expr.get("operator") == "In"):
                    return False
        return True

    @staticmethod
    def _requests(pod: Obj) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for c in (pod.get("spec") or {}).get("containers") or []:
            res = c.get("resources") or {}
            for rname, q in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items():
                v = quantity_value(q) or 0
                total[rname] = total.get(rname, 0) + v
        return total

    def _requested_by_others(self, uid: str) -> dict[str, Any]:
        total: dict[str, Any] = {}
        with self._lock:
            workers = [
                w for w in self._workers.values() if w.uid != uid and w.bound and not w.finished
            ]
        for w in workers:
            for rname, v in self._requests(w.pod).items():
                total[rname] = total.get(rname, 0) + v
        return total

    # ------------------------------------------------------------- events, logs
    def event(
        self,
        pod: Obj,
        etype: str,
        reason: str,
        message: str,
        *,
        component: str = "kubelet",
        field_path: str | None = None,
    ) -> None:
        meta = pod["metadata"]
        ref: Obj = {
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": "v1",
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if field_path:
            ref["fieldPath"] = field_path
        now = now_iso()
        body = {
            "metadata": {
                "name": f"{meta['name']}.{time.time_ns():x}",
                "namespace": meta["namespace"],
            },
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "type": etype,
            "source": {
                "component": component,
                **({"host": self.node_name} if component == "kubelet" else {}),
            },
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": component,
            "reportingInstance": self.node_name if component == "kubelet" else "",
        }
        with contextlib.suppress(ApiError):  # e.g. the namespace is terminating
            self.store.create("events", body, meta["namespace"])

    def _logs(
        self, namespace: str, name: str, container: str, **opts: Any
    ) -> bytes | Iterator[bytes] | None:
        with self._lock:
            workers = [w for w in self._workers.values() if w.ns == namespace and w.name == name]
        if not workers:
            return None
        return workers[-1].logs(**opts)


class _PodWorker(threading.Thread):
    """Runs one pod: schedule, sandbox, container, restarts, deletion."""

    def __init__(self, runner: PodRunner, pod: Obj) -> None:
        meta = pod["metadata"]
        super().__init__(
            name=f"kube-podrunner-{runner.runner_id}-{meta['namespace']}/{meta['name']}",
            daemon=True,
        )
        self.runner = runner
        self.store = runner.store
        self.pod = pod
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.wake = threading.Event()
        self.exited = threading.Event()
        self.deleting = bool(meta.get("deletionTimestamp"))
        self.gone = False
        self.stopping = False
        self.bound = bool((pod.get("spec") or {}).get("nodeName"))
        self.finished = False
        self.sandbox: Any = None
        self.container: Any = None
        self.previous: Any = None
        self.restarts = 0
        self.pod_ip = ""
        self.start_time: str | None = None
        self.phase = "Pending"
        self.conditions: dict[str, Obj] = {}
        self.cstatus: Obj | None = None
        self.dirs: list[Path] = []
        self.ready = False
        self.spec: Obj = pod.get("spec") or {}
        self.c: Obj = self.spec["containers"][0]
        self.image_id = ""
        self.waiters: list[threading.Thread] = []
        self.terminal = False

    # ---------------------------------------------------------------- signals
    def update(self, pod: Obj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.deleting:
            self.deleting = True
            self.wake.set()

    def gone_from_api(self) -> None:
        self.gone = True
        self.wake.set()

    def shutdown(self) -> None:
        self.stopping = True
        self.wake.set()

    def _check(self) -> None:
        if self.deleting or self.gone or self.stopping:
            raise _Stop()

    def _sleep(self, seconds: float) -> None:
        self._check()
        self.wake.wait(seconds)
        self.wake.clear()
        self._check()

    # ---------------------------------------------------------------- main
    def run(self) -> None:
        try:
            self._run()
        except _Stop:
            pass
        except Exception:
            import traceback

            traceback.print_exc()
        finally:
            self._terminate()

    def _run(self) -> None:
        if not self.bound:
            self._schedule()
        self._cond("PodScheduled", "True")
        self._cond("Initialized", "True")
        self._cond("PodReadyToStartContainers", "False")
        self._cond(
            "ContainersReady",
            "False",
            "ContainersNotReady",
            f"containers with unready status: [{self.c['name']}]",
        )
        self._cond(
            "Ready",
            "False",
            "ContainersNotReady",
            f"containers with unready status: [{self.c['name']}]",
        )
        self.start_time = now_iso()
        self._waiting("ContainerCreating")
        image = self._wait_for_image()
        self._start_sandbox(image)
        while True:
            self._start_container(image)
            code = self._watch_container()
            policy = self.spec.get("restartPolicy", "Always")
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self.phase = "Succeeded" if code == 0 else "Failed"
                self.finished = True
                self._cond("Ready", "False", "PodCompleted", "")
                self._cond("ContainersReady", "False", "PodCompleted", "")
                self._publish()
                while True:  # keep the dead container (its logs) until the pod goes
                    self._sleep(3600)
            delay = min(self.runner.restart_backoff * (2**self.restarts), 10.0)
            last = (self.cstatus or {}).get("state", {}).get("terminated")
            message = (
                f"back-off {delay:g}s restarting failed container={self.c['name']} "
                f"pod={self.name}_{self.ns}({self.uid})"
            )
            self.runner.event(
                self.pod,
                "Warning",
                "BackOff",
                f"Back-off restarting failed container {self.c['name']} in pod "
                f"{self.name}_{self.ns}({self.uid})",
                field_path=self._field_path(),
            )
            self._waiting("CrashLoopBackOff", message, last_state=last)
            if self.restarts >= self.runner.max_restarts:
                while True:
                    self._sleep(3600)
            self._sleep(delay)
            self.restarts += 1

    # ---------------------------------------------------------------- steps
    def _schedule(self) -> None:
        reported = None
        while True:
            why = self.runner.unschedulable(self.pod)
            if why is None:
                break
            if why != reported:
                self.runner.event(
                    self.pod, "Warning", "FailedScheduling", why, component="default-scheduler"
                )
                self._cond("PodScheduled", "False", "Unschedulable", why)
                self._publish(containers=False)
                reported = why
            self._sleep(self.runner.schedule_retry)
        try:
            self.pod = self.store.bind(self.ns, self.name, self.runner.node_name)
        except ApiError:
            raise _Stop() from None
        self.spec = self.pod["spec"]
        self.bound = True
        self._cond("PodScheduled", "True")
        self.runner.event(
            self.pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {self.ns}/{self.name} to {self.runner.node_name}",
            component="default-scheduler",
        )

    def _wait_for_image(self) -> Any:
        name = self.c["image"]
        policy = self.c.get("imagePullPolicy", "IfNotPresent")
        announced = False
        while True:
            try:
                image = self.runner.docker.images.get(name)
                self.image_id = image.id
                self.runner.event(
                    self.pod,
                    "Normal",
                    "Pulled",
                    f'Container image "{name}" already present on machine',
                    field_path=self._field_path(),
                )
                return image
            except docker.errors.ImageNotFound:
                pass
            if policy == "Never":
                msg = f'Container image "{name}" is not present with pull policy of Never'
                self._waiting("ErrImageNeverPull", msg)
                if not announced:
                    self.runner.event(
                        self.pod, "Warning", "ErrImageNeverPull", msg, field_path=self._field_path()
                    )
                    announced = True
                self._sleep(self.runner.image_retry)
                continue
            repo = name.split("@")[0].rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
            pull_msg = (
                f'Failed to pull image "{name}": failed to pull and unpack image "{name}": '
                "failed to resolve "
                f'reference "{name}": pull access denied, repository does not exist or may require '
                f"authorization (the stand-in runner never pulls: {repo} is not in the local "
                "Docker Engine)"
            )
            self.runner.event(
                self.pod,
                "Normal",
                "Pulling",
                f'Pulling image "{name}"',
                field_path=self._field_path(),
            )
            # events first, then the status: whoever waits for the status finds the events
            self.runner.event(
                self.pod, "Warning", "Failed", pull_msg, field_path=self._field_path()
            )
            self.runner.event(
                self.pod, "Warning", "Failed", "Error: ErrImagePull", field_path=self._field_path()
            )
            self._waiting("ErrImagePull", pull_msg)
            self._sleep(min(1.0, self.runner.image_retry))
            backoff = f'Back-off pulling image "{name}"'
            self.runner.event(self.pod, "Normal", "BackOff", backoff, field_path=self._field_path())
            self.runner.event(
                self.pod,
                "Warning",
                "Failed",
                "Error: ImagePullBackOff",
                field_path=self._field_path(),
            )
            self._waiting("ImagePullBackOff", backoff)
            self._sleep(self.runner.image_retry)

    def _labels(self, role: str) -> dict[str, str]:
        return {
            LABEL_POD: f"{self.ns}/{self.name}",
            LABEL_RUNNER: self.runner.runner_id,
            LABEL_ROLE: role,
            "io.kubernetes.pod.name": self.name,
            "io.kubernetes.pod.namespace": self.ns,
            "io.kubernetes.pod.uid": self.uid,
            "io.kubernetes.container.name": self.c["name"] if role == "app" else "POD",
        }

    def _start_sandbox(self, image: Any) -> None:
        hostname = (self.spec.get("hostname") or self.name)[:63].rstrip("-.")
        self.sandbox = self.runner.docker.containers.run(
            self.runner.sandbox_image or image.id,
            name=f"k8s_POD_{self.name}_{self.ns}_{self.uid}_0",
            entrypoint=SANDBOX_COMMAND,
            command=[],
            user="65535:65535",
            hostname=hostname,
            labels=self._labels("sandbox"),
            network=self.runner.network,
            detach=True,
        )
        self.sandbox.reload()
        nets = self.sandbox.attrs["NetworkSettings"]["Networks"]
        self.pod_ip = nets[self.runner.network]["IPAddress"]
        self._cond("PodReadyToStartContainers", "True")
        self._publish()

    def _start_container(self, image: Any) -> None:
        while True:
            try:
                kwargs = self._container_config(image)
                break
            except _Wait as w:
                self._waiting(w.reason, w.message)
                if w.event:
                    self.runner.event(
                        self.pod, "Warning", w.event[0], w.event[1], field_path=self._field_path()
                    )
                self._sleep(1.0)
        if self.previous is not None:
            with contextlib.suppress(docker.errors.APIError):
                self.previous.remove(force=True)
        self.previous = self.container
        self.exited.clear()
        self.container = self.runner.docker.containers.create(**kwargs)
        self.runner.event(
            self.pod,
            "Normal",
            "Created",
            f"Created container: {self.c['name']}",
            field_path=self._field_path(),
        )
        try:
            self.container.start()
        except docker.errors.APIError as e:
            # e.g. the executable does not exist: like runc's StartError, exit code 128
            self._terminated(128, "StartError", str(e.explanation or e))
            self.runner.event(
                self.pod,
                "Warning",
                "Failed",
                f"Error: {e.explanation or e}",
                field_path=self._field_path(),
            )
            self.exited.set()
            return
        self.container.reload()
        self.runner.event(
            self.pod,
            "Normal",
            "Started",
            f"Started container {self.c['name']}",
            field_path=self._field_path(),
        )
        waiter = threading.Thread(
            target=self._wait_exit,
            args=(self.container.id,),
            name=f"kube-podrunner-{self.runner.runner_id}-wait-{self.name}",
            daemon=True,
        )
        waiter.start()
        self.waiters.append(waiter)
        self.phase = "Running"
        self.ready = "readinessProbe" not in self.c
        self.cstatus = self._base_status(
            ready=self.ready,
            started=True,
            state={
                "running": {
                    "startedAt": _docker_time(self.container.attrs["State"].get("StartedAt"))
                }
            },
        )
        self._set_ready(self.ready)

    def _container_config(self, image: Any) -> Obj:
        c, spec = self.c, self.spec
        env = self._env()
        command = [expand(a, env) for a in c.get("command") or []]
        args = [expand(a, env) for a in c.get("args") or []]
        psc = spec.get("securityContext") or {}
        csc = c.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup"))
        image_user = (image.attrs.get("Config") or {}).get("User") or "0"
        if uid is None:
            uid_part = image_user.split(":")[0]
            if csc.get("runAsNonRoot", psc.get("runAsNonRoot")):
                if not uid_part.isdigit():
                    raise _Wait(
                        "CreateContainerConfigError",
                        "container has runAsNonRoot and image has non-numeric user "
                        f"({uid_part}), cannot verify user is non-root "
                        f'(pod: "{self.name}_{self.ns}({self.uid})", container: {c["name"]})',
                        (
                            "Failed",
                            "Error: container has runAsNonRoot and image has non-numeric user",
                        ),
                    )
                if uid_part == "0":
                    raise _Wait(
                        "CreateContainerConfigError",
                        "container has runAsNonRoot and image will run as root",
                        ("Failed", "Error: container has runAsNonRoot and image will run as root"),
                    )
            user = uid_part if gid is None else f"{uid_part}:{gid}"
            if gid is None and ":" in image_user:
                user = image_user
        else:
            if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) and uid == 0:
                raise _Wait(
                    "CreateContainerConfigError",
                    "container's runAsUser breaks non-root policy",
                    ("Failed", "Error: container's runAsUser breaks non-root policy"),
                )
            user = str(uid) if gid is None else f"{uid}:{gid}"
        groups = [str(g) for g in psc.get("supplementalGroups") or []]
        if psc.get("fsGroup") is not None:
            groups.append(str(psc["fsGroup"]))
        binds = self._volumes(psc.get("fsGroup"))
        kwargs: Obj = {
            "image": image.id,
            "name": f"k8s_{c['name']}_{self.name}_{self.ns}_{self.uid}_{self.restarts}",
            "labels": self._labels("app"),
            "environment": [f"{k}={v}" for k, v in env.items()],
            "user": user,
            "network_mode": f"container:{self.sandbox.id}",
            "volumes": binds,
            "detach": True,
            "stdin_open": bool(c.get("stdin")),
            "tty": bool(c.get("tty")),
        }
        if command:
            kwargs["entrypoint"] = command
            kwargs["command"] = args
        elif args:
            kwargs["command"] = args
        if c.get("workingDir"):
            kwargs["working_dir"] = c["workingDir"]
        if groups:
            kwargs["group_add"] = groups
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        if "cpu" in limits:
            kwargs["nano_cpus"] = int(quantity_value(limits["cpu"]) * 1_000_000_000)
        if "memory" in limits:
            kwargs["mem_limit"] = int(quantity_value(limits["memory"]))
        if "cpu" in requests:
            kwargs["cpu_shares"] = max(2, int(quantity_value(requests["cpu"]) * 1024))
        caps = csc.get("capabilities") or {}
        if caps.get("drop"):
            kwargs["cap_drop"] = list(caps["drop"])
        if caps.get("add"):
            kwargs["cap_add"] = list(caps["add"])
        if csc.get("readOnlyRootFilesystem"):
            kwargs["read_only"] = True
        if csc.get("allowPrivilegeEscalation") is False:
            kwargs["security_opt"] = ["no-new-privileges"]
        if csc.get("privileged"):
            kwargs["privileged"] = True
        return kwargs

    def _env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for e in self.c.get("env") or []:
            vf = e.get("valueFrom")
            if vf is None:
                env[e["name"]] = expand(e.get("value") or "", env)
                continue
            value: str | None = None
            for ref_kind, plural, label in (
                ("secretKeyRef", "secrets", "Secret"),
                ("configMapKeyRef", "configmaps", "ConfigMap"),
            ):
                ref = vf.get(ref_kind)
                if ref is None:
                    continue
                obj = self.store.try_get(plural, self.ns, ref["name"])
                if obj is None:
                    if ref.get("optional"):
                        break
                    msg = f'{label.lower()} "{ref["name"]}" not found'
                    raise _Wait("CreateContainerConfigError", msg, ("Failed", f"Error: {msg}"))
                data = obj.get("data") or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        break
                    msg = f"couldn't find key {ref['key']} in {label} {self.ns}/{ref['name']}"
                    raise _Wait("CreateContainerConfigError", msg, ("Failed", f"Error: {msg}"))
                raw = data[ref["key"]]
                value = (
                    base64.b64decode(raw).decode(errors="replace") if plural == "secrets" else raw
                )
            if "fieldRef" in vf:
                value = self._field_ref(vf["fieldRef"]["fieldPath"])
            if "resourceFieldRef" in vf:
                rf = vf["resourceFieldRef"]
                res = self.c.get("resources") or {}
                kind, _, rname = rf["resource"].partition(".")
                q = (res.get(kind) or {}).get(rname)
                value = (
                    str(int(quantity_value(q) or 0))
                    if q is not None
                    else str(self.runner.capacity.get(rname, 0))
                )
            if value is not None:
                env[e["name"]] = value
        return env

    def _field_ref(self, path: str) -> str:
        meta = self.pod["metadata"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        return {
            "metadata.name": self.name,
            "metadata.namespace": self.ns,
            "metadata.uid": self.uid,
            "spec.nodeName": self.runner.node_name,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", ""),
            "status.hostIP": self.runner.host_ip,
            "status.hostIPs": self.runner.host_ip,
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
        }.get(path, "")

    def _volumes(self, fs_group: int | None) -> dict[str, Obj]:
        assert self.runner._tmp is not None
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs = []
        base = self.runner._tmp / f"{self.uid}-{self.restarts}"
        sources: dict[str, Path] = {}
        for vol in self.spec.get("volumes") or []:
            vname = vol["name"]
            root = base / vname
            mount_failed = f'MountVolume.SetUp failed for volume "{vname}" : '
            if vol.get("secret") is not None:
                src = vol["secret"]
                secret = self.store.try_get("secrets", self.ns, src["secretName"])
                if secret is None and not src.get("optional"):
                    msg = f'{mount_failed}secret "{src["secretName"]}" not found'
                    raise _Wait("ContainerCreating", "", ("FailedMount", msg))
                data = {
                    k: base64.b64decode(v or "")
                    for k, v in ((secret or {}).get("data") or {}).items()
                }
                mode = src.get("defaultMode", 0o644)
                files: list[tuple[str, bytes, int]] = []
                if src.get("items"):
                    for item in src["items"]:
                        if item["key"] not in data:
                            if src.get("optional"):
                                continue
                            msg = f"{mount_failed}references non-existent secret key: {item['key']}"
                            raise _Wait("ContainerCreating", "", ("FailedMount", msg))
                        files.append((item["path"], data[item["key"]], item.get("mode", mode)))
                else:
                    files = [(k, v, mode) for k, v in data.items()]
                write_secret_volume(root, files, fs_group)
            elif "emptyDir" in vol:
                root.mkdir(parents=True)
                os.chmod(root, 0o777)
            else:
                kinds = [k for k in vol if k != "name"]
                msg = f"{mount_failed}the stand-in pod runner does not support {kinds} volumes"
                raise _Wait("ContainerCreating", "", ("FailedMount", msg))
            sources[vname] = root
        self.dirs.append(base)
        binds: dict[str, Obj] = {}
        for vm in self.c.get("volumeMounts") or []:
            root = sources[vm["name"]]
            vol = next(v for v in self.spec["volumes"] if v["name"] == vm["name"])
            ro = bool(vm.get("readOnly")) or vol.get("secret") is not None
            host = root / vm["subPath"] if vm.get("subPath") else root
            if vm.get("subPath") and vol.get("secret") is not None:
                host = host.resolve()  # the file itself, not the ..data symlink
            binds[str(host)] = {"bind": vm["mountPath"], "mode": "ro" if ro else "rw"}
        term = base / "termination-log"
        term.parent.mkdir(parents=True, exist_ok=True)
        term.touch()
        os.chmod(term, 0o666)
        binds[str(term)] = {
            "bind": self.c.get("terminationMessagePath", "/dev/termination-log"),
            "mode": "rw",
        }
        return binds

    def _wait_exit(self, container_id: str) -> None:
        client = docker.from_env()
        try:
            client.api.wait(container_id)
        except Exception:
            pass
        finally:
            client.close()
        if self.container is not None and self.container.id == container_id:
            self.exited.set()
            self.wake.set()

    def _watch_container(self) -> int:
        """Wait for the container to exit (probing readiness); returns its exit code."""
        probe = self.c.get("readinessProbe")
        period = float((probe or {}).get("periodSeconds", 10))
        next_probe = time.monotonic() + float((probe or {}).get("initialDelaySeconds", 0))
        while not self.exited.is_set():
            timeout = max(0.05, next_probe - time.monotonic()) if probe else 3600
            self.wake.wait(timeout)
            self.wake.clear()
            if self.exited.is_set():
                break
            self._check()
            if probe and time.monotonic() >= next_probe:
                ok = self._probe(probe)
                if ok != self.ready:
                    self._set_ready(ok)
                next_probe = time.monotonic() + period
        if self.cstatus and "terminated" in (self.cstatus.get("state") or {}):
            return int(self.cstatus["state"]["terminated"]["exitCode"])  # StartError
        return self._record_exit()

    def _probe(self, probe: Obj) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "tcpSocket" in probe:
                port = self._port(probe["tcpSocket"]["port"])
                with socket.create_connection((self.pod_ip, port), timeout=timeout):
                    return True
            if "httpGet" in probe:
                hg = probe["httpGet"]
                url = f"http://{self.pod_ip}:{self._port(hg['port'])}{hg.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return 200 <= resp.status < 400
            if "exec" in probe:
                result = self.container.exec_run(probe["exec"]["command"])
                return result.exit_code == 0
        except (OSError, docker.errors.APIError, ValueError):
            return False
        return True

    def _port(self, port: Any) -> int:
        if isinstance(port, int):
            return port
        for p in self.c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        return int(port)

    def _record_exit(self) -> int:
        container = self.container
        try:
            container.reload()
            state = container.attrs["State"]
        except docker.errors.APIError:
            state = {"ExitCode": 137, "OOMKilled": False}
        code = int(state.get("ExitCode", 0))
        reason = "OOMKilled" if state.get("OOMKilled") else ("Completed" if code == 0 else "Error")
        message = self._termination_message(code)
        self._terminated(
            code, reason, message, started=state.get("StartedAt"), finished=state.get("FinishedAt")
        )
        return code

    def _termination_message(self, code: int) -> str:
        text = ""
        for d in self.dirs:
            f = d / "termination-log"
            if f.exists():
                text = f.read_text(errors="replace")[:4096]
        if (
            not text
            and code != 0
            and self.c.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            with contextlib.suppress(docker.errors.APIError):
                text = self.container.logs(tail=80).decode(errors="replace")[-2048:]
        return text

    def _terminated(
        self,
        code: int,
        reason: str,
        message: str,
        started: str | None = None,
        finished: str | None = None,
    ) -> None:
        term: Obj = {
            "exitCode": code,
            "reason": reason,
            "startedAt": _docker_time(started),
            "finishedAt": _docker_time(finished),
            "containerID": f"docker://{self.container.id}",
        }
        if message:
            term["message"] = message
        self.ready = False
        if self.terminal:
            self.phase = "Succeeded" if code == 0 else "Failed"
        self.cstatus = self._base_status(ready=False, started=False, state={"terminated": term})
        self._cond(
            "ContainersReady",
            "False",
            "ContainersNotReady",
            f"containers with unready status: [{self.c['name']}]",
        )
        self._cond(
            "Ready",
            "False",
            "ContainersNotReady",
            f"containers with unready status: [{self.c['name']}]",
        )
        self._publish()

    def _terminate(self) -> None:
        """Kill, report, finally delete the pod (if it's being deleted) and clean up."""
        self.finished = True
        try:
            if self.container is not None and not self.exited.is_set():
                grace = self._grace()
                if not self.stopping:
                    self.runner.event(
                        self.pod,
                        "Normal",
                        "Killing",
                        f"Stopping container {self.c['name']}",
                        field_path=self._field_path(),
                    )
                try:  # the Engine wants whole seconds (a float is a 400)
                    self.container.stop(timeout=0 if self.stopping else math.ceil(grace))
                except docker.errors.APIError:
                    with contextlib.suppress(docker.errors.APIError):
                        self.container.kill()
                for waiter in self.waiters:
                    waiter.join(timeout=10)
                if not self.gone and not self.stopping:
                    with contextlib.suppress(ApiError, _Stop):
                        self.terminal = True  # the pod won't run again: one terminal status
                        self._record_exit()
        finally:
            # containers go before the pod leaves the API: "pod gone" implies "containers gone"
            for c in (self.container, self.previous, self.sandbox):
                if c is not None:
                    with contextlib.suppress(docker.errors.APIError):
                        c.remove(force=True)
            for d in self.dirs:
                shutil.rmtree(d, ignore_errors=True)
            for waiter in self.waiters:
                waiter.join(timeout=10)
            self.runner._forget(self.uid)
        if self.deleting and not self.gone and not self.stopping:
            with contextlib.suppress(ApiError):
                self.store.delete(
                    "pods",
                    self.ns,
                    self.name,
                    grace_period_seconds=0,
                    preconditions={"uid": self.uid},
                )

    def _grace(self) -> float:
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.spec.get("terminationGracePeriodSeconds", 30)
        return max(0.0, min(float(grace), self.runner.grace_cap))

    # ---------------------------------------------------------------- logs
    def logs(
        self,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
        timestamps: bool = False,
        previous: bool = False,
        since_seconds: int | None = None,
    ) -> bytes | Iterator[bytes] | None:
        container = self.previous if previous else self.container
        if container is None:
            return None
        kwargs: Obj = {"timestamps": timestamps}
        if tail_lines is not None:
            kwargs["tail"] = tail_lines
        if since_seconds is not None:
            kwargs["since"] = int(time.time()) - since_seconds
        try:
            if follow:
                return iter(container.logs(stream=True, follow=True, **kwargs))
            return bytes(container.logs(**kwargs))
        except docker.errors.APIError:
            return None

    # ---------------------------------------------------------------- status
    def _field_path(self) -> str:
        return f"spec.containers{{{self.c['name']}}}"

    def _cond(
        self, ctype: str, status: str, reason: str | None = None, message: str | None = None
    ) -> None:
        old = self.conditions.get(ctype)
        cond: Obj = {"type": ctype, "status": status, "lastProbeTime": None}
        cond["lastTransitionTime"] = (
            old["lastTransitionTime"] if old and old["status"] == status else now_iso()
        )
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        self.conditions[ctype] = cond

    def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        if self.cstatus is not None:
            self.cstatus["ready"] = ready
        if ready:
            self._cond("ContainersReady", "True")
            self._cond("Ready", "True")
        else:
            msg = f"containers with unready status: [{self.c['name']}]"
            self._cond("ContainersReady", "False", "ContainersNotReady", msg)
            self._cond("Ready", "False", "ContainersNotReady", msg)
        self._publish()

    def _base_status(
        self, *, ready: bool, started: bool, state: Obj, last_state: Obj | None = None
    ) -> Obj:
        prev = self.cstatus or {}
        cs: Obj = {
            "name": self.c["name"],
            "image": self.c["image"],
            "imageID": f"docker-pullable://{self.c['image']}@{self.image_id}"
            if self.image_id
            else "",
            "ready": ready,
            "started": started,
            "restartCount": self.restarts,
            "state": state,
            "lastState": last_state if last_state is not None else prev.get("lastState", {}),
        }
        if self.container is not None:
            cs["containerID"] = f"docker://{self.container.id}"
        return cs

    def _waiting(self, reason: str, message: str = "", last_state: Obj | None = None) -> None:
        waiting: Obj = {"reason": reason}
        if message:
            waiting["message"] = message
        last = {"terminated": last_state} if last_state else None
        self.cstatus = self._base_status(
            ready=False, started=False, state={"waiting": waiting}, last_state=last
        )
        if self.container is None:
            self.cstatus.pop("containerID", None)
        self.ready = False
        if self.phase == "Running" or reason == "CrashLoopBackOff":
            self._cond(
                "ContainersReady",
                "False",
                "ContainersNotReady",
                f"containers with unready status: [{self.c['name']}]",
            )
            self._cond(
                "Ready",
                "False",
                "ContainersNotReady",
                f"containers with unready status: [{self.c['name']}]",
            )
        self._publish()

    def _publish(self, containers: bool = True) -> None:
        order = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ]
        conditions = [self.conditions[t] for t in order if t in self.conditions]

        def fn(pod: Obj) -> Obj:
            st = pod.get("status") or {}
            st["phase"] = self.phase
            st["conditions"] = conditions
            if self.bound:
                st["hostIP"] = self.runner.host_ip
                st["hostIPs"] = [{"ip": self.runner.host_ip}]
            if self.pod_ip:
                st["podIP"] = self.pod_ip
                st["podIPs"] = [{"ip": self.pod_ip}]
            if self.start_time:
                st["startTime"] = self.start_time
            if containers and self.cstatus is not None:
                st["containerStatuses"] = [json.loads(json.dumps(self.cstatus))]
            pod["status"] = st
            return pod

        try:
            self.pod = self.store.mutate("pods", self.ns, self.name, fn)
        except ApiError as e:
            if e.code == 404:
                self.gone = True
                raise _Stop() from None
            raise


__all__ = ["LABEL_POD", "LABEL_RUNNER", "PodRunner", "expand", "write_secret_volume"]
