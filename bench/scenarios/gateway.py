"""Gateway scenario: ``kernel-orchestrator serve`` vs stock Jupyter Server, over HTTP/WS.

Both servers run as subprocesses on loopback in the same run, serving the same
``python3`` kernelspec; the benchmark speaks only their REST API and kernel
WebSocket channels (JSON, the "legacy" protocol JupyterLab falls back to).

* ``start``      -- cold kernel start through the API: ``POST /api/kernels`` until
                    the REST call returns, and until the kernel answered an execute
                    of ``1`` over a fresh WebSocket (reply and idle status).
                    Interleaved ABBA, one untimed warm-up each. With a warm pool
                    (``serve --warm-pool python3=N``) a third server measures the
                    start served from the pool; without one, a placeholder row.
* ``throughput`` -- 10 kernels per server, 100 WebSocket clients per server (10 per
                    kernel, each its own connection) in worker processes, each
                    executing ``1`` in a loop for a bounded time. Blocks of a few
                    seconds, interleaved ABBA between the servers. Executes/s,
                    latency per execute (p50/p90/p99), and the CPU the server
                    process spent per execute.

Run as ``python -m bench.scenarios.gateway --worker`` this module is the load
generator of ``throughput`` (driven over stdin/stdout by the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import (
    Benchmark,
    Bounded,
    Context,
    Row,
    Target,
    abba,
    comparison,
    error_row,
    kernel_processes,
    measurement,
    percentile,
    progress,
    reap,
)

NAME = "gateway"
DESCRIPTION = (
    "kernel gateway over REST + WebSocket: cold/warm start, 100-client throughput"
    " (kernel-orchestrator serve vs stock jupyter_server)"
)

KERNEL = "python3"
CODE = "1"
CLI = str(Path(sys.executable).with_name("kernel-orchestrator"))
REPO = Path(__file__).resolve().parents[2]

# Targets (informational; see bench/README.md).
START_RATIO_TARGET = 1.1
THROUGHPUT_RATIO_TARGET = 0.9

# Time limits, seconds.
SERVER_UP_TIMEOUT = 90.0
START_TIMEOUT = 120.0  # one POST /api/kernels
WS_TIMEOUT = 60.0  # opening a kernel WebSocket (jupyter_server nudges the kernel first)
EXECUTE_TIMEOUT = 30.0
RESTART_EXECUTE_TIMEOUT = 10.0  # an execute after a restart not answered by then is lost
DELETE_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 30.0
QUIET_TIMEOUT = 30.0
WORKER_LIFETIME = 1800  # a load worker kills itself (SIGALRM) after this long, whatever happens

# Throughput shape.
N_KERNELS = 10
CLIENTS_PER_KERNEL = 10
# Load-generator processes per server. One asyncio process parsing 100 clients' traffic
# used ~0.6-0.9 of a core on the 2-core machine (see bench/README.md); two processes keep
# the client side from being the single-threaded bottleneck.
CLIENT_PROCS = int(os.environ.get("KO_BENCH_GATEWAY_CLIENT_PROCS", "2"))
WARM_POOL_SIZE = 2
# Path of a py-spy binary: profile each server during one throughput block (py-spy
# record --nonblocking, raw stacks in the run's tree, top functions in the progress log).
# Timings of a profiled run are not comparable.
PYSPY = os.environ.get("KO_BENCH_GATEWAY_PYSPY", "")


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {"start_reps": 3, "blocks": 2, "block_s": 2.5, "ramp_s": 2.0, "client_warmup": 3}
    return {"start_reps": 8, "blocks": 4, "block_s": 5.0, "ramp_s": 2.0, "client_warmup": 5}


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes (those still alive), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / _CLK_TCK


def _execute_message(msg_id: str, session: str) -> str:
    return json.dumps(
        {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "username": "bench",
                "session": session,
                "date": "",
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": {
                "code": CODE,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
            },
            "channel": "shell",
            "buffers": [],
        }
    )


async def ws_open(base: str, token: str, kernel_id: str, timeout: float) -> Any:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = base.replace("http://", "ws://") + (
        f"/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
    )
    request = HTTPRequest(
        url,
        headers={"Authorization": f"token {token}"},
        connect_timeout=timeout,
        request_timeout=timeout,
    )
    return await asyncio.wait_for(
        websocket_connect(request, max_message_size=64 * 1024 * 1024), timeout
    )


async def ws_execute(conn: Any, session: str, timeout: float) -> None:
    """One execute of CODE: request sent until its reply and its idle status arrived.

    Several clients may share the kernel, so every message not caused by this request
    (its parent msg_id) is skipped -- cheaply, by a substring test before parsing.
    """
    msg_id = uuid.uuid4().hex
    conn.write_message(_execute_message(msg_id, session))
    reply = idle = False
    deadline = time.monotonic() + timeout
    while not (reply and idle):
        raw = await asyncio.wait_for(conn.read_message(), max(0.001, deadline - time.monotonic()))
        if raw is None:
            raise ConnectionError("kernel websocket closed")
        if isinstance(raw, bytes) or msg_id not in raw:
            continue
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg.get("msg_type")
        if kind == "execute_reply":
            status = msg["content"].get("status")
            if status != "ok":
                raise RuntimeError(f"execute of {CODE!r} replied {status!r}")
            reply = True
        elif kind == "status" and msg["content"].get("execution_state") == "idle":
            idle = True


# ------------------------------------------------------------------------- servers


class Server:
    """A kernel server subprocess: ``ours`` (kernel-orchestrator serve) or ``stock``.

    Each has its own directory in the run's tree with its own Jupyter runtime dir (the
    kernels' connection files, so its kernel processes are found by that path), store
    (ours) and log.
    """

    def __init__(self, kind: str, label: str, root: Path, extra: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.label = label
        self.dir = root / f"server-{label}"
        self.runtime = self.dir / "runtime"
        self.store_url = f"sqlite:///{self.dir / 'store.db'}"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self.token = secrets.token_hex(24)  # never starts with "-" (argparse)
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: Any = None
        self.started_ids: set[str] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "KERNEL_ORCHESTRATOR_STORE": self.store_url,
            "KERNEL_ORCHESTRATOR_TOKEN": self.token,  # never in argv
        }

    async def start(self) -> None:
        from tornado.httpclient import AsyncHTTPClient

        self.runtime.mkdir(parents=True, mode=0o700)
        if self.kind == "ours":
            cmd = [
                CLI,
                "--store",
                self.store_url,
                "serve",
                "--port",
                str(self.port),
                "--allow-root",
                *self.extra,
            ]
        else:
            cmd = [
                sys.executable,
                "-m",
                "jupyter_server",
                "--no-browser",
                "--allow-root",
                f"--port={self.port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.dir}",
                *self.extra,
            ]
        self.http = AsyncHTTPClient(force_instance=True)
        with open(self.log, "ab") as log:
            # Own session: a Ctrl-C on the terminal reaches only bench.run, whose
            # finally blocks stop the server in order (kernels first).
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._env(),
                cwd=self.dir,
                start_new_session=True,
            )
        path = "/readyz" if self.kind == "ours" else "/api/status"
        for _ in Bounded(f"{self.label} up", int(SERVER_UP_TIMEOUT / 0.2) + 1, SERVER_UP_TIMEOUT):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} server exited with {self.proc.returncode}; log: {self.log}"
                )
            with contextlib.suppress(Exception):
                code, _ = await self.request("GET", path, timeout=5, raise_error=False)
                if code == 200:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.label} server not ready within {SERVER_UP_TIMEOUT}s; {self.log}")

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = 30.0,
        raise_error: bool = True,
    ) -> tuple[int, Any]:
        from tornado.httpclient import HTTPRequest

        request = HTTPRequest(
            self.base + path,
            method=method,
            headers={"Authorization": f"token {self.token}"},
            body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
            connect_timeout=timeout,
            request_timeout=timeout,
        )
        response = await asyncio.wait_for(self.http.fetch(request, raise_error=False), timeout + 5)
        if raise_error and response.code >= 400:
            raise RuntimeError(
                f"{self.label}: {method} {path} -> {response.code} {response.body[:300]!r}"
            )
        text = response.body.decode() if response.body else ""
        try:
            return response.code, json.loads(text) if text else None
        except ValueError:
            return response.code, text

    async def start_kernel(self) -> str:
        _, model = await self.request(
            "POST", "/api/kernels", {"name": KERNEL}, timeout=START_TIMEOUT
        )
        kernel_id = str(model["id"])
        self.started_ids.add(kernel_id)
        return kernel_id

    async def delete_kernel(self, kernel_id: str) -> None:
        code, body = await self.request(
            "DELETE", f"/api/kernels/{kernel_id}", timeout=DELETE_TIMEOUT, raise_error=False
        )
        if code not in (204, 404):
            raise RuntimeError(f"{self.label}: DELETE kernel {kernel_id} -> {code} {body!r}")
        self.started_ids.discard(kernel_id)

    def kernel_pids(self) -> list[int]:
        return [pid for pid, _ in kernel_processes(str(self.runtime))]

    async def pooled(self) -> int | None:
        """Kernels waiting in the warm pool, from /metrics (None if not exposed)."""
        with contextlib.suppress(Exception):
            code, text = await self.request("GET", "/metrics", timeout=10, raise_error=False)
            if code == 200 and isinstance(text, str):
                found = re.findall(
                    r'^kernel_orchestrator_kernels\{[^}]*state="pooled"[^}]*\}\s+([0-9.e+]+)',
                    text,
                    re.M,
                )
                return int(sum(float(x) for x in found))
        return None

    async def stop(self) -> list[str]:
        """Shut down every kernel, stop the server, verify no kernel process is left.

        Returns problems (empty: clean). Ours detaches its kernels when stopped, so they
        are deleted over the API first (and any the API does not list -- a warm pool's
        -- are shut down through the store with the CLI afterwards).
        """
        problems: list[str] = []
        if self.proc is None:
            return problems
        if self.proc.poll() is None and self.http is not None:
            ids = set(self.started_ids)
            with contextlib.suppress(Exception):
                code, listed = await self.request("GET", "/api/kernels", timeout=15)
                if code == 200 and isinstance(listed, list):
                    ids |= {str(k["id"]) for k in listed}
            results = await asyncio.gather(
                *(self.delete_kernel(k) for k in ids), return_exceptions=True
            )
            problems += [f"{self.label}: {r!r}" for r in results if isinstance(r, BaseException)]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"{self.label}: server did not stop on SIGTERM; killed")
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)
        if self.kind == "ours":
            # Kernels the API did not list (pooled) outlive the gateway by design.
            with contextlib.suppress(Exception):
                cli = await asyncio.create_subprocess_exec(
                    CLI,
                    "--store",
                    self.store_url,
                    "shutdown",
                    "--all",
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=self._env(),
                )
                try:
                    await asyncio.wait_for(cli.wait(), 90)
                except asyncio.TimeoutError:
                    cli.kill()
                    await cli.wait()
        if self.http is not None:
            self.http.close()
            self.http = None
        gone = False
        for _ in Bounded(f"{self.label} kernels gone", 100, 10):
            if not self.kernel_pids():
                gone = True
                break
            await asyncio.sleep(0.1)
        if not gone:
            left = self.kernel_pids()
            still = reap(left)
            problems.append(
                f"{self.label}: {len(left)} kernel process(es) left after stopping the server"
                f" (killed{'; still alive: ' + str(still) if still else ''})"
            )
        return problems


async def stop_all(servers: list[Server]) -> list[str]:
    results = await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)
    problems: list[str] = []
    for r in results:
        if isinstance(r, BaseException):
            problems.append(repr(r))
        else:
            problems += r
    return problems


async def quiesce(pids_of: Callable[[], list[int]], label: str) -> bool:
    """Wait (bounded) until the processes use < 10% of a core: no kernel still booting."""
    for _ in Bounded(f"{label} quiet", 60, QUIET_TIMEOUT):
        pids = pids_of()
        before = cpu_seconds(pids)
        await asyncio.sleep(0.5)
        if cpu_seconds(pids) - before < 0.05:
            return True
    progress(f"WARNING {label}: still busy after {QUIET_TIMEOUT:g}s; measuring anyway")
    return False


# ------------------------------------------------------------------------ 1. start


async def _one_start(server: Server, extra: dict[str, list[float]]) -> float:
    """POST /api/kernels -> WebSocket -> execute; returns the total, records the parts."""
    conn = None
    kernel_id = None
    try:
        t0 = time.perf_counter()
        _, model = await server.request(
            "POST", "/api/kernels", {"name": KERNEL}, timeout=START_TIMEOUT
        )
        t_rest = time.perf_counter() - t0
        kernel_id = str(model["id"])
        server.started_ids.add(kernel_id)
        conn = await ws_open(server.base, server.token, kernel_id, WS_TIMEOUT)
        t_ws = time.perf_counter() - t0
        await ws_execute(conn, uuid.uuid4().hex, EXECUTE_TIMEOUT)
        total = time.perf_counter() - t0
    finally:
        if conn is not None:
            conn.close()
        if kernel_id is not None:
            await server.delete_kernel(kernel_id)
    extra.setdefault("rest", []).append(t_rest)
    extra.setdefault("ws", []).append(t_ws)
    return total


def _warm_pool_option() -> str | None:
    """The gateway's warm-pool option, if ``kernel-orchestrator serve --help`` lists one."""
    try:
        out = subprocess.run(
            [CLI, "serve", "--help"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(--warm[-_]?pool\S*)", out)
    return m.group(1) if m else None


async def _pool_full(server: Server, size: int) -> bool:
    """Pool refilled and idle: /metrics (if it says) shows ``size`` pooled kernels,
    exactly ``size`` kernel processes run (none handed out: each rep deletes its
    kernel), and nothing is busy booting."""

    async def full() -> bool:
        if len(server.kernel_pids()) != size:
            return False
        pooled = await server.pooled()
        return pooled is None or pooled >= size

    for _ in Bounded("warm pool refill", 600, START_TIMEOUT):
        if await full():
            break
        await asyncio.sleep(0.2)
    else:
        return False
    return await quiesce(
        lambda: [*server.kernel_pids(), *([server.pid] if server.pid else [])], "warm pool"
    )


async def bench_start(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    reps = p["start_reps"]
    option = await asyncio.to_thread(_warm_pool_option)
    servers = {
        "stock": Server("stock", "start-stock", ctx.root),
        "ours": Server("ours", "start-ours", ctx.root),
    }
    if option == "--warm-pool":
        servers["ours-warm"] = Server(
            "ours", "start-ours-warm", ctx.root, (option, f"{KERNEL}={WARM_POOL_SIZE}")
        )
    parts: dict[str, dict[str, list[float]]] = {name: {} for name in servers}
    totals: dict[str, list[float]] = {name: [] for name in servers}
    warm_error = ""
    problems: list[str] = []
    quiet_misses = 0

    def all_pids() -> list[int]:
        pids = [s.pid for s in servers.values() if s.pid]
        return [*pids, *(p for s in servers.values() for p in s.kernel_pids())]

    try:
        progress(f"starting servers: {', '.join(servers)}")
        await asyncio.gather(*(s.start() for s in servers.values()))
        if "ours-warm" in servers and not await _pool_full(servers["ours-warm"], WARM_POOL_SIZE):
            warm_error = "the warm pool did not fill (or stay quiet) in time"
            progress(f"WARNING {warm_error}; measuring it anyway")

        async def rep(name: str, record: bool) -> None:
            nonlocal quiet_misses, warm_error
            if not await quiesce(all_pids, "servers"):
                quiet_misses += 1
            try:
                total = await asyncio.wait_for(
                    _one_start(servers[name], parts[name] if record else {}),
                    START_TIMEOUT + WS_TIMEOUT + EXECUTE_TIMEOUT + DELETE_TIMEOUT,
                )
            except Exception as e:
                if name != "ours-warm":
                    raise
                warm_error = f"warm start failed: {e!r}"
                progress(f"WARNING {warm_error}; dropping the warm variant")
                return
            if record:
                totals[name].append(total)
            if name == "ours-warm":
                # Refill happens now, untimed, so it never overlaps another variant's rep.
                await _pool_full(servers[name], WARM_POOL_SIZE)

        names = list(servers)
        progress(f"cold start: 1 warm-up + {reps} reps each, interleaved ({', '.join(names)})")
        for i in Bounded("start reps", reps + 1, 120 + (reps + 1) * 90):
            for name in abba(i, names):
                if name == "ours-warm" and warm_error.startswith("warm start failed"):
                    continue
                await rep(name, record=i > 0)
            if i > 0:
                progress(
                    f"start: {i}/{reps}  "
                    + "  ".join(f"{n}={totals[n][-1]:.3f}s" for n in names if totals[n])
                )
    finally:
        problems = await stop_all(list(servers.values()))

    cold = {"stock": totals["stock"], "ours": totals["ours"]}
    rest = {"stock": parts["stock"].get("rest", []), "ours": parts["ours"].get("rest", [])}
    ws_med = {n: statistics_median(v.get("ws", [])) for n, v in parts.items()}
    note = "1 untimed warm-up start each; WebSocket open (after POST) median: " + ", ".join(
        f"{n} {ws_med[n]:.3f}s" for n in ws_med
    )
    if quiet_misses:
        note += f"; {quiet_misses} rep(s) began with a server/kernel still busy"
    rows = comparison(
        NAME,
        "start: POST /api/kernels returns",
        rest,
        "s",
        target=None,
        note="the REST call alone (what a warm pool shrinks)",
    )
    rows += comparison(
        NAME,
        "start: POST to first execute reply",
        cold,
        "s",
        target=Target.ratio_at_most(START_RATIO_TARGET),
        note=note,
    )
    rows += _warm_rows(
        option, totals.get("ours-warm", []), parts.get("ours-warm", {}), cold, rest, warm_error
    )
    for problem in problems:
        rows.append(error_row(NAME, "start: cleanup", problem))
    return rows


def _warm_rows(
    option: str | None,
    totals: list[float],
    parts: dict[str, list[float]],
    cold: dict[str, list[float]],
    rest: dict[str, list[float]],
    error: str,
) -> list[Row]:
    if option != "--warm-pool":
        why = (
            "no warm-pool option in `kernel-orchestrator serve --help`"
            if option is None
            else f"unknown warm-pool option {option!r} (expected --warm-pool KERNELSPEC=N)"
        )
        return [
            Row(
                NAME,
                "start: warm pool",
                "ours-warm",
                "s",
                result="n/a",
                note=f"warm pool: not available ({why})",
            )
        ]
    if not totals:
        return [error_row(NAME, "start: warm pool", error or "no warm samples")]
    rows: list[Row] = []
    for bench_name, base, samples in (
        ("start: POST /api/kernels returns", rest["stock"], parts.get("rest", [])),
        ("start: POST to first execute reply", cold["stock"], totals),
    ):
        got = comparison(NAME, bench_name, {"stock": base, "ours-warm": samples}, "s")
        row = got[1]
        row.note = (
            f"served from the warm pool (--warm-pool {KERNEL}={WARM_POOL_SIZE}, refilled and"
            " idle before each rep); ratio vs stock cold"
        )
        if error:
            row.note += f"; {error}"
        rows.append(row)
    return rows


# -------------------------------------------------------------------- 2. throughput


class LoadWorker:
    """One load-generator subprocess (``python -m bench.scenarios.gateway --worker``)."""

    def __init__(self, label: str, log: Path) -> None:
        self.label = label
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, config: dict[str, Any], timeout: float) -> dict[str, Any]:
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.scenarios.gateway",
                "--worker",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                limit=256 * 1024 * 1024,
                start_new_session=True,
            )
        await self.send(config)
        return await self.receive(timeout)

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        await self.proc.stdin.drain()

    async def receive(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"load worker {self.label} exited; see {self.log}")
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"load worker {self.label}: {result['error']}")
        return result

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            await self.send({"cmd": "quit"})
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


async def _start_kernels(server: Server, n: int) -> list[str]:
    ids: list[str] = []
    for _ in Bounded(f"{server.label} kernels", n, 60 + n * 30, on_timeout="raise"):
        batch = min(5, n - len(ids))
        if batch <= 0:
            break
        ids += await asyncio.gather(*(server.start_kernel() for _ in range(batch)))
        progress(f"  {server.label}: {len(ids)}/{n} kernels")
    return ids


async def connect_clients(
    ctx: Context,
    name: str,
    base: str,
    token: str,
    kernels: list[str],
    warmup: int,
    per_kernel: int = CLIENTS_PER_KERNEL,
) -> list[LoadWorker]:
    """The load: ``per_kernel`` WebSocket clients per kernel at ``base``, spread over
    CLIENT_PROCS worker processes, connected and warmed up."""
    n_clients = len(kernels) * per_kernel
    clients = [kernels[i % len(kernels)] for i in range(n_clients)]
    workers = [
        LoadWorker(f"{name}-{w}", ctx.root / f"load-{name}-{w}.log") for w in range(CLIENT_PROCS)
    ]
    try:
        ready = await asyncio.gather(
            *(
                worker.start(
                    {
                        "base": base,
                        "token": token,
                        "kernels": clients[w::CLIENT_PROCS],
                        "warmup": warmup,
                    },
                    timeout=240,
                )
                for w, worker in enumerate(workers)
            )
        )
    except BaseException:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        raise
    connected = sum(r["connected"] for r in ready)
    if connected != n_clients:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        raise RuntimeError(f"{name}: only {connected}/{n_clients} clients connected")
    return workers


async def bench_throughput(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    blocks, block_s, ramp_s = p["blocks"], p["block_s"], p["ramp_s"]
    n_clients = N_KERNELS * CLIENTS_PER_KERNEL
    servers = {
        "stock": Server("stock", "load-stock", ctx.root),
        "ours": Server("ours", "load-ours", ctx.root),
    }
    workers: dict[str, list[LoadWorker]] = {name: [] for name in servers}
    lat: dict[str, list[float]] = {name: [] for name in servers}
    rate: dict[str, list[float]] = {name: [] for name in servers}
    p99s: dict[str, list[float]] = {name: [] for name in servers}
    server_cpu: dict[str, list[float]] = {name: [] for name in servers}
    kernel_cpu: dict[str, list[float]] = {name: [] for name in servers}
    client_cpu: dict[str, list[float]] = {name: [] for name in servers}
    errors: dict[str, int] = {name: 0 for name in servers}
    first_error: dict[str, str] = {name: "" for name in servers}
    problems: list[str] = []
    kpids: dict[str, list[int]] = {}

    def all_pids() -> list[int]:
        pids = [s.pid for s in servers.values() if s.pid]
        return [*pids, *(p for s in servers.values() for p in s.kernel_pids())]

    try:
        progress("starting servers: stock, ours")
        await asyncio.gather(*(s.start() for s in servers.values()))
        for name, server in servers.items():
            kernels = await _start_kernels(server, N_KERNELS)
            progress(
                f"  {name}: {n_clients} clients in {CLIENT_PROCS} process(es), connecting and"
                f" warming up ({p['client_warmup']} executes each)"
            )
            workers[name] = await connect_clients(
                ctx, name, server.base, server.token, kernels, p["client_warmup"]
            )
            kpids[name] = server.kernel_pids()
            if len(kpids[name]) != N_KERNELS:
                raise RuntimeError(
                    f"{name}: {len(kpids[name])} kernel processes found, expected {N_KERNELS}"
                )

        names = list(servers)
        progress(
            f"throughput: {blocks} blocks of {block_s:g}s each, interleaved,"
            f" {n_clients} clients x '{CODE}'"
        )
        for i in Bounded("throughput blocks", blocks, 60 + blocks * 2 * (block_s + 120)):
            for name in abba(i, names):
                await quiesce(all_pids, "servers")
                server = servers[name]
                start = time.monotonic() + 0.3
                measure_from = start + ramp_s
                end = measure_from + block_s
                cpu0 = cpu_seconds([server.pid] if server.pid else [])
                k0 = cpu_seconds(kpids[name])
                spy = None
                if PYSPY and i == min(1, blocks - 1) and server.pid:
                    spy = await _pyspy_start(
                        server.pid, ramp_s + block_s, ctx.root / f"pyspy-{name}.txt"
                    )
                for worker in workers[name]:
                    await worker.send(
                        {"cmd": "go", "start": start, "from": measure_from, "end": end}
                    )
                results = await asyncio.gather(
                    *(w.receive(ramp_s + block_s + EXECUTE_TIMEOUT + 30) for w in workers[name])
                )
                if spy is not None:
                    await _pyspy_finish(spy, ctx.root / f"pyspy-{name}.txt", name)
                # Every worker waits for its in-flight executes before answering, so the
                # server and kernels are idle again: their CPU is this block's.
                cpu = cpu_seconds([server.pid] if server.pid else []) - cpu0
                kcpu = cpu_seconds(kpids[name]) - k0
                samples = [x for r in results for x in r["lat"]]
                count = sum(r["completed"] for r in results)  # completed in the window
                done = sum(r["done"] for r in results)  # all, ramp and drain included
                errors[name] += sum(r["errors"] for r in results)
                first_error[name] = first_error[name] or next(
                    (r["first_error"] for r in results if r["first_error"]), ""
                )
                rate[name].append(count / block_s)
                lat[name] += samples
                p99s[name].append(percentile(sorted(samples), 99) if samples else math.nan)
                server_cpu[name].append(cpu / done if done else math.nan)
                kernel_cpu[name].append(kcpu / done if done else math.nan)
                wall = sum(r["wall"] for r in results) / len(results)
                client_cpu[name].append(sum(r["cpu"] for r in results) / wall)
                progress(
                    f"  block {i + 1}/{blocks} {name}: {count / block_s:.0f} executes/s,"
                    f" p50 {percentile(sorted(samples), 50) * 1e3:.1f} ms,"
                    f" server CPU {cpu / wall:.2f} cores, kernels {kcpu / wall:.2f},"
                    f" clients {client_cpu[name][-1]:.2f}"
                )
    finally:
        for ws in workers.values():
            await asyncio.gather(*(w.stop() for w in ws), return_exceptions=True)
        problems = await stop_all(list(servers.values()))

    label = f"{n_clients} clients x {N_KERNELS} kernels"
    rows = []
    for name in servers:
        if not rate[name]:
            raise RuntimeError(f"no throughput samples for {name}")
    # executes/s: samples are already rates (the "count" unit is not scaled).
    tput = comparison(
        NAME,
        f"{label}: executes/s",
        rate,
        "count",
        target=Target.ratio_at_least(THROUGHPUT_RATIO_TARGET),
        note=(
            f"{blocks} blocks x {block_s:g}s per server, ABBA; completed executes per second"
            f" of all {n_clients} clients; {CLIENT_PROCS} load process(es) per server"
        ),
    )
    for row in tput:
        row.unit = "exec/s"
        cores = statistics_median(client_cpu[row.variant])
        row.note = (row.note + "; " if row.note else "") + (
            f"{row.variant}: load generator {cores:.2f} cores, errors {errors[row.variant]}"
        )
        if row.variant == "ours":
            row.note += f"; paired block ratio {paired(rate):.3f}"
    rows += tput
    lrows = comparison(NAME, f"{label}: execute latency", lat, "ms")
    for row in lrows:
        srt = sorted(row.samples)
        row.note = (
            f"p50 {percentile(srt, 50):.1f} ms, p99 {percentile(srt, 99):.1f} ms"
            " (all blocks' executes)"
        )
    rows += lrows
    prows = comparison(NAME, f"{label}: latency p99 per block", p99s, "ms")
    rows += prows
    crows = comparison(NAME, f"{label}: server CPU per execute", server_cpu, "ms")
    for row in crows:
        row.note = (
            f"kernels' CPU per execute {statistics_median(kernel_cpu[row.variant]) * 1e3:.2f}"
            f" ms (all {N_KERNELS})"
        )
        if row.variant == "ours":
            row.note += f"; paired block ratio {paired(server_cpu):.3f}"
    rows += crows
    for name, n_err in errors.items():
        if n_err:
            rows.append(
                error_row(
                    NAME,
                    f"{label}: executes/s",
                    f"{name}: {n_err} client(s) failed: {first_error[name]}",
                )
            )
    for problem in problems:
        rows.append(error_row(NAME, "throughput: cleanup", problem))
    return rows


async def _pyspy_start(pid: int, seconds: float, out: Path) -> Any:
    return await asyncio.create_subprocess_exec(
        PYSPY,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, math.ceil(seconds))),
        "--rate",
        "200",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(out),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _pyspy_finish(spy: Any, out: Path, label: str) -> None:
    try:
        await asyncio.wait_for(spy.wait(), 60)
    except asyncio.TimeoutError:
        spy.kill()
        await spy.wait()
        return
    with contextlib.suppress(OSError):
        summary = pyspy_summary(out.read_text())
        out.with_suffix(".top.txt").write_text(summary)
        progress(f"py-spy {label} ({out}):\n{summary}")


def pyspy_summary(raw: str, top: int = 25) -> str:
    """Top functions of py-spy's raw (collapsed) stacks: self and inclusive sample shares."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = ours = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        # below the event loop, any frame of this repository's code (not its entry point)
        loop_at = max((i for i, f in enumerate(frames) if "_run_once" in f), default=0)
        if any(re.search(r"\((orchestrator|provisioners)/", f) for f in frames[loop_at:]):
            ours += n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    if not total:
        return "(no samples)"
    lines = [
        f"{total} samples; {100 * ours / total:.1f}% with kernel-orchestrator code on the"
        " stack below the event loop; self %, inclusive %, function (file)"
    ]
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  self {100 * n / total:5.1f}%  incl {100 * incl[f] / total:5.1f}%  {f}")
    lines.append("inclusive (top):")
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  incl {100 * n / total:5.1f}%  {f}")
    return "\n".join(lines)


def paired(values: dict[str, list[float]]) -> float:
    """Median over blocks of ours / stock, block by block (adjacent in time, ABBA)."""
    return statistics_median(
        [o / b for o, b in zip(values["ours"], values["stock"], strict=False) if b]
    )


async def bench_restart(ctx: Context) -> list[Row]:
    """A client keeps its WebSocket while another client restarts the kernel over REST
    (as JupyterLab does when the restart came from elsewhere), then executes at once.
    Counted: executes that never completed (reply and idle) within RESTART_EXECUTE_TIMEOUT;
    timed: restart returned to the execute answered."""
    rounds = 10 if ctx.quick else 40
    servers = {name: Server(name, f"restart-{name}", ctx.root) for name in ("stock", "ours")}
    answered: dict[str, list[float]] = {name: [] for name in servers}
    lost = dict.fromkeys(servers, 0)
    sockets: dict[str, Any] = {}
    kernels: dict[str, str] = {}
    problems: list[str] = []
    try:
        await asyncio.gather(*(s.start() for s in servers.values()))
        for name, server in servers.items():
            kernels[name] = await server.start_kernel()
            sockets[name] = await ws_open(server.base, server.token, kernels[name], WS_TIMEOUT)
            await ws_execute(sockets[name], uuid.uuid4().hex, EXECUTE_TIMEOUT)
        progress(f"restart: {rounds} restarts each, interleaved (stock, ours)")
        session = uuid.uuid4().hex
        for i in Bounded("restart rounds", rounds, rounds * 2 * (START_TIMEOUT + 10)):
            for name in abba(i, list(servers)):
                server = servers[name]
                await server.request(
                    "POST", f"/api/kernels/{kernels[name]}/restart", timeout=START_TIMEOUT
                )
                began = time.monotonic()
                try:
                    await ws_execute(sockets[name], session, RESTART_EXECUTE_TIMEOUT)
                    answered[name].append(time.monotonic() - began)
                except (asyncio.TimeoutError, TimeoutError):
                    lost[name] += 1
                    # A fresh socket for the next round, as a user reloading would.
                    sockets[name].close()
                    sockets[name] = await ws_open(
                        server.base, server.token, kernels[name], WS_TIMEOUT
                    )
            counts = "  ".join(f"{n}={lost[n]}" for n in lost)
            progress(f"restart: {i + 1}/{rounds}  lost {counts}")
    finally:
        for conn in sockets.values():
            conn.close()
        problems = await stop_all(list(servers.values()))
    bench = "restart elsewhere, kept WebSocket"
    rows = comparison(
        NAME,
        f"{bench}: restart to first execute answered",
        answered,
        "s",
        note=f"{rounds} rounds each; lost executes are not timed",
    )
    for name in servers:
        rows.append(
            measurement(
                NAME,
                f"{bench}: lost first executes (of {rounds})",
                name,
                [float(lost[name])],
                "count",
                target=Target.at_most(0, "lost") if name == "ours" else None,
            )
        )
    for problem in problems:
        rows.append(error_row(NAME, "restart: cleanup", problem))
    return rows


def statistics_median(values: list[float]) -> float:
    good = sorted(v for v in values if not math.isnan(v))
    return percentile(good, 50) if good else math.nan


BENCHMARKS = [
    Benchmark(
        "start",
        "cold (and warm-pool) kernel start over REST + WebSocket, ours vs stock jupyter_server",
        bench_start,
    ),
    Benchmark(
        "throughput",
        f"{N_KERNELS} kernels, {N_KERNELS * CLIENTS_PER_KERNEL} WebSocket clients executing"
        f" '{CODE}': executes/s, latency, server CPU",
        bench_throughput,
    ),
    Benchmark(
        "restart",
        "first execute on a kept WebSocket after a restart done elsewhere: lost executes"
        " and time to answer, ours vs stock jupyter_server",
        bench_restart,
    ),
]


# ---------------------------------------------------------------------- load worker


async def _worker_main() -> None:
    loop = asyncio.get_running_loop()

    async def read() -> dict[str, Any]:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            raise SystemExit(0)  # the benchmark went away
        obj: dict[str, Any] = json.loads(line)
        return obj

    def write(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    config = await read()
    conns: list[tuple[Any, str]] = []
    try:
        opened = await asyncio.gather(
            *(ws_open(config["base"], config["token"], k, WS_TIMEOUT) for k in config["kernels"])
        )
        conns = [(c, uuid.uuid4().hex) for c in opened]

        async def warm(conn: Any, session: str) -> None:
            for _ in range(config["warmup"]):
                await ws_execute(conn, session, EXECUTE_TIMEOUT)

        await asyncio.gather(*(warm(c, s) for c, s in conns))
    except Exception as e:
        write({"error": f"setup: {e!r}"})
        return
    write({"connected": len(conns)})

    for _ in range(10_000):
        cmd = await read()
        if cmd.get("cmd") != "go":
            break
        start, measure_from, end = float(cmd["start"]), float(cmd["from"]), float(cmd["end"])
        lat: list[float] = []
        errs: list[str] = []
        done: list[float] = []  # completion times

        async def client(
            conn: Any,
            session: str,
            start: float,
            measure_from: float,
            end: float,
            lat: list[float],
            errs: list[str],
            done: list[float],
        ) -> None:
            # Load from ``start``; executes *sent* in [measure_from, end) are the latency
            # samples (each waited for, however long it takes); none is sent after end.
            await asyncio.sleep(max(0.0, start - time.monotonic()))
            for _ in range(1_000_000):
                t0 = time.monotonic()
                if t0 >= end:
                    return
                try:
                    await ws_execute(conn, session, EXECUTE_TIMEOUT)
                except Exception as e:
                    errs.append(repr(e))
                    return
                t1 = time.monotonic()
                done.append(t1)
                if t0 >= measure_from:
                    lat.append(round(t1 - t0, 7))

        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.gather(
            *(client(c, s, start, measure_from, end, lat, errs, done) for c, s in conns)
        )
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        write(
            {
                "lat": lat,
                "done": len(done),
                "completed": sum(1 for t in done if measure_from <= t <= end),
                "wall": wall,
                "errors": len(errs),
                "first_error": errs[0] if errs else "",
                "cpu": cpu,
            }
        )
    for conn, _ in conns:
        conn.close()


def worker() -> None:
    if hasattr(signal, "alarm"):
        signal.alarm(WORKER_LIFETIME)  # never outlive a lost benchmark by much
    asyncio.run(_worker_main())


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        raise SystemExit("usage: python -m bench.scenarios.gateway --worker (used by bench.run)")
