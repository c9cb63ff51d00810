"""Tunnels that carry a remote kernel's ZMQ ports back to this host's loopback.

The SSH tunnel layer (one shared connection per user and host) implements
:class:`PortTunneler`; the Docker provisioner's remote-engine mode and the SSH
provisioner use it through :func:`get_tunneler`.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import OrchestratorError


class PortTunneler(Protocol):
    """Forwards ports on a remote host to local loopback ports."""

    async def open(
        self,
        kernel_id: str,
        remote_ports: dict[str, int],
        local_ports: dict[str, int] | None = None,
    ) -> dict[str, int]:
        """Forward ``remote_ports`` (channel -> port on the remote loopback).

        Returns channel -> local port; ``local_ports`` asks for the same local ports
        again (after a restart or a re-attach) so clients keep their connection info.
        """

    async def close(self, kernel_id: str) -> None:
        """Stop forwarding this kernel's ports."""

    def close_now(self, kernel_id: str) -> None:
        """The same, blocking briefly (for synchronous release paths)."""


def get_tunneler(destination: str) -> PortTunneler:
    """The tunneler for ``destination`` (``ssh://user@host:port``)."""
    try:
        from .ssh import tunneler_for  # provided by the SSH tunnel layer
    except ImportError:
        raise OrchestratorError(
            f"reaching kernels through {destination} needs the SSH tunnel layer,"
            " which is not installed in this version"
        ) from None
    return tunneler_for(destination)  # type: ignore[no-any-return]
