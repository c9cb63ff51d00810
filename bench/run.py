"""Run benchmark scenarios and print a table.

    python -m bench.run [--scenario core] [--quick] [--json FILE] [--only start,reattach]

Progress goes to stderr, the table to stdout. Targets are informational: a MISS
never changes the exit status. The exit status is 1 if a benchmark crashed or left
kernel processes running (they are killed), 130 on Ctrl-C, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import traceback
from typing import Any

# Only modules that do not import Jupyter: the Jupyter directories are redirected to
# a temporary tree (bench.harness.isolated_jupyter_env) before any scenario is loaded.
from bench import harness
from bench.scenarios import SCENARIOS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "all"],
        help="scenario to run (repeatable; default: core)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer repetitions and sizes (a smoke run, numbers are rougher)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results (with samples) as JSON")
    p.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated benchmark names within the scenario(s), e.g. start,reattach",
    )
    p.add_argument("--list", action="store_true", help="list scenarios and benchmarks, then exit")
    p.add_argument(
        "--keep-tmp",
        action="store_true",
        help="keep the temporary Jupyter tree (stores, kernel logs) for inspection",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="run under cProfile (main thread only), dump pstats to FILE and print"
        " the top functions; timings under the profiler are not comparable",
    )
    return p


class _Terminated(BaseException):  # not caught by the per-benchmark handler
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    # Turn SIGTERM into an exception so that every finally block (kernel shutdown,
    # leftover check) still runs: our kernels are independent of this process.
    raise _Terminated()


def _run_benchmarks(args: argparse.Namespace, root: Any, rows: list[harness.Row]) -> None:
    from bench.scenarios import load

    names = args.scenario or ["core"]
    if "all" in names:
        names = list(SCENARIOS)
    only = {x.strip() for x in args.only.split(",")} if args.only else None
    for scenario in names:
        module = load(scenario)
        known = {b.name for b in module.BENCHMARKS}
        if only and not only & known:
            harness.progress(f"scenario {scenario}: none of {sorted(only)} (has {sorted(known)})")
        for bench in module.BENCHMARKS:
            if only and bench.name not in only:
                continue
            ctx = harness.Context(quick=args.quick, root=root)
            harness.progress(f"== {scenario}/{bench.name}: {bench.description}")
            t0 = time.monotonic()
            try:
                rows += asyncio.run(bench.run(ctx))
            except Exception as e:
                traceback.print_exc()
                rows.append(harness.error_row(scenario, bench.name, repr(e)))
            finally:
                left = harness.check_leftovers(str(root), f"{scenario}/{bench.name}")
                if left:
                    rows.append(
                        harness.error_row(
                            scenario,
                            bench.name,
                            f"{len(left)} kernel process(es) left running (now killed)",
                        )
                    )
            harness.progress(f"== {scenario}/{bench.name} done in {time.monotonic() - t0:.1f}s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        from bench.scenarios import load

        with harness.isolated_jupyter_env():
            for name in SCENARIOS:
                module = load(name)
                print(f"{name}: {module.DESCRIPTION}")
                for b in module.BENCHMARKS:
                    print(f"  {b.name:<12} {b.description}")
        return 0

    signal.signal(signal.SIGTERM, _on_sigterm)
    rows: list[harness.Row] = []
    status = 0
    with harness.isolated_jupyter_env(keep=args.keep_tmp) as root:
        meta = harness.environment_info()
        meta.update({"quick": args.quick, "argv": sys.argv[1:]})
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        try:
            _run_benchmarks(args, root, rows)
        except (KeyboardInterrupt, _Terminated):
            harness.progress("interrupted")
            status = 130
        finally:
            if profiler is not None:
                profiler.disable()
            left = harness.check_leftovers(str(root), "end of run")
            if left:
                rows.append(
                    harness.error_row(
                        "-", "end of run", f"{len(left)} kernel process(es) left (killed)"
                    )
                )
        if profiler is not None:
            import pstats

            profiler.dump_stats(args.profile)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)

    meta["loadavg_end"] = harness.environment_info().get("loadavg")
    print(
        f"kernel-orchestrator benchmarks  {meta['time']}  host={meta['host']} "
        f"cpus={meta['cpus']} python={meta['python']} jupyter_client={meta['jupyter_client']}"
        f" ipykernel={meta['ipykernel']} quick={args.quick} loadavg={meta.get('loadavg')}"
        f"->{meta['loadavg_end']}"
    )
    print(harness.format_table(rows))
    if args.json:
        harness.write_json(args.json, rows, meta)
        harness.progress(f"wrote {args.json}")
    if status:
        return status
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
