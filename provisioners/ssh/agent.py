"""One remote agent per (host, remote user, Python): poll, signal and clean up every
kernel on that host without starting a remote process per request.

A one-shot launcher per poll costs the host a new SSH session and a new Python
every few seconds per kernel (50 sessions in 30 s for five idle kernels). Instead the
launcher runs once in agent mode, on one session channel of the host's shared SSH
connection, and answers JSON requests line by line. Status requests of all kernels
on the host are batched: one ``statuses`` request answers every poll made within
``STATUS_MAX_AGE`` seconds, so the agent's load does not grow with the number of
kernels' restarters. Restarters that subscribe (:meth:`RemoteAgent.watch`) are told of
a change by one refresher per agent that asks every ``WATCH_INTERVAL`` seconds, instead
of asking on a timer each.

The agent lives as long as the SSH connection (stdin closes with it, and it exits);
if it dies or the connection is rebuilt, the next request starts a new one. While
the connection is down a request fails with :class:`SSHError`, which callers report
as "unknown", never as "dead".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import logging
import threading
import time
from typing import Any

import paramiko

from orchestrator.executors import executor, run_blocking
from orchestrator.forks import reset_in_child
from orchestrator.tunnels.ssh import SSHConnection
from orchestrator.tunnels.ssh.connection import SSHError

from ..common.refresher import Refresher
from .remote import RemoteError, launcher_command, launcher_stdin

log = logging.getLogger("kernel-orchestrator.ssh")

STATUS_MAX_AGE = 0.5  # seconds one batched status answer serves every poll
WATCH_INTERVAL = 3.0  # seconds between the refresher's status requests (jupyter_client's poll)


#: Longest line the agent may send (a reply carries a kernel's status or connection
#: facts: kilobytes). Past it the channel is closed and the agent started anew.
MAX_REPLY_BYTES = 4 * 1024 * 1024


class ReplyTooLong(SSHError):
    """The agent sent a line longer than the reader accepts."""


class LineReader:
    """Splits a byte stream into lines, holding at most ``limit`` bytes of a line."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines ``data`` ends (without their newline); ReplyTooLong once
        a line passes the limit, before it is held any longer."""
        lines: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            self._partial += data[start : len(data) if end == -1 else end]
            if len(self._partial) > self.limit:
                self._partial.clear()
                raise ReplyTooLong(f"a reply of more than {self.limit} bytes with no end")
            if end == -1:
                return lines
            lines.append(bytes(self._partial))
            self._partial.clear()
            start = end + 1


class RemoteAgent:
    """The launcher in agent mode on one host, shared by every kernel there."""

    def __init__(self, conn: SSHConnection, python: str, extensions: tuple[str, ...] = ()) -> None:
        self.conn = conn
        self.python = python
        self.extensions = extensions
        self._lock = threading.Lock()
        self._chan: paramiko.Channel | None = None
        self._chan_generation = -1
        self._pending: dict[int, concurrent.futures.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.starts = 0  # agent processes started (1 while nothing went wrong)
        self.remote_pid: int | None = None
        # Batched status: kernel id -> (pid, start ticks) of every kernel polled here.
        self._tracked: dict[str, tuple[Any, Any]] = {}
        self._snapshot: tuple[float, dict[str, bool]] = (0.0, {})
        self._refresh: concurrent.futures.Future[None] | None = None
        self.refresher = Refresher(
            f"ssh-watch-{conn.target.host}", WATCH_INTERVAL, self._statuses_now
        )

    # -------------------------------------------------------------- channel
    def _channel(self, timeout: float) -> paramiko.Channel:
        """The live agent channel, starting the agent if there is none."""
        with self._lock:
            chan = self._chan
            if (
                chan is not None
                and not chan.closed
                and not chan.exit_status_ready()
                and self._chan_generation == self.conn.generation
            ):
                return chan
            chan = self.conn.open_command(launcher_command(self.python), timeout)
            ready: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
            self._pending[0] = ready
            self._chan, self._chan_generation = chan, self.conn.generation
            self.starts += 1
            threading.Thread(
                target=self._read, args=(chan,), name="ssh-agent-reader", daemon=True
            ).start()
            chan.sendall(launcher_stdin({"action": "agent"}, self.extensions))
        try:
            hello = ready.result(timeout)
        except concurrent.futures.TimeoutError:
            chan.close()
            raise SSHError(
                f"the kernel agent on {self.conn.target.host} did not start ({self.python})"
            ) from None
        self.remote_pid = hello.get("agent")
        if self.starts > 1:
            host = self.conn.target.host
            log.info("kernel agent on %s restarted (pid %s)", host, self.remote_pid)
        return chan

    def _read(self, chan: paramiko.Channel) -> None:
        lines = LineReader(MAX_REPLY_BYTES)
        failure = ""
        try:
            while data := chan.recv(65536):
                for line in lines.feed(data):
                    self._deliver(line)
        except ReplyTooLong as e:
            # The agent runs in the kernel's account: whatever runs there may write to
            # it. A reply with no end must cost a bounded buffer, then the channel.
            failure = str(e)
            chan.close()
        except (OSError, paramiko.SSHException):
            pass
        err = bytearray()
        try:
            while chunk := chan.recv_stderr(65536):
                err += chunk
                del err[: max(0, len(err) - 4096)]  # only the last lines are shown
        except (OSError, paramiko.SSHException):
            pass
        detail = (
            failure
            or (bytes(err).decode(errors="replace").strip().splitlines()[-1:] or ["it exited"])[0]
        )
        with self._lock:
            if self._chan is chan:
                self._chan = None
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    SSHError(f"kernel agent on {self.conn.target.host} ended: {detail}")
                )

    def _deliver(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("id"), int):
            return
        with self._lock:
            future = self._pending.pop(msg["id"], None)
        if future is None or future.done():
            return
        reply = msg.get("reply") or {}
        if "error" in msg:
            future.set_exception(RemoteError(f"on {self.conn.target.host}: {msg['error']}"))
        elif not isinstance(reply, dict):
            future.set_exception(RemoteError(f"on {self.conn.target.host}: a malformed reply"))
        else:
            future.set_result(reply)

    # -------------------------------------------------------------- requests
    def request(
        self, action: str, fields: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Send one request and wait for its answer (blocking; see :meth:`call`)."""
        if self.conn.state == "closed" or not self.conn.wait_up(timeout):
            raise SSHError(f"SSH connection to {self.conn.target.describe()} is {self.conn.state}")
        chan = self._channel(min(timeout, 30.0))
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        with self._lock:
            request_id = next(self._ids)
            self._pending[request_id] = future
        try:
            line = json.dumps({**(fields or {}), "id": request_id, "action": action}) + "\n"
            chan.sendall(line.encode())
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise SSHError(
                f"kernel agent on {self.conn.target.host}: no answer to {action} in {timeout:g}s"
            ) from None
        except (OSError, paramiko.SSHException) as e:
            raise SSHError(f"kernel agent on {self.conn.target.host}: {e}") from None
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    async def call(
        self, action: str, fields: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """One request to the agent, awaited on the SSH thread pool."""
        return await run_blocking("ssh", self.request, action, fields, timeout)

    # ---------------------------------------------------------------- status
    async def running(self, kernel_id: str, pid: Any, start: Any) -> bool:
        """Whether the kernel process still runs, from a batched answer at most
        ``STATUS_MAX_AGE`` old. Raises :class:`SSHError` while the host is unreachable."""
        self._tracked[kernel_id] = (pid, start)
        for _ in range(2):
            taken, answers = self._snapshot
            if time.monotonic() - taken < STATUS_MAX_AGE and kernel_id in answers:
                return answers[kernel_id]
            with self._lock:
                refresh = self._refresh
                if refresh is None or refresh.done():
                    refresh = self._refresh = executor("ssh").submit(self._refresh_statuses)
            await asyncio.wrap_future(refresh)
        return self._snapshot[1].get(kernel_id, False)

    def _refresh_statuses(self) -> None:
        tracked = dict(self._tracked)
        started = time.monotonic()
        reply = self.request("statuses", {"kernels": {k: list(v) for k, v in tracked.items()}}, 15)
        answers = {str(k): bool(v) for k, v in (reply.get("running") or {}).items()}
        self._snapshot = (started, answers)

    def _statuses_now(self) -> dict[str, bool]:
        self._refresh_statuses()
        return dict(self._snapshot[1])

    def watch(self, kernel_id: str, pid: Any, start: Any, notify: Any) -> Any:
        """Call ``notify`` when the kernel's process ends (or the host stops or starts
        answering again); returns the cancel."""
        self._tracked[kernel_id] = (pid, start)
        return self.refresher.subscribe(kernel_id, notify)

    def invalidate(self) -> None:
        """Forget the batched answer (after a signal or a cleanup the state changes)."""
        self._snapshot = (0.0, {})

    def untrack(self, kernel_id: str) -> None:
        self._tracked.pop(kernel_id, None)

    def close(self) -> None:
        with self._lock:
            chan, self._chan = self._chan, None
        if chan is not None:
            chan.close()


_AgentKey = tuple[int, str, tuple[str, ...]]
_agents: dict[_AgentKey, RemoteAgent] = {}
_agents_lock = threading.Lock()


def agent_for(conn: SSHConnection, python: str, extensions: tuple[str, ...] = ()) -> RemoteAgent:
    """The agent for ``conn``'s host and user running ``python`` (one per process), with
    the actions of ``extensions`` (module paths, see :func:`.remote.program`)."""
    key = (id(conn), python, extensions)
    with _agents_lock:
        agent = _agents.get(key)
        if agent is None or agent.conn is not conn:
            agent = _agents[key] = RemoteAgent(conn, python, extensions)
            conn.subscribe(functools.partial(_closed, key))
        return agent


def _closed(key: _AgentKey, state: str) -> None:
    if state != "closed":
        return
    with _agents_lock:
        agent = _agents.pop(key, None)
    if agent is not None:
        agent.close()


@reset_in_child
def _reset_after_fork() -> None:
    """Agents run on the parent's SSH connections: a forked child starts its own."""
    global _agents, _agents_lock
    _agents = {}
    _agents_lock = threading.Lock()
