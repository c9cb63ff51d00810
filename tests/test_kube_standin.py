"""The Kubernetes TEST INFRASTRUCTURE (tests/kube/) against the real ``kubernetes`` client.

Proves that the stand-in API server behaves like the real one where the Kubernetes
provisioner will depend on it (CRUD, Status errors, validation, selectors, watches,
garbage collection, namespaces), and that the pod runner turns pods into real
containers on the Docker Engine with kubelet-like status, events and cleanup.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import docker
import kubernetes
import pydantic
import pytest
from kubernetes.client import (
    CoreV1Api,
    RbacAuthorizationV1Api,
    RbacV1Subject,
    V1Container,
    V1ObjectMeta,
    V1OwnerReference,
    V1Pod,
    V1PodSpec,
    V1PolicyRule,
    V1Role,
    V1RoleBinding,
    V1RoleRef,
    V1Secret,
)
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward

from .kube import fixtures as kube_fixtures
from .kube.apiserver import StandInApiServer
from .kube.podrunner import LABEL_POD, PodRunner
from .kube.validation import SCHEMA_VERSION

pytestmark = pytest.mark.slow
kube_standin = kube_fixtures.kube_standin
kube_pod_runner = kube_fixtures.kube_pod_runner
IMAGE = "kernel-orchestrator/kernel-python:latest"


@pytest.fixture
def core(kube_standin: StandInApiServer) -> CoreV1Api:
    return CoreV1Api(kube_standin.api_client())


@pytest.fixture
def rbac(kube_standin: StandInApiServer) -> RbacAuthorizationV1Api:
    return RbacAuthorizationV1Api(kube_standin.api_client())


def status_of(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    containers = spec.pop("containers", None) or [{"name": "main", "image": IMAGE}]
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": containers, **spec},
    }


# ------------------------------------------------------------------------ CRUD
def test_crud_and_errors(core: CoreV1Api, rbac: RbacAuthorizationV1Api) -> None:
    body = V1Pod(
        metadata=V1ObjectMeta(name="p1", labels={"app": "k"}),
        spec=V1PodSpec(containers=[V1Container(name="main", image=IMAGE)]),
    )
    created = core.create_namespaced_pod("default", body)
    meta = created.metadata
    assert meta.uid and meta.creation_timestamp and meta.namespace == "default"
    assert int(meta.resource_version) > 0
    assert created.status.phase == "Pending" and created.status.qos_class == "BestEffort"
    assert created.spec.restart_policy == "Always"
    assert created.spec.containers[0].image_pull_policy == "Always"  # :latest

    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", body)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "AlreadyExists"

    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("nope", "default")
    st = status_of(err.value)
    assert err.value.status == 404 and st["reason"] == "NotFound"
    assert st["message"] == 'pods "nope" not found' and st["details"] == {
        "name": "nope",
        "kind": "pods",
    }

    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret("no-such-ns", V1Secret(metadata=V1ObjectMeta(name="s")))
    assert (
        err.value.status == 404
        and status_of(err.value)["message"] == 'namespaces "no-such-ns" not found'
    )

    # patches: strategic merge (the client's default for a dict), merge, JSON patch
    stale = core.read_namespaced_pod("p1", "default")
    p = core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"tier": "x"}}})
    assert p.metadata.labels == {"app": "k", "tier": "x"}
    assert int(p.metadata.resource_version) > int(stale.metadata.resource_version)
    p = core.patch_namespaced_pod(
        "p1",
        "default",
        {"metadata": {"labels": {"tier": None}}},
        _content_type="application/merge-patch+json",
    )
    assert p.metadata.labels == {"app": "k"}
    p = core.patch_namespaced_pod(
        "p1", "default", [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]
    )
    assert p.metadata.annotations == {"a": "b"}

    # optimistic concurrency: a replace with an old resourceVersion conflicts
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_pod("p1", "default", stale)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"

    # pod spec is immutable (but the image is not); status only through /status
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod("p1", "default", {"spec": {"restartPolicy": "Never"}})
    assert (
        err.value.status == 422
        and "pod updates may not change fields" in status_of(err.value)["message"]
    )
    p = core.patch_namespaced_pod(
        "p1", "default", {"spec": {"containers": [{"name": "main", "image": "other:1"}]}}
    )
    assert p.spec.containers[0].image == "other:1"
    p = core.patch_namespaced_pod("p1", "default", {"status": {"phase": "Running"}})
    assert p.status.phase == "Pending"  # ignored on the main resource
    p = core.patch_namespaced_pod_status("p1", "default", {"status": {"phase": "Running"}})
    assert p.status.phase == "Running"

    # secrets: stringData -> data; delete answers a Status
    s = core.create_namespaced_secret(
        "default", V1Secret(metadata=V1ObjectMeta(name="s1"), string_data={"k": "v"})
    )
    assert s.data == {"k": base64.b64encode(b"v").decode()} and s.type == "Opaque"
    status = core.delete_namespaced_secret("s1", "default")
    assert status["status"] == "Success" and status["details"]["name"] == "s1"  # v37: a dict
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_secret("s1", "default")
    assert err.value.status == 404

    # RBAC
    role = V1Role(
        metadata=V1ObjectMeta(name="kernel"),
        rules=[V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "watch"])],
    )
    assert rbac.create_namespaced_role("default", role).rules[0].verbs == ["get", "watch"]
    binding = V1RoleBinding(
        metadata=V1ObjectMeta(name="kernel"),
        role_ref=V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="kernel"),
        subjects=[RbacV1Subject(kind="ServiceAccount", name="default", namespace="default")],
    )
    rbac.create_namespaced_role_binding("default", binding)
    with pytest.raises(ApiException) as err:
        rbac.patch_namespaced_role_binding("kernel", "default", {"roleRef": {"name": "other"}})
    assert err.value.status == 422 and "cannot change roleRef" in status_of(err.value)["message"]
    assert [r.metadata.name for r in rbac.list_namespaced_role_binding("default").items] == [
        "kernel"
    ]
    rbac.delete_namespaced_role("kernel", "default")
    with pytest.raises(ApiException) as err:
        rbac.read_namespaced_role("kernel", "default")
    assert err.value.status == 404
    assert status_of(err.value)["details"]["group"] == "rbac.authorization.k8s.io"


INVALID = {
    "container name": (
        pod("bad", containers=[{"name": "Bad_Name", "image": IMAGE}]),
        "spec.containers[0].name",
    ),
    "label value": (pod("bad", labels={"app": "not valid!"}), "metadata.labels"),
    "label key": (pod("bad", labels={"-x": "y"}), "metadata.labels"),
    "pod name": (pod("Bad.Name"), "metadata.name"),
    "missing image": (pod("bad", containers=[{"name": "main"}]), "spec.containers[0].image"),
    "env name": (
        pod(
            "bad",
            containers=[{"name": "main", "image": IMAGE, "env": [{"name": "1X", "value": "v"}]}],
        ),
        "spec.containers[0].env[0].name",
    ),
    "unknown volume": (
        pod(
            "bad",
            containers=[
                {"name": "m", "image": IMAGE, "volumeMounts": [{"name": "v", "mountPath": "/v"}]}
            ],
        ),
        "spec.containers[0].volumeMounts[0].name",
    ),
    "secret mode": (
        pod("bad", volumes=[{"name": "v", "secret": {"secretName": "s", "defaultMode": 0o1000}}]),
        "spec.volumes[0].secret.defaultMode",
    ),
    "quantity": (
        pod(
            "bad",
            containers=[{"name": "m", "image": IMAGE, "resources": {"limits": {"memory": "lots"}}}],
        ),
        "spec.containers[0].resources.limits[memory]",
    ),
    "requests above limits": (
        pod(
            "bad",
            containers=[
                {
                    "name": "m",
                    "image": IMAGE,
                    "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "2"}},
                }
            ],
        ),
        "spec.containers[0].resources.requests",
    ),
    "duplicate container": (
        pod("bad", containers=[{"name": "m", "image": IMAGE}, {"name": "m", "image": IMAGE}]),
        "spec.containers[1].name",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_manifests_are_rejected_422(core: CoreV1Api, case: str) -> None:
    body, field = INVALID[case]
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", body)
    st = status_of(err.value)
    assert err.value.status == 422 and st["reason"] == "Invalid", st
    assert st["details"]["kind"] == "Pod"
    assert field in [c["field"] for c in st["details"]["causes"]], st
    assert core.list_namespaced_pod("default").items == []


def raw(server: StandInApiServer, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """A request without the client (whose pydantic models refuse such bodies)."""
    req = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_undecodable_manifests_are_rejected_400(
    kube_standin: StandInApiServer,
    core: CoreV1Api,
    rbac: RbacAuthorizationV1Api,
) -> None:
    """Schema violations: unknown fields and wrong types are decoding errors (400) on the
    real server, a missing required field is 422.  The v37 client's pydantic models
    already refuse such bodies client-side, so they are sent raw."""
    with pytest.raises(pydantic.ValidationError):
        core.create_namespaced_pod(
            "default", pod("p", containers=[{"name": "m", "image": IMAGE, "bogus": 1}])
        )
    pods = "/api/v1/namespaces/default/pods"
    code, st = raw(
        kube_standin, "POST", pods, pod("p", containers=[{"name": "m", "image": IMAGE, "bogus": 1}])
    )
    assert (code, st["reason"]) == (
        400,
        "BadRequest",
    ) and 'unknown field "spec.containers[0].bogus"' in st["message"]
    ports = [{"containerPort": "http"}]
    code, st = raw(
        kube_standin,
        "POST",
        pods,
        pod("p", containers=[{"name": "m", "image": IMAGE, "ports": ports}]),
    )
    assert code == 400 and "spec.containers[0].ports[0].containerPort" in st["message"]
    code, st = raw(kube_standin, "POST", pods, pod("p", containers=[{"image": IMAGE}]))
    assert (code, st["reason"]) == (422, "Invalid")
    assert st["details"]["causes"] == [
        {
            "reason": "FieldValueRequired",
            "message": "Required value",
            "field": "spec.containers[0].name",
        }
    ]
    code, st = raw(
        kube_standin, "POST", pods, {"apiVersion": "v2", "kind": "Pod", "metadata": {"name": "p"}}
    )
    assert code == 400 and "does not match the expected API version" in st["message"]
    assert core.list_namespaced_pod("default").items == []
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret(
            "default", {"metadata": {"name": "s"}, "data": {"k": "not base64!"}}
        )
    assert err.value.status == 400
    bad_binding = {
        "metadata": {"name": "b"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "Robot", "name": "x"}],
    }
    with pytest.raises(ApiException) as err:
        rbac.create_namespaced_role_binding("default", bad_binding)
    assert err.value.status == 422 and "subjects[0].kind" in status_of(err.value)["message"]


# ----------------------------------------------------------------- list/watch
def test_list_with_label_and_field_selectors(
    kube_standin: StandInApiServer, core: CoreV1Api
) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    for name, labels in [
        ("a1", {"app": "a", "tier": "x"}),
        ("a2", {"app": "a", "tier": "y"}),
        ("b1", {"app": "b"}),
    ]:
        core.create_namespaced_pod("default", pod(name, labels))
    core.create_namespaced_pod("other", pod("a3", {"app": "a"}))

    def names(**kw: Any) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod("default", **kw).items]

    assert names(label_selector="app=a") == ["a1", "a2"]
    assert names(label_selector="app==a,tier=y") == ["a2"]
    assert names(label_selector="app!=a") == ["b1"]
    assert names(label_selector="tier in (x, y)") == ["a1", "a2"]
    assert names(label_selector="tier notin (x)") == ["a2", "b1"]
    assert names(label_selector="tier") == ["a1", "a2"]
    assert names(label_selector="!tier") == ["b1"]
    assert names(field_selector="metadata.name=b1") == ["b1"]
    assert names(field_selector="metadata.name!=b1,status.phase=Pending") == ["a1", "a2"]
    everywhere = core.list_pod_for_all_namespaces(label_selector="app=a")
    assert [(p.metadata.namespace, p.metadata.name) for p in everywhere.items] == [
        ("default", "a1"),
        ("default", "a2"),
        ("other", "a3"),
    ]
    assert int(everywhere.metadata.resource_version) == kube_standin.store.resource_version

    first = core.list_namespaced_pod("default", limit=2)
    assert [p.metadata.name for p in first.items] == [
        "a1",
        "a2",
    ] and first.metadata.remaining_item_count == 1
    rest = core.list_namespaced_pod("default", limit=2, _continue=first.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["b1"] and not rest.metadata._continue

    for bad in ({"label_selector": "app in (a"}, {"field_selector": "spec.bogus=1"}):
        with pytest.raises(ApiException) as err:
            core.list_namespaced_pod("default", **bad)
        assert err.value.status == 400


def test_watch_selectors_resume_timeout_and_expiry(
    kube_standin: StandInApiServer, core: CoreV1Api
) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod("p1", {"app": "a"}))
    core.create_namespaced_pod("default", pod("p2", {"app": "b"}))
    core.patch_namespaced_pod(
        "p1", "default", {"metadata": {"labels": {"app": "c"}}}
    )  # leaves app=a
    core.patch_namespaced_pod(
        "p2", "default", {"metadata": {"labels": {"app": "a"}}}
    )  # joins app=a
    core.delete_namespaced_pod("p2", "default")

    w = kubernetes.watch.Watch()
    events = list(
        w.stream(
            core.list_namespaced_pod,
            "default",
            label_selector="app=a",
            resource_version=rv,
            timeout_seconds=1,
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "p1"),
        ("DELETED", "p1"),  # stopped matching: the real cacher sends DELETED
        ("ADDED", "p2"),  # started matching
        ("DELETED", "p2"),
    ]
    assert isinstance(events[0]["object"], V1Pod)

    # resume from the resourceVersion of the second event
    resume = events[1]["object"].metadata.resource_version
    again = list(
        w.stream(
            core.list_namespaced_pod,
            "default",
            label_selector="app=a",
            resource_version=resume,
            timeout_seconds=1,
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in again] == [
        ("ADDED", "p2"),
        ("DELETED", "p2"),
    ]

    # no resourceVersion: the current state first (synthetic ADDED), then live changes
    got: list[tuple[str, str, str]] = []

    def watch_all() -> None:
        w2 = kubernetes.watch.Watch()
        for e in w2.stream(core.list_pod_for_all_namespaces, timeout_seconds=3):
            got.append((e["type"], e["object"].metadata.namespace, e["object"].metadata.name))
            if e["object"].metadata.name == "late":
                w2.stop()

    t = threading.Thread(target=watch_all)
    t.start()
    kube_standin.wait_for_watches(1)
    core.create_namespace({"metadata": {"name": "elsewhere"}})
    core.create_namespaced_pod("elsewhere", pod("late"))
    t.join(timeout=10)
    assert got == [("ADDED", "default", "p1"), ("ADDED", "elsewhere", "late")]
    kube_standin.wait_for_watches(0)

    # timeoutSeconds is honoured, bookmarks on request
    start = time.monotonic()
    quiet = list(
        w.stream(
            core.list_namespaced_pod, "kube-system", timeout_seconds=1, allow_watch_bookmarks=True
        )
    )
    assert 0.9 < time.monotonic() - start < 3
    assert [e["type"] for e in quiet] == ["BOOKMARK"]

    # a resourceVersion older than the history: 410 Gone/Expired (the client raises it)
    kube_standin.store.compact()
    with pytest.raises(ApiException) as err:
        list(w.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1))
    assert err.value.status == 410
    kube_standin.wait_for_watches(0)
    assert kube_standin.watch_connections_total == 5


async def test_aio_client_works_too(kube_standin: StandInApiServer) -> None:
    from kubernetes.aio import client as aio
    from kubernetes.aio import watch as aio_watch

    async with aio.ApiClient(kube_standin.aio_configuration()) as api:
        v1 = aio.CoreV1Api(api)
        rv = (await v1.list_namespaced_pod("default")).metadata.resource_version
        await v1.create_namespaced_pod("default", pod("ap", {"x": "y"}))
        w = aio_watch.Watch()
        seen = []
        async with w.stream(
            v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1
        ) as stream:
            async for e in stream:
                seen.append((e["type"], e["object"].metadata.name))
        assert seen == [("ADDED", "ap")]
        with pytest.raises(aio.ApiException) as err:
            await v1.read_namespaced_pod("nope", "default")
        assert err.value.status == 404


# ----------------------------------------------------- namespaces, GC, hooks
def test_namespace_deletion_cascades(
    kube_standin: StandInApiServer, core: CoreV1Api, rbac: RbacAuthorizationV1Api
) -> None:
    core.create_namespace({"metadata": {"name": "team-a"}})
    core.create_namespaced_pod("team-a", pod("p"))
    core.create_namespaced_secret("team-a", {"metadata": {"name": "s"}})
    rbac.create_namespaced_role("team-a", {"metadata": {"name": "r"}, "rules": []})
    rbac.create_namespaced_role_binding(
        "team-a",
        {
            "metadata": {"name": "rb"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        },
    )
    ns = core.delete_namespace("team-a")
    assert ns["status"]["phase"] == "Terminating"  # v37 types this answer as a dict
    with pytest.raises(ApiException) as err:
        core.read_namespace("team-a")
    assert err.value.status == 404
    assert core.list_pod_for_all_namespaces(field_selector="metadata.namespace=team-a").items == []
    assert rbac.list_role_binding_for_all_namespaces().items == []

    # a pod on a node waits for its kubelet: the namespace stays Terminating meanwhile
    core.create_namespace({"metadata": {"name": "team-b"}})
    core.create_namespaced_pod("team-b", pod("bound"))
    kube_standin.store.bind("team-b", "bound", "some-node")
    core.delete_namespace("team-b")
    assert core.read_namespace("team-b").status.phase == "Terminating"
    assert core.read_namespaced_pod("bound", "team-b").metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret("team-b", {"metadata": {"name": "late"}})
    assert err.value.status == 403 and "being terminated" in status_of(err.value)["message"]
    core.delete_namespaced_pod("bound", "team-b", grace_period_seconds=0)
    with pytest.raises(ApiException) as err:
        core.read_namespace("team-b")
    assert err.value.status == 404


def test_owner_reference_garbage_collection(core: CoreV1Api) -> None:
    owner = core.create_namespaced_pod("default", pod("owner"))
    other = core.create_namespaced_config_map("default", {"metadata": {"name": "other"}})

    def ref(obj: Any, kind: str) -> V1OwnerReference:
        return V1OwnerReference(
            api_version="v1", kind=kind, name=obj.metadata.name, uid=obj.metadata.uid
        )

    core.create_namespaced_secret(
        "default",
        V1Secret(metadata=V1ObjectMeta(name="owned", owner_references=[ref(owner, "Pod")])),
    )
    core.create_namespaced_secret(
        "default",
        V1Secret(
            metadata=V1ObjectMeta(
                name="shared", owner_references=[ref(owner, "Pod"), ref(other, "ConfigMap")]
            )
        ),
    )
    core.delete_namespaced_pod("owner", "default")
    names = [s.metadata.name for s in core.list_namespaced_secret("default").items]
    assert names == ["shared"]  # still owned by the config map
    core.delete_namespaced_config_map("other", "default")
    assert core.list_namespaced_secret("default").items == []

    orphaner = core.create_namespaced_pod("default", pod("orphaner"))
    core.create_namespaced_secret(
        "default",
        V1Secret(metadata=V1ObjectMeta(name="kept", owner_references=[ref(orphaner, "Pod")])),
    )
    core.delete_namespaced_pod("orphaner", "default", propagation_policy="Orphan")
    kept = core.read_namespaced_secret("kept", "default")
    assert kept.metadata.owner_references is None


def test_request_log_and_subscriptions(kube_standin: StandInApiServer, core: CoreV1Api) -> None:
    seen: list[tuple[str, str]] = []
    unsubscribe = kube_standin.store.subscribe(lambda e: seen.append((e.type, e.name)))
    core.create_namespaced_secret(
        "default", V1Secret(metadata=V1ObjectMeta(name="s"), string_data={"k": "hunter2"})
    )
    core.read_namespaced_secret("s", "default")
    core.delete_namespaced_secret("s", "default")
    unsubscribe()
    assert seen == [("ADDED", "s"), ("DELETED", "s")]
    (post,) = kube_standin.requests_containing("hunter2")
    assert (
        post.method == "POST"
        and post.path == "/api/v1/namespaces/default/secrets"
        and post.status == 201
    )
    assert post.json["stringData"] == {"k": "hunter2"}
    assert [(r.method, r.status) for r in kube_standin.requests] == [
        ("POST", 201),
        ("GET", 200),
        ("DELETE", 200),
    ]
    assert kube_standin.open_watches == 0


def test_server_metadata(kube_standin: StandInApiServer, tmp_path: Any) -> None:
    version = kubernetes.client.VersionApi(kube_standin.api_client()).get_code()
    assert version.git_version == f"v{SCHEMA_VERSION}-standin"
    conf = kubernetes.client.Configuration()
    kubeconfig = kube_standin.write_kubeconfig(tmp_path / "config", namespace="default")
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=conf)
    names = [
        n.metadata.name for n in CoreV1Api(kubernetes.client.ApiClient(conf)).list_namespace().items
    ]
    assert names == ["default", "kube-public", "kube-system"]


# --------------------------------------------------------- pods on Docker
def wait_pod(
    core: CoreV1Api, name: str, until: Any, timeout: float = 60, ns: str = "default"
) -> V1Pod:
    """Watch one pod (like a provisioner would) until ``until(pod)`` holds."""
    deadline = time.monotonic() + timeout
    w = kubernetes.watch.Watch()
    last = None
    while time.monotonic() < deadline:
        for e in w.stream(
            core.list_namespaced_pod, ns, field_selector=f"metadata.name={name}", timeout_seconds=2
        ):
            last = e["object"]
            if e["type"] != "DELETED" and until(last):
                w.stop()
                return last
    raise AssertionError(f"pod {name} never got there; last seen: {last}")


def container_state(p: V1Pod) -> Any:
    return p.status.container_statuses[0].state if p.status.container_statuses else None


def waiting_reason(p: V1Pod) -> str | None:
    state = container_state(p)
    return state.waiting.reason if state is not None and state.waiting else None


def events_for(core: CoreV1Api, name: str) -> list[str]:
    return [
        e.reason
        for e in core.list_namespaced_event(
            "default", field_selector=f"involvedObject.name={name}"
        ).items
    ]


def test_pod_runs_is_reachable_and_deletion_removes_it(
    kube_standin: StandInApiServer,
    kube_pod_runner: PodRunner,
    core: CoreV1Api,
) -> None:
    server = (
        "import http.server as h;"
        "h.HTTPServer(('0.0.0.0', 8000), h.SimpleHTTPRequestHandler).serve_forever()"
    )
    manifest = pod(
        "web",
        {"app": "web"},
        containers=[
            {
                "name": "web",
                "image": IMAGE,
                "command": ["python", "-c", server],
                "ports": [{"containerPort": 8000, "name": "http"}],
                "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                "env": [
                    {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                ],
            }
        ],
        securityContext={"runAsUser": 1000, "runAsGroup": 1000},
        terminationGracePeriodSeconds=2,
    )
    start = time.monotonic()
    core.create_namespaced_pod("default", manifest)
    running = wait_pod(
        core, "web", lambda p: p.status.phase == "Running" and p.status.container_statuses[0].ready
    )
    elapsed = time.monotonic() - start
    assert elapsed < 20, elapsed
    ip = running.status.pod_ip
    assert ip and running.status.host_ip and running.spec.node_name == "standin-node"
    conditions = {c.type: c.status for c in running.status.conditions}
    assert conditions == {
        "PodScheduled": "True",
        "Initialized": "True",
        "PodReadyToStartContainers": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert container_state(running).running is not None
    with urllib.request.urlopen(f"http://{ip}:8000/", timeout=5) as resp:
        assert resp.status == 200

    app = [
        c
        for c in kube_pod_runner.pod_containers("default", "web")
        if c.labels["io.kubernetes.container.name"] == "web"
    ]
    (container,) = app
    assert container.labels[LABEL_POD] == "default/web"
    assert container.attrs["Config"]["User"] == "1000:1000"
    assert container.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert container.attrs["HostConfig"]["Memory"] == 256 * 1024 * 1024
    assert f"MY_IP={ip}" in container.attrs["Config"]["Env"]
    assert "GET / HTTP" in core.read_namespaced_pod_log("web", "default")

    # kubernetes.stream.portforward through the stand-in (websocket, v4.channel.k8s.io)
    pf = portforward(core.connect_get_namespaced_pod_portforward, "web", "default", ports="8000")
    sock = pf.socket(8000)
    sock.setblocking(True)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.0 200 OK") and pf.error(8000) is None
    pf.close()
    refused = portforward(core.connect_get_namespaced_pod_portforward, "web", "default", ports="9")
    deadline = time.monotonic() + 5
    while refused.error(9) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "error forwarding port 9" in (refused.error(9) or "")
    refused.close()
    deadline = time.monotonic() + 5
    while kube_standin.open_portforwards and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kube_standin.open_portforwards == 0
    assert {"Scheduled", "Pulled", "Created", "Started"} <= set(events_for(core, "web"))

    core.delete_namespaced_pod("web", "default")
    kube_standin.store.wait_for("pods", "default", "web", lambda p: p is None, timeout=20)
    assert kube_pod_runner.pod_containers("default", "web") == []
    assert "Killing" in events_for(core, "web")


def connection_file(key: str) -> dict[str, Any]:
    ports = dict(
        zip(
            ["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"],
            range(5555, 5560),
            strict=True,
        )
    )
    return {
        **ports,
        "ip": "0.0.0.0",
        "key": key,
        "transport": "tcp",
        "signature_scheme": "hmac-sha256",
        "kernel_name": "",
    }


def kernel_pod(name: str, secret: str, mode: int, fs_group: int | None) -> dict[str, Any]:
    sc: dict[str, Any] = {"runAsUser": 1000, "runAsGroup": 1000}
    if fs_group is not None:
        sc["fsGroup"] = fs_group
    return pod(
        name,
        restartPolicy="Never",
        securityContext=sc,
        containers=[
            {
                "name": "kernel",
                # the image's CMD: python -m ipykernel_launcher -f /run/kernel/connection.json
                "image": IMAGE,
                "volumeMounts": [{"name": "conn", "mountPath": "/run/kernel", "readOnly": True}],
            }
        ],
        volumes=[{"name": "conn", "secret": {"secretName": secret, "defaultMode": mode}}],
    )


def test_kernel_reads_its_secret_mounted_connection_file(
    kube_standin: StandInApiServer,
    kube_pod_runner: PodRunner,
    core: CoreV1Api,
) -> None:
    from jupyter_client.blocking import BlockingKernelClient

    key = secrets.token_hex(16)
    info = connection_file(key)
    core.create_namespaced_secret(
        "default",
        {"metadata": {"name": "conn"}, "stringData": {"connection.json": json.dumps(info)}},
    )
    # 0400 asked for, fsGroup given: the kubelet makes it 0440 root:1000, readable by uid 1000
    core.create_namespaced_pod("default", kernel_pod("kernel", "conn", 0o400, fs_group=1000))
    running = wait_pod(core, "kernel", lambda p: p.status.phase == "Running")
    kc = BlockingKernelClient()
    kc.load_connection_info({**info, "ip": running.status.pod_ip})
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out: list[str] = []
        code = (
            "import os, stat; st = os.stat('/run/kernel/connection.json');"
            "print(os.getuid(), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, "
            "os.path.islink('/run/kernel/connection.json'))"
        )
        reply = kc.execute_interactive(
            code,
            timeout=30,
            output_hook=lambda m: (
                out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None
            ),
        )
        assert reply["content"]["status"] == "ok"
        assert "".join(out).split() == ["1000", "0o440", "0", "1000", "True"]
    finally:
        kc.stop_channels()
    # the key travelled only inside the Secret — never in the pod manifest
    assert [(r.method, r.path) for r in kube_standin.requests_containing(key)] == [
        ("POST", "/api/v1/namespaces/default/secrets")
    ]

    # the same with 0600 and no fsGroup: root-owned, unreadable for uid 1000, like on a real node
    core.create_namespaced_pod("default", kernel_pod("kernel-noperm", "conn", 0o600, fs_group=None))
    failed = wait_pod(core, "kernel-noperm", lambda p: p.status.phase == "Failed")
    assert container_state(failed).terminated.exit_code != 0
    assert "Permission denied" in core.read_namespaced_pod_log("kernel-noperm", "default")


def test_missing_image_backs_off(kube_pod_runner: PodRunner, core: CoreV1Api) -> None:
    start = time.monotonic()
    core.create_namespaced_pod(
        "default", pod("ghost", containers=[{"name": "m", "image": "nowhere/ghost:1.0"}])
    )
    wait_pod(core, "ghost", lambda p: waiting_reason(p) == "ErrImagePull", timeout=10)
    p = wait_pod(core, "ghost", lambda p: waiting_reason(p) == "ImagePullBackOff", timeout=10)
    assert time.monotonic() - start < 10
    assert (
        p.status.phase == "Pending"
        and 'Back-off pulling image "nowhere/ghost:1.0"' in container_state(p).waiting.message
    )
    assert {"Scheduled", "Pulling", "Failed", "BackOff"} <= set(events_for(core, "ghost"))
    assert kube_pod_runner.pod_containers("default", "ghost") == []
    core.delete_namespaced_pod("ghost", "default")


def test_unschedulable_pods_stay_pending(kube_pod_runner: PodRunner, core: CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("picky", nodeSelector={"gpu": "yes"}))
    gpu = [{"name": "m", "image": IMAGE, "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
    core.create_namespaced_pod("default", pod("gpu", containers=gpu))
    for name, why in (
        ("picky", "didn't match Pod's node affinity/selector"),
        ("gpu", "Insufficient nvidia.com/gpu"),
    ):
        p = wait_pod(core, name, lambda p: bool(p.status.conditions), timeout=10)
        (cond,) = p.status.conditions
        assert (cond.type, cond.status, cond.reason) == ("PodScheduled", "False", "Unschedulable")
        assert why in cond.message and p.status.phase == "Pending" and not p.spec.node_name
        assert "FailedScheduling" in events_for(core, name)
        assert kube_pod_runner.pod_containers("default", name) == []
        core.delete_namespaced_pod(name, "default")  # never bound: gone at once
    assert core.list_namespaced_pod("default").items == []


def test_crashing_containers(kube_pod_runner: PodRunner, core: CoreV1Api) -> None:
    crash = "echo 'out of cheese' > /dev/termination-log; exit 3"
    core.create_namespaced_pod(
        "default",
        pod(
            "crash",
            restartPolicy="Never",
            containers=[{"name": "m", "image": IMAGE, "command": ["sh", "-c", crash]}],
        ),
    )
    p = wait_pod(core, "crash", lambda p: p.status.phase == "Failed")
    term = container_state(p).terminated
    assert (term.exit_code, term.reason, term.message) == (3, "Error", "out of cheese\n")
    assert not p.status.container_statuses[0].ready

    core.create_namespaced_pod(
        "default",
        pod(
            "done",
            restartPolicy="Never",
            containers=[{"name": "m", "image": IMAGE, "command": ["true"]}],
        ),
    )
    p = wait_pod(core, "done", lambda p: p.status.phase == "Succeeded")
    assert (container_state(p).terminated.exit_code, container_state(p).terminated.reason) == (
        0,
        "Completed",
    )

    core.create_namespaced_pod(
        "default",
        pod("loop", containers=[{"name": "m", "image": IMAGE, "command": ["sh", "-c", "exit 1"]}]),
    )
    limit = kube_pod_runner.max_restarts
    p = wait_pod(
        core,
        "loop",
        lambda p: (
            waiting_reason(p) == "CrashLoopBackOff"
            and p.status.container_statuses[0].restart_count == limit
        ),
    )
    assert p.status.phase == "Running"  # like a real crash-looping pod
    assert p.status.container_statuses[0].last_state.terminated.exit_code == 1
    assert "BackOff" in events_for(core, "loop")
    for name in ("crash", "done", "loop"):
        core.delete_namespaced_pod(name, "default")
    for name in ("crash", "done", "loop"):
        kube_pod_runner.store.wait_for("pods", "default", name, lambda p: p is None, timeout=20)
    # A finished pod leaves the API at once on delete (as on a real API server); its
    # kubelet removes the containers right after. Wait for that, then require it.
    deadline = time.monotonic() + 20
    while kube_pod_runner.containers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert kube_pod_runner.containers() == []


def test_graceful_deletion_kills_after_the_grace_period(
    kube_standin: StandInApiServer,
    kube_pod_runner: PodRunner,
    core: CoreV1Api,
) -> None:
    stubborn = "trap '' TERM; while :; do sleep 0.1; done"
    core.create_namespaced_pod(
        "default",
        pod(
            "stubborn",
            terminationGracePeriodSeconds=1,
            containers=[{"name": "m", "image": IMAGE, "command": ["sh", "-c", stubborn]}],
        ),
    )
    p = wait_pod(core, "stubborn", lambda p: p.status.phase == "Running")
    rv = p.metadata.resource_version
    start = time.monotonic()
    core.delete_namespaced_pod("stubborn", "default")
    seen: list[tuple[str, Any]] = []
    w = kubernetes.watch.Watch()
    for e in w.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=20):
        seen.append((e["type"], e["object"]))
        if e["type"] == "DELETED":
            w.stop()
    took = time.monotonic() - start
    assert 0.9 < took < 10, took
    assert seen[0][0] == "MODIFIED" and seen[0][1].metadata.deletion_timestamp is not None
    last = seen[-2][1]
    assert last.status.phase == "Failed" and container_state(last).terminated.exit_code == 137
    assert kube_pod_runner.pod_containers("default", "stubborn") == []
    kube_standin.wait_for_watches(0, timeout=5)  # the server noticed the client left


@pytest.fixture
def dclient() -> Iterator[Any]:
    client = docker.from_env()
    yield client
    client.close()


def test_runner_stop_removes_everything(
    kube_standin: StandInApiServer, docker_engine: str, dclient: Any
) -> None:
    runner = PodRunner(kube_standin).start()
    core = CoreV1Api(kube_standin.api_client())
    core.create_namespaced_pod(
        "default",
        pod("sleeper", containers=[{"name": "m", "image": IMAGE, "command": ["sleep", "600"]}]),
    )
    wait_pod(core, "sleeper", lambda p: p.status.phase == "Running")
    assert len(runner.pod_containers("default", "sleeper")) == 2  # sandbox + app
    start = time.monotonic()
    runner.stop()
    assert time.monotonic() - start < 10
    assert (
        dclient.containers.list(all=True, filters={"label": f"{LABEL_POD}=default/sleeper"}) == []
    )
    assert runner.threads() == []
