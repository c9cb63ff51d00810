"""Kubernetes names and label values built from untrusted text.

Kernel ids and user names come from clients; anything that becomes a pod, secret or
namespace name or a label value is reduced to a valid DNS-1123 label (lower-case
alphanumerics and '-', at most 63 characters), with a short hash of the original
appended whenever characters had to be changed, so two different users never map to
the same name.
"""

from __future__ import annotations

import hashlib
import re

from orchestrator.errors import OrchestratorError

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def dns_label(text: str, *, prefix: str = "", max_length: int = 63) -> str:
    """``prefix`` + a DNS-1123 label derived from ``text`` (hash-suffixed if altered)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    candidate = f"{prefix}{cleaned}".strip("-")
    if cleaned != text or len(candidate) > max_length or not cleaned:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        room = max_length - len(prefix) - 9
        candidate = f"{prefix}{cleaned[: max(room, 0)]}".rstrip("-") + f"-{digest}"
        candidate = candidate.lstrip("-")
    if not _DNS_LABEL.fullmatch(candidate):
        raise OrchestratorError(f"cannot make a valid Kubernetes name from {text!r}")
    return candidate


def label_value(text: str) -> str:
    """A valid label value for ``text`` (same text when already valid)."""
    if len(text) <= 63 and _LABEL_VALUE.fullmatch(text):
        return text
    return dns_label(text)
