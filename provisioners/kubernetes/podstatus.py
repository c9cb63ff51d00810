"""Reading a kernel pod's status: why it will not start, how it ended, what the API said."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.rest import ApiException

from orchestrator.errors import KernelStartError

# Waiting reasons after which a pod will not come up by itself: fail the start at once
# instead of waiting out the start-up timeout (Enterprise Gateway waits).
FAIL_FAST_REASONS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "ErrImageNeverPull",
}


def api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except Exception:
        return str(e.reason)


def refusal(e: Exception) -> tuple[int, str]:
    """(HTTP status, the API server's message) of a failed request, websocket
    upgrades included: kubernetes.stream reports a refused handshake as status 0 with
    the server's Status object inside its text."""
    if isinstance(e, ApiException) and e.status:
        return int(e.status), api_message(e)
    text = str(getattr(e, "reason", "") or e)
    start = text.find('{"kind":"Status"')
    try:
        status = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        status = {}
    if isinstance(status, dict) and status.get("code"):
        return int(status["code"]), str(status.get("message", ""))
    return 0, text


def start_error(e: ApiException) -> KernelStartError:
    """A start-up failure naming what the API server said."""
    return KernelStartError(f"Kubernetes API: {e.status} {e.reason}: {api_message(e)}")


def startup_problem(pod: dict[str, Any]) -> str:
    """The cluster's reason a starting pod will not come up, or ''."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return f"Unschedulable: {condition.get('message', '')}".strip()
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FAIL_FAST_REASONS:
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip()
        terminated = state.get("terminated") or {}
        if terminated:
            return (
                f"container terminated ({terminated.get('reason', 'Error')}, exit code"
                f" {terminated.get('exitCode')})"
            )
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"pod phase {status['phase']}"
    return ""


def exit_code(pod: dict[str, Any]) -> int:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        if terminated:
            return int(terminated.get("exitCode") or 1)
    return 1
