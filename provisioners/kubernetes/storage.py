"""The user's PersistentVolumeClaims in a kernel pod, and where such a pod may run.

Volumes come from the kernelspec (``volumes``/``volume_mounts``, ``{username}``
substituted, as kubespawner does: ``claim-{username}``). Before the pod is made, every
claim it mounts is read:

* a claim that does not exist fails the start at once, naming the volume and claim
  (the pod would wait in Pending for the whole start-up timeout);
* a ``ReadWriteOnce`` claim can be mounted on one node only. Where a running pod (the
  user's server pod, in zero-to-jupyterhub) already mounts it, the kernel pod can only
  start on that node: with ``colocate_with_claims`` the pod is pinned there (a required
  node affinity on the node's name); without it, a start that stays Pending says which
  claim is probably why (:func:`pending_hint`).

Names come from the kernelspec, filled with the user's DNS-safe name, so one user's
kernel never names another user's claim.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from kubernetes.client.rest import ApiException

from orchestrator.errors import KernelStartError

from .apiclient import call_api
from .podstatus import api_message


class ClaimsUnreadable(KernelStartError):
    """The orchestrator may not read the claims (an RBAC choice, not a failure)."""


@dataclass(frozen=True)
class Claim:
    """A claim the kernel pod mounts, as the cluster has it."""

    volume: str  # the pod's volume name
    name: str  # the claim's name
    read_write_once: bool
    node: str = ""  # where a running pod mounts it ('' : nowhere yet)


def claims_of(volumes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(volume name, claim name) of each claim volume in operator-written V1Volume dicts
    (either spelling the Python client accepts)."""
    found = []
    for volume in volumes:
        source = volume.get("persistentVolumeClaim") or volume.get("persistent_volume_claim")
        if isinstance(source, dict):
            name = source.get("claimName") or source.get("claim_name")
            if name:
                found.append((str(volume.get("name", "")), str(name)))
    return found


async def inspect_claims(core: Any, namespace: str, volumes: list[dict[str, Any]]) -> list[Claim]:
    """Every claim the pod would mount, read; a missing one is a clear refusal."""
    wanted = claims_of(volumes)
    if not wanted:
        return []
    claims: list[Claim] = []
    users: dict[str, str] | None = None
    for volume, name in wanted:
        try:
            pvc = await call_api(core.read_namespaced_persistent_volume_claim, name, namespace)
        except ApiException as e:
            if e.status == 403:
                raise ClaimsUnreadable(
                    f"no right to read PersistentVolumeClaim {namespace}/{name}"
                    " (persistentvolumeclaims get; the chart's kernels.readClaims)"
                ) from None
            if e.status == 404:
                raise KernelStartError(
                    f"volume {volume!r}: PersistentVolumeClaim {namespace}/{name} does not"
                    " exist (the user's storage is made by the hub, or by the operator)"
                ) from None
            raise KernelStartError(
                f"volume {volume!r}: cannot read PersistentVolumeClaim {namespace}/{name}:"
                f" {e.status} {api_message(e)}"
            ) from None
        modes = set(pvc.spec.access_modes or ())
        one_node = modes in ({"ReadWriteOnce"}, {"ReadWriteOncePod"})
        if one_node and users is None:
            users = await _claim_nodes(core, namespace)
        node = (users or {}).get(name, "") if one_node else ""
        if node and modes == {"ReadWriteOncePod"}:
            raise KernelStartError(
                f"volume {volume!r}: PersistentVolumeClaim {namespace}/{name} is"
                f" ReadWriteOncePod and a running pod on node {node} mounts it: no second"
                " pod can"
            )
        claims.append(Claim(volume, name, one_node, node))
    return claims


async def _claim_nodes(core: Any, namespace: str) -> dict[str, str]:
    """Claim name -> node of a running pod of ``namespace`` that mounts it."""
    pods = await call_api(
        core.list_namespaced_pod, namespace, field_selector="status.phase=Running"
    )
    nodes: dict[str, str] = {}
    for pod in pods.items:
        node = pod.spec.node_name
        for volume in pod.spec.volumes or ():
            source = volume.persistent_volume_claim
            if node and source is not None and source.claim_name:
                nodes.setdefault(source.claim_name, node)
    return nodes


def pinned_affinity(affinity: dict[str, Any], claims: list[Claim]) -> dict[str, Any]:
    """``affinity`` with a required node affinity on the node holding the pod's
    ReadWriteOnce claims; a refusal when two of them are held on different nodes."""
    nodes = {c.node for c in claims if c.read_write_once and c.node}
    if not nodes:
        return affinity
    if len(nodes) > 1:
        held = ", ".join(f"{c.name} on {c.node}" for c in claims if c.node)
        raise KernelStartError(
            f"the kernel pod mounts ReadWriteOnce claims held on different nodes ({held}):"
            " no node can mount them all"
        )
    node = nodes.pop()
    pinned = copy.deepcopy(affinity)
    required = (
        pinned.setdefault("nodeAffinity", {})
        .setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
        .setdefault("nodeSelectorTerms", [])
    )
    term = {"key": "metadata.name", "operator": "In", "values": [node]}
    if not required:
        required.append({"matchFields": [term]})
    for selector_term in required:  # terms are ORed: each must name the node
        selector_term.setdefault("matchFields", []).append(term)
    return pinned


def pending_hint(claims: list[Claim], colocated: bool) -> str:
    """What to add when a pod that mounts these claims stayed Pending."""
    held = [c for c in claims if c.read_write_once and c.node]
    if held and not colocated:
        return (
            "; "
            + ", ".join(
                f"ReadWriteOnce claim {c.name} (volume {c.volume}) is mounted on node {c.node}"
                for c in held
            )
            + " (set colocate_with_claims to start kernels there)"
        )
    if claims:
        return "; it mounts " + ", ".join(f"claim {c.name} (volume {c.volume})" for c in claims)
    return ""
