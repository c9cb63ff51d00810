"""Where to connect: an SSH destination resolved against ``~/.ssh/config``.

A kernelspec or a ``DOCKER_HOST=ssh://`` URL names a host; ``~/.ssh/config`` (or an
explicit file) supplies HostName, User, Port, IdentityFile, ProxyJump and
UserKnownHostsFile, and explicit settings win over it. ProxyJump chains are resolved
hop by hop, each hop against the same config.
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import paramiko

from ...errors import OrchestratorError
from .certificates import CertificateRequest

HOST_KEY_POLICIES = ("reject", "accept-new")
_DEST = re.compile(
    r"^(?:ssh://)?(?:(?P<user>[^@/:\s]+)@)?(?P<host>\[[^\]]+\]|[^@/:\s]+)"
    r"(?::(?P<port>\d+))?/?$"
)


class SSHConfigError(OrchestratorError):
    """An SSH destination or setting is not usable."""


@dataclass(frozen=True)
class SSHTarget:
    """One SSH destination, fully resolved, with the hops that lead to it."""

    host: str
    port: int = 22
    user: str = ""
    identity_files: tuple[str, ...] = ()
    known_hosts: str = ""
    host_key_policy: str = "reject"
    jump: tuple[SSHTarget, ...] = field(default=())
    alias: str = ""
    connect_timeout: float = 10.0
    use_agent: bool = True
    # Certificate mode: log in with a certificate minted per connection, no stored key
    # (:mod:`.certificates`); identity files and the agent are then not used.
    certificate: CertificateRequest | None = None

    @property
    def pool_key(self) -> tuple[object, ...]:
        """Targets with the same key share one SSH connection. How it logs in is part
        of it: a certificate-mode kernel never rides on a key-mode login or on another
        user's certificate (each is minted under its own user's revocation check, and
        sshd's log names whose it is), even where users share an account."""
        login: tuple[str, ...] = ("key",)
        if self.certificate is not None:  # (whose certificate: each user's is checked)
            login = ("certificate", self.certificate.owner, self.certificate.authority)
        return (self.user, self.host, self.port, login, tuple(h.pool_key for h in self.jump))

    def describe(self) -> str:
        name = f"{self.user}@{self.host}:{self.port}"
        if self.jump:
            name += " via " + " -> ".join(f"{h.user}@{h.host}:{h.port}" for h in self.jump)
        return name


def parse_destination(text: str) -> tuple[str | None, str, int | None]:
    """``[ssh://][user@]host[:port]`` -> (user, host, port)."""
    m = _DEST.fullmatch(text.strip())
    if not m:
        raise SSHConfigError(f"bad SSH destination {text!r}: expected [user@]host[:port]")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise SSHConfigError(f"bad SSH destination {text!r}: port out of range")
    return m["user"], m["host"].strip("[]"), port


def _load_config(path: str | None) -> paramiko.SSHConfig:
    config_path = Path(path or "~/.ssh/config").expanduser()
    if config_path.is_file():
        try:
            return paramiko.SSHConfig.from_path(str(config_path))
        except Exception as e:
            raise SSHConfigError(f"cannot read SSH config {config_path}: {e}") from e
    if path:
        raise SSHConfigError(f"SSH config file {config_path} does not exist")
    return paramiko.SSHConfig()


def resolve_target(
    destination: str,
    *,
    user: str | None = None,
    port: int | None = None,
    identity_file: str | None = None,
    known_hosts: str | None = None,
    proxy_jump: str | None = None,
    host_key_policy: str | None = None,
    ssh_config: str | None = None,
    connect_timeout: float = 10.0,
    _depth: int = 0,
) -> SSHTarget:
    """Resolve ``destination`` (an alias or ``[user@]host[:port]``) into an :class:`SSHTarget`."""
    if _depth > 8:
        raise SSHConfigError(f"ProxyJump chain for {destination!r} is too long or circular")
    policy = host_key_policy or "reject"
    if policy not in HOST_KEY_POLICIES:
        raise SSHConfigError(
            f"host key policy {policy!r} is not one of {', '.join(HOST_KEY_POLICIES)}"
        )
    d_user, d_host, d_port = parse_destination(destination)
    config = _load_config(ssh_config)
    entry = config.lookup(d_host)
    hostname = entry.get("hostname", d_host)
    final_user = user or d_user or entry.get("user") or getpass.getuser()
    final_port = port or d_port or int(entry.get("port", 22))
    identities = tuple(
        str(Path(p).expanduser())
        for p in ([identity_file] if identity_file else entry.get("identityfile", []))
    )
    kh = known_hosts or (entry.get("userknownhostsfile") or "").split(" ")[0] or ""
    if not kh:
        kh = str(Path("~/.ssh/known_hosts").expanduser())
    kh = str(Path(kh).expanduser())
    if entry.get("stricthostkeychecking") == "accept-new" and host_key_policy is None:
        policy = "accept-new"
    jump_spec = proxy_jump if proxy_jump is not None else entry.get("proxyjump", "")
    hops: list[SSHTarget] = []
    if jump_spec and jump_spec.lower() != "none":
        for hop in jump_spec.split(","):
            resolved = resolve_target(
                hop,
                known_hosts=known_hosts,
                host_key_policy=host_key_policy,
                ssh_config=ssh_config,
                connect_timeout=connect_timeout,
                identity_file=identity_file if not _hop_has_identity(hop, config) else None,
                _depth=_depth + 1,
            )
            # A hop's own chain comes first (ProxyJump inside ProxyJump).
            hops.extend(resolved.jump)
            hops.append(replace(resolved, jump=()))
    return SSHTarget(
        host=hostname,
        port=final_port,
        user=final_user,
        identity_files=identities,
        known_hosts=kh,
        host_key_policy=policy,
        jump=tuple(hops),
        alias=d_host,
        connect_timeout=connect_timeout,
    )


def _hop_has_identity(hop: str, config: paramiko.SSHConfig) -> bool:
    _, host, _ = parse_destination(hop)
    return bool(config.lookup(host).get("identityfile"))


def default_identity_files() -> list[str]:
    home = Path(os.path.expanduser("~/.ssh"))
    return [str(home / n) for n in ("id_ed25519", "id_ecdsa", "id_rsa") if (home / n).exists()]
