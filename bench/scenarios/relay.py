"""Relay scenario: what the Curve relay beside a kernel costs, measured side by side.

Docker kernels from ``kernel-orchestrator/kernel-multi:latest`` on a Docker network
this scenario creates (the encryption scenario's), ``reachability: network``, all
``orchestrator.AsyncKernelManager`` with an SQLite store. Two pairs, each differing
in one setting only:

* **xeus-python** (cannot do CurveZMQ): ``relay`` (the default where traffic leaves the
  machine) vs ``plain`` (``transport_encryption: disabled``): what encrypting a kernel
  that cannot encrypt costs;
* **ipykernel** (can): ``relay`` (``metadata.kernel_orchestrator.encryption: relay``)
  vs ``native`` (its own CurveZMQ): what the relay costs over native encryption.

Rows per pair: start-to-ready (``start_kernel`` until a client's ``wait_for_ready``),
execute round trip of a trivial cell (interleaved blocks, ABBA), and IOPub throughput
of one cell printing N MiB (interleaved). Before measuring, each kernel's
``provisioner.encryption`` is checked to be what its variant says.

Targets (informational): round trip through the relay at most 0.3 ms above the other
variant; IOPub throughput at least 0.8 of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orchestrator
from bench.harness import (
    Benchmark,
    Context,
    Row,
    Stats,
    Target,
    comparison,
    error_row,
    interleaved_round_trips,
    progress,
    run_interleaved,
)
from bench.scenarios.core import _ready_client, _shutdown
from bench.scenarios.docker import Owned, _check_containers
from bench.scenarios.encryption import LINE, MIB, _network, _print_large
from orchestrator.store import open_store

NAME = "relay"
DESCRIPTION = (
    "Curve relay cost: xeus-python relayed vs plain, ipykernel relayed vs native Curve"
    " (start, round trip, IOPub), Docker kernels on a Docker network"
)

IMAGE = "kernel-orchestrator/kernel-multi:latest"
REPO = Path(__file__).resolve().parents[2]
RELAY, PLAIN, NATIVE = "relay", "plain", "native"
PAIRS = {
    "xeus-python": (["python", "-m", "xpython_launcher", "-f", "{connection_file}"], PLAIN),
    "ipykernel": (["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"], NATIVE),
}
RT_EXTRA_TARGET_MS = 0.3
IO_RATIO_TARGET = 0.8
START_TIMEOUT = 90.0
EXECUTE_TIMEOUT = 10.0
IOPUB_TIMEOUT = 180.0


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "starts": 2,
            "rt_reps": 60,
            "rt_block": 10,
            "rt_warmup": 10,
            "io_mib": 10,
            "io_reps": 2,
        }
    return {
        "starts": 5,
        "rt_reps": 300,
        "rt_block": 10,
        "rt_warmup": 30,
        "io_mib": 50,
        "io_reps": 4,
    }


def _build_image(log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(
            ["bash", str(REPO / "docker" / "build.sh"), "--offline-base", "--only", "kernel-multi"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
            check=True,
        )


def _kernelspec(pair: str, variant: str, network: str) -> str:
    argv, _ = PAIRS[pair]
    config: dict[str, Any] = {
        "image": IMAGE,
        "reachability": "network",
        "network": network,
        "egress": "unmanaged",
    }
    metadata: dict[str, Any] = {
        "kernel_provisioner": {"provisioner_name": "docker-provisioner", "config": config}
    }
    if variant == PLAIN:
        config["transport_encryption"] = "disabled"
    if pair == "ipykernel":
        metadata["kernel_orchestrator"] = {"encryption": "relay" if variant == RELAY else "native"}
    name = f"ko-bench-relay-{pair}-{variant}"
    spec_dir = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": name, "language": "python", "metadata": metadata})
    )
    return name


@contextlib.asynccontextmanager
async def _pair(
    ctx: Context, pair: str, network: str, problems: list[str], starts: dict[str, list[float]]
) -> AsyncIterator[dict[str, Any]]:
    """The pair's two kernels, ready and verified ({variant: client}); ``starts``
    gets the start-to-ready seconds of the kernels started on the way (the last of
    ``reps`` starts of each variant is the one kept)."""
    _, other = PAIRS[pair]
    owned = Owned()
    store = owned.add_store(open_store(ctx.store_url(f"relay-{pair}.db")))
    kms: dict[str, Any] = {}
    kcs: dict[str, Any] = {}
    try:
        for variant in (RELAY, other):
            name = _kernelspec(pair, variant, network)
            km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
            finally:
                owned.add_km(km)
            kcs[variant] = await _ready_client(km)
            starts.setdefault(variant, []).append(time.perf_counter() - t0)
            kms[variant] = km
            got = km.provisioner.encryption
            want = {RELAY: "relay", PLAIN: "plain", NATIVE: "curve"}[variant]
            if got != want:
                raise RuntimeError(f"{pair} {variant}: encryption is {got!r}, not {want!r}")
        yield kcs
    finally:
        for kc in kcs.values():
            kc.stop_channels()
        await asyncio.gather(*(_shutdown(km) for km in kms.values()))
        store.close()
        if left := await _check_containers(owned, f"relay/{pair}"):
            problems.append(left)


async def _execute(kc: Any) -> float:
    t0 = time.perf_counter()
    reply = await kc.execute_interactive("pass", timeout=EXECUTE_TIMEOUT)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"execute replied {reply['content']['status']!r}")
    return time.perf_counter() - t0


async def _bench_pair(ctx: Context, pair: str) -> list[Row]:
    p = _params(ctx.quick)
    _, other = PAIRS[pair]
    problems: list[str] = []
    starts: dict[str, list[float]] = {}
    rt: dict[str, list[float]] = {RELAY: [], other: []}
    io: dict[str, list[float]] = {}
    nbytes = p["io_mib"] * MIB
    await asyncio.to_thread(_build_image, ctx.path("docker-build.log"))
    async with _network(ctx, problems) as network:
        for _ in range(p["starts"] - 1):  # the start-up samples; the last pair is measured on
            async with _pair(ctx, pair, network, problems, starts):
                pass
        async with _pair(ctx, pair, network, problems, starts) as kcs:
            await interleaved_round_trips(
                kcs,
                _execute,
                rt,
                warmup=p["rt_warmup"],
                reps=p["rt_reps"],
                block=p["rt_block"],
                execute_timeout=EXECUTE_TIMEOUT + 5,
            )
            for kc in kcs.values():
                await _print_large(kc, nbytes // 10)  # warm-up
            io = await run_interleaved(
                "iopub",
                {v: functools.partial(_print_large, kc, nbytes) for v, kc in kcs.items()},
                p["io_reps"],
                max_seconds=60 + 2 * p["io_reps"] * IOPUB_TIMEOUT,
                op_timeout=IOPUB_TIMEOUT + 20,
                report_every=1,
            )
    rows = comparison(NAME, f"{pair}: start-to-ready", starts, "s", baseline=other)
    extra_ms = (Stats.of(rt[RELAY]).median - Stats.of(rt[other]).median) * 1e3
    rt_rows = comparison(
        NAME,
        f"{pair}: execute round trip ('pass')",
        rt,
        "ms",
        baseline=other,
        note=f"relay - {other}: {extra_ms:+.3f} ms (target <= +{RT_EXTRA_TARGET_MS} ms)",
    )
    for row in rt_rows:
        if row.variant == RELAY:
            base = Stats.of([x * 1e3 for x in rt[other]]).median
            row.target = Target.at_most(base + RT_EXTRA_TARGET_MS, "ms")
            row.finish()
    rows += rt_rows
    rates = {v: [nbytes / s / 1e6 for s in samples] for v, samples in io.items()}
    base_rate = Stats.of(rates[other]).median
    for variant, samples in rates.items():
        row = Row(NAME, f"{pair}: IOPub throughput ({p['io_mib']} MiB)", variant, "MB/s", samples)
        if variant == RELAY:
            row.ratio = Stats.of(samples).median / base_rate if base_rate else float("nan")
            row.target = Target.ratio_at_least(IO_RATIO_TARGET)
        else:
            row.note = f"{nbytes // LINE} writes of {LINE // 1024} KiB; ratio = relay / {other}"
        rows.append(row.finish())
    rows += [error_row(NAME, pair, prob) for prob in problems]
    progress(f"{pair}: round trip relay {extra_ms:+.3f} ms vs {other}")
    return rows


async def bench_xeus(ctx: Context) -> list[Row]:
    return await _bench_pair(ctx, "xeus-python")


async def bench_ipykernel(ctx: Context) -> list[Row]:
    return await _bench_pair(ctx, "ipykernel")


BENCHMARKS = [
    Benchmark("xeus", "xeus-python: relayed vs plain", bench_xeus),
    Benchmark("ipykernel", "ipykernel: relayed vs its own CurveZMQ", bench_ipykernel),
]
