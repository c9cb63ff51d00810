"""The Kubernetes provisioner on a real cluster, as the chart's ServiceAccount.

The cluster is ``scripts/kube/cluster.sh``'s (etcd, kube-apiserver, the controller
manager, the scheduler and the real kubelet on containerd, built from Kubernetes'
sources; see tests/kubecluster.py). The provisioner reaches the API server with a
token of the ServiceAccount the chart renders, bound to exactly the chart's Role or
ClusterRoles: a right the chart lacks fails the test that needs it, and
``test_least_privilege`` shows that every right it grants is used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import NetworkingV1Api, RbacAuthorizationV1Api
from kubernetes.client.rest import ApiException

import orchestrator
from orchestrator.errors import KernelStartError, OrchestratorError
from orchestrator.labels import LABEL_INSTANCE
from provisioners.kubernetes import watcher as kube_watcher
from provisioners.kubernetes.names import label_value

from .conftest import write_kernelspec
from .kubecluster import KubeCluster, Release, forget_provisioner_state
from .test_docker import run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]


@pytest.fixture
def kspec(kube: Release, jupyter_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Write a kernelspec: the chart's config for ``release`` (default: the shared
    one), plus ``config``; ``argv`` replaces the kernel's command."""

    def make(
        name: str, release: Release | None = None, argv: list[str] | None = None, **config: Any
    ) -> str:
        release = release or kube
        extra = {k: v for k, v in release.kernelspec.items() if k in ("interrupt_mode",)}
        if argv:
            extra["argv"] = argv
        write_kernelspec(
            jupyter_env["JUPYTER_DATA_DIR"],
            name,
            "kubernetes-provisioner",
            release.config(**config),
            **extra,
        )
        return name

    return make


@pytest.fixture
def per_user(kube_per_user: Release) -> Any:
    yield kube_per_user
    forget_provisioner_state()


def pods(cluster: KubeCluster, store: Any, namespace: str | None = None) -> list[Any]:
    """This test's kernel pods (by its store's instance label), going ones left out."""
    selector = f"{LABEL_INSTANCE}={label_value(store.instance_id)}"
    core = cluster.core()
    found = (
        core.list_namespaced_pod(namespace, label_selector=selector)
        if namespace
        else core.list_pod_for_all_namespaces(label_selector=selector)
    )
    return [p for p in found.items if not p.metadata.deletion_timestamp]


def secrets(cluster: KubeCluster, store: Any) -> list[Any]:
    selector = f"{LABEL_INSTANCE}={label_value(store.instance_id)}"
    return cluster.core().list_secret_for_all_namespaces(label_selector=selector).items


async def nothing_left(cluster: KubeCluster, store: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (pods(cluster, store) or secrets(cluster, store)) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    assert pods(cluster, store) == [] and secrets(cluster, store) == []
    assert await store.list() == []


def watches(cluster: KubeCluster, since: int, user: str) -> int:
    """Watch requests ``user`` opened since ``since`` (each is logged when it starts)."""
    return sum(
        1 for e in cluster.audit(since, user, stages=("ResponseStarted",)) if e["verb"] == "watch"
    )


async def test_lifecycle_in_a_pod(kspec: Any, kube: Release, store: Any) -> None:
    cluster = kube.cluster
    mark = cluster.audit_mark()
    name = kspec("kpy")
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    try:
        (pod,) = pods(cluster, store, kube.kernel_namespace)
        assert pod.metadata.labels["kernel-orchestrator.kernel-id"] == km.kernel_id
        assert pod.metadata.labels["kernel-orchestrator.instance"] == store.instance_id
        assert km.ip == pod.status.pod_ip and pod.spec.node_name == cluster.info["node"]
        assert km.curve_secretkey  # pod IPs cross the network: CurveZMQ by default
        (secret,) = secrets(cluster, store)
        assert secret.metadata.owner_references[0].uid == pod.metadata.uid
        sc = pod.spec.containers[0].security_context
        assert sc.allow_privilege_escalation is False and sc.run_as_non_root is True
        assert sc.capabilities.drop == ["ALL"] and pod.spec.automount_service_account_token is False

        # The key and the Curve secret travel only inside the Secret's data: the audit
        # log (which keeps pod bodies) never sees them, nor does the pod spec.
        key = km.session.key.decode()
        audit = cluster.audit_text(mark)
        assert "create" in audit and key not in audit and km.curve_secretkey.decode() not in audit
        data = json.loads(base64.b64decode(secret.data["connection.json"]))
        assert data["key"] == key and data["curve_secretkey"] == km.curve_secretkey.decode()
        pod_json = json.dumps(cluster.admin().sanitize_for_serialization(pod))
        assert key not in pod_json and secret.data["connection.json"] not in pod_json

        assert (await run(km, "state = 11"))["status"] == "ok"
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        kc.execute("import time; time.sleep(60)")
        await asyncio.sleep(1.5)
        await km.interrupt_kernel()  # SIGINT goes as a message: no exec needed
        reply = await kc.get_shell_msg(timeout=20)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        kc.stop_channels()

        # Another signal reaches the kernel process by exec into its pod; the pod stays.
        code = "import signal; got = []; signal.signal(signal.SIGUSR1, lambda *a: got.append(1))"
        assert (await run(km, code))["status"] == "ok"
        await km.signal_kernel(signal.SIGUSR1)
        assert (await run(km, "print(got, state)"))["out"] == "[1] 11\n"
        assert [p.metadata.uid for p in pods(cluster, store)] == [pod.metadata.uid]

        # A restart waits for the new pod by its uid, not the old one's name.
        await km.restart_kernel()
        assert (await run(km, "state"))["ename"] == "NameError"
        (new_pod,) = pods(cluster, store)
        assert new_pod.metadata.name == pod.metadata.name
        assert new_pod.metadata.uid != pod.metadata.uid
        assert km.provisioner.pod_uid == new_pod.metadata.uid
    finally:
        await km.shutdown_kernel()
    await nothing_left(cluster, store)
    # Every delete named the uid it meant.
    deletes = [e for e in cluster.audit(mark, kube.username) if e["verb"] == "delete"]
    assert deletes and all(e["responseStatus"]["code"] in (200, 404) for e in deletes)


@pytest.mark.parametrize(
    "config, env, message",
    [
        ({"node_selector": {"gpu": "yes"}}, {}, "Unschedulable"),
        ({"cpu_limit": "0"}, {}, "cpu_limit '0' is below the minimum of 0.01 CPUs"),
        ({"memory_limit": "lots"}, {}, "memory_limit 'lots' is not a Kubernetes quantity"),
        ({"gpus": 1}, {}, "Unschedulable"),
        ({}, {"KERNEL_IMAGE": "evil/miner:1"}, "image 'evil/miner:1' is not allowed"),
        ({}, {"KERNEL_PROFILE": "huge"}, "unknown profile 'huge'"),
        (
            {"image": "nowhere/ghost:1.0", "image_pull_policy": "Never"},
            {},
            "ErrImageNeverPull",
        ),
    ],
)
async def test_start_failures_are_fast_and_clean(
    kspec: Any, kube: Release, store: Any, config: dict[str, Any], env: dict[str, str], message: str
) -> None:
    name = kspec("kbad", **config)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    started = time.monotonic()
    with pytest.raises(OrchestratorError, match=message):
        await km.start_kernel(env={**os.environ, **env})
    assert time.monotonic() - started < 30  # not the whole start timeout
    await nothing_left(kube.cluster, store)


async def test_kernel_that_dies_during_start_up_is_reported_with_its_log(
    kspec: Any, kube: Release, store: Any
) -> None:
    name = kspec("kdie", argv=["python", "-c", "print('no kernel today'); exit(3)"])
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    with pytest.raises(OrchestratorError, match=r"(?s)exit code 3.*no kernel today"):
        await km.start_kernel()
    await nothing_left(kube.cluster, store)


async def test_gpu_profiles_and_resources_render(kspec: Any, kube: Release, store: Any) -> None:
    cluster = kube.cluster
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
        (pod,) = pods(cluster, store)
        res = pod.spec.containers[0].resources
        assert res.limits == {"memory": "256Mi", "cpu": "500m"}
        assert res.requests["cpu"] == "100m"
    finally:
        await km.shutdown_kernel(now=True)
    mark = cluster.audit_mark()
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    with pytest.raises(OrchestratorError, match="Unschedulable"):
        await km.start_kernel(env={**os.environ, "KERNEL_PROFILE": "gpu"})
    (sent,) = [
        e["requestObject"]
        for e in cluster.audit(mark, kube.username)
        if e["verb"] == "create" and e["objectRef"]["resource"] == "pods"
    ]
    container = sent["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert sent["spec"]["tolerations"][0]["key"] == "gpu"
    await nothing_left(cluster, store)


async def test_namespace_per_user_and_hostile_values(
    kspec: Any, per_user: Release, store: Any
) -> None:
    cluster = per_user.cluster
    name = kspec(
        "kuser",
        release=per_user,
        volumes=[{"name": "home", "emptyDir": {}}],
        volume_mounts=[{"name": "home", "mountPath": "/home/{username}"}],
    )
    hostile = "../Evil User$(id);`rm -rf /`"
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel(
        env={**os.environ, "KERNEL_USERNAME": hostile, "KERNEL_NOTE": "a'b\"c$(d)"}
    )
    second = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    try:
        ns = km.provisioner.pod_namespace
        assert ns.startswith("kernels-evil-user") and len(ns) <= 63
        (pod,) = pods(cluster, store, ns)
        assert pod.metadata.labels["kernel-orchestrator.user"].startswith("evil-user")
        assert pod.spec.containers[0].volume_mounts[-1].mount_path.startswith("/home/evil-user")
        rb = RbacAuthorizationV1Api(cluster.admin()).read_namespaced_role_binding(
            "kernel-orchestrator", ns
        )
        kernel_config = per_user.kernelspec["metadata"]["kernel_provisioner"]["config"]
        assert rb.role_ref.name == kernel_config["namespace_role"]
        out = (
            await run(
                km, "import os; print(os.environ['KERNEL_NOTE'], os.environ['KERNEL_USERNAME'])"
            )
        )["out"]
        assert out == f"a'b\"c$(d) {hostile}\n"
        # Made locked down: PodSecurity restricted, marked as ours, no API token in the
        # pod, ingress from the orchestrator only, egress to DNS only.
        labels = cluster.core().read_namespace(ns).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert labels["kernel-orchestrator.io/kernel-namespace"] == "true"
        assert pod.spec.automount_service_account_token is False
        policy = NetworkingV1Api(cluster.admin()).read_namespaced_network_policy(
            "kernel-orchestrator-kernels", ns
        )
        assert policy.spec.policy_types == ["Ingress", "Egress"]
        (source,) = policy.spec.ingress[0]._from
        assert source.namespace_selector.match_labels == {
            "kubernetes.io/metadata.name": "ko-platform"
        }
        assert source.pod_selector.match_labels["app.kubernetes.io/component"] == "orchestrator"
        (dns,) = policy.spec.egress
        assert {(p.protocol, p.port) for p in dns.ports} == {("UDP", 53), ("TCP", 53)}

        # A second kernel of the same user shares the namespace; shutting the first
        # down leaves the namespace (and the second kernel) alone.
        await second.start_kernel(env={**os.environ, "KERNEL_USERNAME": hostile})
        assert second.provisioner.pod_namespace == ns
    finally:
        await km.shutdown_kernel(now=True)
    try:
        assert (await run(second, "print(1 + 1)"))["out"] == "2\n"
    finally:
        await second.shutdown_kernel(now=True)
    # Never deleted, not even after the user's last kernel (kubespawner's rule).
    assert cluster.core().read_namespace(ns).status.phase == "Active"
    await nothing_left(cluster, store)


async def test_concurrent_first_starts_of_a_user(kspec: Any, per_user: Release, store: Any) -> None:
    """Both of a new user's first kernels create the namespace; one gets 409 and both run."""
    name = kspec("kfirst", release=per_user)
    user = f"dave{os.getpid()}"
    kms = [orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store) for _ in range(2)]
    mark = per_user.cluster.audit_mark()
    try:
        await asyncio.gather(
            *(km.start_kernel(env={**os.environ, "KERNEL_USERNAME": user}) for km in kms)
        )
        for km in kms:
            assert (await run(km, "print('up')"))["out"] == "up\n"
    finally:
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms if km.has_kernel))
    creates = [
        e["responseStatus"]["code"]
        for e in per_user.cluster.audit(mark, per_user.username)
        if e["verb"] == "create" and e["objectRef"]["resource"] == "namespaces"
    ]
    assert sorted(creates) in ([201], [201, 409])  # the second may find it made already
    await nothing_left(per_user.cluster, store)


async def test_operators_own_namespace_is_used_as_it_is(
    kspec: Any, per_user: Release, store: Any
) -> None:
    """A namespace the operator made (unmarked, with its own RoleBinding) is used and
    left as it is; without a binding the start fails naming the API's refusal."""
    cluster = per_user.cluster
    role = per_user.kernelspec["metadata"]["kernel_provisioner"]["config"]["namespace_role"]
    cluster.create_namespace("kernels-carol", {"pod-security.kubernetes.io/enforce": "restricted"})
    cluster.create_namespace("kernels-erin", {"pod-security.kubernetes.io/enforce": "restricted"})
    sa_ns, _, sa_name = per_user.service_account.partition("/")
    rbac = RbacAuthorizationV1Api(cluster.admin())
    binding = {
        "metadata": {"name": "operator-binding"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_ns}],
    }
    try:
        rbac.create_namespaced_role_binding("kernels-carol", binding)
    except Exception as e:
        assert "AlreadyExists" in str(e)
    name = kspec("kcarol", release=per_user)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel(env={**os.environ, "KERNEL_USERNAME": "carol"})
    try:
        assert km.provisioner.pod_namespace == "kernels-carol"
        assert (await run(km, "print(3)"))["out"] == "3\n"
    finally:
        await km.shutdown_kernel(now=True)
    labels = cluster.core().read_namespace("kernels-carol").metadata.labels
    assert "kernel-orchestrator.io/kernel-namespace" not in labels
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    with pytest.raises(OrchestratorError, match="403 Forbidden"):
        await km.start_kernel(env={**os.environ, "KERNEL_USERNAME": "erin"})
    await nothing_left(cluster, store)


async def test_one_watch_for_many_kernels_and_reattach(
    kspec: Any, kube: Release, store: Any
) -> None:
    cluster = kube.cluster
    mark = cluster.audit_mark()
    name = kspec("kmany")
    kms = [orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store) for _ in range(3)]
    await asyncio.gather(*(km.start_kernel() for km in kms))
    try:
        assert watches(cluster, mark, kube.username) == 1
        assert (await run(kms[0], "kept = 'yes'"))["status"] == "ok"
        for km in kms:
            km.detach()
        mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
        report = await mkm.restore_kernels()
        assert sorted(report.reattached) == sorted(km.kernel_id for km in kms)
        assert (await run(mkm.get_kernel(kms[0].kernel_id), "print(kept)"))["out"] == "yes\n"
        assert watches(cluster, mark, kube.username) == 1
        await mkm.shutdown_all()
    finally:
        for km in kms:
            if km.provisioner and km.provisioner.pod_name:
                await km.provisioner.cleanup()
    await nothing_left(cluster, store)


async def test_gc_removes_orphaned_pods(kspec: Any, kube: Release, store: Any) -> None:
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
        p.metadata.labels["kernel-orchestrator.kernel-id"] for p in pods(kube.cluster, store)
    ]
    assert remaining == [keep.kernel_id]
    await keep.shutdown_kernel(now=True)
    await nothing_left(kube.cluster, store)


async def test_port_forward_reachability(kspec: Any, kube: Release, store: Any) -> None:
    """From outside the pod network: the kernel's ports through the API server."""
    cluster = kube.cluster
    mark = cluster.audit_mark()
    name = kspec("kpf", reachability="port-forward")
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    try:
        assert km.ip == "127.0.0.1" and km.shell_port not in range(50001, 50006)
        assert not km.curve_secretkey  # this loopback is the orchestrator's alone
        assert (await run(km, "pf = 2; print(pf * 21)"))["out"] == "42\n"
        forwards = [
            e
            for e in cluster.audit(mark, kube.username, stages=("ResponseStarted",))
            if e["objectRef"].get("subresource") == "portforward"
        ]
        assert forwards and all(e["responseStatus"]["code"] == 101 for e in forwards)
        ports = (km.shell_port, km.iopub_port, km.control_port)
        km.detach()
        km.provisioner._close_forwards()  # as if this process had exited
        km2 = await orchestrator.attach(km.kernel_id, store=store)
        assert (km2.shell_port, km2.iopub_port, km2.control_port) == ports
        assert (await run(km2, "print(pf)"))["out"] == "2\n"
        await km2.shutdown_kernel()
        # Other users' host kernels share the gateway's loopback, where the forwards
        # listen: then they carry CurveZMQ, as Docker's published ports do.
        shared = orchestrator.AsyncKernelManager(
            kernel_name=name, kernel_store=store, shared_loopback=True
        )
        await shared.start_kernel()
        try:
            assert shared.ip == "127.0.0.1" and shared.curve_secretkey
            assert (await run(shared, "print('sealed')"))["out"] == "sealed\n"
        finally:
            await shared.shutdown_kernel(now=True)
    finally:
        if pods(cluster, store):
            await km.shutdown_kernel(now=True)
    await nothing_left(cluster, store)


async def test_watch_resumes_and_relists_only_when_told(
    kube: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends each watch (here every 2 s): the watch resumes from its last
    resourceVersion without listing again; after an API server restart that has
    forgotten that resourceVersion (410 Gone), it lists once more."""
    from .kubecluster import service_account_client

    monkeypatch.setattr(kube_watcher, "WATCH_SECONDS", 2)
    api = service_account_client(kube)
    selector = f"{LABEL_INSTANCE}=resume-test"
    w = kube_watcher.PodWatcher(api, kube.kernel_namespace, selector)
    try:
        await w.ready()
        mark = kube.cluster.audit_mark()
        await asyncio.sleep(7)
        assert w.lists == 1 and not w.failure
        assert watches(kube.cluster, mark, kube.username) >= 3
    finally:
        w.stop()

    # The API server restarts: the watch fails, backs off and resumes; the restarted
    # server's cache starts after the watch's resourceVersion (something changed
    # meanwhile), so it answers 410 Gone, and the watch lists once more.
    w = kube_watcher.PodWatcher(api, kube.kernel_namespace, selector)
    try:
        await w.ready()
        kube.cluster.core().create_namespaced_config_map(
            kube.kernel_namespace, {"metadata": {"generateName": "resume-test-"}}
        )
        await asyncio.to_thread(kube.cluster.restart, "kube-apiserver")
        deadline = time.monotonic() + 60
        while (w.lists < 2 or w.failure) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert w.lists == 2 and not w.failure
    finally:
        w.stop()
        api.close()


async def test_persistent_watch_failure_fails_starts_with_the_reason(
    kspec: Any, kube: Release, store: Any, tmp_path: Any
) -> None:
    bad = tmp_path / "revoked.token"
    bad.write_text("not-a-token")
    bad.chmod(0o600)
    name = kspec("kdenied", api_token_file=str(bad))
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    started = time.monotonic()
    with pytest.raises(OrchestratorError, match=r"cannot watch kernel pods.*401"):
        await km.start_kernel()
    assert time.monotonic() - started < 15
    await nothing_left(kube.cluster, store)


async def test_signals_without_exec_rights_are_refused_clearly(
    kspec: Any, per_user: Release, store: Any
) -> None:
    """The per-user release grants no pods/exec: a signal other than SIGINT is refused
    naming the chart value that grants it, and the kernel keeps running."""
    name = kspec("knoexec", release=per_user)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel(env={**os.environ, "KERNEL_USERNAME": "frank"})
    try:
        with pytest.raises(OrchestratorError, match=r"403.*kernels\.execForSignals"):
            await km.signal_kernel(signal.SIGUSR1)
        assert (await run(km, "print('still here')"))["out"] == "still here\n"
    finally:
        await km.shutdown_kernel(now=True)
    await nothing_left(per_user.cluster, store)


def _requests(events: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(namespace, api group, resource[/subresource], verb) of each allowed request,
    as RBAC sees it: a websocket exec or port-forward is a "get" that the API server
    also authorizes as a "create", and a RoleBinding made uses "bind" on its role."""
    used = set()
    for e in events:
        ref, code = e.get("objectRef") or {}, e["responseStatus"]["code"]
        if not ref or code == 403:
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        verbs = {e["verb"]}
        if ref.get("subresource") in ("exec", "portforward"):
            verbs.add("create")
        for verb in verbs:
            used.add((ref.get("namespace", ""), ref.get("apiGroup", ""), resource, verb))
        if resource == "rolebindings" and "create" in verbs and code == 201:
            used.add((ref["namespace"], "rbac.authorization.k8s.io", "clusterroles", "bind"))
    return used


RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _home_claim(cluster: KubeCluster, namespace: str, user: str, path: str, node: str = "") -> None:
    """A user's home as the Hub would give it: a PersistentVolume (the directory
    ``path``) bound to ``claim-<user>``, ReadWriteOnce; on this node, or only on the
    node named ``node`` (as a local volume of another node is)."""
    core = cluster.core()
    spec: dict[str, Any] = {
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "",
        "hostPath": {"path": path, "type": "Directory"},
    }
    if node:
        term = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [term]}]}}
    core.create_persistent_volume({"metadata": {"name": f"ko-test-home-{user}"}, "spec": spec})
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": f"claim-{user}"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": f"ko-test-home-{user}",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )


def _server_pod(cluster: KubeCluster, namespace: str, user: str) -> None:
    """The user's server pod (zero-to-jupyterhub's jupyter-<user>), holding the claim."""
    from .kubecluster import IMAGE

    cluster.core().create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": f"jupyter-{user}"},
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "600"],
                        "volumeMounts": [{"name": "home", "mountPath": f"/home/{user}"}],
                        "securityContext": RESTRICTED_CONTAINER,
                    }
                ],
                "volumes": [
                    {"name": "home", "persistentVolumeClaim": {"claimName": f"claim-{user}"}}
                ],
                "securityContext": {
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "terminationGracePeriodSeconds": 0,
            },
        },
    )


async def test_a_users_claim_and_the_notebooks_directory(
    kspec: Any, kube: Release, store: Any
) -> None:
    """Alice's kernel pod mounts her ReadWriteOnce claim, is placed on the node of her
    server pod (which holds it), and starts in the notebook's directory there: it reads
    the file beside the notebook and writes one her server sees. Bob has no claim: his
    start is refused at once, naming it."""
    from .homes import user_homes

    cluster, namespace = kube.cluster, kube.kernel_namespace
    core = cluster.core()
    with user_homes({"alice": "1000"}) as homes:
        name = kspec(
            "khome",
            volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}],
            volume_mounts=[{"name": "home", "mountPath": "/home/{username}"}],
            working_dir_map={f"{homes.served}/{{username}}": "/home/{username}"},
            colocate_with_claims=True,
        )
        _home_claim(cluster, namespace, "alice", str(homes.server_dir("alice")))
        try:
            _server_pod(cluster, namespace, "alice")
            deadline = time.monotonic() + 120
            while core.read_namespaced_pod("jupyter-alice", namespace).status.phase != "Running":
                assert time.monotonic() < deadline, "the server pod did not start"
                await asyncio.sleep(0.5)
            km = orchestrator.AsyncKernelManager(
                kernel_name=name, kernel_store=store, multi_tenant=True
            )
            where = str(homes.server_dir("alice", "sub"))
            await km.start_kernel(
                env={**os.environ, "KERNEL_USERNAME": "alice", "KERNEL_WORKING_DIR": where}
            )
            try:
                (pod,) = pods(cluster, store, namespace)
                node_affinity = pod.spec.affinity.node_affinity
                terms = node_affinity.required_during_scheduling_ignored_during_execution
                fields = terms.node_selector_terms[0].match_fields[0]
                assert (fields.key, fields.values) == ("metadata.name", [cluster.info["node"]])
                code = (
                    "import os\nrows = open('data.csv').read().splitlines()\n"
                    "open('result.txt', 'w').write(f'{len(rows) - 1} rows\\n')\n"
                    "print(os.getcwd(), os.path.exists('/home/bob'))"
                )
                assert (await run(km, code))["out"] == "/home/alice/sub False\n"
                assert homes.server_dir("alice", "sub", "result.txt").read_text() == "2 rows\n"
            finally:
                await km.shutdown_kernel(now=True)

            bob = orchestrator.AsyncKernelManager(
                kernel_name=name, kernel_store=store, multi_tenant=True
            )
            started = time.monotonic()
            with pytest.raises(OrchestratorError, match="claim-bob does not exist"):
                await bob.start_kernel(env={**os.environ, "KERNEL_USERNAME": "bob"})
            assert time.monotonic() - started < 30  # not the start-up timeout
        finally:
            core.delete_namespaced_pod("jupyter-alice", namespace, grace_period_seconds=0)
            core.delete_namespaced_persistent_volume_claim("claim-alice", namespace)
            core.delete_persistent_volume("ko-test-home-alice")
    await nothing_left(cluster, store)


async def test_a_pod_that_cannot_reach_its_claims_node_names_the_claim(
    kspec: Any, kube: Release, store: Any, tmp_path: Path
) -> None:
    """Alice's claim is bound to a volume of another node (a local volume of a node that
    is not this one): no node can run her kernel. The start fails as soon as the
    scheduler says so, with its reason and the claim and volume named, not after the
    start-up timeout, and leaves no pod behind."""
    cluster, namespace = kube.cluster, kube.kernel_namespace
    core = cluster.core()
    name = kspec(
        "kelsewhere",
        volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}],
        volume_mounts=[{"name": "home", "mountPath": "/home/{username}"}],
        startup_timeout=120,
    )
    _home_claim(cluster, namespace, "alice", str(tmp_path), node="another-node")
    try:
        km = orchestrator.AsyncKernelManager(
            kernel_name=name, kernel_store=store, multi_tenant=True
        )
        started = time.monotonic()
        with pytest.raises(KernelStartError) as refused:
            await km.start_kernel(env={**os.environ, "KERNEL_USERNAME": "alice"})
        assert time.monotonic() - started < 90  # not the start-up timeout
        text = str(refused.value)
        assert "Unschedulable" in text and "PersistentVolume's node affinity" in text, text
        assert text.splitlines()[0].endswith("; it mounts claim claim-alice (volume home)"), text
    finally:
        core.delete_namespaced_persistent_volume_claim("claim-alice", namespace)
        core.delete_persistent_volume("ko-test-home-alice")
    await nothing_left(cluster, store)


@pytest.mark.timeout(600)
async def test_jupyterlab_lists_what_a_pod_wrote_beside_the_notebook(
    kube: Release, tmp_path: Path, jupyter_env: dict[str, str], docker_engine: str
) -> None:
    """Through the gateway and JupyterLab in a browser: Alice's notebook runs in a pod
    that mounts her claim (a volume of this node holding the home her JupyterLab serves)
    and starts in the notebook's directory; the file the cell writes is listed."""
    from .homes import Homes
    from .test_jupyterlab import notebook_beside_its_files

    cluster, namespace = kube.cluster, kube.kernel_namespace
    core = cluster.core()

    def config(homes: Homes) -> dict[str, Any]:
        _home_claim(cluster, namespace, "alice", str(homes.server_dir("alice")))
        return kube.config(
            volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}],
            volume_mounts=[{"name": "home", "mountPath": "/home/{username}"}],
            working_dir_map={f"{homes.served}/{{username}}": "/home/{username}"},
        )

    try:
        await notebook_beside_its_files(
            tmp_path,
            jupyter_env,
            provisioner="kubernetes-provisioner",
            config=config,
            owner="1000",
            label="Kubernetes",
        )
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespaced_persistent_volume_claim("claim-alice", namespace)
        with contextlib.suppress(ApiException):
            core.delete_persistent_volume("ko-test-home-alice")


async def test_least_privilege(kspec: Any, kube: Release, per_user: Release, store: Any) -> None:
    """A kernel's whole life uses every right the chart grants, and needs no other:
    nothing is refused (403), and no granted (scope, resource, verb) goes unused."""
    cluster = kube.cluster
    mark = cluster.audit_mark()
    handler = "import signal; signal.signal(signal.SIGUSR1, lambda *a: print('usr1'))"
    # Shared namespace: a port-forwarded kernel, signalled by exec, then shut down; a
    # kernel that dies starting (its log is read); gc lists pods.
    km = orchestrator.AsyncKernelManager(
        kernel_name=kspec("klp", reachability="port-forward"), kernel_store=store
    )
    await km.start_kernel()
    try:
        assert (await run(km, handler))["status"] == "ok"
        await km.signal_kernel(signal.SIGUSR1)
    finally:
        await km.shutdown_kernel()
    # A kernel mounting a user's claim has it read first (here: none, refused at once).
    claim = [{"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}]
    km = orchestrator.AsyncKernelManager(
        kernel_name=kspec("klpclaim", volumes=claim), kernel_store=store
    )
    with pytest.raises(OrchestratorError, match="does not exist"):
        await km.start_kernel(env={**os.environ, "KERNEL_USERNAME": "nobody-here"})
    # Per-user namespaces: a new user's namespace made and bound, a kernel in it.
    user = f"grace{os.getpid()}"
    km = orchestrator.AsyncKernelManager(
        kernel_name=kspec("klpu", release=per_user), kernel_store=store
    )
    await km.start_kernel(env={**os.environ, "KERNEL_USERNAME": user})
    created_namespace = km.provisioner.pod_namespace
    await km.shutdown_kernel()
    # Both: a kernel that dies during start-up is reported with its log.
    for release, env in ((kube, {}), (per_user, {"KERNEL_USERNAME": user})):
        name = kspec("klpdie", release=release, argv=["python", "-c", "raise SystemExit('bye')"])
        forget_provisioner_state()
        km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
        with pytest.raises(OrchestratorError, match="bye"):
            await km.start_kernel(env={**os.environ, **env})
    await nothing_left(cluster, store)

    events = cluster.audit(mark)
    for release in (kube, per_user):
        mine = [e for e in events if e["user"]["username"] == release.username]
        refused = [(e["verb"], e["objectRef"]) for e in mine if e["responseStatus"]["code"] == 403]
        assert refused == [], f"{release.name}: refused: {refused}"
        used = _requests(mine)

        def covered(rule: tuple[str, str, str, str], used: set[Any] = used) -> bool:
            scope, group, resource, verb = rule
            return any(
                (g, r, v) == (group, resource, verb)
                and (
                    scope in ("*", ns) or (scope == "kernel-namespaces" and ns == created_namespace)
                )
                for ns, g, r, v in used
            )

        unused = [rule for rule in release.rules() if not covered(rule)]
        assert unused == [], f"{release.name}: granted but never used: {unused}"


async def test_kubeconfig_exec_plugin_runs_off_the_event_loop(
    kspec: Any, kube: Release, store: Any, tmp_path: Any
) -> None:
    """A kubeconfig whose credentials come from an exec plugin (as cloud CLIs do, slowly):
    the plugin runs on the Kubernetes thread pool, and the event loop keeps ticking."""
    plugin = tmp_path / "slow-credentials"
    plugin.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, time\n"
        "time.sleep(1.5)\n"
        f"token = open({str(kube.token_file)!r}).read().strip()\n"
        "json.dump({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
        " 'status': {'token': token}}, sys.stdout)\n"
    )
    plugin.chmod(0o700)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "ko",
                "clusters": [
                    {
                        "name": "ko",
                        "cluster": {
                            "server": kube.cluster.server,
                            "certificate-authority": kube.cluster.ca_file,
                        },
                    }
                ],
                "users": [
                    {
                        "name": "sa",
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1",
                                "command": str(plugin),
                                "interactiveMode": "Never",
                            }
                        },
                    }
                ],
                "contexts": [{"name": "ko", "context": {"cluster": "ko", "user": "sa"}}],
            }
        )
    )
    kubeconfig.chmod(0o600)
    name = kspec("kexec", api_url="", api_token_file="", api_ca_file="", kubeconfig=str(kubeconfig))
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    try:
        await km.start_kernel()
        assert (await run(km, "print('via exec plugin')"))["out"] == "via exec plugin\n"
    finally:
        ticker.cancel()
        await km.shutdown_kernel(now=True)
    assert max(gaps) < 1.0, f"the event loop stalled for {max(gaps):.2f}s"
    await nothing_left(kube.cluster, store)
