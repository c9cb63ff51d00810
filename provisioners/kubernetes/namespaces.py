"""Per-user kernel namespaces: made locked down, shared by that user's kernels, and
never deleted.

A namespace the provisioner creates carries:

* ``kernel-orchestrator.io/kernel-namespace=true``: the mark that lets the chart's
  admission policy confine the orchestrator to such namespaces (it may delete, and
  bind its kernel Role in, only namespaces with this label);
* PodSecurity ``restricted`` enforcement: no privileged, root or host-path pods;
* a RoleBinding of the kernel ClusterRole for the orchestrator's ServiceAccount (so
  its rights on pods and Secrets hold in these namespaces only);
* a NetworkPolicy: kernel pods accept ingress from the orchestrator only, and send
  egress only to cluster DNS and the operator's ``egress_allow`` peers.

A namespace is never deleted, as kubespawner never deletes them: deleting it when
"the last kernel" leaves races with that user's next start (its pod lands in a
namespace that is being terminated, or takes every other kernel there down with it),
and an empty namespace costs nothing. Two first starts of one user at once both
create it; the second's 409 Conflict is the first's success.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from orchestrator.errors import KernelStartError

from .apiclient import call_api
from .podstatus import api_message, start_error

MANAGED_LABEL = "kernel-orchestrator.io/kernel-namespace"
KERNEL_SELECTOR = {"app.kubernetes.io/component": "kernel"}
POLICY_NAME = "kernel-orchestrator-kernels"
POD_SECURITY = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}
DNS_PORTS = [
    client.V1NetworkPolicyPort(protocol="UDP", port=53),
    client.V1NetworkPolicyPort(protocol="TCP", port=53),
]
TERMINATING_WAIT = 60.0
RIGHTS_WAIT = 15.0


@dataclass
class NamespacePlan:
    """What a created kernel namespace gets, from the kernelspec's settings."""

    name: str
    labels: dict[str, str]
    role: str = ""  # ClusterRole bound for the orchestrator ('' : none)
    service_account: str = ""  # namespace/name of the orchestrator's ServiceAccount
    network_policy: bool = True
    orchestrator_pod_labels: dict[str, str] = field(default_factory=dict)
    egress_allow: list[dict[str, Any]] = field(default_factory=list)
    kernel_ports: list[int] = field(default_factory=list)


def is_managed(namespace: Any) -> bool:
    labels = (namespace.metadata.labels or {}) if namespace is not None else {}
    return labels.get(MANAGED_LABEL) == "true"


def network_policy(plan: NamespacePlan) -> client.V1NetworkPolicy:
    """Ingress from the orchestrator only; egress to DNS and the allowed peers only."""
    sa_namespace = plan.service_account.partition("/")[0]
    source = client.V1NetworkPolicyPeer(
        namespace_selector=client.V1LabelSelector(
            match_labels={"kubernetes.io/metadata.name": sa_namespace}
        )
        if sa_namespace
        else None,
        pod_selector=client.V1LabelSelector(match_labels=dict(plan.orchestrator_pod_labels)),
    )
    # The operator's peers are NetworkPolicyPeer objects as dicts; the client
    # serialises dicts as they are.
    peers: list[Any] = [dict(peer) for peer in plan.egress_allow]
    egress = [
        client.V1NetworkPolicyEgressRule(
            to=[client.V1NetworkPolicyPeer(namespace_selector=client.V1LabelSelector())],
            ports=DNS_PORTS,
        )
    ]
    if peers:
        egress.append(client.V1NetworkPolicyEgressRule(to=peers))
    return client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name=POLICY_NAME, namespace=plan.name),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels=dict(KERNEL_SELECTOR)),
            policy_types=["Ingress", "Egress"],
            ingress=[
                client.V1NetworkPolicyIngressRule(
                    _from=[source],
                    ports=[
                        client.V1NetworkPolicyPort(protocol="TCP", port=port)
                        for port in plan.kernel_ports
                    ]
                    or None,
                )
            ],
            egress=egress,
        ),
    )


async def _create_tolerating_conflict(fn: Any, *args: Any) -> None:
    try:
        await call_api(fn, *args)
    except ApiException as e:
        if e.status != 409:  # made meanwhile by another kernel of this user: fine
            raise start_error(e) from None


async def _wait_for_rights(api: client.ApiClient, namespace: str) -> None:
    """Wait until a RoleBinding just made takes effect (the authorizer's cache lags
    it by a moment); asking costs nothing, every user may review its own access."""
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb="create", resource="pods"
            )
        )
    )
    authz = client.AuthorizationV1Api(api)
    deadline = time.monotonic() + RIGHTS_WAIT
    while True:
        answer = await call_api(authz.create_self_subject_access_review, review)
        if answer.status.allowed:
            return
        if time.monotonic() > deadline:
            raise KernelStartError(
                f"the RoleBinding in namespace {namespace} did not take effect within"
                f" {RIGHTS_WAIT:g}s"
            )
        await asyncio.sleep(0.2)


# Namespaces this process has made ready, per API server: later starts in them cost no
# request at all. (An operator deleting one meanwhile fails the pod's creation, which
# forgets it here; the next start makes it again.)
_ready: set[tuple[str, str]] = set()


def forget(api: client.ApiClient, name: str) -> None:
    _ready.discard((api.configuration.host, name))


def forget_all() -> None:
    """Forget every namespace made ready (as a new process would know none)."""
    _ready.clear()


async def ensure(api: client.ApiClient, plan: NamespacePlan, create: bool) -> None:
    """Make sure ``plan.name`` exists and is ready for kernels: one of ours (marked,
    bound, with its policy), or the operator's own, used as it is."""
    cache_key = (api.configuration.host, plan.name)
    if cache_key not in _ready:
        await _ensure(api, plan, create)
        _ready.add(cache_key)


async def _ensure(api: client.ApiClient, plan: NamespacePlan, create: bool) -> None:
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + TERMINATING_WAIT
    while True:
        try:
            existing = await call_api(core.read_namespace, plan.name)
        except ApiException as e:
            if e.status != 404:
                raise KernelStartError(
                    f"cannot read namespace {plan.name}: {api_message(e)}"
                ) from None
            existing = None
        phase = existing.status.phase if existing is not None and existing.status else ""
        if existing is None or phase != "Terminating":
            break
        # An operator is deleting it: wait, then make it again.
        if time.monotonic() > deadline:
            raise KernelStartError(f"namespace {plan.name} is still being deleted")
        await asyncio.sleep(0.5)
    if existing is not None and not is_managed(existing):
        return  # the operator's own namespace: used as it is
    if existing is None:
        if not create:
            raise KernelStartError(f"namespace {plan.name} does not exist")
        labels = {**plan.labels, **POD_SECURITY, MANAGED_LABEL: "true"}
        await _create_tolerating_conflict(
            core.create_namespace,
            client.V1Namespace(metadata=client.V1ObjectMeta(name=plan.name, labels=labels)),
        )
    if plan.role and plan.service_account:
        sa_namespace, _, sa_name = plan.service_account.partition("/")
        binding = client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="kernel-orchestrator", namespace=plan.name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=plan.role
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name=sa_name, namespace=sa_namespace)
            ],
        )
        await _create_tolerating_conflict(
            client.RbacAuthorizationV1Api(api).create_namespaced_role_binding, plan.name, binding
        )
        # Made by us or by a concurrent first start a moment ago: either way it may not
        # be in force yet.
        await _wait_for_rights(api, plan.name)
    if plan.network_policy:
        await _create_tolerating_conflict(
            client.NetworkingV1Api(api).create_namespaced_network_policy,
            plan.name,
            network_policy(plan),
        )
