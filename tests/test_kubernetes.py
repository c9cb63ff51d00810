"""The Kubernetes provisioner against the stand-in API server, pods run on Docker.

tests/kube/ holds the test infrastructure: a stateful stand-in for the API server
(real HTTP, real ``kubernetes`` client, manifests validated against the official
schemas) and a pod runner that plays the kubelet on the local Docker Engine.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from kubernetes.client import CoreV1Api, NetworkingV1Api, RbacAuthorizationV1Api

import orchestrator
from orchestrator.errors import OrchestratorError
from provisioners.kubernetes import watcher as kube_watcher

from .conftest import write_kernelspec
from .kube.fixtures import kube_pod_runner, kube_standin  # noqa: F401
from .test_docker import run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("docker_engine", "jupyter_env")]
IMAGE = "kernel-orchestrator/kernel-python:latest"


@pytest.fixture
def kube(kube_standin: Any, kube_pod_runner: Any) -> Any:  # noqa: F811
    yield kube_standin
    kube_watcher.stop_all()  # our shared watches end before the stand-in stops
    from provisioners.kubernetes.apiclient import forget_clients

    forget_clients()


@pytest.fixture
def kspec(kube: Any, jupyter_env: dict[str, str]):  # type: ignore[no-untyped-def]
    def make(name: str, **config: Any) -> str:
        base = {"api_url": kube.url, "namespace": "default", "image": IMAGE, "startup_timeout": 60}
        base.update(config)
        write_kernelspec(jupyter_env["JUPYTER_DATA_DIR"], name, "kubernetes-provisioner", base)
        return name

    return make


def core(kube: Any) -> CoreV1Api:
    return CoreV1Api(kube.api_client())


def pods(kube: Any, namespace: str | None = None) -> list[Any]:
    if namespace:
        return core(kube).list_namespaced_pod(namespace).items
    return core(kube).list_pod_for_all_namespaces().items


def secrets(kube: Any, namespace: str = "default") -> list[Any]:
    return core(kube).list_namespaced_secret(namespace).items


async def test_lifecycle_in_a_pod(kspec: Any, kube: Any, store: Any) -> None:
    name = kspec("kpy")
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    try:
        (pod,) = pods(kube, "default")
        assert pod.metadata.labels["kernel-orchestrator.kernel-id"] == km.kernel_id
        assert pod.metadata.labels["kernel-orchestrator.instance"] == store.instance_id
        assert km.ip == pod.status.pod_ip
        assert km.curve_secretkey  # pod IPs cross the network: CurveZMQ by default
        (secret,) = secrets(kube)
        assert secret.metadata.owner_references[0].uid == pod.metadata.uid
        sc = pod.spec.containers[0].security_context
        assert sc.allow_privilege_escalation is False and sc.run_as_non_root is True
        assert sc.capabilities.drop == ["ALL"] and pod.spec.automount_service_account_token is False

        # the key and the Curve secret travel only inside the Secret's data: no request
        # carries them in clear, and the pod spec never holds them
        import base64

        key = km.session.key.decode()
        for secret_text in (key, km.curve_secretkey.decode()):
            assert kube.requests_containing(secret_text) == []
        data = json.loads(base64.b64decode(secret.data["connection.json"]))
        assert data["key"] == key and data["curve_secretkey"] == km.curve_secretkey.decode()
        pod_json = json.dumps(core(kube).api_client.sanitize_for_serialization(pod))
        assert key not in pod_json and secret.data["connection.json"] not in pod_json

        assert (await run(km, "state = 11"))["status"] == "ok"
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        kc.execute("import time; time.sleep(60)")
        await asyncio.sleep(1.5)
        await km.interrupt_kernel()
        reply = await kc.get_shell_msg(timeout=20)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        kc.stop_channels()
        await km.restart_kernel()
        assert (await run(km, "state"))["ename"] == "NameError"
        assert len(pods(kube, "default")) == 1
    finally:
        await km.shutdown_kernel()
    assert pods(kube, "default") == [] and secrets(kube) == []
    assert await store.get(km.kernel_id) is None


@pytest.mark.parametrize(
    "config, env, message",
    [
        ({"node_selector": {"gpu": "yes"}}, {}, "Unschedulable"),
        ({"cpu_limit": "0"}, {}, "cpu_limit '0' is below the minimum of 0.01 CPUs"),
        ({"memory_limit": "lots"}, {}, "memory_limit 'lots' is not a Kubernetes quantity"),
        ({"gpus": 1}, {}, "Unschedulable"),
        ({}, {"KERNEL_IMAGE": "evil/miner:1"}, "image 'evil/miner:1' is not allowed"),
        ({}, {"KERNEL_PROFILE": "huge"}, "unknown profile 'huge'"),
    ],
)
async def test_start_failures_are_fast_and_clean(
    kspec: Any, kube: Any, store: Any, config: dict[str, Any], env: dict[str, str], message: str
) -> None:
    name = kspec("kbad", **config)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    started = asyncio.get_running_loop().time()
    with pytest.raises(OrchestratorError, match=message):
        await km.start_kernel(env={**os.environ, **env})
    assert asyncio.get_running_loop().time() - started < 30  # not the whole start timeout
    assert pods(kube) == [] and secrets(kube) == []
    assert await store.list() == []


async def test_gpu_profiles_and_resources_render(kspec: Any, kube: Any, store: Any) -> None:
    name = kspec(
        "kprof",
        cpu_request="100m",
        memory_limit="512Mi",
        profiles={
            "small": {"memory_limit": "256Mi", "cpu_limit": "500m"},
            "gpu": {
                "gpus": 2,
                "node_selector": {"accelerator": "a100"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        },
    )
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel(env={**os.environ, "KERNEL_PROFILE": "small"})
    try:
        (pod,) = pods(kube, "default")
        res = pod.spec.containers[0].resources
        assert res.limits == {"memory": "256Mi", "cpu": "500m"}
        assert res.requests["cpu"] == "100m"
    finally:
        await km.shutdown_kernel(now=True)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    with pytest.raises(OrchestratorError, match="Unschedulable"):
        await km.start_kernel(env={**os.environ, "KERNEL_PROFILE": "gpu"})
    bodies = [
        r.body if isinstance(r.body, dict) else json.loads(r.body or b"{}")
        for r in kube.requests
        if r.method == "POST" and r.path.endswith("/pods")
    ]
    (sent,) = [b for b in bodies if "a100" in json.dumps(b)]
    container = sent["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert sent["spec"]["tolerations"][0]["key"] == "gpu"


async def test_namespace_per_user_and_hostile_values(kspec: Any, kube: Any, store: Any) -> None:
    name = kspec(
        "kuser",
        namespace_template="kernels-{username}",
        create_namespace=True,
        namespace_role="kernel-orchestrator-kernels",
        orchestrator_service_account="platform/kernel-orchestrator",
        volumes=[{"name": "home", "emptyDir": {}}],
        volume_mounts=[{"name": "home", "mountPath": "/home/{username}"}],
    )
    hostile = "../Evil User$(id);`rm -rf /`"
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel(
        env={**os.environ, "KERNEL_USERNAME": hostile, "KERNEL_NOTE": "a'b\"c$(d)"}
    )
    try:
        ns = km.provisioner.pod_namespace
        assert ns.startswith("kernels-evil-user") and len(ns) <= 63
        (pod,) = pods(kube, ns)
        assert pod.metadata.labels["kernel-orchestrator.user"].startswith("evil-user")
        assert pod.spec.containers[0].volume_mounts[-1].mount_path.startswith("/home/evil-user")
        rb = RbacAuthorizationV1Api(kube.api_client()).read_namespaced_role_binding(
            "kernel-orchestrator", ns
        )
        assert rb.role_ref.name == "kernel-orchestrator-kernels"
        out = (
            await run(
                km, "import os; print(os.environ['KERNEL_NOTE'], os.environ['KERNEL_USERNAME'])"
            )
        )["out"]
        assert out == f"a'b\"c$(d) {hostile}\n"
        # Made locked down: PodSecurity restricted, marked as ours, no API token in the
        # pod, ingress from the orchestrator only, egress to DNS only.
        labels = core(kube).read_namespace(ns).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert labels["kernel-orchestrator.io/kernel-namespace"] == "true"
        assert pod.spec.automount_service_account_token is False
        policy = NetworkingV1Api(kube.api_client()).read_namespaced_network_policy(
            "kernel-orchestrator-kernels", ns
        )
        assert policy.spec.policy_types == ["Ingress", "Egress"]
        (source,) = policy.spec.ingress[0]._from
        assert source.namespace_selector.match_labels == {"kubernetes.io/metadata.name": "platform"}
        assert source.pod_selector.match_labels == {"app.kubernetes.io/component": "orchestrator"}
        (dns,) = policy.spec.egress
        assert {(p.protocol, p.port) for p in dns.ports} == {("UDP", 53), ("TCP", 53)}

        # A second kernel of the same user shares the namespace; shutting the first
        # down leaves it (and the second kernel) alone.
        second = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
        await second.start_kernel(env={**os.environ, "KERNEL_USERNAME": hostile})
        assert second.provisioner.pod_namespace == ns
    finally:
        await km.shutdown_kernel(now=True)
    try:
        assert ns in [n.metadata.name for n in core(kube).list_namespace().items]
        assert (await run(second, "print(1 + 1)"))["out"] == "2\n"
    finally:
        await second.shutdown_kernel(now=True)
    names = [n.metadata.name for n in core(kube).list_namespace().items]
    assert ns not in names  # made for this user's kernels, and gone with the last of them

    # A namespace the operator made (unmarked) is used as it is, and never deleted.
    core(kube).create_namespace({"metadata": {"name": "kernels-carol"}})
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel(env={**os.environ, "KERNEL_USERNAME": "carol"})
    await km.shutdown_kernel(now=True)
    assert "kernels-carol" in [n.metadata.name for n in core(kube).list_namespace().items]
    core(kube).delete_namespace("kernels-carol")


async def test_one_watch_for_many_kernels_and_reattach(kspec: Any, kube: Any, store: Any) -> None:
    name = kspec("kmany")
    kms = [orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store) for _ in range(3)]
    await asyncio.gather(*(km.start_kernel() for km in kms))
    try:
        assert kube.open_watches == 1
        assert (await run(kms[0], "kept = 'yes'"))["status"] == "ok"
        for km in kms:
            km.detach()
        mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
        report = await mkm.restore_kernels()
        assert sorted(report.reattached) == sorted(km.kernel_id for km in kms)
        assert (await run(mkm.get_kernel(kms[0].kernel_id), "print(kept)"))["out"] == "yes\n"
        assert kube.open_watches == 1
        await mkm.shutdown_all()
    finally:
        for km in kms:
            if km.provisioner and km.provisioner.pod_name:
                await km.provisioner.cleanup()
    assert pods(kube, "default") == [] and secrets(kube) == []


async def test_gc_removes_orphaned_pods(kspec: Any, kube: Any, store: Any) -> None:
    from orchestrator.gc import collect_garbage

    name = kspec("kgc")
    keep = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    lost = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await asyncio.gather(keep.start_kernel(), lost.start_kernel())
    await store.delete(lost.kernel_id)
    lost.detach()
    report = await collect_garbage(store, grace_seconds=0)
    assert any(lost.kernel_id in o for o in report.orphans)
    remaining = [
        p.metadata.labels["kernel-orchestrator.kernel-id"]
        for p in pods(kube, "default")
        if not p.metadata.deletion_timestamp
    ]
    assert remaining == [keep.kernel_id]
    await keep.shutdown_kernel(now=True)
    for _ in range(100):
        if not pods(kube, "default"):
            break
        await asyncio.sleep(0.1)
    assert pods(kube, "default") == []


async def test_port_forward_reachability(kspec: Any, kube: Any, store: Any) -> None:
    """From outside a cluster: the kernel's ports through the API server's port-forward."""
    name = kspec("kpf", reachability="port-forward")
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    try:
        assert km.ip == "127.0.0.1" and km.shell_port not in range(50001, 50006)
        assert (await run(km, "pf = 2; print(pf * 21)"))["out"] == "42\n"
        assert kube.open_portforwards >= 1
        ports = (km.shell_port, km.iopub_port, km.control_port)
        km.detach()
        km.provisioner._close_forwards()  # as if this process had exited
        km2 = await orchestrator.attach(km.kernel_id, store=store)
        assert (km2.shell_port, km2.iopub_port, km2.control_port) == ports
        assert (await run(km2, "print(pf)"))["out"] == "2\n"
        await km2.shutdown_kernel()
    finally:
        if pods(kube, "default"):
            await km.shutdown_kernel(now=True)
    assert pods(kube, "default") == [] and secrets(kube) == []
