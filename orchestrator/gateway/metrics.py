"""Prometheus metrics of the gateway, served at ``/metrics`` by Jupyter Server.

* ``kernel_orchestrator_kernels{provisioner, state}``: kernels by provisioner and
  execution state (collected at scrape time from the kernel manager);
* ``kernel_orchestrator_kernel_start_seconds{provisioner, source}``: start latency,
  ``source`` being ``cold`` or ``pool``;
* ``kernel_orchestrator_kernel_start_failures_total{reason}``: failed starts by reason.
"""

from __future__ import annotations

import weakref
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

START_SECONDS = Histogram(
    "kernel_orchestrator_kernel_start_seconds",
    "Time from a start request to a ready kernel.",
    ["provisioner", "source"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
START_FAILURES = Counter(
    "kernel_orchestrator_kernel_start_failures",
    "Kernel starts that failed, by reason.",
    ["reason"],
)


def failure_reason(error: BaseException) -> str:
    """A small, bounded set of label values (never free text from an error)."""
    text = str(error).lower()
    for needle, reason in (
        ("maximum", "limit"),
        ("not allowed", "not_allowed"),
        ("image", "image"),
        ("unschedulable", "unschedulable"),
        ("within", "timeout"),
        ("exited during start-up", "crashed"),
        ("unreachable", "unreachable"),
        ("no such kernelspec", "unknown_kernelspec"),
        ("unknown", "unknown_kernelspec"),
    ):
        if needle in text:
            return reason
    return type(error).__name__


class KernelCollector(Collector):
    """Kernels by provisioner and state, read from the kernel manager at scrape time."""

    def __init__(self, manager: Any) -> None:
        self._manager = weakref.ref(manager)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kernel_orchestrator_kernels",
            "Kernels by provisioner and state.",
            labels=["provisioner", "state"],
        )
        manager = self._manager()
        if manager is not None:
            tally: Tally[tuple[str, str]] = Tally()
            for km in list(manager._kernels.values()):
                provisioner = getattr(km, "_provisioner_name", "") or "unknown"
                state = getattr(km, "execution_state", None) or "unknown"
                if getattr(km, "labels", {}).get("pool"):
                    state = "pooled"
                tally[(provisioner, state)] += 1
            for (provisioner, state), count in sorted(tally.items()):
                family.add_metric([provisioner, state], count)
        yield family


_registered: KernelCollector | None = None


def register(manager: Any) -> None:
    global _registered
    if _registered is not None:
        REGISTRY.unregister(_registered)
    _registered = KernelCollector(manager)
    REGISTRY.register(_registered)
