"""The CLI's commands. Each runs in its own process and re-attaches from the store.

A command never owns the kernels it touches beyond its own lifetime: it re-attaches,
does its one thing, and detaches, leaving the kernel running (unless the command is
``shutdown``). ``exec`` is a client and needs no ownership; ``interrupt``, ``restart``
and ``shutdown`` are lifecycle work, so they claim the kernel and refuse, naming the
owner, while another live process (a gateway) owns it, unless ``--force`` fences that
owner. Ownership is released when the command ends, so the next command goes ahead
at once. ``list`` and ``gc`` ask only whether kernels run: they open no tunnel.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from ..errors import (
    KernelGoneError,
    KernelStartError,
    OrchestratorError,
    OwnedElsewhereError,
    UnknownKernelError,
)
from ..gc import collect_garbage
from ..liveness import wait_for_kernel_info
from ..manager import AsyncKernelManager
from ..provisioning import load_provisioner_class, provisioner_stanza
from ..store import KernelRecord, KernelStore
from .progress import progress

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


async def resolve_record(store: KernelStore, kernel_id: str) -> KernelRecord:
    """The record for a full kernel id or a unique prefix of one."""
    if not kernel_id:
        raise UnknownKernelError("no kernel id given")
    matches = await store.find(kernel_id)
    if not matches:
        raise UnknownKernelError(
            f"unknown kernel id {kernel_id!r} (see 'kernel-orchestrator list')"
        )
    if len(matches) > 1:
        ids = ", ".join(r.kernel_id for r in matches[:5])
        raise UnknownKernelError(f"kernel id prefix {kernel_id!r} is ambiguous: {ids}")
    return matches[0]


def cli_manager(store: KernelStore, kernel_name: str) -> AsyncKernelManager:
    """A manager for one command: its kernels outlive the command's process."""
    return AsyncKernelManager(kernel_store=store, kernel_name=kernel_name, outlive_process=True)


async def attach_record(
    store: KernelStore,
    record: KernelRecord,
    *,
    verify: bool = False,
    own: bool = True,
    force: bool = False,
    connect: bool = True,
) -> AsyncKernelManager:
    """A manager attached to ``record``'s kernel; a dead kernel is cleaned up and reported.

    ``own`` claims the kernel for lifecycle work (refused, with the owner named, while
    a live process owns it); ``force`` fences that owner instead.
    """
    km = cli_manager(store, record.kernel_name)
    try:
        if force:
            km.kernel_id = record.kernel_id
            await km.claim_ownership(force=True)
        await km.reattach(record, verify=verify, own=own, connect=connect)
    except KernelGoneError:
        if not await km.discard():
            raise KernelGoneError(
                f"kernel {record.kernel_id} has died; its owner cleans it up"
            ) from None
        raise KernelGoneError(
            f"kernel {record.kernel_id} has died; its record and resources were cleaned up"
        ) from None
    except OwnedElsewhereError as e:
        km.release()
        raise OwnedElsewhereError(
            f"{e}; it does the kernel's lifecycle work (use --force to take it over)",
            e.owner,
            e.expires,
        ) from None
    except BaseException:
        km.release()
        raise
    return km


# ------------------------------------------------------------------- start
async def cmd_start(store: KernelStore, args: Any) -> int:
    from .kernelspecs import parse_env

    name = args.kernelspec
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise OrchestratorError(_explain_missing_kernelspec(name)) from None
    provisioner_name, _ = provisioner_stanza(spec)
    km = cli_manager(store, name)
    load_provisioner_class(km.provisioner_aliases.get(provisioner_name, provisioner_name))
    km.labels = dict(_parse_labels(args.label))
    env = parse_env(args.env)
    kwargs: dict[str, Any] = {}
    if env:
        import os

        kwargs["env"] = {**os.environ, **env}
    if args.cwd:
        kwargs["cwd"] = args.cwd

    def phase() -> str:
        return str(getattr(km.provisioner, "start_phase", "") or "")

    # --timeout bounds the whole start: a queue wait, an image pull, the kernel's start-up.
    deadline = time.monotonic() + args.timeout
    async with progress(f"starting kernel {name}", detail=phase):
        try:
            await asyncio.wait_for(km.start_kernel(**kwargs), args.timeout)
        except asyncio.TimeoutError:
            where = f": {phase()}" if phase() else ""
            raise KernelStartError(
                f"kernel {name!r} was not ready within {args.timeout:g}s{where};"
                " it has been cleaned up"
            ) from None
        ready = await wait_for_kernel_info(
            km.get_connection_info(session=False),
            km.session,
            max(0.5, deadline - time.monotonic()),
            alive=km.is_alive,
        )
    if ready is None:
        alive = await km.is_alive()
        diagnostics = await km.provisioner.startup_diagnostics() if km.provisioner else ""
        await km.shutdown_kernel(now=True)
        why = "exited during start-up" if not alive else f"was not ready within {args.timeout:g}s"
        message = f"kernel {name!r} {why}; it has been cleaned up"
        if diagnostics:
            message += "\n--- last lines of the kernel's output ---\n" + diagnostics
        raise KernelStartError(message)
    record = await store.get(km.kernel_id)
    km.detach()
    if args.json and record is not None:
        _print_json(record.public_dict())
    else:
        print(km.kernel_id)
    return 0


def _explain_missing_kernelspec(name: str) -> str:
    """Why ``name`` cannot be used: absent, or present but naming a missing provisioner."""
    from ..provisioning import installed_provisioners

    ksm = KernelSpecManager()
    dirs = ksm.find_kernel_specs()
    if name in dirs:
        try:
            raw = json.loads((Path(dirs[name]) / "kernel.json").read_text())
            wanted = raw["metadata"]["kernel_provisioner"]["provisioner_name"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"kernelspec {name!r} in {dirs[name]} cannot be loaded"
        installed = ", ".join(sorted(installed_provisioners()))
        return (
            f"kernelspec {name!r} names provisioner {wanted!r}, which is not installed"
            f" (installed: {installed})"
        )
    usable = []
    for candidate in sorted(dirs):
        try:
            ksm.get_kernel_spec(candidate)
            usable.append(candidate)
        except Exception:
            continue
    return f"unknown kernelspec {name!r} (available: {', '.join(usable) or 'none'})"


def _parse_labels(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise OrchestratorError(f"bad --label value {pair!r}: expected KEY=VALUE")
        out.append((key, value))
    return out


# -------------------------------------------------------------------- list
async def kernel_status(store: KernelStore, record: KernelRecord) -> str:
    """'running', 'dead' or 'unknown (why)', asked of the provisioner without a tunnel."""
    km = cli_manager(store, record.kernel_name)
    try:
        await km.reattach(record, verify=False, own=False, connect=False)
        status = "running" if await km.provisioner.poll() is None else "dead"
    except KernelGoneError:
        status = "dead"
    except Exception as e:
        status = f"unknown ({e})"
    km.release()
    return status


def owner_of(record: KernelRecord) -> str:
    """Who does the kernel's lifecycle work, for ``list``: '-' when nobody holds a lease."""
    from ..ownership import holder_is_dead
    from ..store.lease import Holder

    owner = Holder.from_dict(record.owner)
    if owner is None or record.lease_expires <= time.time() or holder_is_dead(owner):
        return "-"
    return f"{owner.kind}:{owner.pid}@{owner.host}"


async def cmd_list(store: KernelStore, args: Any) -> int:
    records = await store.list()
    statuses = await asyncio.gather(*(kernel_status(store, r) for r in records))
    if args.json:
        rows_json = [
            {**r.public_dict(), "status": s, "owned_by": owner_of(r)}
            for r, s in zip(records, statuses, strict=True)
        ]
        _print_json(rows_json)
        return 0
    if not records:
        print("no kernels", file=sys.stderr)
        return 0
    rows = [("KERNEL ID", "NAME", "PROVISIONER", "STATUS", "OWNER", "CREATED", "LABELS")]
    for r, s in zip(records, statuses, strict=True):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        labels = ",".join(f"{k}={v}" for k, v in sorted(r.labels.items()))
        rows.append(
            (r.kernel_id, r.kernel_name, r.provisioner_name, s, owner_of(r), created, labels)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


# -------------------------------------------------------------------- exec
class _OutputWriter:
    """Writes a kernel's IOPub output to our stdout/stderr as a terminal user expects."""

    def __init__(self) -> None:
        self.strip_ansi = not sys.stderr.isatty()

    def __call__(self, msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out = sys.stdout if content.get("name") == "stdout" else sys.stderr
            out.write(content.get("text", ""))
            out.flush()
        elif kind in ("execute_result", "display_data"):
            text = content.get("data", {}).get("text/plain")
            if text is not None:
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
        elif kind == "error":
            tb = "\n".join(
                content.get("traceback") or [f"{content.get('ename')}: {content.get('evalue')}"]
            )
            sys.stderr.write((_ANSI.sub("", tb) if self.strip_ansi else tb) + "\n")
            sys.stderr.flush()


async def cmd_exec(store: KernelStore, args: Any) -> int:
    code = sys.stdin.read() if args.code == "-" else args.code
    record = await resolve_record(store, args.kernel_id)
    km = await attach_record(store, record, own=False)
    kc = km.client()
    kc.start_channels()
    interrupted = False
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Future[Any]] = set()

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        task = asyncio.ensure_future(_interrupt_as_client(km))
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        try:
            await kc.wait_for_ready(timeout=args.timeout)
        except RuntimeError:
            if not await km.is_alive():
                await km.discard()
                raise KernelGoneError(f"kernel {record.kernel_id} died") from None
            raise OrchestratorError(
                f"kernel {record.kernel_id} did not respond within {args.timeout:g}s"
            ) from None
        try:
            reply = await kc.execute_interactive(
                code,
                allow_stdin=False,
                output_hook=_OutputWriter(),
                timeout=args.exec_timeout,
            )
        except TimeoutError:
            await _interrupt_as_client(km)
            raise OrchestratorError(
                f"execution did not finish within {args.exec_timeout:g}s (interrupted)"
            ) from None
        await km.touch_activity()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        kc.stop_channels()
        if km.provisioner is not None:
            km.detach()
    if reply["content"].get("status") == "ok":
        return 0
    return 130 if interrupted else 1


async def _interrupt_as_client(km: AsyncKernelManager) -> None:
    """Ctrl-C of ``exec``: interrupt the cell this client runs, through the owner's
    rules: claim the kernel if nobody owns it, else send ``interrupt_request`` the way
    any client may (a kernel-level message, not a signal)."""
    try:
        await km.claim_ownership()
    except OwnedElsewhereError:
        kc = km.client()
        msg = kc.session.msg("interrupt_request", content={})
        kc.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
        try:
            kc.control_channel.send(msg)
            await asyncio.sleep(0.1)
        finally:
            kc.stop_channels()
        return
    await km.interrupt_kernel()


# ------------------------------------------------- interrupt/restart/shutdown
async def cmd_interrupt(store: KernelStore, args: Any) -> int:
    record = await resolve_record(store, args.kernel_id)
    km = await attach_record(store, record, force=args.force)
    await km.interrupt_kernel()
    await km.touch_activity()
    km.detach()
    print(f"interrupted {record.kernel_id}", file=sys.stderr)
    return 0


async def cmd_restart(store: KernelStore, args: Any) -> int:
    record = await resolve_record(store, args.kernel_id)
    km = await attach_record(store, record, force=args.force)
    async with progress(f"restarting kernel {record.kernel_id}"):
        await km.restart_kernel(now=args.now)
        ready = await wait_for_kernel_info(
            km.get_connection_info(session=False), km.session, args.timeout, alive=km.is_alive
        )
    if ready is None:
        diagnostics = await km.provisioner.startup_diagnostics() if km.provisioner else ""
        km.detach()
        message = f"kernel {record.kernel_id} was restarted but is not ready"
        if diagnostics:
            message += "\n--- last lines of the kernel's output ---\n" + diagnostics
        raise OrchestratorError(message)
    km.detach()
    print(f"restarted {record.kernel_id}", file=sys.stderr)
    return 0


async def _shutdown_one(store: KernelStore, record: KernelRecord, now: bool) -> str:
    try:
        km = await attach_record(store, record)
    except KernelGoneError:
        return f"{record.kernel_id} had already died (cleaned up)"
    await km.shutdown_kernel(now=now)
    return f"shut down {record.kernel_id}"


async def _force_remove(store: KernelStore, record: KernelRecord, timeout: float) -> str:
    """Fence any owner, clean up what can be reached within ``timeout``, remove the record.

    For a kernel whose host or engine is gone for good: its record goes whatever
    happens, and the result says what may be left behind where cleanup failed.
    """
    km = cli_manager(store, record.kernel_name)
    km.kernel_id = record.kernel_id
    await km.claim_ownership(force=True)
    problem = ""
    try:
        await asyncio.wait_for(_kill_and_clean(km, record), timeout)
    except KernelGoneError:
        pass
    except asyncio.TimeoutError:
        problem = f"cleanup did not finish within {timeout:g}s"
    except Exception as e:
        problem = str(e) or type(e).__name__
    summary = getattr(km.provisioner, "resource_summary", lambda: "")() if km.provisioner else ""
    km.release()
    await store.delete(record.kernel_id)
    if not problem:
        return f"shut down {record.kernel_id} (forced)"
    left = f"; may be left behind: {summary}" if summary else ""
    return f"removed the record of {record.kernel_id}; could not clean up ({problem}){left}"


async def _kill_and_clean(km: AsyncKernelManager, record: KernelRecord) -> None:
    await km.reattach(record, verify=False, own=True, connect=False)
    assert km.provisioner is not None
    await km.provisioner.kill()
    await km.provisioner.cleanup(restart=False)
    km.cleanup_connection_file()


async def cmd_shutdown(store: KernelStore, args: Any) -> int:
    if args.all:
        records = await store.list()
    elif args.kernel_id:
        records = [await resolve_record(store, args.kernel_id)]
    else:
        raise OrchestratorError("give a KERNEL_ID or --all")
    async with progress(f"shutting down {len(records)} kernel(s)"):
        if args.force:
            jobs = [_force_remove(store, r, args.cleanup_timeout) for r in records]
        else:
            jobs = [_shutdown_one(store, r, args.now) for r in records]
        results = await asyncio.gather(*jobs, return_exceptions=True)
    failed = 0
    for record, result in zip(records, results, strict=True):
        if isinstance(result, BaseException):
            failed += 1
            print(f"error: {record.kernel_id}: {result}", file=sys.stderr)
        else:
            print(result, file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------- gc
async def cmd_gc(store: KernelStore, args: Any) -> int:
    report = await collect_garbage(store, dry_run=args.dry_run, grace_seconds=args.grace)
    verb = "would remove" if args.dry_run else "removed"
    for kernel_id in report.stale_records:
        print(f"{verb} stale record {kernel_id}")
    for orphan in report.orphans:
        print(f"{verb} orphaned {orphan}")
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not (report.stale_records or report.orphans):
        print("nothing to collect", file=sys.stderr)
    return 0
