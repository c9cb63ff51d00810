"""SSH logins without stored per-user keys: short-lived OpenSSH user certificates.

HPC sites do not hand a gateway a private key for every user of the cluster. In
certificate mode the gateway holds one certificate authority (CA) key, which the hosts'
sshd trusts (``TrustedUserCAKeys``), and for every SSH connection it opens mints a
certificate for the one account that connection logs in as:

* the key pair is new for each certificate and lives only in this process's memory;
  the certificate is never written anywhere (a reconnect mints a new one);
* principal: the account (sshd accepts it for no other login);
* valid from a minute ago (clock skew) for ``validity`` seconds: an expired or stolen
  certificate opens nothing later. sshd checks a certificate only at login, so a
  connection outlives it; the pool keeps one connection per (host, account);
* extensions: ``permit-port-forwarding`` only (the kernel's ports are forwarded); no
  pty, no agent or X11 forwarding, no user rc;
* ``source-address``, when the operator names the gateway's addresses, so that the
  certificate is worthless from anywhere else. ``force-command`` is not set: the
  connection runs the orchestrator's agent and the kernel's commands, which a forced
  command would replace;
* key id ``kernel-orchestrator:<gateway user>:<account>``, which sshd logs at every
  login, so a site's logs say whose kernel logged in.

A user the gateway no longer has (removed from the users file, deleted from the Hub)
gets no new certificate: :func:`orchestrator.users.is_revoked` is asked each time.
"""

from __future__ import annotations

import io
import ipaddress
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import ssh

from ...errors import OrchestratorError
from ...users import is_revoked

#: Clock skew between the gateway and the hosts that a new certificate tolerates.
BACKDATE_SECONDS = 60
MIN_VALIDITY = 30.0
MAX_VALIDITY = 24 * 3600.0
SETTING = "certificate_authority"


class CertificateError(OrchestratorError):
    """A certificate cannot be minted (CA key unusable, user revoked, bad setting)."""


@dataclass(frozen=True)
class CertificateRequest:
    """What a connection's certificate says: for whom, as which account, how long."""

    authority: str  # path of the CA's private key on the gateway
    principal: str  # the account the certificate logs in as
    owner: str = ""  # the gateway user whose kernel it is ('' : the operator's)
    validity: float = 300.0
    source_addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for address in self.source_addresses:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise CertificateError(
                    f"certificate_source_addresses: {address!r} is not an address or CIDR"
                ) from None
        if not MIN_VALIDITY <= self.validity <= MAX_VALIDITY:
            raise CertificateError(
                f"certificate_validity {self.validity:g}s is outside"
                f" {MIN_VALIDITY:g}..{MAX_VALIDITY:g} seconds"
            )
        if not self.principal:
            raise CertificateError(
                "certificate mode needs the account to log in as: set the kernelspec's"
                " user (such as 'ko-{username}') or its user_map"
            )


_authorities: dict[tuple[str, int, int, int], CertificateAuthority] = {}
_authorities_lock = threading.Lock()


class CertificateAuthority:
    """The CA key, read once (again when the file changes), kept in memory."""

    def __init__(self, key: ssh.SSHCertPrivateKeyTypes, path: str) -> None:
        self._key = key
        self.path = path

    @classmethod
    def load(cls, path: str) -> CertificateAuthority:
        """The CA of ``path``, refused unless it is a regular file of this process's user
        that nobody else can read or replace (checked on the opened descriptor)."""
        if not path or not os.path.isabs(path):
            raise CertificateError(f"{SETTING} must be an absolute path (got {path!r})")
        # An operator's links are followed (a Kubernetes Secret's files are links into
        # its ..data); the file they lead to is then opened without following more.
        real = os.path.realpath(path)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise CertificateError(f"{SETTING} {path}: cannot open: {e.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise CertificateError(f"{SETTING} {path} is not a regular file")
            # Ours (or root's, a mounted Secret's), readable by no other account: group
            # bits only for our own group (a Secret mounted with the pod's fsGroup).
            group_ok = info.st_gid == os.getegid() or not info.st_mode & 0o070
            if info.st_uid not in (os.geteuid(), 0) or info.st_mode & 0o007 or not group_ok:
                raise CertificateError(
                    f"{SETTING} {path} must belong to the gateway's user (uid {os.geteuid()})"
                    f" and be readable by nobody else (chmod 600); it is uid {info.st_uid},"
                    f" gid {info.st_gid}, mode {stat.S_IMODE(info.st_mode):o}"
                )
            stamp = (path, info.st_ino, info.st_mtime_ns, info.st_size)
            with _authorities_lock:
                known = _authorities.get(stamp)
                if known is not None:
                    return known
                with os.fdopen(os.dup(fd), "rb") as f:
                    data = f.read()
                try:
                    key = serialization.load_ssh_private_key(data, password=None)
                except (ValueError, TypeError) as e:
                    raise CertificateError(
                        f"{SETTING} {path} is not an unencrypted OpenSSH private key: {e}"
                    ) from None
                if not isinstance(
                    key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)
                ):
                    raise CertificateError(f"{SETTING} {path}: unsupported key type")
                authority = cls(key, path)
                for old in [s for s in _authorities if s[0] == path]:
                    del _authorities[old]
                _authorities[stamp] = authority
                return authority
        finally:
            os.close(fd)

    @property
    def public_line(self) -> str:
        """The CA's public key as a ``TrustedUserCAKeys`` line."""
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )

    def mint(
        self, request: CertificateRequest, *, now: float | None = None
    ) -> tuple[paramiko.PKey, ssh.SSHCertificate]:
        """A fresh key pair with a certificate for ``request``: the paramiko key to log
        in with (certificate loaded) and the certificate. ``now`` shifts the validity
        window (tests prove an expired certificate is refused)."""
        if request.owner and is_revoked(request.owner):
            raise CertificateError(
                f"user {request.owner!r} is no longer a user of this gateway: no certificate"
                f" is minted for {request.principal!r}"
            )
        start = int(now if now is not None else time.time())
        private = ed25519.Ed25519PrivateKey.generate()
        owner = request.owner or "operator"
        builder = (
            ssh.SSHCertificateBuilder()
            .public_key(private.public_key())
            .serial(secrets.randbits(64))
            .type(ssh.SSHCertificateType.USER)
            .key_id(f"kernel-orchestrator:{owner}:{request.principal}".encode())
            .valid_principals([request.principal.encode()])
            .valid_after(start - BACKDATE_SECONDS)
            .valid_before(start + int(request.validity))
            .add_extension(b"permit-port-forwarding", b"")
        )
        if request.source_addresses:
            builder = builder.add_critical_option(
                b"source-address", ",".join(request.source_addresses).encode()
            )
        certificate = builder.sign(self._key)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        pkey = paramiko.Ed25519Key(file_obj=io.StringIO(pem))
        pkey.load_certificate(certificate.public_bytes().decode())
        return pkey, certificate


def login_key(request: CertificateRequest) -> paramiko.PKey:
    """The key (with a new certificate) a connection for ``request`` logs in with."""
    pkey, _ = CertificateAuthority.load(request.authority).mint(request)
    return pkey
