"""Where this process's clients reach a kernel, and telling them when that moves.

A kernel's *endpoint* is the address and the five ports its clients connect to from
this process: a local kernel's own ports, a tunnel's or port-forward's local ports, a
container's or pod's address. A restart in place keeps it where the back-end can (the
same local ports in front of a new remote process); where it cannot (a new pod has a
new IP, a Docker kernel on a network gets a new container address), every client kept
across the restart must move with it, or it talks to the dead process forever:
jupyter_server rebuilds a websocket's streams only when the *ports* change, and a
``KernelClient`` never does.

So the manager compares the endpoint before and after each transition (restart,
following another process's restart, take-over) and, when it moved, tells whoever
listens: the gateway rebuilds every websocket's streams and its activity watch, and
the clients this manager handed out (:mod:`orchestrator.client`) reconnect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


@dataclass(frozen=True)
class Endpoint:
    """The transport, address and ports a client of this process connects to."""

    transport: str
    ip: str
    ports: tuple[int, ...]  # in CHANNELS order

    @classmethod
    def of(cls, info: Mapping[str, Any] | None) -> Endpoint | None:
        """The endpoint in connection info (None while it has no ports yet)."""
        if not info:
            return None
        ports = tuple(int(info.get(f"{ch}_port") or 0) for ch in CHANNELS)
        if not any(ports):
            return None
        return cls(str(info.get("transport") or "tcp"), str(info.get("ip") or ""), ports)

    def __str__(self) -> str:
        return f"{self.transport}://{self.ip} ports {list(self.ports)}"
