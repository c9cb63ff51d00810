"""Kubernetes scenario: the Kubernetes provisioner against the stand-in API server.

No cluster runs here. Each benchmark starts the TEST infrastructure of
``tests/kube/``: a ``StandInApiServer`` (a stateful stand-in for the Kubernetes API
server on 127.0.0.1, spoken to over real HTTP by the official ``kubernetes`` client)
and a ``PodRunner`` (plays scheduler + kubelet: runs each pod as a sandbox container
plus the kernel container on the local Docker Engine; pod IPs are on the default
bridge, reachable from this host). Kernels are ``orchestrator.AsyncKernelManager``
with an SQLite store and a kernelspec ``ko-bench-kube`` (``kubernetes-provisioner``,
``{"api_url": <stand-in>, "namespace": "default", "image": IMAGE}``) written into the
run's temporary ``JUPYTER_DATA_DIR``.

* ``start``      -- start-to-ready: ``start_kernel()`` + a client's
                    ``wait_for_ready()``; kubernetes vs the Docker provisioner (same
                    image, the ``docker`` scenario's kernelspec), interleaved (ABBA),
                    one untimed warm-up each; shutdown untimed. Informational ratio.
* ``concurrent`` -- 50 (quick: 20) kubernetes kernels started at once, all on ONE
                    shared pod watch: wall time, per-kernel time to ready, failures,
                    open watch connections on the stand-in (sampled), API requests
                    per kernel from the stand-in's request log (by verb/resource),
                    pod list requests, and a per-pod phase breakdown from the
                    stand-in's store events. All shut down concurrently afterwards.

Setup: the ``docker`` scenario's (``docker/build.sh --offline-base --only
kernel-python``: engine and image, installed/built on a fresh machine).

Cleanup (``finally``, every benchmark): kernels shut down; then no pod may remain in
the stand-in and no container labelled with the pod runner's id may remain on Docker
(leftovers are deleted/removed and make an ERROR row); the provisioner's shared
watches are stopped (``watcher.stop_all()``) and its client cache cleared before the
stand-in stops; runner and stand-in threads must be gone. Docker-provisioner
containers of the run are checked as in the ``docker`` scenario.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import zmq.asyncio

import orchestrator
from bench.harness import (
    Benchmark,
    Bounded,
    Context,
    Row,
    Target,
    comparison,
    concurrent_start_rows,
    error_row,
    measurement,
    poll_until,
    progress,
    run_interleaved,
)
from bench.scenarios.core import _diagnostics, _ready_client
from bench.scenarios.docker import DOCKER_KERNEL, IMAGE, Owned, _check_containers
from bench.scenarios.docker import _setup as _docker_setup
from orchestrator.store import open_store

NAME = "kubernetes"
DESCRIPTION = (
    "Kubernetes provisioner (stand-in API server + pod runner on Docker):"
    " start vs docker, 50 concurrent on one watch"
)

REPO = Path(__file__).resolve().parents[2]
KUBE_KERNEL = "ko-bench-kube"

# Targets (informational; see bench/README.md).
CONCURRENT_N = 50
CONCURRENT_N_QUICK = 20

# Time limits, seconds.
START_STARTUP_TIMEOUT = 120.0  # kernelspec startup_timeout for the start benchmark
CONCURRENT_STARTUP_TIMEOUT = 300.0  # ... for 50 at once on 2 cores
START_TIMEOUT = 150.0  # one start_kernel() in the start benchmark
CONCURRENT_START_TIMEOUT = CONCURRENT_STARTUP_TIMEOUT + 60  # one start_kernel() of the 50
CONCURRENT_TIMEOUT = CONCURRENT_STARTUP_TIMEOUT + 120  # the whole concurrent start
SHUTDOWN_TIMEOUT = 120.0  # one kernel's shutdown (polite, then forced: twice this at most)
SHUTDOWN_ALL_TIMEOUT = 300.0
DRAIN_TIMEOUT = 60.0  # pods / runner containers to go after the kernels were shut down
TEARDOWN_TIMEOUT = 120.0  # runner.stop() / server.stop()
SAMPLE_INTERVAL = 0.1  # open_watches sampling

# The stand-in's handler writes a response's headers and body in two send()s; with
# Nagle on, the client's delayed ACK then holds every non-watch response ~40 ms on a
# kept-alive connection (measured here: GET pod 43 ms vs 1 ms). A real API server
# (Go net/http) sets TCP_NODELAY, so the bench's private copy of the stand-in does too
# (socketserver's ``disable_nagle_algorithm``); tests/kube/ itself is not changed.
STANDIN_TCP_NODELAY = True


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {"start_reps": 3, "concurrent_n": CONCURRENT_N_QUICK}
    return {"start_reps": 6, "concurrent_n": CONCURRENT_N}


# ------------------------------------------------------------- test infrastructure

# tests/kube/: test infrastructure, not part of the product. Loaded as a package from
# its files under a private name (not ``import tests.kube``): no other ``tests``
# package can shadow it, and mypy's check of bench/ does not extend into the test
# tree. Typed as Any here. (tests/kube/fixtures.py imports pytest; it is not loaded.)
_KUBE_PKG = "ko_bench_kube"


def _kube_modules() -> tuple[Any, Any]:
    """``(apiserver, podrunner)`` modules of tests/kube/."""
    if _KUBE_PKG not in sys.modules:
        init = REPO / "tests" / "kube" / "__init__.py"
        spec = importlib.util.spec_from_file_location(
            _KUBE_PKG, init, submodule_search_locations=[str(init.parent)]
        )
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {init}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_KUBE_PKG] = module  # before exec: relative imports find the package
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_KUBE_PKG]
            raise
    apiserver = importlib.import_module(f"{_KUBE_PKG}.apiserver")
    podrunner = importlib.import_module(f"{_KUBE_PKG}.podrunner")
    apiserver._Handler.disable_nagle_algorithm = STANDIN_TCP_NODELAY
    return apiserver, podrunner


class _Timeline:
    """perf_counter times of pod/secret changes in the stand-in's store.

    Subscribed to ``Store.subscribe``: called under the store lock, so it only appends.
    """

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, str, str, bool, bool]] = []

    def __call__(self, event: Any) -> None:
        plural = event.resource.plural
        if plural not in ("pods", "secrets"):
            return
        obj = event.obj
        status = obj.get("status") or {}
        deleting = bool((obj.get("metadata") or {}).get("deletionTimestamp"))
        self.events.append(
            (
                time.perf_counter(),
                plural,
                event.type,
                event.name,
                str(status.get("phase") or ""),
                bool(status.get("podIP")),
                deleting,
            )
        )

    def created(self, plural: str, name: str) -> float | None:
        for t, p, kind, n, *_ in list(self.events):
            if p == plural and n == name and kind == "ADDED":
                return t
        return None

    def running(self, name: str) -> float | None:
        for t, p, _kind, n, phase, has_ip, _ in list(self.events):
            if p == "pods" and n == name and phase == "Running" and has_ip:
                return t
        return None

    def terminal(self, name: str) -> float | None:
        """The first time the pod's phase was Succeeded/Failed (its kernel exited)."""
        for t, p, _kind, n, phase, *_ in list(self.events):
            if p == "pods" and n == name and phase in ("Succeeded", "Failed"):
                return t
        return None

    def deleted(self, name: str) -> float | None:
        for t, p, kind, n, *_ in list(self.events):
            if p == "pods" and n == name and kind == "DELETED":
                return t
        return None


class _QueueClock(concurrent.futures.ThreadPoolExecutor):
    """asyncio's default executor (same size: min(32, cpus + 4)), timing each call's
    wait in the queue and its run, by function (``asyncio.to_thread`` submits
    ``functools.partial(ctx.run, func, ...)``). Diagnostics only."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="asyncio")
        self.waits: dict[str, list[float]] = collections.defaultdict(list)
        self.runs: dict[str, list[float]] = collections.defaultdict(list)
        self.recording = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        inner = fn.args[0] if isinstance(fn, functools.partial) and fn.args else fn
        name = str(getattr(inner, "__qualname__", "") or getattr(inner, "__name__", "?"))
        t_submit = time.perf_counter()
        recording = self.recording

        def call() -> Any:
            t_run = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if recording:
                    self.waits[name].append(t_run - t_submit)
                    self.runs[name].append(time.perf_counter() - t_run)

        return super().submit(call)

    def summary(self, names: tuple[str, ...]) -> str:
        out = []
        for name in names:
            w, r = sorted(self.waits.get(name, [])), sorted(self.runs.get(name, []))
            if w:
                out.append(
                    f"{name.split('.')[-1]}: queue wait median {w[len(w) // 2]:.2f} s"
                    f" (max {w[-1]:.2f}), call median {r[len(r) // 2]:.2f} s"
                )
        return "; ".join(out)


@dataclass
class Cluster:
    server: Any
    runner: Any
    timeline: _Timeline
    podrunner: Any  # the module (labels)
    problems: list[str] = field(default_factory=list)

    def pods(self) -> list[dict[str, Any]]:
        items, _ = self.server.store.list("pods")
        return list(items)


def _runner_containers(runner_label: str) -> list[Any]:
    client = docker.from_env(timeout=60)
    try:
        return list(
            client.containers.list(all=True, filters={"label": runner_label}, ignore_removed=True)
        )
    finally:
        client.close()


def _remove_containers(containers: list[Any]) -> None:
    for c in containers:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            c.remove(force=True, v=True)


async def _thread(fn: Callable[..., Any], *args: Any, timeout: float = 120.0) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("k8s-watch-")]


@contextlib.asynccontextmanager
async def _cluster(label: str) -> AsyncIterator[Cluster]:
    """A started stand-in + pod runner; torn down and checked for leftovers on exit.

    Problems found on the way out are in ``cluster.problems`` (error rows).
    """
    apiserver, podrunner = _kube_modules()
    server = apiserver.StandInApiServer().start()
    timeline = _Timeline()
    unsubscribe = server.store.subscribe(timeline)
    runner = None
    cluster: Cluster | None = None
    try:
        runner = await _thread(
            lambda: podrunner.PodRunner(
                server, restart_backoff=0.2, image_retry=1.0, grace_cap=3.0
            ).start(),
            timeout=60,
        )
        progress(f"{label}: stand-in API server at {server.url}, pod runner {runner.runner_id}")
        cluster = Cluster(server, runner, timeline, podrunner)
        yield cluster
    finally:
        problems = cluster.problems if cluster is not None else []
        await _teardown(label, server, runner, podrunner, problems)
        unsubscribe()


async def _teardown(
    label: str, server: Any, runner: Any, podrunner: Any, problems: list[str]
) -> None:
    from provisioners.kubernetes import watcher as kube_watcher
    from provisioners.kubernetes.apiclient import forget_clients

    def pods() -> list[dict[str, Any]]:
        items, _ = server.store.list("pods")
        return list(items)

    # 1. No pod may remain (the kernels were shut down); give terminating ones time.
    await poll_until(lambda: not pods(), timeout=DRAIN_TIMEOUT, interval=0.2, label="pods gone")
    left = pods()
    if left:
        names = [p["metadata"]["name"] for p in left]
        progress(f"WARNING {label}: {len(left)} pod(s) left in the stand-in: {names[:5]}")
        problems.append(f"{len(left)} pod(s) left in the stand-in after shutdown: {names[:3]}")
        for p in left:
            with contextlib.suppress(Exception):
                server.store.delete(
                    "pods",
                    p["metadata"]["namespace"],
                    p["metadata"]["name"],
                    grace_period_seconds=0,
                )
    secrets, _ = server.store.list("secrets")
    if secrets:
        names = [s["metadata"]["name"] for s in secrets]
        problems.append(f"{len(secrets)} secret(s) left in the stand-in: {names[:3]}")

    # 2. No container of the pod runner may remain.
    if runner is not None:
        runner_label = f"{podrunner.LABEL_RUNNER}={runner.runner_id}"

        async def no_containers() -> bool:
            return not await _thread(_runner_containers, runner_label, timeout=60)

        try:
            await poll_until(
                no_containers, timeout=DRAIN_TIMEOUT, interval=0.5, label="runner containers gone"
            )
            leftovers = await _thread(_runner_containers, runner_label, timeout=60)
        except Exception as e:
            leftovers = []
            problems.append(f"could not list the pod runner's containers: {e!r}")
        if leftovers:
            names = [f"{c.name} ({c.status})" for c in leftovers]
            progress(f"WARNING {label}: {len(names)} pod runner container(s) left, removing")
            await _thread(_remove_containers, leftovers, timeout=120)
            problems.append(
                f"{len(names)} pod runner container(s) left after the pods were gone"
                f" (removed): {names[:3]}"
            )

    # 3. Our shared watches end, and the client cache goes, before the stand-in stops.
    kube_watcher.stop_all()
    forget_clients()

    if runner is not None:
        try:
            await _thread(runner.stop, timeout=TEARDOWN_TIMEOUT)
        except Exception as e:
            problems.append(f"pod runner stop failed: {e!r}")
        try:
            rest = await _thread(_runner_containers, runner_label, timeout=60)
        except Exception as e:
            rest = []
            problems.append(f"could not list the pod runner's containers: {e!r}")
        if rest:
            await _thread(_remove_containers, rest, timeout=120)
            problems.append(f"{len(rest)} pod runner container(s) left after runner.stop()")
    try:
        await _thread(server.stop, timeout=TEARDOWN_TIMEOUT)
    except Exception as e:
        problems.append(f"stand-in stop failed: {e!r}")

    def threads_left() -> list[str]:
        names = [t.name for t in server.threads() + _watch_threads()]
        if runner is not None:
            names += [t.name for t in runner.threads()]
        return names

    await poll_until(lambda: not threads_left(), timeout=15, interval=0.1, label="threads gone")
    if threads := threads_left():
        problems.append(f"threads left after teardown: {threads[:5]}")
    progress(
        f"{label}: stand-in and pod runner stopped"
        + ("" if not problems else f"; {len(problems)} problem(s)")
    )


def _write_kube_kernelspec(api_url: str, startup_timeout: float) -> None:
    data_dir = os.environ.get("JUPYTER_DATA_DIR", "")
    if not data_dir:
        raise RuntimeError("JUPYTER_DATA_DIR is not set (bench.run isolates it)")
    spec_dir = Path(data_dir) / "kernels" / KUBE_KERNEL
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (Kubernetes stand-in, benchmark)",
        "language": "python",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "kubernetes-provisioner",
                "config": {
                    "api_url": api_url,
                    "namespace": "default",
                    "image": IMAGE,
                    "startup_timeout": startup_timeout,
                },
            }
        },
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))


# ---------------------------------------------------------------------- requests


def _classify(rec: Any) -> str:
    """'GET pods (list)', 'GET pods (watch)', 'POST secrets', 'DELETE pods/{name}', ..."""
    parts = [p for p in rec.path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        rest = parts[3:]
    else:
        return f"{rec.method} {rec.path}"
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest:
        return f"{rec.method} {rec.path}"
    shape = rest[0] + ("/{name}" if len(rest) > 1 else "") + "".join(f"/{s}" for s in rest[2:])
    if len(rest) == 1 and rec.method == "GET":
        shape += " (watch)" if rec.watch else " (list)"
    return f"{rec.method} {shape}"


def _count(recs: list[Any]) -> collections.Counter[str]:
    return collections.Counter(_classify(r) for r in recs)


def _fmt_counts(counts: collections.Counter[str], per: int = 0) -> str:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if per:
        return ", ".join(f"{k}: {v} ({v / per:.2f}/kernel)" for k, v in items) or "none"
    return ", ".join(f"{k}: {v}" for k, v in items) or "none"


# ----------------------------------------------------------------------- kernels


async def _shutdown(km: Any, timeout: float = SHUTDOWN_TIMEOUT) -> None:
    """Shut a kernel down (politely, then by force); never raises."""
    try:
        if not km.has_kernel:
            return
        try:
            await asyncio.wait_for(km.shutdown_kernel(), timeout)
        except Exception as e:
            progress(f"polite shutdown of {km.kernel_id} failed ({e!r}); forcing")
            await asyncio.wait_for(km.shutdown_kernel(now=True), timeout)
    except Exception as e:
        progress(f"WARNING shutdown of kernel {getattr(km, 'kernel_id', '?')} failed: {e!r}")


@dataclass
class Started:
    """One kernel's start, as seen by the benchmark (perf_counter times)."""

    t0: float
    pod: str = ""
    started: float | None = None  # start_kernel() returned
    ready: float | None = None  # the client's wait_for_ready() returned
    error: str = ""


def _pod_name(km: Any) -> str:
    return str(getattr(getattr(km, "provisioner", None), "pod_name", "") or "")


async def _start_and_ready(km: Any, rec: Started, start_timeout: float) -> float:
    """start_kernel + wait_for_ready; seconds from ``rec.t0``. The client is stopped."""
    try:
        await asyncio.wait_for(km.start_kernel(), start_timeout)
    except BaseException as e:
        rec.error = f"start_kernel: {(str(e).splitlines() or [repr(e)])[0]}"
        raise
    finally:
        rec.pod = rec.pod or _pod_name(km)
    rec.started = time.perf_counter()
    try:
        kc = await _ready_client(km)
    except BaseException as e:
        rec.error = f"wait_for_ready: {e!r}{(await _diagnostics(km))[:300]}"
        raise
    rec.ready = time.perf_counter()
    kc.stop_channels()
    return rec.ready - rec.t0


@dataclass
class Phases:
    """Per-pod phase durations (s), from the stand-in's store events."""

    to_created: list[float] = field(default_factory=list)  # t0 -> POST pods stored
    to_secret: list[float] = field(default_factory=list)  # pod stored -> secret stored
    to_running: list[float] = field(default_factory=list)  # pod stored -> Running + podIP
    to_started: list[float] = field(default_factory=list)  # Running -> start_kernel returned
    to_ready: list[float] = field(default_factory=list)  # start_kernel -> wait_for_ready

    @classmethod
    def of(cls, timeline: _Timeline, recs: list[Started]) -> Phases:
        ph = cls()
        for r in recs:
            if not r.pod:
                continue
            created = timeline.created("pods", r.pod)
            secret = timeline.created("secrets", r.pod)
            running = timeline.running(r.pod)
            if created is not None:
                ph.to_created.append(created - r.t0)
                if secret is not None:
                    ph.to_secret.append(secret - created)
                if running is not None:
                    ph.to_running.append(running - created)
            if running is not None and r.started is not None:
                ph.to_started.append(r.started - running)
            if r.started is not None and r.ready is not None:
                ph.to_ready.append(r.ready - r.started)
        return ph

    def rows(self, bench: str, variant: str) -> list[Row]:
        return [
            measurement(NAME, f"{bench}: {label}", variant, samples, "s", note=note)
            for label, samples, note in (
                (
                    "phase start -> pod created",
                    self.to_created,
                    "start_kernel() called until the stand-in stored the pod (pre_launch,"
                    " the shared watch's ready(), POST pods through the thread pool)",
                ),
                (
                    "phase pod created -> Running",
                    self.to_running,
                    "pod runner: schedule, sandbox + kernel container on Docker (waits"
                    " for the Secret volume)",
                ),
                (
                    "phase Running -> start_kernel returned",
                    self.to_started,
                    "the watch event reaching the provisioner, then ipykernel boot in the"
                    " container and the provisioner's kernel_info probes",
                ),
                (
                    "phase start_kernel -> client ready",
                    self.to_ready,
                    "the benchmark's client: connect, kernel_info on shell, iopub",
                ),
            )
            if samples
        ]

    def summary(self) -> str:
        def med(xs: list[float]) -> str:
            return f"{sorted(xs)[len(xs) // 2]:.2f}s" if xs else "-"

        return (
            f"median phases: start->pod {med(self.to_created)}, pod->secret"
            f" {med(self.to_secret)}, pod->Running {med(self.to_running)}, Running->started"
            f" {med(self.to_started)}, started->ready {med(self.to_ready)}"
        )


def _failed_mounts(cluster: Cluster, pods: set[str]) -> int:
    items, _ = cluster.server.store.list("events")
    return sum(
        1
        for e in items
        if e.get("reason") == "FailedMount" and (e.get("involvedObject") or {}).get("name") in pods
    )


# ------------------------------------------------------------------------ 1. start


async def bench_start(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    bench = "kernel start-to-ready"
    await _docker_setup(ctx)  # engine + image; the docker variant's kernelspec
    owned = Owned()
    problems: list[str] = []
    samples: dict[str, list[float]] = {}
    recs: list[Started] = []
    phases = Phases()
    requests_note = ""
    async with _cluster("kubernetes/start") as cluster:
        _write_kube_kernelspec(cluster.server.url, START_STARTUP_TIMEOUT)
        store = owned.add_store(open_store(ctx.store_url("kubernetes-start.db")))
        try:

            def variant(kernel: str) -> Callable[[], Any]:
                async def one() -> float:
                    km = orchestrator.AsyncKernelManager(kernel_name=kernel, kernel_store=store)
                    rec = Started(time.perf_counter())
                    try:
                        return await _start_and_ready(km, rec, START_TIMEOUT)
                    finally:
                        owned.add_km(km)
                        if kernel == KUBE_KERNEL:
                            recs.append(rec)
                        await _shutdown(km)

                return one

            progress(f"start-to-ready: 1 warm-up + {p['start_reps']} reps each, interleaved")
            samples = await run_interleaved(
                "start-to-ready",
                {"docker": variant(DOCKER_KERNEL), "kubernetes": variant(KUBE_KERNEL)},
                p["start_reps"],
                warmup=1,
                max_seconds=180 + p["start_reps"] * 2 * (START_TIMEOUT + 30),
                op_timeout=START_TIMEOUT + 2 * SHUTDOWN_TIMEOUT + 60,
                report_every=max(1, p["start_reps"] // 3),
            )
            for name, s in samples.items():
                progress(f"start-to-ready {name}: " + ", ".join(f"{x:.3f}" for x in s))
            timed = recs[1:]  # the first kubernetes start was the warm-up
            phases = Phases.of(cluster.timeline, timed)
            progress(f"start-to-ready kubernetes: {phases.summary()}")
            reqs = list(cluster.server.requests)
            requests_note = (
                f"API requests over {len(recs)} kubernetes kernels (warm-up included):"
                f" {_fmt_counts(_count(reqs))}"
            )
            progress(requests_note)
        finally:
            store.close()
            if left := await _check_containers(owned, "kubernetes/start (docker variant)"):
                problems.append(left)
        problems += cluster.problems
    rows = comparison(
        NAME,
        bench,
        samples,
        "s",
        baseline="docker",
        note="",
    )
    for row in rows:
        if row.variant == "kubernetes":
            row.note = (
                "stand-in API server + pod runner (sandbox + kernel container per pod),"
                f" CurveZMQ to the pod IP; {phases.summary()}"
            )
        else:
            row.note = "Docker provisioner, same image, ports published on 127.0.0.1"
    rows += phases.rows(bench, "kubernetes")
    if requests_note and rows:
        rows[-1].note += f"; {requests_note}"
    rows += [error_row(NAME, bench, prob) for prob in problems]
    return rows


# ------------------------------------------------------------------- 2. concurrent


async def _sample(
    server: Any, out: list[tuple[int, int]], stop: asyncio.Event, seconds: float
) -> None:
    """``(open_watches, watch_connections_total)`` every SAMPLE_INTERVAL until ``stop``."""
    for _ in Bounded("watch sampler", int(seconds / SAMPLE_INTERVAL) + 1, seconds):
        out.append((int(server.open_watches), int(server.watch_connections_total)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_INTERVAL)
            return


def _watch_gaps(samples: list[tuple[int, int]]) -> tuple[int, int]:
    """Samples with no open watch: ``(during a re-open, unexplained)``.

    The provisioner's watch asks for ``timeoutSeconds=30``; the stand-in ends it then,
    and the client opens the next one a moment later. A 0 sample followed by a
    higher ``watch_connections_total`` at the next sample with a watch open is such a
    re-open; any other 0 is a real gap.
    """
    reopen = other = 0
    for i, (open_, total) in enumerate(samples):
        if open_:
            continue
        later = next((t for o, t in samples[i + 1 :] if o), None)
        if later is not None and later > total:
            reopen += 1
        else:
            other += 1
    return reopen, other


@dataclass
class _OneWatch(Target):
    """Never more than one watch, and none missing except while it re-opens."""

    unexplained_gaps: int = 0

    def evaluate(self, row: Row) -> str:
        base = super().evaluate(row)
        if base in ("ERROR", "n/a"):
            return base
        assert row.stats is not None
        ok = row.stats.max == 1 and self.unexplained_gaps == 0
        return "PASS" if ok else "MISS"


API_CALLS = ("CoreV1Api.create_namespaced_pod", "CoreV1Api.create_namespaced_secret")


def _shutdown_timeline(timeline: _Timeline, pods: list[str], t_sd: float) -> str:
    """When the pods reached a terminal phase (kernel exited) / left the API."""
    term, gone = [], []
    never = 0
    for pod in filter(None, pods):
        t, g = timeline.terminal(pod), timeline.deleted(pod)
        if t is not None and t >= t_sd:
            term.append(t - t_sd)
        elif g is not None:
            never += 1  # deleted while still Running: the kernel did not exit by itself
        if g is not None and g >= t_sd:
            gone.append(g - t_sd)

    def med(xs: list[float]) -> str:
        xs = sorted(xs)
        return f"median {xs[len(xs) // 2]:.1f} s, max {xs[-1]:.1f} s" if xs else "-"

    return (
        f"pod phase Succeeded/Failed (kernel exited) after {med(term)} ({len(term)} pods);"
        f" {never} pod(s) deleted before reaching it; pod gone from the API after {med(gone)}"
    )


async def bench_concurrent(ctx: Context) -> list[Row]:
    from provisioners.kubernetes import watcher as kube_watcher

    p = _params(ctx.quick)
    n = p["concurrent_n"]
    bench = f"{n} concurrent kubernetes starts"
    clock = _QueueClock()  # first, before any to_thread(): replaces the default executor
    asyncio.get_running_loop().set_default_executor(clock)
    await _docker_setup(ctx)
    problems: list[str] = []
    recs: list[Started] = []
    results: list[Any] = []
    watch_samples: list[tuple[int, int]] = []
    wall = shutdown_s = 0.0
    not_finished = 0
    start_counts: collections.Counter[str] = collections.Counter()
    shutdown_counts: collections.Counter[str] = collections.Counter()
    watch_conns = watchers = -1
    n_running = 0
    phases = Phases()
    failed_mounts = 0
    pods_after = -1
    executor_note = shutdown_note = ""
    async with _cluster("kubernetes/concurrent") as cluster:
        server = cluster.server
        _write_kube_kernelspec(server.url, CONCURRENT_STARTUP_TIMEOUT)
        store = open_store(ctx.store_url("kubernetes-concurrent.db"))
        zctx = zmq.asyncio.Context()
        kms: list[Any] = []
        stop_sampling = asyncio.Event()
        sampler: asyncio.Task[None] | None = None
        wc0 = server.watch_connections_total

        def new_km() -> Any:
            km = orchestrator.AsyncKernelManager(
                kernel_name=KUBE_KERNEL, kernel_store=store, context=zctx
            )
            kms.append(km)
            return km

        try:
            # One untimed start first: the shared watch opens (its initial list) and
            # Docker/the image are warm; the request log is then counted from here.
            progress("concurrent: 1 untimed warm-up start (opens the shared watch)")
            warm = new_km()
            try:
                await _start_and_ready(warm, Started(time.perf_counter()), START_TIMEOUT)
            finally:
                await _shutdown(warm)
            await poll_until(
                lambda: not cluster.pods(), timeout=DRAIN_TIMEOUT, interval=0.2, label="warm-up pod"
            )
            progress(
                f"concurrent: warm-up done; {server.open_watches} watch connection(s) open,"
                f" {len(server.requests)} API requests so far"
            )

            sampler = asyncio.create_task(
                _sample(
                    server,
                    watch_samples,
                    stop_sampling,
                    CONCURRENT_TIMEOUT + SHUTDOWN_ALL_TIMEOUT + 120,
                )
            )
            req0 = len(server.requests)
            wc0 = server.watch_connections_total
            progress(f"concurrent: starting {n} kubernetes kernels at once")
            clock.recording = True
            t0 = time.perf_counter()
            recs = [Started(t0) for _ in range(n)]
            tasks = [
                asyncio.create_task(_start_and_ready(new_km(), rec, CONCURRENT_START_TIMEOUT))
                for rec in recs
            ]
            _done, pending = await asyncio.wait(tasks, timeout=CONCURRENT_TIMEOUT)
            wall = time.perf_counter() - t0
            not_finished = len(pending)
            if pending:
                progress(f"WARNING concurrent: {len(pending)} starts not done in time; cancelling")
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=120)
            results = [
                None if t.cancelled() or not t.done() else (t.exception() or t.result())
                for t in tasks
            ]
            clock.recording = False
            executor_note = clock.summary(API_CALLS)
            progress(
                f"concurrent: default executor ({clock._max_workers} threads): {executor_note}"
            )
            req1 = len(server.requests)
            start_counts = _count(server.requests[req0:req1])
            watchers = kube_watcher.open_watchers()
            ready = sorted(r for r in results if isinstance(r, float))
            progress(
                f"concurrent: {len(ready)}/{n} ready, {n - len(ready)} failed/unfinished,"
                f" wall {wall:.2f}s; per kernel: " + ", ".join(f"{x:.1f}" for x in ready)
            )
            for rec in [r for r in recs if r.error][:5]:
                progress(f"  failed: {rec.error[:300]}")
            phases = Phases.of(cluster.timeline, recs)
            progress(f"concurrent: {phases.summary()}")
            failed_mounts = _failed_mounts(cluster, {r.pod for r in recs if r.pod})
            progress(
                f"concurrent: start-phase requests: {_fmt_counts(start_counts, n)};"
                f" FailedMount events (secret not yet there): {failed_mounts}"
            )
        finally:
            running = [km for km in kms if km.has_kernel]
            n_running = len(running)
            progress(f"concurrent: shutting down {len(running)} kernels concurrently")
            req_sd = len(server.requests)
            t_sd = time.perf_counter()
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(_shutdown(km) for km in kms)), SHUTDOWN_ALL_TIMEOUT
                )
            except Exception as e:
                progress(f"WARNING concurrent: shutdown: {e!r}")
                problems.append(f"concurrent shutdown did not finish: {e!r}")
            shutdown_s = time.perf_counter() - t_sd
            shutdown_counts = _count(server.requests[req_sd:])
            progress(
                f"concurrent: shutdown took {shutdown_s:.2f}s; requests:"
                f" {_fmt_counts(shutdown_counts, max(1, n_running))}"
            )
            await poll_until(
                lambda: not cluster.pods(), timeout=DRAIN_TIMEOUT, interval=0.2, label="pods gone"
            )
            pods_after = len(cluster.pods())
            shutdown_note = _shutdown_timeline(cluster.timeline, [r.pod for r in recs], t_sd)
            progress(f"concurrent: shutdown timeline: {shutdown_note}")
            stop_sampling.set()
            if sampler is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sampler, 5)
            watch_conns = server.watch_connections_total - wc0
            zctx.destroy(linger=0)
            store.close()
        # (the cluster's teardown: leftover pods/containers/threads -> problems)
    problems += cluster.problems

    ready = sorted(r for r in results if isinstance(r, float))
    failed = n - len(ready)
    errors = [r.error for r in recs if r.error]
    note = (
        f"{len(ready)}/{n} ready, {failed} failed ({not_finished} not done within"
        f" {CONCURRENT_TIMEOUT:g} s); startup_timeout {CONCURRENT_STARTUP_TIMEOUT:g} s;"
        f" concurrent shutdown {shutdown_s:.1f} s; pods left after shutdown: {pods_after}"
    )
    if errors:
        note += f"; first failure: {errors[0][:200]}"
    start_total = sum(v for k, v in start_counts.items() if "(watch)" not in k)
    sd_total = sum(v for k, v in shutdown_counts.items() if "(watch)" not in k)
    lists = start_counts["GET pods (list)"] + shutdown_counts["GET pods (list)"]
    polls = shutdown_counts["GET pods/{name}"]
    w_open = [float(o) for o, _ in watch_samples]
    w_min = min(w_open) if w_open else -1
    w_max = max(w_open) if w_open else -1
    reopen_gaps, other_gaps = _watch_gaps(watch_samples)
    rows = [
        *concurrent_start_rows(
            NAME,
            bench,
            "kubernetes",
            n,
            wall,
            ready,
            note=note,
            wall_note="until the last start finished or failed",
        ),
        measurement(
            NAME,
            f"{bench}: open watch connections",
            "kubernetes",
            w_open,
            "count",
            target=_OneWatch(
                "exactly 1 (max 1; 0 only while it re-opens)",
                "value_at_most",
                1,
                "max",
                unexplained_gaps=other_gaps,
            ),
            note=f"StandInApiServer.open_watches every {SAMPLE_INTERVAL:g} s from the first"
            f" start to the end of the shutdown: min {w_min:g}, max {w_max:g}; samples at 0:"
            f" {reopen_gaps} while the watch re-opened (timeoutSeconds=30, then a new"
            f" request), {other_gaps} otherwise; watch connections opened meanwhile:"
            f" {watch_conns}; PodWatcher objects open (watcher.open_watchers()): {watchers}",
        ),
        measurement(
            NAME,
            f"{bench}: API requests per kernel (start)",
            "kubernetes",
            [start_total / n],
            "count",
            note=f"stand-in request log, watch excluded: {_fmt_counts(start_counts, n)}",
        ),
        measurement(
            NAME,
            f"{bench}: API requests per kernel (shutdown)",
            "kubernetes",
            [sd_total / max(1, n_running)],
            "count",
            note=f"over {n_running} running kernels:"
            f" {_fmt_counts(shutdown_counts, max(1, n_running))}; GET pods/{{name}}:"
            " KubernetesProvisioner._delete_everything() confirming the pod is gone (it"
            " re-reads every 0.2 s until 404, up to 30 s); a 2nd DELETE pods/{name}:"
            " jupyter_client's SIGTERM (grace 10) when the kernel had not exited within"
            " shutdown_wait_time / 2, then cleanup's grace-0 delete",
        ),
        measurement(
            NAME,
            f"{bench}: pod list requests (GET, not watch)",
            "kubernetes",
            [float(lists)],
            "count",
            target=Target("0 (no list per kernel)", "value_at_most", 0),
            note=f"start + shutdown; single-pod reads (GET pods/{{name}}) in shutdown: {polls};"
            f" FailedMount events (pod before its Secret): {failed_mounts}",
        ),
        measurement(
            NAME,
            f"{bench}: concurrent shutdown",
            "kubernetes",
            [shutdown_s],
            "s",
            note=f"from the shutdown's start: {shutdown_note}",
        ),
    ]
    for call in API_CALLS:
        if clock.waits.get(call):
            rows.append(
                measurement(
                    NAME,
                    f"{bench}: executor queue wait, {call.split('.')[-1]}",
                    "kubernetes",
                    clock.waits[call],
                    "s",
                    note=f"asyncio.to_thread in KubernetesProvisioner._call: time queued in the"
                    f" loop's default executor ({clock._max_workers} threads) before the call"
                    f" ran; {executor_note}",
                )
            )
    rows += phases.rows(bench, "kubernetes")
    rows += [error_row(NAME, bench, prob) for prob in problems]
    return rows


BENCHMARKS = [
    Benchmark("start", "kernel start-to-ready, kubernetes (stand-in) vs docker", bench_start),
    Benchmark(
        "concurrent",
        f"{CONCURRENT_N} (quick {CONCURRENT_N_QUICK}) kubernetes kernels at once, one watch",
        bench_concurrent,
    ),
]
