"""Entry point of ``kernel-orchestrator``: argument parsing and error reporting.

Expected failures (:class:`OrchestratorError`) print one line, ``error: ...``, and
exit 1; argument errors exit 2 (argparse); Ctrl-C exits 130. A traceback is shown only
with ``--log-level DEBUG``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from .. import __version__
from ..errors import OrchestratorError
from ..store import KernelStore, open_store
from . import commands


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. ``kernelspec install``'s options come from every installed
    provisioner, whose classes are loaded for it (and only for it, ``argv`` says: the
    Kubernetes client alone takes seconds to import, which every other command of a
    script would pay)."""
    args = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="kernel-orchestrator",
        description="Run Jupyter kernels locally or remotely; every command re-attaches"
        " to kernels from the kernel store, so kernels outlive the command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    store_help = (
        "kernel store: postgresql://USER@HOST:PORT/DB (several gateway replicas) or"
        " sqlite:///path.db; default $KERNEL_ORCHESTRATOR_STORE, else an SQLite file in the"
        " Jupyter data dir"
    )
    log_levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    parser.add_argument("--store", metavar="URL", help=store_help)
    parser.add_argument("--log-level", default="WARNING", choices=log_levels)
    # The same options after the sub-command (``serve --store URL``); given there they
    # win, absent there they leave the top-level value alone.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=store_help)
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=log_levels)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_command = functools.partial(sub.add_parser, parents=[common])

    p = add_command("start", help="start a kernel and print its id")
    p.add_argument("kernelspec", help="kernelspec name, e.g. python3")
    p.add_argument("--json", action="store_true", help="print the kernel's record as JSON")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cwd", help="working directory of the kernel")
    p.add_argument(
        "--timeout",
        type=_positive,
        default=60.0,
        help="seconds to wait for the kernel to be ready (default 60)",
    )
    p.set_defaults(run=commands.cmd_start)

    p = add_command("list", help="list kernels in the store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=commands.cmd_list)

    p = add_command("exec", help="run code in a kernel, streaming its output")
    p.add_argument("kernel_id")
    p.add_argument("code", help="code to run ('-' reads it from stdin)")
    p.add_argument(
        "--timeout",
        type=_positive,
        default=30.0,
        help="seconds to wait for the kernel to respond (default 30)",
    )
    p.add_argument(
        "--exec-timeout",
        type=_positive,
        default=None,
        help="seconds the code may run before it is interrupted (default: no limit)",
    )
    p.set_defaults(run=commands.cmd_exec)

    force_help = (
        "take the kernel over from the process that owns it (a gateway, say): that"
        " owner is fenced, its restarter stops and it drops the kernel"
    )
    p = add_command("interrupt", help="interrupt a kernel")
    p.add_argument("kernel_id")
    p.add_argument("--force", action="store_true", help=force_help)
    p.set_defaults(run=commands.cmd_interrupt)

    p = add_command("restart", help="restart a kernel (same id)")
    p.add_argument("kernel_id")
    p.add_argument("--now", action="store_true", help="kill instead of asking it to stop")
    p.add_argument("--timeout", type=_positive, default=60.0)
    p.add_argument("--force", action="store_true", help=force_help)
    p.set_defaults(run=commands.cmd_restart)

    for name, summary in (
        ("shutdown", "shut down a kernel, or all with --all"),
        ("forget", "remove a kernel whose host is gone (shutdown --force)"),
    ):
        p = add_command(name, help=summary)
        p.add_argument("kernel_id", nargs="?")
        p.add_argument("--all", action="store_true")
        p.add_argument("--now", action="store_true", help="kill instead of asking it to stop")
        p.add_argument(
            "--force",
            action="store_true",
            default=name == "forget",
            help="fence the kernel's owner, clean up what can be reached, and remove the"
            " record even if its host or engine is gone (saying what may be left behind)",
        )
        p.add_argument(
            "--cleanup-timeout",
            type=_positive,
            default=20.0,
            help="with --force: seconds cleanup may take before the record is removed anyway",
        )
        p.set_defaults(run=commands.cmd_shutdown)

    p = add_command("gc", help="remove stale records and orphaned kernels")
    p.add_argument("--dry-run", action="store_true", help="only report what would go")
    p.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="spare orphans younger than this many seconds (default 60)",
    )
    p.set_defaults(run=commands.cmd_gc)

    p = add_command("serve", help="serve kernels over HTTP/WebSocket (a kernel gateway)")
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8888)
    p.add_argument(
        "--token",
        metavar="-",
        help="'-': read the operator's access token from stdin (a token given in argv is"
        " refused: every local user can read argv). Default: --token-file, else"
        " $KERNEL_ORCHESTRATOR_TOKEN, else generated and printed once",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="read the operator's access token from this file (mode 600 or 440)",
    )
    p.add_argument("--users-file", help="JSON file {token: user name} for per-user access")
    p.add_argument(
        "--hub",
        action="store_true",
        help="serve a JupyterHub's users: requests carry Hub tokens, checked with the Hub at"
        " $JUPYTERHUB_API_URL; the gateway's service token is $JUPYTERHUB_API_TOKEN"
        " (default when the Hub starts the gateway as a service)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve WITHOUT authentication (never on a shared network)",
    )
    p.add_argument("--allow-root", action="store_true", help="allow running as root")
    p.add_argument(
        "--warm-pool",
        action="append",
        default=[],
        metavar="KERNELSPEC=N",
        help="keep N started kernels of KERNELSPEC ready (repeatable)",
    )
    p.add_argument(
        "--host-kernels",
        action="append",
        default=[],
        metavar="KERNELSPEC=ACCOUNT",
        help="with --users-file: let KERNELSPEC (a local one) run on this host, each user's"
        " kernels as the OS account ACCOUNT, which must contain {username} (repeatable)",
    )
    p.add_argument(
        "--max-kernels", type=int, default=None, help="most kernels in total (default 0: no cap)"
    )
    p.add_argument(
        "--max-kernels-per-user",
        type=int,
        default=None,
        help="most kernels per user (default 10; 0: no cap); the operator is not capped",
    )
    p.add_argument(
        "--cull-idle-timeout",
        type=int,
        default=0,
        help="shut down kernels idle this many seconds (0: never)",
    )
    p.add_argument(
        "--cull-interval",
        type=int,
        default=0,
        help="seconds between idle checks (default: a third of the timeout, <= 60)",
    )
    p.add_argument("--cull-busy", action="store_true", help="also cull busy kernels")
    p.add_argument(
        "--cull-connected", action="store_true", help="also cull kernels with connected clients"
    )
    p.add_argument("--log-json", action="store_true", help="JSON log lines with kernel_id")
    p.add_argument(
        "extra",
        nargs=argparse.REMAINDER,
        help="further Jupyter Server options, e.g. --ServerApp.port_retries=0",
    )
    p.set_defaults(run=None)

    p = add_command("kernelspec", help="manage kernelspecs for our provisioners")
    ks = p.add_subparsers(dest="kernelspec_command", metavar="ACTION")
    ks.required = True
    from .kernelspecs import add_install_parser

    add_install_parser(ks, describe="kernelspec" in args and "install" in args)
    p.set_defaults(run=None)
    return parser


async def _run(fn: Callable[[KernelStore, Any], Awaitable[int]], args: Any) -> int:
    from ..ownership import set_holder_kind

    set_holder_kind("cli")
    store = open_store(args.store)
    try:
        return await fn(store, args)
    finally:
        store.close()


def _serve(args: Any) -> int:
    import json

    from ..gateway.app import TOKEN_ENV
    from ..gateway.app import main as serve_main
    from ..store import STORE_URL_ENV

    argv = [f"--ip={args.ip}", f"--port={args.port}", "--ServerApp.port_retries=0"]
    token = _operator_token(args)
    if token:
        os.environ[TOKEN_ENV] = token
    if args.no_auth:
        argv.append("--GatewayApp.no_auth=True")
    if args.allow_root:
        argv.append("--allow-root")
    if args.users_file:
        argv.append(f"--OrchestratorIdentityProvider.user_tokens_file={args.users_file}")
    if args.hub:
        argv.append("--GatewayApp.hub=True")
    if args.store:
        # Through the environment, as the token: a config value would be logged (with
        # its password) by traitlets' debug output of the configuration.
        os.environ[STORE_URL_ENV] = args.store
    if args.max_kernels is not None:
        argv.append(f"--OrchestratorMappingKernelManager.max_kernels={args.max_kernels}")
    if args.warm_pool:
        pools = {}
        for item in args.warm_pool:
            name, sep, count = item.partition("=")
            if not sep or not count.isdigit():
                raise OrchestratorError(f"bad --warm-pool value {item!r}: expected KERNELSPEC=N")
            pools[name] = int(count)

        argv.append(f"--OrchestratorMappingKernelManager.warm_pools={json.dumps(pools)}")
    if args.host_kernels:
        hosts = {}
        for item in args.host_kernels:
            name, sep, account = item.partition("=")
            if not sep or not name or "{username}" not in account:
                raise OrchestratorError(
                    f"bad --host-kernels value {item!r}: expected KERNELSPEC=ACCOUNT with"
                    " {username} in ACCOUNT"
                )
            hosts[name] = account
        argv.append(f"--GatewayKernelSpecManager.host_kernelspecs={json.dumps(hosts)}")
    if args.max_kernels_per_user is not None:
        argv.append(
            f"--OrchestratorMappingKernelManager.max_kernels_per_user={args.max_kernels_per_user}"
        )
    if args.cull_idle_timeout:
        interval = args.cull_interval or max(1, min(60, args.cull_idle_timeout // 3))
        argv += [
            f"--MappingKernelManager.cull_idle_timeout={args.cull_idle_timeout}",
            f"--MappingKernelManager.cull_interval={interval}",
        ]
        if args.cull_busy:
            argv.append("--MappingKernelManager.cull_busy=True")
        if args.cull_connected:
            argv.append("--MappingKernelManager.cull_connected=True")
    if args.log_json:
        argv.append("--GatewayApp.json_logs=True")
    serve_main(argv + [a for a in args.extra if a != "--"])
    return 0


def _operator_token(args: Any) -> str:
    """The operator's token from stdin (``--token -``) or ``--token-file``; never from
    argv, which ``ps`` and ``/proc/<pid>/cmdline`` show every local user and kernel."""

    if args.token and args.token != "-":
        raise OrchestratorError(
            "serve --token TOKEN would leave the token in this process's argv, which every"
            " local user and host kernel can read (ps): give it with --token-file PATH,"
            " $KERNEL_ORCHESTRATOR_TOKEN, or --token - (read from stdin)"
        )
    if args.token == "-":
        token = sys.stdin.readline().strip()
        if not token:
            raise OrchestratorError("serve --token -: no token on stdin")
        return token
    if not args.token_file:
        return ""
    from ..paths import SecretFileError, read_secret_file

    try:
        token = read_secret_file(args.token_file).strip()
    except SecretFileError as e:
        raise OrchestratorError(f"--token-file {args.token_file}: {e}") from None
    except OSError as e:
        raise OrchestratorError(f"--token-file {args.token_file}: {e.strerror}") from None
    if not token:
        raise OrchestratorError(f"--token-file {args.token_file} is empty")
    return token


def _skip_the_iri_grammar() -> None:
    """jsonschema (which jupyter_server's events and the Kubernetes client pull in)
    builds a Lark grammar at import when ``rfc3987_syntax`` is installed: about two
    seconds of every command's start and of every gateway restart, for the "iri"
    format checks, which nothing here uses. Marked absent, the package is skipped
    (as where it is not installed) and those formats go unchecked."""
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    _skip_the_iri_grammar()
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        # jupyter_client's own warnings and tracebacks (it logs a failed start before
        # raising it) repeat what our one-line errors say.
        logging.getLogger("traitlets").setLevel(logging.CRITICAL)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "kernelspec":
            from .kernelspecs import install_kernelspec

            print(install_kernelspec(args))
            return 0
        return asyncio.run(_run(args.run, args))
    except OrchestratorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.log_level == "DEBUG":
            raise
        print(
            f"error: {type(e).__name__}: {e} (rerun with --log-level DEBUG for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
