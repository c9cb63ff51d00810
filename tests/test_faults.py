"""``kill -9`` of the orchestrator at each step of a kernel's start, restart and shutdown.

The CLI and the gateway are killed for real (SIGKILL, from a crash point inside the
step, see ``orchestrator/faults.py``) with local, Docker and SSH kernels. Afterwards
a new process plus ``gc`` must leave exactly this: every kernel that still runs has
its record and answers through a new process; nothing else runs (no orphaned
process, container or remote process) and no record is stale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from orchestrator import procinfo
from orchestrator.faults import CRASH_ENV
from orchestrator.labels import ENV_INSTANCE, ENV_KERNEL_ID, LABEL_INSTANCE, LABEL_KERNEL_ID

from .conftest import KERNEL_IMAGE, write_kernelspec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]
CLI = str(Path(sys.executable).with_name("kernel-orchestrator"))

# (operation, crash point, records a consistent store has afterwards)
STEPS = [
    ("start", "before-launch", 0),
    ("start", "after-launch", 0),  # launched, never recorded: an orphan for gc
    ("start", "after-save", 1),
    ("restart", "mid-restart", 0),  # old kernel stopped, new one never launched
    ("shutdown", "before-shutdown", 1),
    ("shutdown", "after-kill", 0),  # stopped, record not yet removed
]


def ko(*args: str, crash: str = "", timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(params=["local", "docker", "ssh"])
def spec(request: pytest.FixtureRequest, jupyter_env: dict[str, str], tmp_path: Path) -> str:
    """A kernelspec of each provisioner (the engine and hosts come up only when asked)."""
    data = jupyter_env["JUPYTER_DATA_DIR"]
    if request.param == "local":
        write_kernelspec(data, "crash", "orchestrator-local-provisioner", {})
    elif request.param == "docker":
        request.getfixturevalue("docker_engine")
        write_kernelspec(data, "crash", "docker-provisioner", {"image": KERNEL_IMAGE})
    else:
        sshnet = request.getfixturevalue("sshnet")
        config = {
            "hosts": ["hosta"],
            "ssh_config": str(sshnet.ssh_config),
            "python": sys.executable,
            "remote_dir": str(tmp_path / "remote-kernels"),
            "connect_timeout": 5,
        }
        write_kernelspec(data, "crash", "ssh-provisioner", config)
    return "crash"


def running_kernels(instance: str) -> dict[str, str]:
    """Kernel id -> where, of every kernel of this deployment running anywhere: local
    and remote (the test hosts share this machine's pid space) processes, containers."""
    found: dict[str, str] = {}
    for pid in procinfo.all_pids():
        env = procinfo.environ(pid)
        if env.get(ENV_INSTANCE) == instance and procinfo.is_running(pid):
            found[env.get(ENV_KERNEL_ID, "?")] = f"process {pid}"
    try:
        import docker

        client = docker.from_env()
        for c in client.containers.list(all=True, filters={"label": LABEL_INSTANCE}):
            if c.labels.get(LABEL_INSTANCE) == instance:
                found[c.labels.get(LABEL_KERNEL_ID, "?")] = f"container {c.name} ({c.status})"
        client.close()
    except Exception:  # no engine on this machine: no containers either
        pass
    return found


async def assert_consistent(store: Any, expected_records: int) -> None:
    """Every running kernel has a record and answers; nothing else runs or is recorded."""
    records = {r.kernel_id for r in await store.list()}
    deadline = time.monotonic() + 15
    while (running := running_kernels(store.instance_id)).keys() != records:
        if time.monotonic() > deadline:
            break
        time.sleep(0.3)  # a killed process takes a moment to go
    assert running.keys() == records, f"running {running} but recorded {records}"
    assert len(records) == expected_records
    for kernel_id in records:
        result = ko("exec", kernel_id, "print(6 * 7)")
        assert result.stdout == "42\n", result.stderr


async def test_cli_killed_at_each_step(spec: str, store: Any) -> None:
    for operation, step, expected in STEPS:
        kernel_id = ""
        if operation != "start":
            started = ko("start", spec)
            assert started.returncode == 0, started.stderr
            kernel_id = started.stdout.strip()
            crashed = ko(operation, kernel_id, crash=step)
        else:
            crashed = ko("start", spec, crash=step)
        assert crashed.returncode == -9, f"{step}: {crashed.stderr}"
        gc = ko("gc", "--grace", "0")
        assert gc.returncode == 0, gc.stderr
        await assert_consistent(store, expected)
        # The dead CLI owned nothing any more: no --force, no waiting for its lease.
        done = ko("shutdown", "--all")
        assert done.returncode == 0, f"{step}: {done.stderr}"
        assert running_kernels(store.instance_id) == {}
        assert await store.list() == []


def _post(url: str, token: str, body: dict[str, Any] | None = None, method: str = "POST") -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body or {}).encode() if method == "POST" else None,
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


# The steps the issue names for both; the CLI also covers the shutdown steps.
GATEWAY_STEPS = [
    s for s in STEPS if s[1] in ("before-launch", "after-launch", "after-save", "mid-restart")
]


async def test_gateway_killed_at_each_step(
    spec: str, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_gateway import ADMIN_TOKEN, Gateway

    for operation, step, expected in GATEWAY_STEPS:
        gateway = Gateway(tmp_path, users=False).start()
        try:
            if operation != "start":
                model = _post(f"{gateway.url}/api/kernels", ADMIN_TOKEN, {"name": spec})
                gateway.kill(15)  # a clean stop detaches: the kernel stays for the next
                monkeypatch.setenv(CRASH_ENV, step)
                gateway = Gateway(tmp_path, users=False).start()
                monkeypatch.delenv(CRASH_ENV)
                with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                    _post(f"{gateway.url}/api/kernels/{model['id']}/restart", ADMIN_TOKEN)
            else:
                gateway.kill(15)
                monkeypatch.setenv(CRASH_ENV, step)
                gateway = Gateway(tmp_path, users=False).start()
                monkeypatch.delenv(CRASH_ENV)
                with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                    _post(f"{gateway.url}/api/kernels", ADMIN_TOKEN, {"name": spec})
            assert gateway.proc is not None
            assert gateway.proc.wait(30) == -9, step
            # A new gateway restores what still runs; gc removes what no record owns.
            gateway = Gateway(tmp_path, users=False).start()
            gc = ko("gc", "--grace", "0")
            assert gc.returncode == 0, gc.stderr
            await assert_consistent(store, expected)
            kernels = _post(f"{gateway.url}/api/kernels", ADMIN_TOKEN, method="GET")
            assert len(kernels) == expected
        finally:
            if gateway.proc is not None and gateway.proc.poll() is None:
                gateway.kill(15)
        done = ko("shutdown", "--all")
        assert done.returncode == 0, f"{step}: {done.stderr}"
        assert running_kernels(store.instance_id) == {}
