"""One owner per kernel: leases, fencing, take-over, and the drop-in lifetime rule.

Real kernels, real processes: owners are separate Python processes (a gateway, a
script holding a multi-kernel manager) that the tests stop, freeze and kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import procinfo
from orchestrator.errors import FencedError, OwnedElsewhereError
from orchestrator.ownership import LEASE_ENV, holder_is_dead, this_holder
from orchestrator.store import KernelRecord, SQLiteKernelStore
from orchestrator.store.lease import Holder

from .conftest import kernel_pids_under

CLI = str(Path(sys.executable).with_name("kernel-orchestrator"))


def ko(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ------------------------------------------------------------- store leases
async def test_store_leases_fence_stale_owners(tmp_path: Path) -> None:
    store = SQLiteKernelStore(tmp_path / "k.db")
    a = Holder("a" * 16, "gateway", "h", "m", 1)
    b = Holder("b" * 16, "cli", "h", "m", 2)
    record = KernelRecord("k1", "python3", "p")
    lease_a = await store.insert(record, a, 30)
    assert lease_a.generation == 1
    with pytest.raises(OwnedElsewhereError, match=r"owned by gateway \(pid 1 on host h\)"):
        await store.claim("k1", b, 30)
    with pytest.raises(OwnedElsewhereError):
        await store.save(record)  # no lease: refused while a live owner holds it
    lease_b = await store.claim("k1", b, 30, force=True)
    assert lease_b.generation == 2
    with pytest.raises(FencedError, match=r"generation 1\).*stale"):
        await store.save(record, lease_a)
    with pytest.raises(FencedError):
        await store.delete("k1", lease_a)
    assert await store.renew(a.holder_id, 30) == {}
    assert await store.renew(b.holder_id, 30) == {"k1": 2}
    assert store.release_now(lease_a) is False
    assert store.release_now(lease_b) is True
    # Free again: the next claim is a new generation; a stale steal is refused.
    lease_a2 = await store.claim("k1", a, 30)
    assert lease_a2.generation == 3
    with pytest.raises(OwnedElsewhereError):
        await store.claim("k1", b, 30, steal_generation=2)
    assert (await store.claim("k1", b, 30, steal_generation=3)).generation == 4
    # An expired lease is free for anyone.
    await store.claim("k1", a, 0.01, force=True)
    await asyncio.sleep(0.05)
    assert (await store.claim("k1", b, 30)).generation == 6
    assert store.integrity_check() == "ok"
    store.close()


async def test_store_migrates_a_version_1_file(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE kernels (kernel_id TEXT PRIMARY KEY, kernel_name TEXT NOT NULL,"
        " provisioner_name TEXT NOT NULL, created REAL NOT NULL,"
        " last_activity REAL NOT NULL, data TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema', '1'), ('instance', 'abc123');"
    )
    record = KernelRecord("old", "python3", "p", labels={"owner": "alice"}, restarts=2)
    conn.execute(
        "INSERT INTO kernels VALUES ('old', 'python3', 'p', 1.0, 1.0, ?)",
        (json.dumps(record.to_json_dict()),),
    )
    conn.commit()
    conn.close()
    store = SQLiteKernelStore(path)
    assert store.schema_version == 4 and store.instance_id == "abc123"
    got = await store.get("old")
    assert got is not None and got.owner == {} and got.generation == 0
    # Version 3 filled the user column from the record's labels: limits count it.
    assert await store.count(tenant="alice") == 1 and await store.count() == 1
    # Version 4 filled the restarts column: followers read it without the payload.
    assert (await store.ownerships(["old"]))["old"].restarts == 2
    assert (await store.claim("old", this_holder(), 30)).generation == 1
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema'")
    conn.commit()
    conn.close()
    from orchestrator.errors import StoreError

    with pytest.raises(StoreError, match="schema version 99, newer than this"):
        SQLiteKernelStore(path)


def test_a_dead_local_owner_is_recognised() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    me = this_holder()
    ghost = Holder("g" * 16, "cli", me.host, me.machine, proc.pid, 12345)
    assert holder_is_dead(ghost)
    assert not holder_is_dead(me)
    elsewhere = Holder("e" * 16, "cli", "other-host", "other-machine", proc.pid)
    assert not holder_is_dead(elsewhere)  # another machine: only its lease can tell


# ---------------------------------------------------- an owner in a process
OWNER = textwrap.dedent(
    """
    import asyncio, json, sys
    from orchestrator import AsyncMultiKernelManager

    async def main():
        mkm = AsyncMultiKernelManager()
        await mkm.restored()
        if sys.argv[1] == "start":
            kernel_id = await mkm.start_kernel(kernel_name="python3")
        else:
            kernel_id = sys.argv[1]
        km = mkm.get_kernel(kernel_id)
        km.restarter_class.time_to_dead = 0.5
        km.on_ownership_lost(lambda why: print(json.dumps({"lost": why}), flush=True))
        # jupyter_client calls "restart" callbacks just before it restarts (which the
        # fence may then refuse): what shows a restart is the record's new pid.
        km.add_restart_callback(lambda: print(json.dumps({"restarting": 1}), flush=True))
        print(json.dumps({"id": kernel_id, "owner": km.is_owner}), flush=True)
        while True:
            await asyncio.sleep(0.2)
            if sys.stdin.closed:
                break

    asyncio.run(main())
    """
)


class OwnerProcess:
    """A process that owns kernels with an AsyncMultiKernelManager and reports events."""

    def __init__(self, what: str = "start", lease: float = 30.0) -> None:
        env = dict(os.environ, **{LEASE_ENV: str(lease)})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, what],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.first = self.event(60)

    def event(self, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError("the owner process reported nothing")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the owner process ended ({self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def kernel_running(pid: int) -> bool:
    return procinfo.is_running(pid)


def test_a_namespace_init_knows_its_kernels_end_with_it() -> None:
    """A pid namespace's init (a container's gateway) takes its local kernels with it;
    a process on the host does not."""
    probe = [
        sys.executable,
        "-c",
        "from orchestrator import procinfo as p; print(p.namespace_ends_with_me())",
    ]
    assert not procinfo.namespace_ends_with_me()
    inside = subprocess.run(
        ["unshare", "--pid", "--fork", "--kill-child", "--", *probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert inside.stdout.strip() == "True"


async def test_lifecycle_work_only_by_the_owner_and_force_fences_it(
    jupyter_env: dict[str, str], store: Any
) -> None:
    """The anchor case: a shell's shutdown of a kernel a live process owns is refused
    with one line naming the owner; with --force it is shut down and the owner's
    restarter does not bring it back (it drops the kernel instead)."""
    owner = OwnerProcess()
    try:
        kernel_id = owner.first["id"]
        assert owner.first["owner"] is True
        record = await store.get(kernel_id)
        pid = record.provisioner_info["pid"]
        for command in (("shutdown", kernel_id), ("restart", kernel_id), ("interrupt", kernel_id)):
            line = one_line_error(ko(*command))
            assert f"kernel {kernel_id} is owned by library (pid {owner.proc.pid} on host" in line
            assert "use --force to take it over" in line
        # Clients need no ownership.
        assert ko("exec", kernel_id, "print(1 + 1)").stdout == "2\n"
        assert "library:" in ko("list").stdout
        result = ko("shutdown", "--force", kernel_id)
        assert result.returncode == 0, result.stderr
        assert "shut down" in result.stderr
        # Not even a "restarting" notice: the restarter checks ownership first.
        assert owner.event(30) == {"lost": "its record was removed"}
        time.sleep(3)  # several restarter polls: a fenced owner never restarts it
        assert not kernel_running(pid)
        assert await store.get(kernel_id) is None
        assert kernel_pids_under(Path(jupyter_env["JUPYTER_RUNTIME_DIR"]).parent) == []
    finally:
        owner.stop()


async def test_a_frozen_owner_loses_its_kernel_when_its_lease_expires(store: Any) -> None:
    owner = OwnerProcess(lease=2.0)
    try:
        kernel_id = owner.first["id"]
        assert "is owned by" in one_line_error(ko("restart", kernel_id))
        os.kill(owner.proc.pid, signal.SIGSTOP)  # alive, but renews nothing
        time.sleep(3)
        result = ko("restart", kernel_id)  # the lease has lapsed: no --force needed
        assert result.returncode == 0, result.stderr
        record = await store.get(kernel_id)
        assert record.restarts == 1 and record.owner == {}
        os.kill(owner.proc.pid, signal.SIGCONT)
        event = owner.event(30)  # its next renewal shows it was taken over
        assert "lost" in event, event
        assert ko("exec", kernel_id, "print('still here')").stdout == "still here\n"
        assert ko("shutdown", kernel_id).returncode == 0
    finally:
        owner.stop()


async def test_a_killed_owner_is_taken_over_without_waiting(store: Any) -> None:
    owner = OwnerProcess(lease=600.0)
    kernel_id = owner.first["id"]
    owner.proc.kill()  # kill -9: its lease would last ten minutes
    owner.proc.wait()
    # The kernel survives its owner, and the dead owner (same machine) holds nothing.
    assert ko("exec", kernel_id, "print('alive')").stdout == "alive\n"
    started = time.monotonic()
    result = ko("shutdown", kernel_id)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert await store.list() == []


async def test_a_new_owner_takes_over_when_the_lease_lapses(store: Any) -> None:
    """A second manager that restores a kernel another live process owns serves it as a
    client, and becomes its owner (restarter and all) once that owner stops renewing."""
    first = OwnerProcess(lease=2.0)
    kernel_id = first.first["id"]
    second = OwnerProcess(kernel_id, lease=2.0)
    try:
        assert second.first["owner"] is False
        os.kill(first.proc.pid, signal.SIGSTOP)
        # The second process claims it within a lease and a renewal interval; kill the
        # kernel to see its (now running) restarter bring it back.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            record = await store.get(kernel_id)
            if record.owner.get("pid") == second.proc.pid:
                break
            time.sleep(0.2)
        assert record.owner.get("pid") == second.proc.pid
        old_pid = record.provisioner_info["pid"]
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            record = await store.get(kernel_id)
            if record.provisioner_info["pid"] != old_pid and record.restarts == 1:
                break
            time.sleep(0.2)
        assert record.provisioner_info["pid"] != old_pid and record.restarts == 1
        assert ko("exec", kernel_id, "print('back')").stdout == "back\n"
    finally:
        first.stop()
        second.stop()
    assert ko("shutdown", kernel_id).returncode == 0


# -------------------------------------------------------------- lifetime
NBCLIENT_RUN = textwrap.dedent(
    """
    import sys
    import nbformat
    from nbclient import NotebookClient
    import orchestrator

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 6 * 7")])
    km = orchestrator.AsyncKernelManager(kernel_name="python3", {extra})
    NotebookClient(nb, km=km).execute()   # nbclient leaves a manager it was given running
    print(km.kernel_id, flush=True)
    """
)


@pytest.mark.parametrize("outlive", [False, True])
async def test_nbclient_with_our_manager_leaks_no_kernel(
    jupyter_env: dict[str, str], store: Any, outlive: bool
) -> None:
    extra = "outlive_process=True" if outlive else ""
    result = subprocess.run(
        [sys.executable, "-c", NBCLIENT_RUN.replace("{extra}", extra)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    kernel_id = result.stdout.strip()
    root = Path(jupyter_env["JUPYTER_RUNTIME_DIR"]).parent
    if not outlive:  # as with jupyter_client's manager: the kernel ended with the script
        assert kernel_pids_under(root) == []
        assert await store.list() == []
        return
    # Asked to outlive its process: it runs, unowned, and another process drives it.
    record = await store.get(kernel_id)
    assert record is not None and record.owner == {}
    assert ko("exec", kernel_id, "print(x)").stdout == "42\n"
    assert ko("shutdown", kernel_id).returncode == 0


def test_sync_manager_shuts_its_kernel_down_at_exit(jupyter_env: dict[str, str]) -> None:
    script = (
        "import orchestrator; km = orchestrator.KernelManager(kernel_name='python3');"
        " km.start_kernel(); print(km.provisioner.pid, flush=True)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not kernel_running(int(result.stdout))
