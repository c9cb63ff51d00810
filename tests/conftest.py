"""Shared fixtures: every test gets private Jupyter dirs and its own kernel store,
and fails if it leaves a kernel process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import procinfo

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def kernel_pids_under(root: Path) -> list[int]:
    """Kernel processes whose environment points into ``root`` (i.e. this test's)."""
    me = os.getpid()
    found = []
    for pid in procinfo.all_pids():
        if pid == me:
            continue
        env = procinfo.environ(pid)
        if env.get("JUPYTER_RUNTIME_DIR", "").startswith(str(root)):
            try:
                cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ipykernel" in cmdline and procinfo.is_running(pid):
                found.append(pid)
    return found


@pytest.fixture
def jupyter_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Private JUPYTER_* dirs and store for this test; asserts no kernel outlives it."""
    env = {
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "KERNEL_ORCHESTRATOR_STORE": f"sqlite:///{tmp_path / 'store' / 'kernels.db'}",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    deadline = time.monotonic() + 5
    leftovers = kernel_pids_under(tmp_path)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.1)
        leftovers = kernel_pids_under(tmp_path)
    for pid in leftovers:
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    assert not leftovers, f"test left kernel processes behind: {leftovers}"


@pytest.fixture
def store_url(jupyter_env: dict[str, str]) -> str:
    return jupyter_env["KERNEL_ORCHESTRATOR_STORE"]


# Deployment ids of the stores this session's tests used: leak checks look only at
# resources carrying one of them, so a benchmark or another run on the same engine
# is never mistaken for ours.
SESSION_INSTANCES: set[str] = set()


@pytest.fixture
def store(store_url: str):  # type: ignore[no-untyped-def]
    from orchestrator.store import open_store

    s = open_store(store_url)
    SESSION_INSTANCES.add(s.instance_id)
    yield s
    s.close()


# ------------------------------------------------------------------ Docker
KERNEL_IMAGE = "kernel-orchestrator/kernel-python:latest"


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """A private PostgreSQL server (Debian's), for the tests' whole session."""
    from .pgserver import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_store_url(postgres, monkeypatch: pytest.MonkeyPatch) -> str:  # type: ignore[no-untyped-def]
    """A fresh PostgreSQL database for this test; clients find the password in $PGPASSFILE."""
    for key, value in postgres.env.items():
        monkeypatch.setenv(key, value)
    return str(postgres.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_store_url(request: pytest.FixtureRequest, jupyter_env: dict[str, str]) -> str:
    """Each SQL store in turn: the same contract, both databases."""
    if request.param == "sqlite":
        return jupyter_env["KERNEL_ORCHESTRATOR_STORE"]
    return str(request.getfixturevalue("pg_store_url"))


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    """A real Docker Engine with the kernel image built (installs/starts/builds as needed).

    At the end of the session, no container of ours may be left on the engine.
    """
    import subprocess

    import docker

    subprocess.run(
        ["bash", str(REPO / "docker" / "build.sh"), "--offline-base", "--only", "kernel-python"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    client = docker.from_env()
    yield KERNEL_IMAGE
    leftovers = [
        c
        for c in client.containers.list(
            all=True, filters={"label": "kernel-orchestrator.kernel-id"}
        )
        if c.labels.get("kernel-orchestrator.instance") in SESSION_INSTANCES
    ]
    for c in leftovers:
        c.remove(force=True)
    client.close()
    assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"


def write_kernelspec(data_dir: str, name: str, provisioner: str, config: dict, **extra) -> None:  # type: ignore[no-untyped-def, type-arg]
    import json

    spec_dir = Path(data_dir) / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name,
        "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": provisioner, "config": config}},
    }
    spec.update(extra)
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture(scope="session")
def legacy_kernel_python() -> str:
    """A Python whose ipykernel (6.29) has no CurveZMQ support: what many HPC
    environments still run. Made once per machine from PyPI, kept in the cache."""
    import shutil
    import subprocess

    root = Path("/var/cache/kernel-orchestrator/legacy-ipykernel-6.29-jc8.6")
    python = root / "bin" / "python"
    if not (root / ".ready").exists():
        shutil.rmtree(root, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(root)], check=True, timeout=300)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "ipykernel==6.29.5",
                "jupyter_client==8.6.3",
            ],
            check=True,
            timeout=600,
            capture_output=True,
        )
        (root / ".ready").touch()
    return str(python)


# --------------------------------------------------------------------- SSH
@pytest.fixture(scope="session")
def sshnet():  # type: ignore[no-untyped-def]
    """Real sshd hosts (hosta, jump, hostb behind jump) in network namespaces."""
    from .sshnet import sshnet_fixture

    yield from sshnet_fixture()


KERNEL_ACCOUNTS = ("ko-alice", "ko-bob")


@pytest.fixture(scope="session")
def kernel_accounts() -> Iterator[tuple[str, ...]]:
    """OS accounts the gateway runs host kernels of alice and bob as (``ko-{username}``)."""
    from .accounts import host_kernel_accounts

    if os.geteuid() != 0:
        pytest.skip("host kernels under their own accounts need root")
    with host_kernel_accounts(KERNEL_ACCOUNTS) as names:
        yield names


# --------------------------------------------------------------------- Slurm
@pytest.fixture(scope="session")
def slurmnet():  # type: ignore[no-untyped-def]
    """A real Slurm cluster: login host (slurmctld, sshd) and two compute nodes."""
    from .slurmnet import slurmnet_fixture

    yield from slurmnet_fixture()


# --------------------------------------------------------------------- Kubernetes
@pytest.fixture(scope="module")
def kube_cluster(docker_engine: str):  # type: ignore[no-untyped-def]
    """The real single-node cluster (scripts/kube/cluster.sh), up for one test module
    (about 15 s to bring up): the tests after it run on a machine without it.

    At the end, no pod of this session's deployments may be left on it.
    """
    if os.geteuid() != 0:
        pytest.skip("the Kubernetes node (kubelet, containerd, CNI) needs root")
    from .kubecluster import kube_cluster_fixture

    for cluster in kube_cluster_fixture():
        yield cluster
        from .kubecluster import session_leftovers

        left = session_leftovers(cluster, SESSION_INSTANCES)
        assert not left, f"pods or Secrets left on the cluster: {left}"


@pytest.fixture(scope="module")
def kube_release(kube_cluster, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The chart's RBAC for kernels in one shared namespace (ko-kernels)."""
    from .kubecluster import SHARED_VALUES, install_release

    return install_release(kube_cluster, "ko", SHARED_VALUES, tmp_path_factory.mktemp("kube"))


@pytest.fixture(scope="module")
def kube_per_user(kube_cluster, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The chart's RBAC for a namespace per user, made by the orchestrator."""
    from .kubecluster import PER_USER_VALUES, install_release

    return install_release(kube_cluster, "kou", PER_USER_VALUES, tmp_path_factory.mktemp("kube"))


@pytest.fixture
def kube(kube_release):  # type: ignore[no-untyped-def]
    """``kube_release``, with the provisioner's shared watches and clients dropped after
    the test (the next test starts as a fresh process would)."""
    yield kube_release
    from .kubecluster import forget_provisioner_state

    forget_provisioner_state()
