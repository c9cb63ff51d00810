"""CurveZMQ by default for kernels reached over a network: proven on the wire.

Kernel traffic to a container on a Docker network (or a pod on the test cluster's
node) is captured with tcpdump on that network's bridge (the test's own) while a cell
prints a marker: encrypted, the marker never appears; with encryption disabled, it does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import pytest

import orchestrator
from orchestrator.errors import OrchestratorError

from .conftest import write_kernelspec
from .helpers import start_is_refused_for_plain_text
from .test_docker import our_containers, run
from .test_kubernetes import kspec  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("docker_engine", "jupyter_env")]
LEGACY_IMAGE = "kernel-orchestrator/kernel-python-legacy:test"


@pytest.fixture(scope="module")
def dclient() -> Any:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def network(dclient: Any) -> Any:
    net = dclient.networks.create(f"ko-enc-{int(time.time())}", driver="bridge")
    yield net
    net.remove()


@pytest.fixture(scope="module")
def tcpdump() -> str:
    if not shutil.which("tcpdump"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "tcpdump"],
            check=False,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            capture_output=True,
        )
        if not shutil.which("tcpdump"):
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "tcpdump"],
                check=True,
                env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                capture_output=True,
            )
    return str(shutil.which("tcpdump"))


@pytest.fixture(scope="module")
def legacy_image(dclient: Any, docker_engine: str) -> str:
    """The kernel image with ipykernel 6.29 (no CurveZMQ support)."""
    try:
        dclient.images.get(LEGACY_IMAGE)
        return LEGACY_IMAGE
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", Path(ctx) / "ca.crt")
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM {docker_engine}\nUSER root\nCOPY ca.crt /tmp/ca.crt\n"
            "RUN PIP_CERT=/tmp/ca.crt /opt/kernel/bin/pip install -q --no-cache-dir"
            " 'ipykernel==6.29.5' && rm /tmp/ca.crt\nUSER 1000:1000\n"
        )
        dclient.images.build(path=ctx, tag=LEGACY_IMAGE, network_mode="host", rm=True)
    return LEGACY_IMAGE


class Capture:
    """tcpdump on one interface, kernel ports only, into a pcap file."""

    def __init__(self, binary: str, iface: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [
                binary,
                "--immediate-mode",
                "-Z",
                "root",
                "-i",
                iface,
                "-U",
                "-s",
                "0",
                "-w",
                str(path),
                "tcp portrange 50001-50005",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "listening on" in line, line

    def stop(self) -> bytes:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()
        return self.path.read_bytes()


def bridge_of(network: Any) -> str:
    return f"br-{network.id[:12]}"


async def capture_cell(km: Any, binary: str, network: Any, tmp_path: Path) -> tuple[str, bytes]:
    cap = Capture(binary, bridge_of(network), tmp_path / "kernel.pcap")
    try:
        result = await run(km, "# CODE-MARK-7f3e\nprint('OUT' + '-MARK-' + '9c1d' * 3)")
        await asyncio.sleep(0.5)
    finally:
        data = cap.stop()
    return result["out"], data


async def test_network_kernel_is_encrypted_by_default(
    jupyter_env: dict[str, str],
    store: Any,
    network: Any,
    tcpdump: str,
    tmp_path: Path,
    dclient: Any,
) -> None:
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "enc",
        "docker-provisioner",
        {"reachability": "network", "network": network.name, "egress": "unmanaged"},
    )
    km = orchestrator.AsyncKernelManager(kernel_name="enc", kernel_store=store)
    await km.start_kernel()
    try:
        assert km.curve_secretkey and km.provisioner.encrypting
        out, pcap = await capture_cell(km, tcpdump, network, tmp_path)
        assert out == "OUT-MARK-" + "9c1d" * 3 + "\n"
        assert len(pcap) > 2000, (
            km.ip,
            bridge_of(network),
            network.attrs,
        )  # traffic was captured ...
        assert b"MARK-9c1d" not in pcap and b"CODE-MARK-7f3e" not in pcap  # ... unreadable
        secret = km.curve_secretkey.decode()
        (container,) = our_containers(dclient, km.kernel_id)
        assert secret not in json.dumps(dclient.api.inspect_container(container.id))
        record = await store.get(km.kernel_id)
        assert (
            record.public_dict()["provisioner_info"]["connection_info"]["curve_secretkey"]
            == "<redacted>"
        )

        # another orchestrator process re-attaches with the saved keys
        km.detach()
        km2 = await orchestrator.attach(km.kernel_id, store=store)
        assert km2.curve_secretkey == km.curve_secretkey
        assert (await run(km2, "print('again')"))["out"] == "again\n"
        await km2.shutdown_kernel()
    finally:
        if our_containers(dclient, km.kernel_id):
            await km.shutdown_kernel(now=True)


async def test_disabled_encryption_is_plain_text_on_the_wire(
    jupyter_env: dict[str, str], store: Any, network: Any, tcpdump: str, tmp_path: Path
) -> None:
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "plain",
        "docker-provisioner",
        {
            "reachability": "network",
            "network": network.name,
            "transport_encryption": "disabled",
            "egress": "unmanaged",
        },
    )
    km = orchestrator.AsyncKernelManager(kernel_name="plain", kernel_store=store)
    await km.start_kernel()
    try:
        assert not km.curve_secretkey
        _, pcap = await capture_cell(km, tcpdump, network, tmp_path)
        assert b"OUT-MARK-9c1d" in pcap and b"CODE-MARK-7f3e" in pcap
    finally:
        await km.shutdown_kernel(now=True)


async def test_orchestrator_setting_and_loopback_default(
    jupyter_env: dict[str, str], store: Any
) -> None:
    write_kernelspec(jupyter_env["JUPYTER_DATA_DIR"], "lo", "docker-provisioner", {})
    km = orchestrator.AsyncKernelManager(kernel_name="lo", kernel_store=store)
    await km.start_kernel()  # loopback-published ports: traffic stays on this machine
    try:
        assert not km.curve_secretkey
    finally:
        await km.shutdown_kernel(now=True)
    km = orchestrator.AsyncKernelManager(
        kernel_name="lo", kernel_store=store, remote_transport_encryption="required"
    )
    await km.start_kernel()
    try:
        assert km.curve_secretkey
        assert (await run(km, "print(1)"))["out"] == "1\n"
    finally:
        await km.shutdown_kernel(now=True)


async def test_required_refuses_a_kernel_without_support(
    jupyter_env: dict[str, str], store: Any, network: Any, legacy_image: str, dclient: Any
) -> None:
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "legacy-required",
        "docker-provisioner",
        {
            "image": legacy_image,
            "reachability": "network",
            "network": network.name,
            "egress": "unmanaged",
            "transport_encryption": "required",
        },
    )
    km = orchestrator.AsyncKernelManager(kernel_name="legacy-required", kernel_store=store)
    with pytest.raises(OrchestratorError, match="does not support CurveZMQ transport encryption"):
        await km.start_kernel()
    assert our_containers(dclient) == []
    assert await store.list() == []


async def test_auto_refuses_a_kernel_without_support_that_others_can_reach(
    jupyter_env: dict[str, str], store: Any, network: Any, legacy_image: str, dclient: Any
) -> None:
    """Its ports are on a Docker network: under the default policy a kernel that ignores
    its Curve keys is refused, saying what to upgrade and what to set, and nothing is
    left; the operator may accept plain text explicitly."""
    config = {
        "image": legacy_image,
        "reachability": "network",
        "network": network.name,
        "egress": "unmanaged",
    }
    write_kernelspec(jupyter_env["JUPYTER_DATA_DIR"], "legacy-auto", "docker-provisioner", config)
    km = orchestrator.AsyncKernelManager(kernel_name="legacy-auto", kernel_store=store)
    await start_is_refused_for_plain_text(km, legacy_image)
    assert our_containers(dclient) == [] and await store.list() == []
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "legacy-plain",
        "docker-provisioner",
        {**config, "transport_encryption": "disabled"},
    )
    km = orchestrator.AsyncKernelManager(kernel_name="legacy-plain", kernel_store=store)
    await km.start_kernel()
    try:
        assert not km.curve_secretkey
        assert (await run(km, "print('works')"))["out"] == "works\n"
    finally:
        await km.shutdown_kernel(now=True)


async def test_kubernetes_pod_kernel_is_encrypted_on_the_wire(
    kspec: Any,  # noqa: F811
    kube: Any,
    store: Any,
    tcpdump: str,
    tmp_path: Path,
) -> None:
    """Pods are reached by pod IP: captured on the node's pod bridge (ko-cni0)."""
    name = kspec("kenc")
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    try:
        assert km.curve_secretkey
        cap = Capture(tcpdump, "ko-cni0", tmp_path / "pod.pcap")
        try:
            result = await run(km, "# CODE-MARK-7f3e\nprint('OUT' + '-MARK-' + '9c1d' * 3)")
            await asyncio.sleep(0.5)
        finally:
            pcap = cap.stop()
        assert result["out"] == "OUT-MARK-" + "9c1d" * 3 + "\n"
        assert len(pcap) > 2000, "no kernel traffic was captured"
        assert b"MARK-9c1d" not in pcap and b"CODE-MARK-7f3e" not in pcap
    finally:
        await km.shutdown_kernel(now=True)
