"""SSH scenario: our paramiko tunnel layer and SSH provisioner on real sshd hosts.

The hosts are ``tests.sshnet.SSHNet``: OpenSSH servers in fresh network namespaces
on this machine (hosta, jump, hostb; only hosta is used), started per benchmark and
stopped in ``finally``. All traffic stays on this machine: the root namespace's
loopback, the veth pair to hosta, hosta's own loopback.

* ``throughput`` -- raw tunnel throughput. A TCP server on *hosta's* loopback sends
                    N bytes to whoever connects (what a remote kernel's port looks
                    like); a reader process on the root namespace's loopback pulls
                    them through (a) our ``KernelTunnel``, (b) OpenSSH ``ssh -N -L``
                    with its default cipher, (b') the same with the cipher and MAC
                    our connection negotiated, (c) jupyter_client's own
                    ``paramiko_tunnel``. Interleaved (ABBA); MB/s, ratio to (b).
* ``roundtrip``  -- execute round trip of ``pass`` through the SSH provisioner's
                    tunnel (kernel on hosta) vs a local kernel (our local
                    provisioner), interleaved in blocks; plus the median difference.
* ``iopub``      -- one cell printing a large string: execute until idle, MB/s,
                    SSH vs local, interleaved.
* ``concurrent`` -- 20 kernels on hosta started at once: one shared SSH connection
                    (one ``_conn`` object, one sshd connection process), wall and
                    per-kernel time to ready, failures; concurrent shutdown and no
                    kernel process left (``/proc/*/environ``
                    ``KERNEL_ORCHESTRATOR_KERNEL_ID``).
* ``certificate`` -- start to ready with a certificate minted per connection
                    (``certificate_authority``) vs a stored key, interleaved (ABBA):
                    each mode's connection kept open by a running kernel (target
                    ratio <= 1.05), and with a new login for every start.

Setup: ``tests.sshnet.ensure_packages()`` (installs openssh-server/-client and
iproute2 with apt-get if missing), then ``SSHNet().start()``. Needs root on Linux;
otherwise every benchmark is skipped with a note.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import zmq.asyncio

import orchestrator
from bench.harness import (
    Benchmark,
    Bounded,
    Context,
    Row,
    Stats,
    Target,
    comparison,
    concurrent_start_rows,
    error_row,
    interleaved_round_trips,
    measurement,
    poll_until,
    progress,
    reap,
    run_interleaved,
    start_all_at_once,
)
from bench.restarts import restart_rows
from bench.scenarios.core import (
    _diagnostics,
    _execute,
    _ready_client,
    _shutdown,
    _start_to_ready,
)
from orchestrator import procinfo
from orchestrator.store import open_store
from orchestrator.tunnels.ssh import KernelTunnel, pool, resolve_target

NAME = "ssh"
DESCRIPTION = (
    "SSH tunnel layer and provisioner (hosts in network namespaces): raw throughput vs"
    " OpenSSH and jupyter_client, execute round trip, IOPub, 20 concurrent"
)

HOST = "hosta"
SSH_KERNEL = "ko-bench-ssh"
LOCAL_KERNEL = "python3"
MIB = 1 << 20

# Targets (informational; see bench/README.md).
THROUGHPUT_RATIO_TARGET = 0.5  # ours / OpenSSH -L
ROUNDTRIP_DIFF_TARGET_MS = 1.0  # median(ssh) - median(local)
CONCURRENT_N = 20

# Time limits, seconds.
PACKAGES_TIMEOUT = 900.0  # apt-get on a fresh machine
FORWARD_READY_TIMEOUT = 20.0  # an ssh -L / paramiko_tunnel accepting connections
READ_TIMEOUT = 180.0  # one reader pulling N MiB (jupyter_client's forwarder is slow)
HELPER_LIFETIME = 1800.0  # background helpers (server, jupyter tunnel) exit by themselves
START_TIMEOUT = 90.0  # the provisioner's own startup_timeout (60 s) fires first
CONCURRENT_TIMEOUT = 300.0
SHUTDOWN_ALL_TIMEOUT = 180.0
EXECUTE_TIMEOUT = 10.0
IOPUB_TIMEOUT = 120.0
PROCESS_EXIT_TIMEOUT = 15.0


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "tput_mib": 50,
            "tput_slow_mib": 16,
            "tput_reps": 2,
            "rt_reps": 50,
            "rt_block": 10,
            "rt_warmup": 10,
            "iopub_mib": 10,
            "iopub_reps": 3,
        }
    return {
        "tput_mib": 200,
        "tput_slow_mib": 50,
        "tput_reps": 5,
        "rt_reps": 200,
        "rt_block": 20,
        "rt_warmup": 20,
        "iopub_mib": 50,
        "iopub_reps": 5,
    }


# ------------------------------------------------------------------------------ setup

REPO = Path(__file__).resolve().parents[2]
# tests/sshnet.py: test infrastructure, not part of the product (imported as the
# slurm and kubernetes scenarios import theirs). Typed as Any here.
SSHNet = Any


def _sshnet_module() -> Any:
    from tests import sshnet

    return sshnet


def _skip_reason() -> str:
    if not sys.platform.startswith("linux"):
        return "needs Linux (network namespaces)"
    if os.geteuid() != 0:
        return "needs root (network namespaces and sshd hosts, tests/sshnet.py)"
    return ""


def _skip_row(benchmark: str, reason: str) -> list[Row]:
    progress(f"ssh/{benchmark}: skipped: {reason}")
    return [Row(NAME, benchmark, "-", "", note=f"skipped: {reason}", result="n/a")]


@contextlib.asynccontextmanager
async def _network(problems: list[str]) -> AsyncIterator[SSHNet]:
    """An :class:`SSHNet` for one benchmark; stopped (and checked) in ``finally``.

    A teardown problem (something of the net left on the machine) is appended to
    ``problems`` instead of masking the benchmark's own outcome.
    """
    t0 = time.monotonic()
    sshnet = _sshnet_module()
    await asyncio.wait_for(asyncio.to_thread(sshnet.ensure_packages), PACKAGES_TIMEOUT)
    net = sshnet.SSHNet()
    try:
        await asyncio.to_thread(net.start)  # bounded inside: sshd ready timeout, _run timeouts
        progress(
            f"sshnet up in {time.monotonic() - t0:.2f}s: {HOST} = {net.hosts[HOST].ip}"
            f" (netns {net.hosts[HOST].ns})"
        )
        yield net
    finally:
        try:
            await asyncio.to_thread(net.stop)
        except Exception as e:
            progress(f"WARNING SSHNet.stop(): {e}")
            problems.append(f"SSHNet.stop(): {e}")


def _write_kernelspec(ctx: Context, net: SSHNet, name: str = SSH_KERNEL, **extra: Any) -> None:
    """The SSH kernelspec: hosta, this Python, kernel files inside the run's tree."""
    data_dir = os.environ.get("JUPYTER_DATA_DIR", "")
    if not data_dir:
        raise RuntimeError("JUPYTER_DATA_DIR is not set (bench.run isolates it)")
    spec_dir = Path(data_dir) / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    # The remote kernel gets only the environment given here (not ours): point its
    # IPython/Jupyter directories into the run's tree as well, as for local kernels.
    isolated = ("IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR")
    config = {
        "hosts": [HOST],
        "ssh_config": str(net.ssh_config),
        "python": sys.executable,
        # Under the run's tree: the kernels' command lines hold it, so bench.run's
        # leftover check (ipykernel + tree in argv) sees remote kernels too.
        "remote_dir": str(ctx.path("ssh-remote-kernels")),
        "working_dir": str(ctx.root),
        "connect_timeout": 10,
        "environment": {k: os.environ[k] for k in isolated if k in os.environ},
        **extra,
    }
    spec = {
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (SSH hosta, benchmark)",
        "language": "python",
        "metadata": {
            "kernel_provisioner": {"provisioner_name": "ssh-provisioner", "config": config}
        },
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))


# ------------------------------------------------------------------ kernel processes


def _kernel_pids(kernel_ids: Iterable[str]) -> list[int]:
    """Live processes of the given kernels (tests/test_ssh.py's approach: the launcher
    sets KERNEL_ORCHESTRATOR_KERNEL_ID; the test hosts share our PID space)."""
    ids = set(kernel_ids)
    if not ids:
        return []
    me = os.getpid()
    return [
        pid
        for pid in procinfo.all_pids()
        if pid != me
        and procinfo.environ(pid).get("KERNEL_ORCHESTRATOR_KERNEL_ID") in ids
        and procinfo.is_running(pid)
    ]


async def _check_kernels_gone(kernel_ids: Iterable[str], label: str) -> str:
    """Wait for the kernels' processes to exit; kill survivors by pid, return an error."""
    ids = {k for k in kernel_ids if k}
    if not ids:
        return ""
    left: list[int] = []

    def gone() -> bool:
        nonlocal left
        left = _kernel_pids(ids)
        return not left

    if await poll_until(gone, timeout=PROCESS_EXIT_TIMEOUT, interval=0.1, label=label):
        progress(f"{label}: no process of the {len(ids)} kernel(s) left")
        return ""
    progress(f"WARNING {label}: {len(left)} kernel process(es) left after shutdown: {left}")
    still = reap(left)
    return (
        f"{len(left)} kernel process(es) left after shutdown (killed by pid"
        + (f"; {still} survived" if still else "")
        + ")"
    )


# ------------------------------------------------------------------- 1. throughput

# Runs in hosta's namespace: sends N bytes (an 8-byte big-endian header from the
# client) to each connection on 127.0.0.1. Bounded: at most 1000 connections, and it
# exits by itself after argv[1] seconds.
SERVER = r"""
import os, socket, struct, sys, threading
threading.Timer(float(sys.argv[1]), os._exit, (0,)).start()
BUF = memoryview(b"x" * (1 << 20))

def serve(c):
    try:
        hdr = b""
        for _ in range(8):
            if len(hdr) == 8:
                break
            d = c.recv(8 - len(hdr))
            if not d:
                return
            hdr += d
        n = struct.unpack("!Q", hdr)[0]
        while n > 0:
            k = min(n, len(BUF))
            c.sendall(BUF[:k])
            n -= k
    except (OSError, struct.error):
        pass
    finally:
        c.close()

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
for _ in range(1000):
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Runs on the root namespace's loopback: asks for N bytes through a forwarded port and
# reports the seconds from connect() until the last byte arrived.
READER = r"""
import json, socket, struct, sys, time
port, n, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
t0 = time.perf_counter()
deadline = t0 + limit
c = socket.create_connection(("127.0.0.1", port), timeout=limit)
c.sendall(struct.pack("!Q", n))
buf = bytearray(1 << 20)
got = 0
for _ in range(n + 1):
    k = c.recv_into(buf)
    got += k
    if not k or got >= n or time.perf_counter() > deadline:
        break
elapsed = time.perf_counter() - t0
c.close()
print(json.dumps({"seconds": elapsed, "bytes": got}))
"""

# jupyter_client's paramiko forwarder, started the way jupyter_client starts it
# (``paramiko_tunnel`` forks a multiprocessing child running ``forward_tunnel``), in
# a helper process of its own session so that both are stopped by process group.
# password="" skips its interactive passwordless check (the key is given); its
# WarningPolicy warning about the host key is silenced.
JUPYTER_TUNNEL = r"""
import sys, warnings
warnings.simplefilter("ignore")
from jupyter_client.ssh.tunnel import paramiko_tunnel
lport, rport, server, keyfile, lifetime = sys.argv[1:6]
p = paramiko_tunnel(int(lport), int(rport), server, keyfile=keyfile, password="")
p.join(float(lifetime))
p.terminate()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _accepting(port: int, alive: Callable[[], bool], label: str) -> bool:
    """Poll until 127.0.0.1:port accepts (False if ``alive()`` turns false or time is up)."""
    result = False

    def probe() -> bool:
        nonlocal result
        if not alive():
            return True  # stop polling; result stays False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        result = True
        return True

    await poll_until(probe, timeout=FORWARD_READY_TIMEOUT, interval=0.05, label=label)
    return result


async def _read_through(port: int, nbytes: int) -> float:
    """MB/s of one reader process pulling ``nbytes`` through ``127.0.0.1:port``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        READER,
        str(port),
        str(nbytes),
        str(READ_TIMEOUT),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), READ_TIMEOUT + 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(
            f"reader on port {port} failed: {err.decode(errors='replace').strip()[-300:]}"
        ) from None
    if result["bytes"] != nbytes:
        raise RuntimeError(f"reader on port {port} got {result['bytes']} of {nbytes} bytes")
    return nbytes / float(result["seconds"]) / 1e6


class _Helpers:
    """Background processes of the throughput benchmark, stopped by pid/group in finally."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], bool]] = []

    def start(
        self, label: str, argv: list[str], log: Path, *, group: bool = False, pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` (stderr to ``log``); ``group``: in a new session, stopped by group."""
        with log.open("ab") as f:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else subprocess.DEVNULL,
                stderr=f,
                start_new_session=group,
            )
        self.procs.append((label, proc, group))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for entry in [e for e in self.procs if e[1] is proc]:
            self._stop_one(*entry)
            self.procs.remove(entry)

    def stop_all(self) -> None:
        for entry in reversed(self.procs):
            self._stop_one(*entry)
        self.procs.clear()

    @staticmethod
    def _stop_one(label: str, proc: subprocess.Popen[bytes], group: bool) -> None:
        def alive() -> bool:
            if proc.poll() is None:
                return True
            if group:  # the helper leads its own group: jupyter_client's forked child too
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    return False
                except PermissionError:
                    return True
                return True
            return False

        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not alive():
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            for _ in Bounded(f"stop {label}", 100, 5.0):
                if not alive():
                    break
                time.sleep(0.05)
        if alive():
            progress(f"WARNING helper {label} (pid {proc.pid}) did not exit")
        if proc.stdout is not None:
            proc.stdout.close()


def _kex_line(log: Path) -> str:
    """The cipher and MAC an OpenSSH client negotiated (server->client), from its -v log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    m = re.findall(r"kex: server->client cipher: (\S+) MAC: (\S+)", text)
    return f"{m[-1][0]}, MAC {m[-1][1]}" if m else "?"


async def _openssh_forward(
    helpers: _Helpers, net: SSHNet, server_port: int, log: Path, extra: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    """``ssh -F <ssh_config> -N -L 127.0.0.1:L:127.0.0.1:server_port hosta``, accepting."""
    for attempt in Bounded("ssh -L attempts", 2, 2 * FORWARD_READY_TIMEOUT + 10):
        lport = _free_port()
        argv = [
            "ssh",
            "-F",
            str(net.ssh_config),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=DEBUG1",  # for the negotiated cipher (kex: line)
            *extra,
            "-L",
            f"127.0.0.1:{lport}:127.0.0.1:{server_port}",
            HOST,
        ]
        proc = helpers.start("ssh -L", argv, log)

        def running(proc: subprocess.Popen[bytes] = proc) -> bool:
            return proc.poll() is None

        if await _accepting(lport, running, f"ssh -L :{lport}"):
            return proc, lport
        helpers.stop(proc)
        progress(f"WARNING ssh -L on port {lport} not ready (attempt {attempt + 1}); see {log}")
    raise RuntimeError(f"ssh -L did not come up; log: {log}")


async def bench_throughput(ctx: Context) -> list[Row]:
    bench = "raw tunnel throughput"
    if reason := _skip_reason():
        return _skip_row(bench, reason)
    p = _params(ctx.quick)
    nbytes = p["tput_mib"] * MIB
    bench = f"raw tunnel throughput ({p['tput_mib']} MiB)"
    problems: list[str] = []
    helpers = _Helpers()
    tunnel: KernelTunnel | None = None
    notes: dict[str, str] = {}
    samples: dict[str, list[float]] = {}
    logdir = ctx.path("ssh-throughput")
    logdir.mkdir(exist_ok=True)
    async with _network(problems) as net:
        try:
            # The data source: a server on hosta's own loopback (like a remote kernel).
            server = helpers.start(
                "server",
                [
                    "ip",
                    "netns",
                    "exec",
                    net.hosts[HOST].ns,
                    sys.executable,
                    "-c",
                    SERVER,
                    str(HELPER_LIFETIME),
                ],
                logdir / "server.log",
                pipe=True,
            )
            assert server.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 20)
            server_port = int(line)
            progress(f"throughput: server on {HOST} 127.0.0.1:{server_port}")

            # (a) ours
            tunnel = KernelTunnel(resolve_target(HOST, ssh_config=str(net.ssh_config)))
            ours_port = (await asyncio.to_thread(tunnel.open, {"bench": server_port}))["bench"]
            transport = tunnel.conn.transport if tunnel.conn is not None else None
            cipher = getattr(transport, "remote_cipher", "?")  # server->client
            mac = getattr(transport, "remote_mac", "") or ""
            notes["ours"] = f"KernelTunnel; negotiated {cipher}, MAC {mac or 'implicit'}"

            # (b) OpenSSH with its defaults, (b') with our negotiated cipher and MAC
            _, ssh_port = await _openssh_forward(
                helpers, net, server_port, logdir / "ssh-default.log", []
            )
            same = ["-c", cipher] + (["-m", mac] if mac and "@" not in cipher else [])
            _, same_port = await _openssh_forward(
                helpers, net, server_port, logdir / "ssh-same-cipher.log", same
            )
            notes["openssh"] = (
                f"ssh -N -L, defaults; negotiated {_kex_line(logdir / 'ssh-default.log')}"
            )
            notes["openssh-same-cipher"] = (
                f"ssh -N -L {' '.join(same)}; negotiated"
                f" {_kex_line(logdir / 'ssh-same-cipher.log')}"
            )

            # (c) jupyter_client's paramiko forwarder
            jc_port = _free_port()
            jc = helpers.start(
                "jupyter_client paramiko_tunnel",
                [
                    sys.executable,
                    "-c",
                    JUPYTER_TUNNEL,
                    str(jc_port),
                    str(server_port),
                    f"root@{net.hosts[HOST].ip}:{net.hosts[HOST].port}",
                    str(net.user_key),
                    str(HELPER_LIFETIME),
                ],
                logdir / "jupyter-tunnel.log",
                group=True,
            )
            if not await _accepting(jc_port, lambda: jc.poll() is None, "paramiko_tunnel"):
                raise RuntimeError(
                    "jupyter_client paramiko_tunnel did not come up: "
                    + (logdir / "jupyter-tunnel.log").read_text(errors="replace")[-300:]
                )
            notes["jupyter_client"] = (
                "jupyter_client.ssh.tunnel.paramiko_tunnel (forward_tunnel: 1 KiB select"
                f" loop, paramiko defaults); {p['tput_slow_mib']} MiB per read (it is slow)"
            )

            ports = {
                "openssh": ssh_port,
                "ours": ours_port,
                "openssh-same-cipher": same_port,
                "jupyter_client": jc_port,
            }
            for name, port in ports.items():  # warm-up: connection, caches, channel path
                mbps = await _read_through(port, 16 * MIB)
                progress(f"throughput warm-up {name}: {mbps:.0f} MB/s (16 MiB)")
            progress(
                f"throughput: {p['tput_reps']} reps x {p['tput_mib']} MiB per variant"
                f" ({p['tput_slow_mib']} MiB for jupyter_client),"
                " interleaved (ABBA)"
            )
            samples = await run_interleaved(
                "throughput",
                {
                    name: functools.partial(
                        _read_through,
                        port,
                        p["tput_slow_mib"] * MIB if name == "jupyter_client" else nbytes,
                    )
                    for name, port in ports.items()
                },
                p["tput_reps"],
                max_seconds=60 + len(ports) * p["tput_reps"] * READ_TIMEOUT,
                op_timeout=READ_TIMEOUT + 30,
                report_every=1,
            )
            for name, s in samples.items():
                progress(f"throughput {name}: " + ", ".join(f"{x:.0f}" for x in s) + " MB/s")
        finally:
            if tunnel is not None:
                await asyncio.to_thread(tunnel.close)
            await asyncio.to_thread(helpers.stop_all)

    rows = comparison(NAME, bench, samples, "MB/s", baseline="openssh")
    medians = {r.variant: r.stats.median for r in rows if r.stats is not None}
    if medians.get("openssh-same-cipher") and "ours" in medians:
        notes["ours"] += (
            f"; ours / openssh-same-cipher = {medians['ours'] / medians['openssh-same-cipher']:.3f}"
        )
    for row in rows:
        row.note = notes.get(row.variant, "")
        if row.variant == "ours":
            row.target = Target.ratio_at_least(THROUGHPUT_RATIO_TARGET)
            row.finish()
    rows += [error_row(NAME, bench, prob) for prob in problems]
    return rows


# -------------------------------------------------------------------- 2. round trip


async def _start_pair(store: Any, owned: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One local and one SSH kernel (ours), started and ready; clients connected."""
    kms: dict[str, Any] = {
        name: orchestrator.AsyncKernelManager(kernel_name=kernel, kernel_store=store)
        for name, kernel in (("local", LOCAL_KERNEL), ("ssh", SSH_KERNEL))
    }
    kcs: dict[str, Any] = {}
    try:
        for name, km in kms.items():
            try:
                await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
            finally:
                if km.kernel_id:
                    owned.add(str(km.kernel_id))
            kcs[name] = await _ready_client(km)
    except BaseException:
        for kc in kcs.values():
            kc.stop_channels()
        await asyncio.gather(*(_shutdown(km) for km in kms.values()))
        raise
    return kms, kcs


async def _stop_pair(kms: dict[str, Any], kcs: dict[str, Any]) -> None:
    for kc in kcs.values():
        kc.stop_channels()
    await asyncio.gather(*(_shutdown(km) for km in kms.values()))


async def bench_roundtrip(ctx: Context) -> list[Row]:
    bench = "execute round trip ('pass')"
    if reason := _skip_reason():
        return _skip_row(bench, reason)
    p = _params(ctx.quick)
    problems: list[str] = []
    samples: dict[str, list[float]] = {"local": [], "ssh": []}
    owned: set[str] = set()
    async with _network(problems) as net:
        _write_kernelspec(ctx, net)
        store = open_store(ctx.store_url("ssh-roundtrip.db"))
        kms: dict[str, Any] = {}
        kcs: dict[str, Any] = {}
        try:
            kms, kcs = await _start_pair(store, owned)
            await interleaved_round_trips(
                kcs,
                _execute,
                samples,
                warmup=p["rt_warmup"],
                reps=p["rt_reps"],
                block=p["rt_block"],
                execute_timeout=EXECUTE_TIMEOUT + 5,
            )
        finally:
            await _stop_pair(kms, kcs)
            store.close()
            if left := await _check_kernels_gone(owned, "ssh/roundtrip"):
                problems.append(left)

    rows = comparison(
        NAME,
        bench,
        samples,
        "ms",
        baseline="local",
        note=f"interleaved in blocks of {p['rt_block']} executes; local = our local provisioner",
    )
    local, ssh = (Stats.of([x * 1e3 for x in samples[k]]) for k in ("local", "ssh"))
    rows.append(
        measurement(
            NAME,
            f"{bench}: ssh - local",
            "ssh",
            [(ssh.median - local.median) / 1e3],
            "ms",
            target=Target.at_most(ROUNDTRIP_DIFF_TARGET_MS, "ms"),
            note=f"difference of the medians; of the p90s: {ssh.p90 - local.p90:.3f} ms",
        )
    )
    rows += [error_row(NAME, bench, prob) for prob in problems]
    return rows


# ------------------------------------------------------------------------ 3. IOPub


async def _print_large(kc: Any, nbytes: int) -> float:
    """MB/s of one cell printing ``nbytes`` characters: execute_request -> idle."""
    received = 0

    def hook(msg: Any) -> None:
        nonlocal received
        if msg["msg_type"] == "stream":
            received += len(msg["content"]["text"])

    t0 = time.perf_counter()
    reply = await asyncio.wait_for(
        kc.execute_interactive(
            f"print('x' * {nbytes}, end='')",
            allow_stdin=False,
            output_hook=hook,
            timeout=IOPUB_TIMEOUT,
        ),
        IOPUB_TIMEOUT + 10,
    )
    elapsed = time.perf_counter() - t0
    if reply["content"].get("status") != "ok":
        raise RuntimeError(f"print cell replied {reply['content'].get('status')!r}")
    if received != nbytes:
        raise RuntimeError(f"received {received} of {nbytes} characters on iopub")
    return nbytes / elapsed / 1e6


async def bench_iopub(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    bench = f"IOPub throughput (print {p['iopub_mib']} MiB)"
    if reason := _skip_reason():
        return _skip_row(bench, reason)
    nbytes = p["iopub_mib"] * MIB
    problems: list[str] = []
    samples: dict[str, list[float]] = {}
    owned: set[str] = set()
    async with _network(problems) as net:
        _write_kernelspec(ctx, net)
        store = open_store(ctx.store_url("ssh-iopub.db"))
        kms: dict[str, Any] = {}
        kcs: dict[str, Any] = {}
        try:
            kms, kcs = await _start_pair(store, owned)
            for name, kc in kcs.items():
                mbps = await _print_large(kc, nbytes // 4)
                progress(f"iopub warm-up {name}: {mbps:.0f} MB/s ({nbytes // 4 // MIB} MiB)")
            progress(f"iopub: {p['iopub_reps']} reps x {p['iopub_mib']} MiB each, interleaved")
            samples = await run_interleaved(
                "iopub",
                {name: functools.partial(_print_large, kc, nbytes) for name, kc in kcs.items()},
                p["iopub_reps"],
                max_seconds=60 + 2 * p["iopub_reps"] * IOPUB_TIMEOUT,
                op_timeout=IOPUB_TIMEOUT + 20,
                report_every=1,
            )
            for name, s in samples.items():
                progress(f"iopub {name}: " + ", ".join(f"{x:.0f}" for x in s) + " MB/s")
        finally:
            await _stop_pair(kms, kcs)
            store.close()
            if left := await _check_kernels_gone(owned, "ssh/iopub"):
                problems.append(left)
    rows = comparison(
        NAME,
        bench,
        samples,
        "MB/s",
        baseline="local",
        note="one print() of the whole string; execute_request until reply and idle",
    )
    rows += [error_row(NAME, bench, prob) for prob in problems]
    return rows


# -------------------------------------------------------------------- 4. concurrent


async def bench_concurrent(ctx: Context) -> list[Row]:
    n = CONCURRENT_N
    bench = f"{n} concurrent ssh starts"
    if reason := _skip_reason():
        return _skip_row(bench, reason)
    problems: list[str] = []
    owned: set[str] = set()
    kms: list[Any] = []
    ready: list[float] = []
    errors: list[BaseException] = []
    wall = shutdown_s = 0.0
    distinct_conns = sshd_conns = -1
    closed_after = ""
    async with _network(problems) as net:
        _write_kernelspec(ctx, net)
        store = open_store(ctx.store_url("ssh-concurrent.db"))
        zctx = zmq.asyncio.Context()

        def new_km() -> Any:
            km = orchestrator.AsyncKernelManager(
                kernel_name=SSH_KERNEL, kernel_store=store, context=zctx
            )
            kms.append(km)
            return km

        async def one(t0: float) -> float:
            km = new_km()
            try:
                await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
            except Exception as e:
                raise RuntimeError(f"start_kernel: {(str(e).splitlines() or [repr(e)])[0]}") from e
            finally:
                if km.kernel_id:
                    owned.add(str(km.kernel_id))
            try:
                kc = await _ready_client(km)
            except Exception as e:
                raise RuntimeError(f"wait_for_ready: {e!r}{(await _diagnostics(km))[:300]}") from e
            kc.stop_channels()
            return time.perf_counter() - t0

        try:
            progress("concurrent: 1 untimed warm-up start")
            warm = new_km()
            try:
                await asyncio.wait_for(warm.start_kernel(), START_TIMEOUT)
                (await _ready_client(warm)).stop_channels()
            finally:
                if warm.kernel_id:
                    owned.add(str(warm.kernel_id))
                await _shutdown(warm)

            wall, ready, errors = await start_all_at_once(
                f"kernels on {HOST}", n, one, CONCURRENT_TIMEOUT
            )
            started = [km for km in kms[1:] if km.has_kernel]
            distinct_conns = len({id(km.provisioner._conn) for km in started})
            sshd_conns = len(net.connection_pids(HOST))
            progress(
                f"concurrent: {len(started)} kernels use {distinct_conns} SSHConnection"
                f" object(s); sshd connection processes on {HOST}: {sshd_conns}"
            )
        finally:
            running = sum(1 for km in kms if km.has_kernel)
            progress(f"concurrent: shutting down {running} kernels concurrently")
            t_sd = time.perf_counter()
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(_shutdown(km) for km in kms)), SHUTDOWN_ALL_TIMEOUT
                )
            except Exception as e:
                progress(f"WARNING concurrent: shutdown: {e!r}")
            shutdown_s = time.perf_counter() - t_sd
            progress(f"concurrent: shutdown took {shutdown_s:.2f}s")
            zctx.destroy(linger=0)
            store.close()
            if left := await _check_kernels_gone(owned, "ssh/concurrent"):
                problems.append(left)
            ip = net.hosts[HOST].ip
            lingering = [c for c in pool.connections() if c.target.host == ip]
            closed_after = "closed" if not lingering else f"{len(lingering)} still open"

    processes_left = any("kernel process" in x for x in problems)
    note = (
        f"{len(ready)}/{n} ready, {len(errors)} failed; concurrent shutdown {shutdown_s:.1f} s;"
        f" kernel processes after shutdown: {'SOME (error row)' if processes_left else 'none'}"
    )
    if errors:
        note += f"; first failure: {str(errors[0])[:200]}"
    rows = [
        *concurrent_start_rows(NAME, bench, "ssh", n, wall, ready, note=note),
        measurement(
            NAME,
            f"{bench}: SSHConnection objects",
            "ssh",
            [float(distinct_conns)],
            "count",
            target=Target.at_most(1),
            note="distinct km.provisioner._conn among the started kernels",
        ),
        measurement(
            NAME,
            f"{bench}: sshd connections",
            "ssh",
            [float(sshd_conns)],
            "count",
            target=Target.at_most(1),
            note=f"sshnet.connection_pids('{HOST}') with all kernels up; after shutdown the"
            f" pool's connection is {closed_after}",
        ),
    ]
    rows += [error_row(NAME, bench, prob) for prob in problems]
    return rows


async def bench_restart(ctx: Context) -> list[Row]:
    bench = "restart to first answer (ssh)"
    if reason := _skip_reason():
        return _skip_row(bench, reason)
    problems: list[str] = []
    async with _network(problems) as net:
        _write_kernelspec(ctx, net)
        store = open_store(ctx.store_url("ssh-restart.db"))
        try:
            rows = await restart_rows(NAME, SSH_KERNEL, store, 3 if ctx.quick else 8, what="ssh")
        finally:
            store.close()
    return rows + [error_row(NAME, bench, p) for p in problems]


# ------------------------------------------------------------------ 6. certificates

CERT_KERNEL = "ko-bench-ssh-cert"
CERT_RATIO_TARGET = 1.05  # certificate / stored key, start to ready


def _made_by(store: Any, kernel: str, made: list[Any]) -> Callable[[], Any]:
    """A maker of managers for ``kernel`` that keeps each (for the leftover check)."""

    def make() -> Any:
        km = orchestrator.AsyncKernelManager(kernel_name=kernel, kernel_store=store)
        made.append(km)
        return km

    return make


async def bench_certificate(ctx: Context) -> list[Row]:
    """Start to ready with a certificate minted per connection vs a stored key, both with
    the (host, account) connection kept by a kernel left running in each mode, and both
    with a new connection for every start (the minting and the certificate login then
    count). Interleaved (ABBA)."""
    bench = "start to ready: certificate vs stored key"
    if reason := _skip_reason():
        return _skip_row(bench, reason)
    reps = 4 if ctx.quick else 12
    problems: list[str] = []
    owned: set[str] = set()
    rows: list[Row] = []
    async with _network(problems) as net:
        _write_kernelspec(ctx, net)
        _write_kernelspec(
            ctx, net, CERT_KERNEL, certificate_authority=str(net.user_ca), certificate_validity=300
        )
        store = open_store(ctx.store_url("ssh-certificate.db"))
        made: list[Any] = []
        variants = {
            "stored key": lambda: _start_to_ready(_made_by(store, SSH_KERNEL, made)),
            "certificate": lambda: _start_to_ready(_made_by(store, CERT_KERNEL, made)),
        }
        anchors: dict[str, Any] = {}
        try:
            cold = await run_interleaved(
                "ssh/certificate (new connection)",
                variants,
                reps,
                max_seconds=600,
                op_timeout=START_TIMEOUT + 30,
                warmup=1,
            )
            await _start_anchors(store, owned, anchors)
            kept = await run_interleaved(
                "ssh/certificate (connection kept)",
                variants,
                reps,
                max_seconds=600,
                op_timeout=START_TIMEOUT + 30,
                warmup=1,
            )
        finally:
            await asyncio.gather(*(_shutdown(km) for km in anchors.values()))
            store.close()
            owned.update(str(km.kernel_id) for km in made if km.kernel_id)
            if left := await _check_kernels_gone(owned, "ssh/certificate"):
                problems.append(left)
    target = Target.ratio_at_most(CERT_RATIO_TARGET)
    rows += comparison(
        NAME,
        f"{bench} (connection kept)",
        kept,
        "s",
        baseline="stored key",
        target=target,
        note="a kernel of each mode keeps its (host, account) connection open",
    )
    rows += comparison(
        NAME,
        f"{bench} (new connection)",
        cold,
        "s",
        baseline="stored key",
        note="nothing running: every start logs in (minting included for the certificate)",
    )
    return rows + [error_row(NAME, bench, p) for p in problems]


async def _start_anchors(store: Any, owned: set[str], anchors: dict[str, Any]) -> None:
    """A running kernel in each mode (into ``anchors``, which the caller shuts down),
    so that each mode's connection stays open."""
    for kernel in (SSH_KERNEL, CERT_KERNEL):
        km = orchestrator.AsyncKernelManager(kernel_name=kernel, kernel_store=store)
        anchors[kernel] = km
        try:
            await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
        finally:
            if km.kernel_id:
                owned.add(str(km.kernel_id))


BENCHMARKS = [
    Benchmark(
        "throughput",
        "raw tunnel MB/s: ours vs OpenSSH -L vs jupyter_client paramiko_tunnel",
        bench_throughput,
    ),
    Benchmark("roundtrip", "execute round trip of a trivial cell, ssh vs local", bench_roundtrip),
    Benchmark("iopub", "IOPub throughput of a large print, ssh vs local", bench_iopub),
    Benchmark(
        "concurrent",
        f"{CONCURRENT_N} ssh kernels started concurrently on one host",
        bench_concurrent,
    ),
    Benchmark("restart", "restart to first answer: a kept client vs a fresh one", bench_restart),
    Benchmark(
        "certificate",
        "start to ready with a certificate minted per connection vs a stored key",
        bench_certificate,
    ),
]
