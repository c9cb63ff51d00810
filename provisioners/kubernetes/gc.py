"""``kernel-orchestrator gc`` for Kubernetes: pods of this deployment no record owns."""

from __future__ import annotations

import contextlib
import time

from kubernetes import client
from kubernetes.client.rest import ApiException

from orchestrator.labels import LABEL_INSTANCE, LABEL_KERNEL_ID
from orchestrator.provisioning.contract import GarbageContext

from .apiclient import call_api
from .names import label_value


async def collect_orphaned_pods(
    core: client.CoreV1Api, namespace: str | None, ctx: GarbageContext
) -> list[str]:
    """Delete (or, dry, list) orphaned pods in ``namespace`` (None: every namespace)."""
    selector = f"{LABEL_INSTANCE}={label_value(ctx.instance)}"
    try:
        if namespace is None:
            pods = await call_api(core.list_pod_for_all_namespaces, label_selector=selector)
        else:
            pods = await call_api(core.list_namespaced_pod, namespace, label_selector=selector)
    except Exception as e:
        ctx.log.warning("gc: cannot list pods: %s", e)
        return []
    owned = {label_value(k) for k in ctx.owned_kernel_ids}
    found: list[str] = []
    for pod in pods.items:
        kid = (pod.metadata.labels or {}).get(LABEL_KERNEL_ID, "")
        if kid in owned:
            continue
        created = pod.metadata.creation_timestamp
        if created is not None and (time.time() - created.timestamp() < ctx.grace_seconds):
            continue
        found.append(f"pod {pod.metadata.namespace}/{pod.metadata.name} (kernel {kid})")
        if not ctx.dry_run:
            with contextlib.suppress(ApiException):
                await call_api(
                    core.delete_namespaced_pod,
                    pod.metadata.name,
                    pod.metadata.namespace,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=0,
                        preconditions=client.V1Preconditions(uid=pod.metadata.uid),
                    ),
                )
    return found
