"""Which client-supplied environment variables reach a remote kernel, and checks on them.

The orchestrator's own environment must never leak into a container, pod or remote
host (Enterprise Gateway copied the whole server environment into every pod). A
remote kernel gets exactly: the kernelspec's ``env``, the provisioner's configured
environment, and the client's variables whose *names* match an operator allow-list
(``KERNEL_*`` by default), each name and value validated.

Kernelspec ``env`` values are never expanded from the orchestrator's environment (as
jupyter_client does for local kernels): an SSH host or Slurm node expands their
``${VAR}`` references from its own environment; a container or pod gets them as
written.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping

from orchestrator.errors import OrchestratorError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_VALUE_BYTES = 32 * 1024
# Variables that describe the orchestrator itself, never the kernel's business.
_ALWAYS_DROPPED = ("KERNEL_ORCHESTRATOR_*",)


class EnvironmentError_(OrchestratorError):
    """A client-supplied environment variable was refused."""


def validate_env_item(name: str, value: object) -> str:
    """Return ``value`` as a string, or raise naming what is wrong with it."""
    if not _NAME.fullmatch(name):
        raise EnvironmentError_(f"environment variable name {name!r} is not valid")
    if not isinstance(value, str):
        raise EnvironmentError_(f"environment variable {name}: value must be a string")
    if "\0" in value:
        raise EnvironmentError_(f"environment variable {name}: value contains a NUL byte")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise EnvironmentError_(
            f"environment variable {name}: value is longer than {MAX_VALUE_BYTES} bytes"
        )
    return value


def client_variables(env: Mapping[str, str] | None, allowlist: Iterable[str]) -> dict[str, str]:
    """The allow-listed variables of ``env`` that the *client* asked for.

    jupyter_client hands provisioners ``os.environ`` merged with the client's
    variables; entries identical to our own environment are the orchestrator's, not
    the client's, so they are dropped unless the kernelspec names them explicitly.
    """
    patterns = list(allowlist)
    chosen: dict[str, str] = {}
    for name, value in (env or {}).items():
        if any(fnmatch.fnmatchcase(name, p) for p in _ALWAYS_DROPPED):
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if os.environ.get(name) == value:
            continue
        chosen[name] = validate_env_item(name, value)
    return chosen


def launch_environment(
    launch_env: Mapping[str, str] | None,
    spec_env: Mapping[str, str] | None,
    fixed: Mapping[str, str],
    allowlist: Iterable[str],
) -> tuple[dict[str, str], dict[str, str]]:
    """``(client variables, the kernel's environment)`` for a remote kernel.

    ``launch_env`` is what jupyter_client hands ``pre_launch`` (our environment merged
    with the client's); the kernel gets the kernelspec's ``env`` entries, the
    provisioner's fixed ``environment`` (validated), then the client's allow-listed
    variables, and nothing else of ours.
    """
    env = launch_env or {}
    client = client_variables(env, allowlist)
    for key, value in fixed.items():
        validate_env_item(key, value)
    # As written, never expanded here: jupyter_client expands ``${VAR}`` from the
    # orchestrator's environment, which is nothing a remote kernel may see (see
    # ``expanded_on_the_kernel_side``).
    from_spec = {k: validate_env_item(k, v) for k, v in (spec_env or {}).items()}
    return client, {**from_spec, **fixed, **client}


def expanded_on_the_kernel_side(
    env: Mapping[str, str], spec_env: Mapping[str, str] | None
) -> list[str]:
    """Names of kernelspec ``env`` entries (still as written in ``env``) with ``${VAR}``
    references, for a launcher that expands them from the environment where the
    kernel runs (SSH hosts, Slurm nodes); containers and pods get them as written."""
    return sorted(k for k, v in (spec_env or {}).items() if "$" in str(v) and env.get(k) == v)
