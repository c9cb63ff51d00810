"""Timing helpers shared by every benchmark scenario.

Nothing here imports Jupyter: ``bench.run`` points the Jupyter directories at a
temporary tree (:func:`isolated_jupyter_env`) *before* any scenario imports
jupyter_client, so a benchmark never touches the user's runtime or data dirs.

The pieces:

* :class:`Bounded` -- the loop guard. Every loop in a benchmark is bounded both in
  iterations and in wall time; a loop that runs out of time stops (or raises) instead
  of hanging the run. Single awaits are bounded with :func:`timed` / ``asyncio.wait_for``.
* :func:`run_interleaved` -- N repetitions of several variants (stock vs ours), in
  ABBA order, so that machine noise (other processes, CPU frequency, page cache)
  hits every variant equally.
* :class:`Stats`, :class:`Row`, :class:`Target` -- the numbers, one table row per
  (benchmark, variant), with a ratio to the baseline and an informational PASS/MISS.
* :func:`format_table`, :func:`write_json` -- output.
* :func:`kernel_processes`, :func:`reap` -- find and stop kernel processes a run left
  behind, by pid, restricted to the run's own temporary tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- progress


def progress(msg: str) -> None:
    """A progress line on stderr (stdout is kept for the result table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- loop guard


class LoopBudgetExceeded(RuntimeError):
    """A bounded loop ran out of wall time and was told to raise."""


class Bounded:
    """Iterate at most ``count`` times and for at most ``seconds`` of wall time.

    ``for i in Bounded("start reps", 10, 120): ...`` yields 0..9 but stops before an
    iteration that would begin after the deadline. With ``on_timeout="raise"`` that
    is a :class:`LoopBudgetExceeded`; with ``"stop"`` (default) the loop just ends and
    ``truncated`` is set, so a benchmark reports fewer samples instead of hanging.
    The deadline is checked between iterations; bound each iteration's own awaits
    with a timeout too.
    """

    def __init__(self, label: str, count: int, seconds: float, *, on_timeout: str = "stop"):
        if count < 0 or seconds <= 0:
            raise ValueError("a bounded loop needs count >= 0 and seconds > 0")
        if on_timeout not in ("stop", "raise"):
            raise ValueError("on_timeout must be 'stop' or 'raise'")
        self.label = label
        self.count = count
        self.seconds = seconds
        self.on_timeout = on_timeout
        self.iterations = 0
        self.truncated = False
        self._start: float | None = None

    @property
    def elapsed(self) -> float:
        return 0.0 if self._start is None else time.monotonic() - self._start

    @property
    def remaining(self) -> float:
        return max(0.0, self.seconds - self.elapsed)

    def __iter__(self) -> Iterator[int]:
        self._start = time.monotonic()
        for i in range(self.count):
            if self.elapsed > self.seconds:
                self.truncated = True
                msg = (
                    f"{self.label}: wall-time budget of {self.seconds:g}s used up after"
                    f" {i} of {self.count} iterations"
                )
                if self.on_timeout == "raise":
                    raise LoopBudgetExceeded(msg)
                progress(f"WARNING {msg}; stopping early")
                return
            self.iterations = i + 1
            yield i


async def poll_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float,
    interval: float = 0.05,
    label: str = "condition",
) -> bool:
    """Poll ``predicate`` until it is true; False if ``timeout`` passes first."""
    count = math.ceil(timeout / interval) + 1
    for _ in Bounded(label, count, timeout + interval, on_timeout="stop"):
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return True
        await asyncio.sleep(interval)
    return False


async def timed(awaitable: Awaitable[Any], timeout: float) -> tuple[float, Any]:
    """``(seconds, result)`` of one await, bounded by ``timeout`` (asyncio.TimeoutError)."""
    t0 = time.perf_counter()
    result = await asyncio.wait_for(awaitable, timeout)
    return time.perf_counter() - t0, result


def abba(rep: int, variants: Sequence[str]) -> list[str]:
    """The order of variants in repetition ``rep``: A B, B A, A B, ... (ABBA over pairs)."""
    return list(variants) if rep % 2 == 0 else list(reversed(variants))


async def run_interleaved(
    label: str,
    variants: Mapping[str, Callable[[], Awaitable[float]]],
    reps: int,
    *,
    max_seconds: float,
    op_timeout: float,
    warmup: int = 0,
    report_every: int = 0,
) -> dict[str, list[float]]:
    """Run every variant ``reps`` times, interleaved (ABBA), and collect their timings.

    Each variant is a coroutine function doing one repetition -- its own setup and
    teardown included -- and returning the seconds of the part being measured. Each
    call is bounded by ``op_timeout``; the whole (warm-up and timed) by ``max_seconds``.
    """
    names = list(variants)
    deadline = time.monotonic() + max_seconds
    for i in Bounded(f"{label} warm-up", warmup, max_seconds):
        for name in abba(i, names):
            await asyncio.wait_for(variants[name](), op_timeout)
    samples: dict[str, list[float]] = {name: [] for name in names}
    loop = Bounded(label, reps, max(1e-3, deadline - time.monotonic()))
    for i in loop:
        for name in abba(i, names):
            samples[name].append(await asyncio.wait_for(variants[name](), op_timeout))
        if report_every and (i + 1) % report_every == 0:
            progress(f"{label}: {i + 1}/{reps}")
    return samples


# --------------------------------------------------------------------------- scenarios


@dataclass
class Context:
    """What a benchmark gets: the mode and the run's private temporary tree."""

    quick: bool
    root: Path  # the isolated tree (see isolated_jupyter_env); kernels' files live in it

    def path(self, name: str) -> Path:
        return self.root / name

    def store_url(self, name: str) -> str:
        return f"sqlite:///{self.root / name}"


@dataclass
class Benchmark:
    """One named benchmark of a scenario: ``run(ctx)`` returns its table rows.

    A benchmark must clean up everything it started, even when it fails
    (try/finally); ``bench.run`` also kills kernel processes of the run left behind.
    """

    name: str
    description: str
    run: Callable[[Context], Awaitable[list[Row]]]


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Stats:
    n: int
    median: float
    p90: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        s = sorted(samples)
        if not s:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            n=len(s),
            median=statistics.median(s),
            p90=percentile(s, 90),
            min=s[0],
            max=s[-1],
            mean=statistics.fmean(s),
        )


# --------------------------------------------------------------------------- rows, targets

# Samples are passed in seconds and scaled to the row's unit; rates ("MB/s", 10^6
# bytes per second) and counts are passed as they are.
UNIT_SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6, "count": 1.0, "MB/s": 1.0, "MB": 1.0}


@dataclass
class Target:
    """An informational goal for one row. Misses are reported, never asserted."""

    description: str
    # "ratio_max": ratio <= limit; "ratio_min": ratio >= limit (rates: higher is better);
    # "value_max": <stat> < limit; "value_at_most": <stat> <= limit;
    # "value_min": <stat> >= limit (values in the row's unit)
    kind: str
    limit: float
    stat: str = "median"

    @classmethod
    def ratio_at_most(cls, limit: float) -> Target:
        return cls(f"ratio <= {limit:g}", "ratio_max", limit)

    @classmethod
    def ratio_at_least(cls, limit: float) -> Target:
        return cls(f"ratio >= {limit:g}", "ratio_min", limit)

    @classmethod
    def at_most(cls, limit: float, unit: str = "", stat: str = "median") -> Target:
        return cls(f"{stat} <= {limit:g} {unit}".rstrip(), "value_at_most", limit, stat)

    @classmethod
    def below(cls, limit: float, unit: str, stat: str = "median") -> Target:
        return cls(f"{stat} < {limit:g} {unit}", "value_max", limit, stat)

    @classmethod
    def at_least(cls, limit: float, description: str = "", stat: str = "median") -> Target:
        return cls(description or f"{stat} >= {limit:g}", "value_min", limit, stat)

    def evaluate(self, row: Row) -> str:
        if row.error or row.stats is None or row.stats.n == 0:
            return "ERROR" if row.error else "n/a"
        if self.kind == "ratio_max":
            if row.ratio is None or math.isnan(row.ratio):
                return "n/a"
            return "PASS" if row.ratio <= self.limit else "MISS"
        if self.kind == "ratio_min":
            if row.ratio is None or math.isnan(row.ratio):
                return "n/a"
            return "PASS" if row.ratio >= self.limit else "MISS"
        if self.kind == "value_at_most":
            return "PASS" if getattr(row.stats, self.stat) <= self.limit else "MISS"
        if self.kind == "value_max":
            return "PASS" if getattr(row.stats, self.stat) < self.limit else "MISS"
        if self.kind == "value_min":
            return "PASS" if getattr(row.stats, self.stat) >= self.limit else "MISS"
        raise ValueError(f"unknown target kind {self.kind!r}")


@dataclass
class Row:
    """One table line: a benchmark's numbers for one variant, in ``unit``."""

    scenario: str
    benchmark: str
    variant: str
    unit: str
    samples: list[float] = field(default_factory=list)  # already in ``unit``
    stats: Stats | None = None
    ratio: float | None = None  # median / baseline median
    target: Target | None = None
    result: str = ""
    note: str = ""
    error: str = ""

    def finish(self) -> Row:
        if self.stats is None and self.samples:
            self.stats = Stats.of(self.samples)
        if self.target is not None:
            self.result = self.target.evaluate(self)
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "benchmark": self.benchmark,
            "variant": self.variant,
            "unit": self.unit,
            "stats": None if self.stats is None else self.stats.__dict__,
            "ratio": self.ratio,
            "target": None if self.target is None else self.target.description,
            "result": self.result,
            "note": self.note,
            "error": self.error,
            "samples": self.samples,
        }


def scaled(samples_s: Sequence[float], unit: str) -> list[float]:
    return [v * UNIT_SCALE[unit] for v in samples_s]


def measurement(
    scenario: str,
    benchmark: str,
    variant: str,
    samples_s: Sequence[float],
    unit: str,
    *,
    target: Target | None = None,
    note: str = "",
) -> Row:
    """A row for one variant with no baseline (samples in seconds)."""
    return Row(
        scenario, benchmark, variant, unit, scaled(samples_s, unit), target=target, note=note
    ).finish()


def concurrent_start_rows(
    scenario: str,
    benchmark: str,
    variant: str,
    n: int,
    wall: float,
    ready: Sequence[float],
    *,
    note: str = "",
    wall_note: str = "",
) -> list[Row]:
    """The rows every "n kernels started at once" benchmark reports: the wall time,
    each kernel's time to ready, and how many got ready (target: all n)."""
    return [
        measurement(scenario, f"{benchmark}: wall", variant, [wall], "s", note=wall_note),
        measurement(scenario, f"{benchmark}: per kernel to ready", variant, ready, "s"),
        measurement(
            scenario,
            f"{benchmark}: kernels ready",
            variant,
            [float(len(ready))],
            "count",
            target=Target.at_least(n, f"{n}/{n} ready, 0 failed"),
            note=note,
        ),
    ]


def comparison(
    scenario: str,
    benchmark: str,
    samples_s: Mapping[str, Sequence[float]],
    unit: str,
    *,
    baseline: str = "stock",
    target: Target | None = None,
    note: str = "",
) -> list[Row]:
    """Rows for a baseline and the other variants, each with its median ratio to the baseline.

    The target (usually :meth:`Target.ratio_at_most`) applies to the non-baseline rows.
    """
    base = Stats.of(scaled(samples_s[baseline], unit))
    rows = []
    for variant, samples in samples_s.items():
        row = Row(scenario, benchmark, variant, unit, scaled(samples, unit))
        row.stats = Stats.of(row.samples)
        if variant == baseline:
            row.note = note
        else:
            row.ratio = row.stats.median / base.median if base.median else math.nan
            row.target = target
        rows.append(row.finish())
    return rows


def error_row(scenario: str, benchmark: str, error: str) -> Row:
    return Row(scenario, benchmark, "-", "", error=error, result="ERROR")


# --------------------------------------------------------------------------- output


def fmt_num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.3f}"
    return f"{v:.4f}"


def format_table(rows: Sequence[Row]) -> str:
    headers = [
        "scenario",
        "benchmark",
        "variant",
        "n",
        "median",
        "p90",
        "min",
        "unit",
        "ratio",
        "target",
        "result",
    ]
    lines: list[list[str]] = []
    for r in rows:
        s = r.stats
        lines.append(
            [
                r.scenario,
                r.benchmark,
                r.variant,
                str(s.n) if s else "-",
                fmt_num(s.median) if s else "-",
                fmt_num(s.p90) if s else "-",
                fmt_num(s.min) if s else "-",
                r.unit,
                "-" if r.ratio is None else f"{r.ratio:.3f}",
                r.target.description if r.target else "",
                r.result,
            ]
        )
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
        for i, h in enumerate(headers)
    ]
    right = {"n", "median", "p90", "min", "ratio"}

    def render(cells: Sequence[str]) -> str:
        out = []
        for h, c, w in zip(headers, cells, widths, strict=True):
            out.append(c.rjust(w) if h in right else c.ljust(w))
        return "  ".join(out).rstrip()

    text = [render(headers), render(["-" * w for w in widths])]
    text += [render(line) for line in lines]
    notes = [(r.benchmark, r.variant, r.note) for r in rows if r.note]
    errors = [(r.benchmark, r.error) for r in rows if r.error]
    if notes:
        text.append("")
        text += [f"note: {b} [{v}]: {n}" for b, v, n in notes]
    if errors:
        text.append("")
        text += [f"ERROR: {b}: {e}" for b, e in errors]
    results = [r.result for r in rows if r.target is not None]
    if results:
        text.append("")
        text.append(
            "targets (informational): "
            + ", ".join(
                f"{results.count(k)} {k}"
                for k in ("PASS", "MISS", "ERROR", "n/a")
                if results.count(k)
            )
        )
    return "\n".join(text)


def environment_info() -> dict[str, Any]:
    """Facts about the machine and versions, for the header and the JSON output."""
    info: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    for mod in ("jupyter_client", "ipykernel", "zmq", "orchestrator"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = "?"
    return info


def write_json(path: str | os.PathLike[str], rows: Sequence[Row], meta: dict[str, Any]) -> None:
    data = {"meta": meta, "results": [r.to_json() for r in rows]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- environment


@contextlib.contextmanager
def isolated_jupyter_env(keep: bool = False) -> Iterator[Path]:
    """A temporary tree for every Jupyter/IPython directory, set in ``os.environ``.

    Call it before anything imports jupyter_client. The previous environment is
    restored, and the tree removed (unless ``keep``), on exit.
    """
    root = Path(tempfile.mkdtemp(prefix="ko-bench-"))
    dirs = {
        "JUPYTER_RUNTIME_DIR": root / "runtime",
        "JUPYTER_DATA_DIR": root / "data",
        "JUPYTER_CONFIG_DIR": root / "config",
        "IPYTHONDIR": root / "ipython",
    }
    saved = {k: os.environ.get(k) for k in [*dirs, "KERNEL_ORCHESTRATOR_STORE"]}
    for key, path in dirs.items():
        path.mkdir(mode=0o700)
        os.environ[key] = str(path)
    # Anything that falls back to the default store must not find the user's.
    os.environ["KERNEL_ORCHESTRATOR_STORE"] = f"sqlite:///{root / 'default-store.db'}"
    try:
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if keep:
            progress(f"kept temporary tree {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- processes


def open_fds(pid: int | str = "self") -> int:
    """Descriptors process ``pid`` (this one by default) has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of process ``pid`` (this one by default), in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def kernel_processes(marker: str, pattern: str = "ipykernel") -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose command line holds both ``pattern`` and ``marker``.

    ``marker`` is the run's temporary tree: every kernel a run starts has its
    connection file there, so other people's kernels on the machine are never matched.
    """
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid=,stat=,args="],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    me = os.getpid()
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        pid_s, stat, args = parts
        if not pid_s.isdigit() or int(pid_s) == me or stat.startswith("Z"):
            continue
        if pattern in args and marker in args:
            found.append((int(pid_s), args))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def reap(pids: Sequence[int], grace: float = 3.0) -> list[int]:
    """TERM, then KILL, the given pids (only those; never by name). Returns those still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        for _ in Bounded("reap", int(grace / 0.05) + 1, grace + 1):
            if not any(_alive(p) for p in pids):
                return []
            time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def check_leftovers(marker: str, label: str) -> list[tuple[int, str]]:
    """Kill any kernel process of this run still alive; return what was found."""
    left = kernel_processes(marker)
    if left:
        progress(f"WARNING {label}: {len(left)} kernel process(es) left running; killing them:")
        for pid, args in left:
            progress(f"  pid {pid}: {args[:160]}")
        still = reap([pid for pid, _ in left])
        if still:
            progress(f"WARNING {label}: could not kill pids {still}")
    return left


async def interleaved_round_trips(
    clients: Mapping[str, Any],
    execute: Callable[[Any], Awaitable[float]],
    samples: dict[str, list[float]],
    *,
    warmup: int,
    reps: int,
    block: int,
    execute_timeout: float,
) -> None:
    """Warm each client up, then time ``reps`` executes per client in interleaved blocks.

    Blocks of ``block`` executes alternate between clients (ABBA), so load that comes
    and goes hits every variant alike; each execute's seconds go to ``samples[name]``.
    """
    for name, client in clients.items():
        for _ in Bounded(f"{name} warm-up", warmup, 60, on_timeout="raise"):
            await asyncio.wait_for(execute(client), execute_timeout)

    async def one_block(name: str) -> float:
        total = 0.0
        for _ in Bounded(f"{name} block", block, 60, on_timeout="raise"):
            seconds = await asyncio.wait_for(execute(clients[name]), execute_timeout)
            samples[name].append(seconds)
            total += seconds
        return total

    blocks = max(1, reps // block)
    progress(
        f"round trip: {warmup} warm-up + {blocks} blocks of {block} executes each,"
        " interleaved (ABBA over blocks)"
    )
    await run_interleaved(
        "round trip",
        {name: functools.partial(one_block, name) for name in clients},
        blocks,
        max_seconds=300,
        op_timeout=65,
        report_every=max(1, blocks // 4),
    )


async def start_all_at_once(
    what: str, n: int, one: Callable[[float], Awaitable[float]], timeout: float
) -> tuple[float, list[float], list[BaseException]]:
    """Run ``n`` copies of ``one(t0)`` at once (each returns its seconds to ready).

    Returns the wall time, the sorted times of those that got ready, and the failures.
    """
    progress(f"concurrent: starting {n} {what} at once")
    t0 = time.perf_counter()
    results = await asyncio.wait_for(
        asyncio.gather(*(one(t0) for _ in range(n)), return_exceptions=True), timeout
    )
    wall = time.perf_counter() - t0
    ready = sorted(r for r in results if isinstance(r, float))
    errors = [r for r in results if isinstance(r, BaseException)]
    progress(
        f"concurrent: {len(ready)}/{n} ready, {len(errors)} failed, wall {wall:.2f}s;"
        " per kernel: " + ", ".join(f"{x:.2f}" for x in ready)
    )
    for e in errors[:5]:
        progress(f"  failed: {e}")
    return wall, ready, errors
