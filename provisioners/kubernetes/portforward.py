"""Reaching kernel pods from outside the cluster: port-forwarding through the API server.

Each kernel channel gets a local loopback listener (port 0: the kernel picks a free
port, no bind-then-close race); every TCP connection a client makes to it opens one
``portforward`` stream (the kubernetes client's websocket support) to the pod's port
and the bytes are pumped both ways. Listeners are kept across reconnects, so clients
keep their connection info.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

from kubernetes import client
from kubernetes.stream import portforward

from orchestrator.tunnels.ssh.forward import Link, acceptor

log = logging.getLogger("kernel-orchestrator.kubernetes")


class _PodForward:
    """One listener -> one pod port (duck-types the SSH layer's forward for the acceptor)."""

    def __init__(
        self, api: client.ApiClient, namespace: str, pod: str, port: int, local_port: int = 0
    ) -> None:
        self.api, self.namespace, self.pod, self.port = api, namespace, pod, port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(("127.0.0.1", local_port))
        except OSError:
            if not local_port:
                raise
            self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.local_port: int = self.listener.getsockname()[1]
        self._open: set[Any] = set()
        self._closed = False

    def accept_one(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.setblocking(True)
        threading.Thread(
            target=self._serve, args=(conn,), daemon=True, name=f"k8s-pf-{self.local_port}"
        ).start()

    def _serve(self, conn: socket.socket) -> None:
        # kubernetes.stream swaps the ApiClient's request function while it runs: a
        # client shared with the watch thread would send its requests as websockets.
        core = client.CoreV1Api(client.ApiClient(self.api.configuration))
        try:
            pf = portforward(
                core.connect_get_namespaced_pod_portforward,
                self.pod,
                self.namespace,
                ports=str(self.port),
            )
            remote = pf.socket(self.port)
            remote.setblocking(True)
        except Exception as e:
            log.debug("port-forward to %s/%s:%s failed: %s", self.namespace, self.pod, self.port, e)
            conn.close()
            return
        if self._closed:
            pf.close()
            conn.close()
            return
        self._open.add(pf)

        def closed(_link: Link) -> None:
            with contextlib.suppress(Exception):
                pf.close()
            self._open.discard(pf)

        Link(conn, remote, f"k8s-pf-{self.local_port}", closed).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self.listener.close()
        for pf in list(self._open):
            with contextlib.suppress(Exception):
                pf.close()


class PodPortForwards:
    """The five channel forwards of one kernel pod."""

    def __init__(self) -> None:
        self.forwards: dict[str, _PodForward] = {}

    def open(
        self,
        api: client.ApiClient,
        namespace: str,
        pod: str,
        ports: dict[str, int],
        local_ports: dict[str, int] | None = None,
    ) -> dict[str, int]:
        self.close()
        for channel, port in ports.items():
            fwd = _PodForward(api, namespace, pod, port, (local_ports or {}).get(channel, 0))
            self.forwards[channel] = fwd
            acceptor().add(fwd)  # type: ignore[arg-type]
        return {ch: f.local_port for ch, f in self.forwards.items()}

    def close(self) -> None:
        for fwd in self.forwards.values():
            acceptor().remove(fwd)  # type: ignore[arg-type]
            fwd.close()
        self.forwards.clear()
