"""Encryption scenario: what CurveZMQ transport encryption costs, measured side by side.

Two Docker kernels on a Docker network this scenario creates (and removes), both in
``reachability: network`` mode, both ``orchestrator.AsyncKernelManager`` with an SQLite
store, both from ``kernel-orchestrator/kernel-python:latest``. They differ in one
setting only:

* **encrypted** -- the default for network reachability (``transport_encryption: auto``
  encrypts traffic that leaves the machine);
* **plain**     -- ``transport_encryption: disabled``.

Before measuring, each is checked to be what it claims: ``km.curve_secretkey`` and
``provisioner.encrypting`` set (encrypted) or not (plain), and the client's shell and
iopub sockets negotiate the ``CURVE`` (encrypted) or ``NULL`` (plain) ZMQ mechanism.

* ``kernels`` -- on one such pair: (1) execute round trip of ``pass``, interleaved in
                 blocks (ABBA over blocks); (2) IOPub throughput: one cell writing
                 N MiB to stdout in 64 KiB lines, execute_request until the reply and
                 the idle status arrived (every character counted), interleaved.
* ``zmq``     -- the same question without Jupyter: a pyzmq DEALER -> ROUTER echo to
                 a container (same image, same kind of network) with a plain and a
                 CURVE ROUTER; per-echo latency of a kernel-message-sized multipart
                 message and of a 1 MiB frame, interleaved in blocks.

Setup: ``bash docker/build.sh --offline-base --only kernel-python`` (the docker
scenario's setup: engine and image, installed/built on a fresh machine). In
``finally``: kernels shut down, this run's containers removed (an ERROR if any were
left), the network removed (an ERROR if it could not be).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import zmq

import orchestrator
from bench.harness import (
    Benchmark,
    Bounded,
    Context,
    Row,
    Stats,
    Target,
    comparison,
    error_row,
    interleaved_round_trips,
    poll_until,
    progress,
    run_interleaved,
)
from bench.scenarios.core import _execute, _ready_client, _shutdown
from bench.scenarios.docker import IMAGE, Owned, _build, _check_containers
from orchestrator.store import open_store

NAME = "encryption"
DESCRIPTION = (
    "CurveZMQ cost: encrypted vs plain Docker kernels on a Docker network (round trip,"
    " IOPub) and a pyzmq curve vs plain echo"
)

ENC = "encrypted"
PLAIN = "plain"
KERNELSPECS = {PLAIN: "ko-bench-enc-plain", ENC: "ko-bench-enc-curve"}
BENCH_LABEL = "kernel-orchestrator.bench"  # on the network and the echo container
MIB = 1 << 20
LINE = 64 * 1024  # characters per sys.stdout.write in the IOPub cell (newline included)

# Targets (informational; see bench/README.md).
RT_RATIO_TARGET = 1.10  # encrypted / plain median round trip: cost under 10 %

# Time limits, seconds.
START_TIMEOUT = 90.0  # the provisioner's own startup_timeout (60 s) fires first
EXECUTE_TIMEOUT = 10.0
IOPUB_TIMEOUT = 120.0
ENGINE_TIMEOUT = 120.0  # one docker SDK call
ECHO_TIMEOUT_MS = 5000  # one echo (zmq RCVTIMEO / SNDTIMEO)
ECHO_LIFETIME = 900.0  # the echo server exits by itself after this, whatever happens


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "rt_reps": 60,
            "rt_block": 10,
            "rt_warmup": 10,
            "iopub_mib": 5,
            "iopub_reps": 3,
            "zmq_reps": 1000,
            "zmq_block": 100,
            "zmq_big_reps": 40,
            "zmq_big_block": 10,
        }
    return {
        "rt_reps": 300,
        "rt_block": 10,
        "rt_warmup": 30,
        "iopub_mib": 20,
        "iopub_reps": 8,
        "zmq_reps": 3000,
        "zmq_block": 200,
        "zmq_big_reps": 200,
        "zmq_big_block": 20,
    }


# ---------------------------------------------------------------------- the network


def _docker() -> Any:
    return docker.from_env(timeout=60)


async def _engine(fn: Callable[[Any], Any]) -> Any:
    """One blocking docker SDK call in a thread, bounded by ENGINE_TIMEOUT."""

    def call() -> Any:
        client = _docker()
        try:
            return fn(client)
        finally:
            client.close()

    return await asyncio.wait_for(asyncio.to_thread(call), ENGINE_TIMEOUT)


@contextlib.asynccontextmanager
async def _network(ctx: Context, problems: list[str]) -> AsyncIterator[str]:
    """Engine + image (build.sh), then a fresh bridge network; removed in ``finally``.

    Everything attached to it must be gone by then (the callers' own ``finally``
    blocks); a removal failure is appended to ``problems``.
    """
    await asyncio.to_thread(_build, ctx.path("docker-build.log"))
    name = f"ko-bench-enc-{os.getpid()}-{secrets.token_hex(3)}"
    await _engine(
        lambda c: c.networks.create(name, driver="bridge", labels={BENCH_LABEL: "encryption"})
    )
    progress(f"network {name} created")
    try:
        yield name
    finally:

        def remove(c: Any) -> str:
            for net in c.networks.list(names=[name]):
                if net.name != name:
                    continue
                net.reload()
                if attached := [x.name for x in net.containers]:
                    return f"containers {attached} attached"
                net.remove()
            if any(net.name == name for net in c.networks.list(names=[name])):
                return "still listed after removal"
            return ""

        try:
            if why := await _engine(remove):
                problems.append(f"network {name} not removed: {why}")
            else:
                progress(f"network {name} removed")
        except Exception as e:
            problems.append(f"network {name} not removed: {e!r}")
        if problems:
            for p in problems:
                progress(f"WARNING {p}")


# ---------------------------------------------------------------------- the kernels


def _write_kernelspecs(network: str) -> None:
    data_dir = os.environ.get("JUPYTER_DATA_DIR", "")
    if not data_dir:
        raise RuntimeError("JUPYTER_DATA_DIR is not set (bench.run isolates it)")
    for variant, kernel in KERNELSPECS.items():
        config: dict[str, Any] = {
            "image": IMAGE,
            "reachability": "network",
            "network": network,
            "egress": "unmanaged",
        }
        if variant == PLAIN:
            config["transport_encryption"] = "disabled"
        spec = {
            "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python (Docker network, {variant}, benchmark)",
            "language": "python",
            "metadata": {
                "kernel_provisioner": {"provisioner_name": "docker-provisioner", "config": config}
            },
        }
        spec_dir = Path(data_dir) / "kernels" / kernel
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))


def _mechanism(sock: Any) -> str:
    mech = sock.getsockopt(zmq.MECHANISM)
    return {zmq.NULL: "NULL", zmq.PLAIN: "PLAIN", zmq.CURVE: "CURVE"}.get(mech, str(mech))


def _verify(kms: dict[str, Any], kcs: dict[str, Any]) -> str:
    """Raise unless the encrypted kernel is encrypted and the plain one is not."""
    facts = []
    for variant, km in kms.items():
        want = variant == ENC
        has_key = bool(km.curve_secretkey)
        encrypting = bool(km.provisioner.encrypting)
        kc = kcs[variant]
        mechs = {_mechanism(kc.shell_channel.socket), _mechanism(kc.iopub_channel.socket)}
        expected = {"CURVE"} if want else {"NULL"}
        if has_key != want or encrypting != want or mechs != expected:
            raise RuntimeError(
                f"the {variant} kernel is not what it should be: curve_secretkey set={has_key},"
                f" provisioner.encrypting={encrypting}, client socket mechanism(s)"
                f" {sorted(mechs)} (expected {sorted(expected)})"
            )
        facts.append(
            f"{variant}: {km.ip} curve_secretkey={'set' if has_key else 'unset'}"
            f" mechanism={'/'.join(sorted(mechs))}"
        )
    note = "; ".join(facts)
    progress(f"verified: {note}")
    return note


@contextlib.asynccontextmanager
async def _kernel_pair(
    ctx: Context, network: str, problems: list[str]
) -> AsyncIterator[tuple[dict[str, Any], str]]:
    """Both kernels on ``network``, ready and verified: ({variant: client}, note)."""
    _write_kernelspecs(network)
    owned = Owned()
    store = owned.add_store(open_store(ctx.store_url("encryption.db")))
    kms: dict[str, Any] = {
        variant: orchestrator.AsyncKernelManager(kernel_name=kernel, kernel_store=store)
        for variant, kernel in KERNELSPECS.items()
    }
    kcs: dict[str, Any] = {}
    try:
        for variant, km in kms.items():
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
            finally:
                owned.add_km(km)
            kcs[variant] = await _ready_client(km)
            progress(f"{variant} kernel ready in {time.perf_counter() - t0:.2f}s at {km.ip}")
        note = _verify(kms, kcs)
        yield kcs, note
    finally:
        for kc in kcs.values():
            kc.stop_channels()
        await asyncio.gather(*(_shutdown(km) for km in kms.values()))
        store.close()
        if left := await _check_containers(owned, "encryption/kernels"):
            problems.append(left)


# -------------------------------------------------------------- 1. round trip, 2. IOPub


def _iopub_code(nbytes: int) -> str:
    return (
        "import sys\n"
        f"_line = 'x' * {LINE - 1} + '\\n'\n"
        f"for _ in range({nbytes // LINE}):\n"
        "    sys.stdout.write(_line)\n"
    )


async def _print_large(kc: Any, nbytes: int) -> float:
    """Seconds for one cell writing ``nbytes`` characters: execute_request -> reply + idle."""
    received = 0

    def hook(msg: Any) -> None:
        nonlocal received
        if msg["msg_type"] == "stream":
            received += len(msg["content"]["text"])

    t0 = time.perf_counter()
    reply = await asyncio.wait_for(
        kc.execute_interactive(
            _iopub_code(nbytes), allow_stdin=False, output_hook=hook, timeout=IOPUB_TIMEOUT
        ),
        IOPUB_TIMEOUT + 10,
    )
    elapsed = time.perf_counter() - t0
    if reply["content"].get("status") != "ok":
        raise RuntimeError(f"print cell replied {reply['content'].get('status')!r}")
    if received != nbytes:
        raise RuntimeError(f"received {received} of {nbytes} characters on iopub")
    return elapsed


def _rate_rows(
    benchmark: str, seconds: dict[str, list[float]], nbytes: int, note: str
) -> list[Row]:
    """MB/s rows (10^6 bytes/s), ratio = encrypted / plain (< 1: encrypted slower)."""
    rows = []
    rates = {v: [nbytes / s / 1e6 for s in samples] for v, samples in seconds.items()}
    base = Stats.of(rates[PLAIN]).median
    for variant, samples in rates.items():
        row = Row(NAME, benchmark, variant, "MB/s", samples)
        if variant == PLAIN:
            row.note = f"{note}; {_paired_note(rates, 1).replace('block', 'rep')}"
        else:
            row.ratio = Stats.of(samples).median / base if base else float("nan")
        rows.append(row.finish())
    return rows


def _diff_note(samples: dict[str, list[float]], scale: float, unit: str) -> str:
    a, b = Stats.of(samples[ENC]), Stats.of(samples[PLAIN])
    return f"median difference encrypted - plain: {(a.median - b.median) * scale:+.1f} {unit}"


def _paired_note(samples: dict[str, list[float]], block: int) -> str:
    """Median over block pairs of (encrypted block median / plain block median).

    Blocks i of both variants ran back to back (ABBA), so this ratio is less exposed
    to load that comes and goes on a shared machine than the ratio of overall medians.
    """
    enc, plain = samples[ENC], samples[PLAIN]
    ratios = [
        Stats.of(enc[i : i + block]).median / Stats.of(plain[i : i + block]).median
        for i in range(0, min(len(enc), len(plain)) - block + 1, block)
    ]
    if not ratios:
        return ""
    st = Stats.of(ratios)
    return f"paired block ratio: median {st.median:.3f} (min {st.min:.3f}, n={st.n})"


async def bench_kernels(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    rt_bench = "execute round trip ('pass')"
    io_bench = f"IOPub throughput (write {p['iopub_mib']} MiB)"
    problems: list[str] = []
    rt: dict[str, list[float]] = {PLAIN: [], ENC: []}
    io: dict[str, list[float]] = {}
    async with (
        _network(ctx, problems) as network,
        _kernel_pair(ctx, network, problems) as (kcs, verified),
    ):
        # (1) round trip
        await interleaved_round_trips(
            kcs,
            _execute,
            rt,
            warmup=p["rt_warmup"],
            reps=p["rt_reps"],
            block=p["rt_block"],
            execute_timeout=EXECUTE_TIMEOUT + 5,
        )
        for variant, values in rt.items():
            st = Stats.of(values)
            progress(f"round trip {variant}: median {st.median * 1e3:.3f} ms, n={st.n}")

        # (2) IOPub
        nbytes = p["iopub_mib"] * MIB
        for variant, kc in kcs.items():
            s = await _print_large(kc, nbytes // 4)
            progress(f"iopub warm-up {variant}: {nbytes / 4 / s / 1e6:.0f} MB/s")
        progress(f"iopub: {p['iopub_reps']} reps x {p['iopub_mib']} MiB each, interleaved")
        io = await run_interleaved(
            "iopub",
            {variant: functools.partial(_print_large, kc, nbytes) for variant, kc in kcs.items()},
            p["iopub_reps"],
            max_seconds=60 + 2 * p["iopub_reps"] * IOPUB_TIMEOUT,
            op_timeout=IOPUB_TIMEOUT + 20,
            report_every=1,
        )
        for variant, values in io.items():
            progress(f"iopub {variant}: " + ", ".join(f"{nbytes / x / 1e6:.0f}" for x in values))

    rows = comparison(
        NAME,
        rt_bench,
        rt,
        "ms",
        baseline=PLAIN,
        target=Target.ratio_at_most(RT_RATIO_TARGET),
        note=(
            f"blocks of {p['rt_block']}; {_diff_note(rt, 1e6, 'us')};"
            f" {_paired_note(rt, p['rt_block'])}; {verified}"
        ),
    )
    io_note = (
        f"{nbytes // LINE} x sys.stdout.write of {LINE // 1024} KiB lines; median time"
        f" plain {Stats.of(io[PLAIN]).median:.3f} s, encrypted {Stats.of(io[ENC]).median:.3f} s;"
        " ratio = encrypted / plain MB/s"
    )
    rows += _rate_rows(io_bench, io, nbytes, io_note)
    rows += [error_row(NAME, rt_bench, prob) for prob in problems]
    return rows


# ----------------------------------------------------------------- 3. pyzmq echo


# Runs in a container of the kernel image (its own pyzmq/libzmq). It makes its own
# Curve keypair and prints only the public key; it exits by itself after argv[1] s
# (or 10 million polls).
ECHO_SERVER = r"""
import sys, time, zmq
lifetime = float(sys.argv[1])
ctx = zmq.Context()
plain = ctx.socket(zmq.ROUTER)
plain.bind("tcp://0.0.0.0:5601")
curve = ctx.socket(zmq.ROUTER)
pub, sec = zmq.curve_keypair()
curve.curve_secretkey = sec
curve.curve_publickey = pub
curve.curve_server = True
curve.bind("tcp://0.0.0.0:5602")
poller = zmq.Poller()
poller.register(plain, zmq.POLLIN)
poller.register(curve, zmq.POLLIN)
print("READY", pub.decode(), flush=True)
deadline = time.monotonic() + lifetime
for _ in range(10_000_000):
    if time.monotonic() > deadline:
        break
    for sock, _ in poller.poll(1000):
        sock.send_multipart(sock.recv_multipart(zmq.NOBLOCK), copy=False)
"""
PLAIN_PORT, CURVE_PORT = 5601, 5602


def _kernel_like_message() -> list[bytes]:
    """Frames shaped like an execute_request (delimiter, HMAC, header, parent, md, content)."""
    header = {
        "msg_id": secrets.token_hex(16),
        "session": secrets.token_hex(16),
        "username": "bench",
        "date": "2026-01-01T00:00:00.000000Z",
        "msg_type": "execute_request",
        "version": "5.4",
    }
    content = {
        "code": "pass",
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    return [
        b"<IDS|MSG>",
        secrets.token_hex(32).encode(),
        json.dumps(header).encode(),
        b"{}",
        b"{}",
        json.dumps(content).encode(),
    ]


@contextlib.asynccontextmanager
async def _echo_container(network: str, problems: list[str]) -> AsyncIterator[tuple[str, bytes]]:
    """The echo server on ``network``: (its address, its Curve public key)."""
    run_id = f"ko-bench-zmq-echo-{os.getpid()}-{secrets.token_hex(3)}"

    def start(c: Any) -> Any:
        return c.containers.run(
            IMAGE,
            command=["python", "-c", ECHO_SERVER, str(ECHO_LIFETIME)],
            name=run_id,
            network=network,
            labels={BENCH_LABEL: run_id},
            detach=True,
        )

    container = None
    try:
        container = await _engine(start)
        ready: list[str] = []

        def logs(c: Any) -> str:
            return str(c.api.logs(container.id, stdout=True, stderr=True).decode(errors="replace"))

        async def is_ready() -> bool:
            text = await _engine(logs)
            ready[:] = [line for line in text.splitlines() if line.startswith("READY ")]
            return bool(ready)

        if not await poll_until(is_ready, timeout=60, interval=0.2, label="echo server ready"):
            text = await _engine(logs)
            raise RuntimeError(f"echo container not ready within 60s; log: {text[-500:]}")

        def address(c: Any) -> str:
            attrs = c.api.inspect_container(container.id)
            return str(attrs["NetworkSettings"]["Networks"][network]["IPAddress"])

        ip = await _engine(address)
        progress(f"echo server {run_id} at {ip}")
        yield ip, ready[0].split()[1].encode()
    finally:

        def remove(c: Any) -> list[str]:
            for x in c.containers.list(all=True, filters={"label": f"{BENCH_LABEL}={run_id}"}):
                with contextlib.suppress(docker.errors.NotFound):
                    x.remove(force=True, v=True)
            return [
                x.name
                for x in c.containers.list(all=True, filters={"label": f"{BENCH_LABEL}={run_id}"})
            ]

        try:
            left = await _engine(remove)
            if left:
                problems.append(f"echo container(s) not removed: {left}")
            else:
                progress(f"echo server {run_id} removed")
        except Exception as e:
            problems.append(f"echo container {run_id}: removal failed: {e!r}")


def _echo_block(sock: Any, frames: list[bytes], n: int, out: list[float]) -> float:
    """``n`` echoes, each timed (send until the reply is in); runs in a worker thread."""
    total = 0.0
    for _ in Bounded("echo block", n, 60, on_timeout="raise"):
        t0 = time.perf_counter()
        sock.send_multipart(frames, copy=False)
        reply = sock.recv_multipart(copy=False)
        dt = time.perf_counter() - t0
        if len(reply) != len(frames):
            raise RuntimeError(f"echo returned {len(reply)} frames, sent {len(frames)}")
        out.append(dt)
        total += dt
    return total


async def bench_zmq(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    small = _kernel_like_message()
    small_bytes = sum(len(f) for f in small)
    big = [secrets.token_bytes(MIB)]
    cases = [
        (
            f"pyzmq echo ({len(small)} frames, {small_bytes} B)",
            small,
            p["zmq_reps"],
            p["zmq_block"],
            "us",
            1e6,
        ),
        ("pyzmq echo (1 MiB frame)", big, p["zmq_big_reps"], p["zmq_big_block"], "ms", 1e3),
    ]
    problems: list[str] = []
    results: list[tuple[str, dict[str, list[float]], str, float, int, int]] = []
    zctx = zmq.Context()
    socks: dict[str, Any] = {}
    try:
        async with (
            _network(ctx, problems) as network,
            _echo_container(network, problems) as (ip, server_key),
        ):
            for variant, port in ((PLAIN, PLAIN_PORT), (ENC, CURVE_PORT)):
                s = zctx.socket(zmq.DEALER)
                s.linger = 0
                s.rcvtimeo = s.sndtimeo = ECHO_TIMEOUT_MS
                if variant == ENC:
                    pub, sec = zmq.curve_keypair()
                    s.curve_publickey, s.curve_secretkey = pub, sec
                    s.curve_serverkey = server_key
                s.connect(f"tcp://{ip}:{port}")
                socks[variant] = s
            try:
                for variant, s in socks.items():  # connect + handshake, untimed
                    await asyncio.to_thread(_echo_block, s, small, 50, [])
                    mech = _mechanism(s)
                    if mech != ("CURVE" if variant == ENC else "NULL"):
                        raise RuntimeError(f"{variant} echo socket negotiated {mech}")
                for bench, frames, reps, block_n, _unit, _scale in cases:
                    samples: dict[str, list[float]] = {PLAIN: [], ENC: []}

                    async def block(
                        variant: str,
                        frames: list[bytes] = frames,
                        block_n: int = block_n,
                        samples: dict[str, list[float]] = samples,
                    ) -> float:
                        return await asyncio.to_thread(
                            _echo_block, socks[variant], frames, block_n, samples[variant]
                        )

                    blocks = max(1, reps // block_n)
                    progress(f"{bench}: 1 warm-up + {blocks} blocks of {block_n}, interleaved")
                    await run_interleaved(
                        bench,
                        {variant: functools.partial(block, variant) for variant in socks},
                        blocks,
                        warmup=1,
                        max_seconds=240,
                        op_timeout=65,
                    )
                    for variant in samples:
                        del samples[variant][:block_n]  # the warm-up block
                    results.append(
                        (bench, samples, _unit, _scale, sum(len(f) for f in frames), block_n)
                    )
            finally:
                for s in socks.values():
                    s.close(linger=0)
    finally:
        zctx.destroy(linger=0)
    rows: list[Row] = []
    for bench, samples, unit, scale, size, block_n in results:
        note = f"{_diff_note(samples, scale, unit)}; {_paired_note(samples, block_n)}"
        if size >= MIB:
            rate = {v: 2 * size / Stats.of(s).median / 1e6 for v, s in samples.items()}
            note += f"; {rate[PLAIN]:.0f} vs {rate[ENC]:.0f} MB/s (both directions)"
        rows += comparison(NAME, bench, samples, unit, baseline=PLAIN, note=note)
    rows += [error_row(NAME, "pyzmq echo", prob) for prob in problems]
    return rows


BENCHMARKS = [
    Benchmark(
        "kernels",
        "encrypted vs plain Docker kernels on a Docker network: round trip, IOPub",
        bench_kernels,
    ),
    Benchmark("zmq", "pyzmq DEALER/ROUTER echo to a container: CURVE vs NULL", bench_zmq),
]
