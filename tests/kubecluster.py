"""TEST INFRASTRUCTURE: the real single-node Kubernetes cluster and the chart on it.

* :class:`KubeCluster` — the cluster of ``scripts/kube/cluster.sh`` (etcd, the control
  plane and the real kubelet, built from Kubernetes' sources), brought up once per
  test module and taken down after it (``KO_KEEP_KUBE=1`` keeps it up); an
  admin client and the API server's audit log, from which tests count requests.
* :class:`Release` — one install of the chart's RBAC (its ServiceAccount, the Role or
  ClusterRoles it renders, the admission policy) with a token of that ServiceAccount.
  The provisioner authenticates with that token, so a permission the chart lacks fails
  the test that needs it, and the audit log shows which granted ones went unused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chart_helpers import REPO, render_objects

CLUSTER_SH = REPO / "scripts" / "kube" / "cluster.sh"
PLATFORM_NAMESPACE = "ko-platform"
KERNEL_NAMESPACE = "ko-kernels"
IMAGE = "kernel-orchestrator/kernel-python:latest"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
# What a chart install puts on the cluster for the provisioner (the rest, the
# orchestrator's own Deployment and Service, does not run here: the tests are it).
RBAC_KINDS = (
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)


@dataclass
class KubeCluster:
    """The running cluster: its admin kubeconfig, API URL, CA and audit log."""

    kubeconfig: Path
    info: dict[str, Any]
    _admin: Any = None

    @property
    def server(self) -> str:
        return str(self.info["server"])

    @property
    def ca_file(self) -> str:
        return str(self.info["ca"])

    def admin(self) -> Any:
        """An ApiClient with cluster-admin rights (system:masters), made once."""
        if self._admin is None:
            from kubernetes import config

            self._admin = config.new_client_from_config(str(self.kubeconfig))
        return self._admin

    def core(self) -> Any:
        from kubernetes.client import CoreV1Api

        return CoreV1Api(self.admin())

    # ---------------------------------------------------------------- audit
    def audit_mark(self) -> int:
        """A position in the audit log: :meth:`audit` reads what came after it."""
        return os.path.getsize(self.info["audit_log"])

    def audit(
        self, since: int, user: str | None = None, stages: tuple[str, ...] = ("ResponseComplete",)
    ) -> list[dict[str, Any]]:
        """Requests since ``since`` at ``stages`` (by default once each, when finished;
        a watch or port-forward still open is logged at "ResponseStarted")."""
        with open(self.info["audit_log"], "rb") as f:
            f.seek(since)
            lines = f.read().splitlines()
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("stage") not in stages:
                    continue
                if user is None or event.get("user", {}).get("username") == user:
                    events.append(event)
        return events

    def audit_text(self, since: int) -> str:
        with open(self.info["audit_log"], "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def restart(self, component: str) -> None:
        """Stop one component and start it again (``cluster.sh restart``)."""
        subprocess.run(
            ["bash", str(CLUSTER_SH), "restart", component],
            check=True,
            capture_output=True,
            timeout=180,
        )

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self.core().create_namespace({"metadata": {"name": name, "labels": labels or {}}})
        except ApiException as e:
            if e.status != 409:
                raise


def start_cluster() -> KubeCluster:
    """``cluster.sh up`` (reuses a running cluster); the build is cached."""
    done = subprocess.run(
        ["bash", str(CLUSTER_SH), "up"], capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(f"cluster.sh up failed:\n{done.stderr[-4000:]}")
    kubeconfig = Path(done.stdout.strip().splitlines()[-1])
    info = json.loads((kubeconfig.parent / "cluster.json").read_text())
    return KubeCluster(kubeconfig, info)


def stop_cluster() -> None:
    subprocess.run(["bash", str(CLUSTER_SH), "down"], check=True, capture_output=True, timeout=300)


def kube_cluster_fixture() -> Iterator[KubeCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        if cluster._admin is not None:
            cluster._admin.close()
        if os.environ.get("KO_KEEP_KUBE") != "1":
            stop_cluster()


# ------------------------------------------------------------------ releases
@dataclass
class Release:
    """The chart's RBAC for one release, installed; the provisioner's credentials."""

    cluster: KubeCluster
    name: str
    values: dict[str, Any]
    objects: list[dict[str, Any]]
    token_file: Path
    service_account: str  # namespace/name
    kernelspec: dict[str, Any] = field(default_factory=dict)  # the chart's kernel.json

    @property
    def username(self) -> str:
        ns, _, name = self.service_account.partition("/")
        return f"system:serviceaccount:{ns}:{name}"

    @property
    def kernel_namespace(self) -> str:
        return str(self.kernelspec["metadata"]["kernel_provisioner"]["config"]["namespace"])

    def config(self, **overrides: Any) -> dict[str, Any]:
        """The chart's kernelspec config, reaching the API server from outside the
        cluster with the ServiceAccount's token (what in-cluster config reads)."""
        base = dict(self.kernelspec["metadata"]["kernel_provisioner"]["config"])
        base.update(
            api_url=self.cluster.server,
            api_token_file=str(self.token_file),
            api_ca_file=self.cluster.ca_file,
            startup_timeout=90,
        )
        base.update(overrides)
        return base

    def rules(self) -> list[tuple[str, str, str, str]]:
        """Every (namespace scope, api group, resource, verb) the chart grants, with
        scope "*" for cluster-wide rules and "kernel-namespaces" for the role the
        orchestrator binds in the namespaces it creates."""
        bound_in_created = {
            m[1]
            for o in self.objects
            if o["kind"] == "ValidatingAdmissionPolicy"
            for v in o["spec"]["validations"]
            if (m := re.search(r"roleRef\.name == '([^']+)'", v["expression"]))
        }
        out = []
        for o in self.objects:
            if o["kind"] == "Role":
                scope = o["metadata"]["namespace"]
            elif o["kind"] == "ClusterRole":
                scope = "kernel-namespaces" if o["metadata"]["name"] in bound_in_created else "*"
            else:
                continue
            for rule in o["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            out.append((scope, group, resource, verb))
        return out


def install_release(
    cluster: KubeCluster, name: str, values: dict[str, Any], token_dir: Path
) -> Release:
    """Render the chart as ``helm install NAME -n ko-platform`` would, and apply its RBAC."""
    from kubernetes.client import CoreV1Api
    from kubernetes.dynamic import DynamicClient

    objs = render_objects(values, name=name, namespace=PLATFORM_NAMESPACE)
    cluster.create_namespace(PLATFORM_NAMESPACE)
    per_user = values.get("kernels", {}).get("namespacePerUser", False)
    if not per_user:  # the operator makes the kernel namespace, locked down
        cluster.create_namespace(values["kernels"]["namespace"], RESTRICTED)
    # Server-side apply, as `helm upgrade --install` would: a kept cluster gets the
    # chart's current rules, not those of the run that made it.
    dynamic = DynamicClient(cluster.admin())
    for obj in objs:
        if obj["kind"] not in RBAC_KINDS:
            continue
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        namespace = None
        if resource.namespaced:
            namespace = obj["metadata"].setdefault("namespace", PLATFORM_NAMESPACE)
        resource.server_side_apply(
            body=obj,
            namespace=namespace,
            field_manager="kernel-orchestrator-tests",
            force_conflicts=True,
        )
    (sa,) = [o for o in objs if o["kind"] == "ServiceAccount"]
    sa_name = sa["metadata"]["name"]
    token = (
        CoreV1Api(cluster.admin())
        .create_namespaced_service_account_token(
            sa_name, PLATFORM_NAMESPACE, {"spec": {"expirationSeconds": 6 * 3600}}
        )
        .status.token
    )
    token_file = token_dir / f"{name}.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    (configmap,) = [o for o in objs if o["kind"] == "ConfigMap"]
    kernelspec = json.loads(configmap["data"]["kernelspec.python3.json"])
    return Release(
        cluster,
        name,
        values,
        objs,
        token_file,
        f"{PLATFORM_NAMESPACE}/{sa_name}",
        kernelspec,
    )


#: The shared-namespace release: kernels in ko-kernels, with every optional right.
SHARED_VALUES = {
    "kernels": {
        "namespace": KERNEL_NAMESPACE,
        "portForward": True,
        "execForSignals": True,
        "readPodLogs": True,
        "readClaims": True,
    }
}
#: The per-user release: a namespace per user, made by the orchestrator.
PER_USER_VALUES = {"kernels": {"namespacePerUser": True}}


def forget_provisioner_state() -> None:
    """Stop the provisioner's shared watches and drop its cached clients and ready
    namespaces, as if the process had exited."""
    from provisioners.kubernetes import namespaces, watcher
    from provisioners.kubernetes.apiclient import forget_clients

    watcher.stop_all()
    forget_clients()
    namespaces.forget_all()


def session_leftovers(cluster: KubeCluster, instances: set[str]) -> list[str]:
    """Pods and Secrets of the given deployments still on the cluster (deleted here)."""
    from orchestrator.labels import LABEL_INSTANCE
    from provisioners.kubernetes.names import label_value

    core = cluster.core()
    left = []
    for instance in instances:
        selector = f"{LABEL_INSTANCE}={label_value(instance)}"
        for kind, lister, deleter in (
            ("pod", core.list_pod_for_all_namespaces, core.delete_namespaced_pod),
            ("secret", core.list_secret_for_all_namespaces, core.delete_namespaced_secret),
        ):
            for obj in lister(label_selector=selector).items:
                md = obj.metadata
                if kind == "pod" and md.deletion_timestamp:
                    continue  # going already
                left.append(f"{kind} {md.namespace}/{md.name}")
                with contextlib.suppress(Exception):
                    deleter(md.name, md.namespace, grace_period_seconds=0)
    return left


def service_account_client(release: Release) -> Any:
    """An ApiClient authenticated as the release's ServiceAccount."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = release.cluster.server
    configuration.ssl_ca_cert = release.cluster.ca_file
    configuration.api_key_prefix["authorization"] = "Bearer"
    configuration.api_key["authorization"] = release.token_file.read_text().strip()
    return client.ApiClient(configuration)
