"""TEST INFRASTRUCTURE: pytest fixtures for the stand-in API server and pod runner.

Bring them into a test module by name (``kube_standin = fixtures.kube_standin``).
Both check on teardown that nothing is left: no server thread, no container of the
runner.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .apiserver import StandInApiServer
from .podrunner import LABEL_RUNNER, PodRunner


@pytest.fixture
def kube_standin() -> Iterator[StandInApiServer]:
    """A started stand-in API server; stopped, and checked for leftover threads, after."""
    server = StandInApiServer().start()
    try:
        yield server
    finally:
        server.stop()
    assert server.threads() == [], f"stand-in threads left: {server.threads()}"


@pytest.fixture
def kube_pod_runner(kube_standin: StandInApiServer, docker_engine: str) -> Iterator[PodRunner]:
    """A pod runner on the local Docker Engine for ``kube_standin``'s pods."""
    runner = PodRunner(kube_standin, restart_backoff=0.2, image_retry=1.0, grace_cap=3.0).start()
    try:
        yield runner
    finally:
        runner.stop()
    import docker

    client = docker.from_env()
    try:
        ours = client.containers.list(
            all=True, filters={"label": f"{LABEL_RUNNER}={runner.runner_id}"}
        )
        for c in ours:
            c.remove(force=True)
    finally:
        client.close()
    assert ours == [], f"pod runner left containers: {[c.name for c in ours]}"
    assert runner.threads() == [], f"pod runner threads left: {runner.threads()}"
