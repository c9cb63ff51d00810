"""JupyterLab end to end, in a real browser, with its kernels in our gateway.

JupyterLab (from PyPI) runs with ``--gateway-url`` pointing at ``kernel-orchestrator
serve``; headless Debian Chromium, driven by playwright-core, opens the launcher,
picks the Docker kernelspec's notebook, runs a cell and sees its output. The gateway
is then restarted (killed, started again), and a second cell uses the first one's
state. Then another client restarts the kernel at the gateway: a third cell, run once
on the websocket JupyterLab kept, shows its output with the state gone. A screenshot
goes to the test run's output folder (``$KO_TEST_OUTPUT``, default ``test-output/`` in
the checkout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from .browser import ensure_browser, run_lab_script
from .conftest import REPO
from .homes import Homes
from .test_gateway import ADMIN_TOKEN, ALICE, Gateway, free_port, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]


def output_dir() -> Path:
    folder = Path(os.environ.get("KO_TEST_OUTPUT") or REPO / "test-output")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def start_lab(
    gateway_url: str, tmp: Path, *, auth_token: str = ADMIN_TOKEN, root_dir: Path | None = None
) -> tuple[subprocess.Popen[bytes], str, str]:
    port, token = free_port(), "lab-" + uuid.uuid4().hex
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp / "lab-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "lab-runtime"),
    }
    lab = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--gateway-url={gateway_url}",
            f"--GatewayClient.auth_token={auth_token}",
            "--GatewayClient.request_timeout=120",
            # No traffic beyond loopback: no update check against PyPI, no news feed.
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=",
            f"--ServerApp.root_dir={root_dir or tmp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "jupyterlab.log", "ab"),  # noqa: SIM115
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/api/status?token={token}", timeout=120)
    return lab, url, token


async def _read_until(proc: asyncio.subprocess.Process, marker: str, timeout: float) -> None:
    assert proc.stdout is not None
    seen: list[str] = []
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"the browser script ended early: {seen}")
        line = raw.decode().strip()
        seen.append(line)
        print("browser:", line)  # (pytest shows it with the test's output)
        if line.startswith("FAIL"):
            raise AssertionError(line)
        if line == marker:
            return


@contextlib.asynccontextmanager
async def all_stopped_after(
    gateway: Gateway, lab: subprocess.Popen[bytes], browser: Any, tmp: Path
) -> AsyncIterator[None]:
    """Stop the browser, JupyterLab and the gateway (its kernels shut down) after the
    block; on a failure, print the end of the gateway's and JupyterLab's logs first,
    for a failure seen only in CI's output."""
    try:
        yield
    except BaseException:
        for log in (gateway.log, tmp / "jupyterlab.log"):
            with contextlib.suppress(OSError):
                print(f"--- the end of {log.name}:\n" + log.read_text(errors="replace")[-6000:])
        raise
    finally:
        if browser.returncode is None:
            browser.kill()
            await browser.wait()
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            lab.kill()
        from .test_gateway import _shutdown_all

        await _shutdown_all(gateway)
        gateway.kill(signal.SIGTERM)


@pytest.mark.timeout(720)  # browser steps of up to 120 s + 3 x 45 s each on a cold machine
async def test_jupyterlab_runs_docker_kernel_cells_across_a_gateway_restart(
    docker_engine: str, tmp_path: Path
) -> None:
    from orchestrator.gateway.defaults import DOCKER_SPEC

    node_modules = await asyncio.to_thread(ensure_browser)
    gateway = Gateway(tmp_path, users=False).start()
    lab, lab_url, lab_token = await asyncio.to_thread(start_lab, gateway.url, tmp_path)
    screenshot = output_dir() / "jupyterlab-docker-kernel.png"
    browser = await run_lab_script(node_modules, screenshot, LAB_URL=lab_url, LAB_TOKEN=lab_token)
    async with all_stopped_after(gateway, lab, browser, tmp_path):
        await _read_until(browser, "STEP first-cell", 400)
        from .test_gateway import call

        kernels = await call(gateway.url, ADMIN_TOKEN, "GET", "/api/kernels")
        assert [k["name"] for k in kernels] == [DOCKER_SPEC]
        await asyncio.to_thread(gateway.kill, signal.SIGKILL)
        await asyncio.to_thread(gateway.start)
        assert browser.stdin is not None
        browser.stdin.write(b"CONTINUE\n")
        await browser.stdin.drain()
        await _read_until(browser, "STEP second-cell", 400)
        # Another client restarts the kernel at the gateway: JupyterLab keeps its
        # websocket (EG #903, jupyterlab#8013), and its next cell must still show output.
        await call(gateway.url, ADMIN_TOKEN, "POST", f"/api/kernels/{kernels[0]['id']}/restart")
        browser.stdin.write(b"CONTINUE\n")
        await browser.stdin.drain()
        await _read_until(browser, "DONE", 200)
        assert await asyncio.wait_for(browser.wait(), 60) == 0
        assert screenshot.stat().st_size > 10_000
        after = await call(gateway.url, ADMIN_TOKEN, "GET", "/api/kernels")
        assert [k["id"] for k in after] == [k["id"] for k in kernels]  # the same kernel


EMPTY_CELL = {"cell_type": "code", "metadata": {}, "source": "", "outputs": []}
NOTEBOOK = {
    "cells": [{**EMPTY_CELL, "execution_count": None}],
    "metadata": {
        "kernelspec": {"name": "homes-kernel", "display_name": "a remote kernel"},
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


async def notebook_beside_its_files(
    tmp_path: Path,
    jupyter_env: dict[str, str],
    *,
    provisioner: str,
    config: Callable[[Homes], dict[str, Any]],
    owner: str,
    label: str,
) -> None:
    """Alice's JupyterLab serves her home (owned by ``owner``); her notebook in a
    sub-directory runs in a kernel of the gateway (``provisioner`` with ``config(homes)``)
    that sees her home and starts in the notebook's directory there (working_dir_map):
    the cell reads the data file beside the notebook and writes a result file that
    JupyterLab's file browser lists."""
    from .conftest import write_kernelspec
    from .homes import user_homes

    node_modules = await asyncio.to_thread(ensure_browser)
    display = f"{label} (homes)"
    with user_homes({"alice": owner}) as homes:
        write_kernelspec(
            jupyter_env["JUPYTER_DATA_DIR"],
            "homes-kernel",
            provisioner,
            config(homes),
            display_name=display,
        )
        notebook = homes.server_dir("alice", "sub", "analysis.ipynb")
        notebook.write_text(json.dumps(NOTEBOOK))
        data = homes.server_dir("alice", "sub", "data.csv").stat()
        os.chown(notebook, data.st_uid, data.st_gid)
        gateway = Gateway(tmp_path).start()
        lab, lab_url, lab_token = await asyncio.to_thread(
            start_lab, gateway.url, tmp_path, auth_token=ALICE, root_dir=homes.server_dir("alice")
        )
        screenshot = output_dir() / f"jupyterlab-files-beside-the-notebook-{label.lower()}.png"
        browser = await run_lab_script(
            node_modules,
            screenshot,
            "files.cjs",
            LAB_URL=lab_url,
            LAB_TOKEN=lab_token,
            NOTEBOOK="sub/analysis.ipynb",
            KERNEL_DISPLAY_NAME=display,
        )
        async with all_stopped_after(gateway, lab, browser, tmp_path):
            await _read_until(browser, "DONE", 400)
            assert await asyncio.wait_for(browser.wait(), 60) == 0
            assert homes.server_dir("alice", "sub", "result.txt").read_text() == "2 rows"


def docker_homes(homes: Homes) -> dict[str, Any]:
    """Alice's home bind-mounted at /home/alice in her container."""
    return {
        "image": "kernel-orchestrator/kernel-python:latest",
        "volumes": [f"{homes.served}/{{username}}:/home/{{username}}"],
        "volume_roots": [str(homes.served)],
        "working_dir_map": {f"{homes.served}/{{username}}": "/home/{username}"},
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["docker", "ssh", "slurm"])
async def test_a_notebook_reads_and_writes_files_beside_itself(
    backend: str, tmp_path: Path, jupyter_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """The notebook's files through the gateway and JupyterLab: Docker (her home
    bind-mounted per user), SSH (her account on a host, logged in by certificate, the
    home at another path there) and Slurm (a batch job on the shared file system)."""
    if backend == "docker":
        request.getfixturevalue("docker_engine")
        config, owner = docker_homes, "1000"
    else:
        request.getfixturevalue("kernel_accounts")
        owner = "ko-alice"
        if backend == "ssh":
            net = request.getfixturevalue("sshnet")

            def config(homes: Homes) -> dict[str, Any]:
                return {
                    "hosts": ["hosta"],
                    "ssh_config": str(net.ssh_config),
                    "python": sys.executable,
                    "user": "ko-{username}",
                    "certificate_authority": str(net.user_ca),
                    "connect_timeout": 5,
                    "working_dir_map": homes.working_dir_map(),
                }

        else:
            from .test_slurm import slurm_config

            net = request.getfixturevalue("slurmnet")

            def config(homes: Homes) -> dict[str, Any]:
                settings = slurm_config(
                    net,
                    tmp_path,
                    user="ko-{username}",
                    identity_file="",
                    certificate_authority=str(net.user_ca),
                    working_dir_map=homes.working_dir_map(),
                )
                del settings["remote_dir"]  # (the account's home)
                return settings

    await notebook_beside_its_files(
        tmp_path,
        jupyter_env,
        provisioner=f"{backend}-provisioner",
        config=config,
        owner=owner,
        label=backend.capitalize(),
    )
