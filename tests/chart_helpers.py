"""Render the Helm chart with Helm's own engine, offline, and read the result.

The engine is helm-python-sdk (``import helm_python``): Helm v4's Go SDK compiled into
a shared library that the wheel bundles, so no ``helm`` binary, cluster or network is
needed. ``lookup`` finds nothing there, as under ``helm template``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "kernel-orchestrator"
RELEASE = "ko"
NAMESPACE = "jupyter"
NOTES = "kernel-orchestrator/templates/NOTES.txt"


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate mapping keys (PyYAML keeps the last one;
    the API server's strict decoding rejects the object)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


#: The chart renders only with some authentication; values without an ``auth`` key get
#: these users (``render(..., users=False)`` leaves them out).
TEST_USERS = [
    {"name": "alice", "token": "alice-token-0123456789abcdef", "groups": ["hpc"]},
    {"name": "bob", "token": "bob-token-0123456789abcdefgh"},
]


def render(
    values: dict[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    users: bool = True,
) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included), as an install would render.

    Raises helm_python.HelmValuesError when the values break values.schema.json.
    """
    import helm_python

    values = copy.deepcopy(values) if values else {}
    if users and "auth" not in values:
        values["auth"] = {"users": TEST_USERS}
    with helm_python.Chart.load(CHART) as chart:
        return chart.render(
            values or None,
            name=name,
            namespace=namespace,
            is_install=True,
        )


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered templates (NOTES.txt left out)."""
    found: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for document in yaml.load_all(text, Loader=UniqueKeyLoader):
            if document:
                found.append(document)
    return found


def render_objects(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return objects(render(values, **kwargs))


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = of_kind(objs, kind)
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in (dicts recursively), like Helm's -f."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def default_values() -> dict[str, Any]:
    with (CHART / "values.yaml").open() as f:
        values: dict[str, Any] = yaml.safe_load(f)
    return values


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(deployment)["env"]}
