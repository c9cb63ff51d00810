"""One SSH connection per (user, host, jump chain), kept alive and rebuilt when it drops.

Every kernel on a host shares this connection: its forwards are ``direct-tcpip``
channels and its remote commands are ``exec`` channels of the same transport. A
watchdog asks the server for a reply every ``keepalive_interval`` seconds. A broken
connection (reset, closed) is rebuilt at once, with exponential backoff. One that
merely stops answering (a network cut drops packets but resets nothing) is
"stalled": it is kept for up to ``stall_limit`` seconds, because when the path comes
back TCP delivers everything queued meanwhile (a cell's output included); only past
that is it torn down and rebuilt. Listeners (the forwards) keep their local ports
throughout, so clients reconnect to the same ports and the remote kernel keeps its
state. States, reported to subscribers: "up", "stalled", "reconnecting", "closed".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

from ...errors import OrchestratorError
from .certificates import CertificateError, login_key
from .target import SSHTarget, default_identity_files

log = logging.getLogger("kernel-orchestrator.ssh")

# Throughput of a paramiko tunnel is bound by per-packet Python work, so forwards ask
# for 256 KiB packets (OpenSSH sends up to that when allowed; paramiko's default 32 KiB
# gives ~70 MB/s on loopback, 256 KiB with AES-GCM ~240 MB/s) and a window large
# enough that window/RTT never becomes the limit.
CHANNEL_WINDOW = 16 * 1024 * 1024
CHANNEL_MAX_PACKET = 256 * 1024
# AEAD ciphers first: no separate MAC pass over every packet.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")


def _transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    available = tuple(options.ciphers)
    first = tuple(c for c in PREFERRED_CIPHERS if c in available)
    options.ciphers = first + tuple(c for c in available if c not in first)
    return transport


class _QuietRefusedChannels(logging.Filter):
    """paramiko logs every refused ``direct-tcpip`` open at ERROR. While a remote kernel
    restarts, clients reconnecting to its not-yet-bound ports make exactly that happen;
    the forwarder reports it at debug level itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED" not in record.getMessage()


logging.getLogger("paramiko.transport").addFilter(_QuietRefusedChannels())


class SSHError(OrchestratorError):
    """An SSH connection could not be made or used."""


class HostKeyError(SSHError):
    """The server's host key is unknown or changed."""


class _RememberNewKey(paramiko.MissingHostKeyPolicy):
    """``accept-new``: trust a host seen for the first time and record it; never a changed key."""

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        path = Path(self.known_hosts)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with path.open("a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        log.warning(
            "accepted new host key for %s (%s) into %s", hostname, key.get_name(), self.known_hosts
        )


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyError(
            f"host key of {hostname} is not in {self.known_hosts} ({key.get_name()}"
            f" {key.fingerprint}); add it there, or use host_key_policy accept-new"
        )


def _connect_hop(target: SSHTarget, sock: Any) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    if target.known_hosts and Path(target.known_hosts).exists():
        try:
            client.load_host_keys(target.known_hosts)
        except Exception as e:
            raise SSHError(f"cannot read known_hosts {target.known_hosts}: {e}") from e
    policy: paramiko.MissingHostKeyPolicy = (
        _RememberNewKey(target.known_hosts)
        if target.host_key_policy == "accept-new"
        else _RejectUnknown(target.known_hosts)
    )
    client.set_missing_host_key_policy(policy)
    if target.certificate is not None:
        # A new certificate for this login only; no key on disk, no agent.
        try:
            credentials: dict[str, Any] = {
                "pkey": login_key(target.certificate),
                "allow_agent": False,
            }
        except CertificateError as e:
            raise SSHError(f"no login to {target.user}@{target.host}: {e}") from None
    else:
        keys = list(target.identity_files) or default_identity_files()
        credentials = {"key_filename": keys or None, "allow_agent": target.use_agent}
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            sock=sock,
            timeout=target.connect_timeout,
            banner_timeout=target.connect_timeout,
            auth_timeout=target.connect_timeout,
            look_for_keys=False,
            transport_factory=_transport,
            **credentials,
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        raise HostKeyError(
            f"host key of {target.host} has CHANGED (expected {e.expected_key.get_name()}"
            f" {e.expected_key.fingerprint}, got {e.key.fingerprint}): refusing to connect"
        ) from None
    except paramiko.AuthenticationException as e:
        client.close()
        raise SSHError(f"authentication to {target.user}@{target.host} failed: {e}") from None
    except (OSError, paramiko.SSHException, EOFError) as e:
        client.close()
        raise SSHError(
            f"cannot connect to {target.host}:{target.port}: {e or type(e).__name__}"
        ) from None
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(0)  # our watchdog does the checking
    return client


class SSHConnection:
    """A shared, self-healing SSH connection to one target."""

    def __init__(
        self,
        target: SSHTarget,
        *,
        keepalive_interval: float = 2.0,
        keepalive_timeout: float = 6.0,
        stall_limit: float = 120.0,
        max_backoff: float = 8.0,
    ) -> None:
        self.target = target
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.stall_limit = stall_limit
        self.max_backoff = max_backoff
        self.state = "connecting"
        self.generation = 0  # bumped at every successful (re)connect
        self._clients: list[paramiko.SSHClient] = []
        self._lock = threading.RLock()
        self._up = threading.Event()
        self._closed = threading.Event()
        self._subscribers: list[Callable[[str], None]] = []
        self._watchdog: threading.Thread | None = None
        self.sessions_opened = 0  # session channels (remote commands) opened so far

    # ---------------------------------------------------------- connecting
    def connect(self) -> None:
        """Connect now (raising a clear error), then keep the connection alive."""
        self._establish()
        self._watchdog = threading.Thread(
            target=self._watch, name=f"ssh-watchdog-{self.target.host}", daemon=True
        )
        self._watchdog.start()

    def _establish(self) -> None:
        clients: list[paramiko.SSHClient] = []
        sock: Any = None
        try:
            for hop in (*self.target.jump, self.target):
                if clients:
                    prev = clients[-1].get_transport()
                    assert prev is not None
                    try:
                        sock = prev.open_channel(
                            "direct-tcpip",
                            (hop.host, hop.port),
                            ("127.0.0.1", 0),
                            timeout=hop.connect_timeout,
                        )
                    except (paramiko.SSHException, OSError) as e:
                        raise SSHError(
                            f"jump host {clients[-1].get_transport().getpeername()[0]}"  # type: ignore[union-attr]
                            f" cannot reach {hop.host}:{hop.port}: {e}"
                        ) from None
                clients.append(_connect_hop(hop, sock))
        except BaseException:
            for c in reversed(clients):
                c.close()
            raise
        with self._lock:
            old, self._clients = self._clients, clients
            self.generation += 1
        for c in reversed(old):
            c.close()
        self._set_state("up")

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        if state == "up":
            self._up.set()
        else:
            self._up.clear()
        log.info("SSH connection %s: %s", self.target.describe(), state)
        for callback in list(self._subscribers):
            try:
                callback(state)
            except Exception:  # a subscriber's bug must not kill the watchdog
                log.exception("SSH state subscriber failed")

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._subscribers.append(callback)

    @property
    def transport(self) -> paramiko.Transport | None:
        with self._lock:
            return self._clients[-1].get_transport() if self._clients else None

    def _ask(self, transport: paramiko.Transport) -> threading.Event:
        """Send a keepalive request; the event is set when the server answers."""
        answered = threading.Event()

        def ask() -> None:
            try:
                # OpenSSH answers with a failure message; any answer is proof of life
                # (None with the transport dead is none).
                transport.global_request("keepalive@openssh.com", wait=True)
            except Exception:
                return
            if transport.is_active():
                answered.set()

        threading.Thread(target=ask, name="ssh-keepalive", daemon=True).start()
        return answered

    def _watch(self) -> None:
        while not self._closed.wait(self.keepalive_interval):
            transport = self.transport
            if transport is not None and transport.is_active():
                answered = self._ask(transport)
                if answered.wait(self.keepalive_timeout) or self._closed.is_set():
                    continue
                if self._ride_out_stall(transport, answered):
                    continue
            if self._closed.is_set():
                return
            self._reconnect()

    def _ride_out_stall(self, transport: paramiko.Transport, answered: threading.Event) -> bool:
        """No answer, but the connection is not broken: the network may be cut (packets
        dropped, nothing reset). Keep the transport for up to ``stall_limit`` seconds:
        once the path is back, TCP delivers what was queued both ways, so a kernel's
        output sent meanwhile is not lost. Meanwhile the state is "stalled" (kernels'
        status unknown, never dead). True if the connection recovered."""
        self._set_state("stalled")
        deadline = time.monotonic() + self.stall_limit
        while time.monotonic() < deadline and not self._closed.is_set():
            if answered.wait(0.5):
                break
            if not transport.is_active():
                return False
        if answered.is_set() and transport.is_active() and not self._closed.is_set():
            self._set_state("up")
            return True
        return False

    def _reconnect(self) -> None:
        self._set_state("reconnecting")
        with self._lock:
            dead, self._clients = self._clients, []
        for c in reversed(dead):
            c.close()
        backoff = 0.25
        while not self._closed.is_set():
            try:
                self._establish()
                return
            except SSHError as e:
                log.info(
                    "reconnect to %s failed: %s (retry in %.1fs)",
                    self.target.describe(),
                    e,
                    backoff,
                )
                self._closed.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def wait_up(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    def close(self) -> None:
        self._closed.set()
        self._set_state("closed")
        with self._lock:
            clients, self._clients = self._clients, []
        for c in reversed(clients):
            c.close()

    # ------------------------------------------------------------- channels
    def open_direct(self, host: str, port: int, timeout: float = 10.0) -> paramiko.Channel:
        """A ``direct-tcpip`` channel to ``host:port`` as seen from the target."""
        if not self.wait_up(timeout):
            raise SSHError(f"SSH connection to {self.target.describe()} is down")
        transport = self.transport
        if transport is None:
            raise SSHError(f"SSH connection to {self.target.describe()} is down")
        return transport.open_channel(
            "direct-tcpip",
            (host, port),
            ("127.0.0.1", 0),
            window_size=CHANNEL_WINDOW,
            max_packet_size=CHANNEL_MAX_PACKET,
            timeout=timeout,
        )

    def open_command(self, command: str, timeout: float = 60.0) -> paramiko.Channel:
        """A session channel running ``command`` on the target (counted in
        :attr:`sessions_opened`: what each costs the host is a new remote process)."""
        if not self.wait_up(timeout):
            raise SSHError(f"SSH connection to {self.target.describe()} is down")
        transport = self.transport
        if transport is None:
            raise SSHError(f"SSH connection to {self.target.describe()} is down")
        try:
            chan = transport.open_session(timeout=timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError) as e:
            raise SSHError(f"cannot open a session on {self.target.describe()}: {e}") from None
        self.sessions_opened += 1
        return chan

    def exec(
        self, command: str, stdin: bytes = b"", timeout: float = 60.0
    ) -> tuple[int, bytes, bytes]:
        """Run ``command`` on the target, feeding ``stdin``; (exit status, stdout, stderr)."""
        chan = self.open_command(command, timeout)
        try:
            chan.settimeout(timeout)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            # Blocking reads until EOF: no polling delay on short commands. Remote
            # stderr is small (a launcher error) and fits the channel window meanwhile.
            while data := chan.recv(65536):
                out += data
            while data := chan.recv_stderr(65536):
                err += data
            return chan.recv_exit_status(), bytes(out), bytes(err)
        except (TimeoutError, paramiko.SSHException, OSError) as e:
            raise SSHError(f"remote command on {self.target.host} failed: {e}") from None
        finally:
            chan.close()
