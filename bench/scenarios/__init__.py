"""Benchmark scenarios, by name.

A scenario is a module with ``NAME``, ``DESCRIPTION`` and ``BENCHMARKS`` (a list of
:class:`bench.harness.Benchmark`). Modules are imported lazily, after ``bench.run``
has isolated the Jupyter directories, because they import jupyter_client.

To add one (docker, ssh, kubernetes, gateway, ...): write ``bench/scenarios/NAME.py``
and list it here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SCENARIOS: dict[str, str] = {
    "core": "bench.scenarios.core",
    "docker": "bench.scenarios.docker",
    "encryption": "bench.scenarios.encryption",
    "ssh": "bench.scenarios.ssh",
    "slurm": "bench.scenarios.slurm",
    "kubernetes": "bench.scenarios.kubernetes",
    "gateway": "bench.scenarios.gateway",
    "replicas": "bench.scenarios.replicas",
    "idle": "bench.scenarios.idle",
    "hostile": "bench.scenarios.hostile",
    "store": "bench.scenarios.store",
    "hub": "bench.scenarios.hub",
    "relay": "bench.scenarios.relay",
    "scale": "bench.scenarios.scale",
}


def load(name: str) -> ModuleType:
    try:
        module_name = SCENARIOS[name]
    except KeyError:
        raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
    return importlib.import_module(module_name)
