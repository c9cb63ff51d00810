"""A kernel store on a PostgreSQL server, for gateway replicas on several machines.

The same tables and migrations as the SQLite store (:mod:`.sql`), through psycopg 3.
Each process keeps one connection and runs one short transaction at a time on the
store's thread pool, like the SQLite store: store traffic is lifecycle and bookkeeping,
never a kernel message, so one connection per process is plenty.

When the server restarts or the network drops, the call that meets the broken
connection fails with a :class:`StoreError` that says so and the next call connects
again; nothing is retried blindly, since a write whose commit was lost in transit
may or may not have happened. Callers already retry on their own schedule (the lease
keeper every third of a lease, the restore with backoff).

The URL may carry a password; it is never logged or shown: :attr:`url` is the URL
without it. Its libpq settings pass through unchanged (``sslmode``, ``sslrootcert``,
``sslcert``, ...); a server that is not on loopback must be named with an ``sslmode``
(``verify-full`` to verify it), or the store refuses to connect. Prefer a password
file (``$PGPASSFILE``) or ``$PGPASSWORD`` from a Secret, so the password is in no
process's argv either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import StoreError
from .migrations import POSTGRES_MIGRATIONS
from .sql import Dialect, SQLKernelStore

POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    greatest="GREATEST",
    for_update=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    lock_reservations="LOCK TABLE reservations IN EXCLUSIVE MODE",
    table_exists="SELECT 1 WHERE to_regclass(?) IS NOT NULL",
    now="EXTRACT(EPOCH FROM clock_timestamp())::double precision",
)

CONNECT_TIMEOUT = 5  # seconds; a libpq URL's own connect_timeout wins
#: libpq settings for a connection that must never hang a replica: a dead server or a
#: cut network is noticed within about a minute (TCP keepalives, unacknowledged data),
#: and no statement or lock wait runs longer than the lease it may be renewing. The
#: URL's own values (or libpq's environment) win.
CONNECTION_DEFAULTS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 15,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # milliseconds
}
SESSION_OPTIONS = "-c statement_timeout=20s -c idle_in_transaction_session_timeout=60s"
SECRET_PARAMETERS = ("password", "sslpassword")


def redact_url(url: str) -> str:
    """The URL without its password, in the user part or the query (what logs and
    error messages show)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key in SECRET_PARAMETERS for key, _ in query):
        query = [(k, "***" if k in SECRET_PARAMETERS else v) for k, v in query]
        return urlunsplit(
            (parts.scheme, netloc, parts.path, urlencode(query, safe="*"), parts.fragment)
        )
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _is_local(host: str) -> bool:
    """A Unix socket directory, ``localhost``, or a loopback IP literal."""
    import ipaddress

    host = host.strip().strip("[]")
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name: it may resolve anywhere


def _url_hosts(netloc: str) -> list[str]:
    """The hosts of a URL's netloc, which libpq lets be a list (``h1:5432,[::1]:5433``)."""
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        if item.startswith("[") and "]" in item:
            hosts.append(item[1 : item.index("]")])
        else:
            hosts.append(item.split(":")[0])
    return [h for h in hosts if h]


def check_server_verification(url: str, environ: Any = os.environ) -> None:
    """Refuse a connection over a network that would not verify the server.

    The store holds every kernel's keys. libpq's default (``sslmode=prefer``) encrypts
    when the server offers it but checks no certificate, so anyone on the path can
    stand in for the database. Loopback and Unix sockets need nothing; elsewhere the
    URL (or ``$PGSSLMODE``) must say what it wants: ``verify-full`` (with ``sslrootcert``)
    to verify, ``require`` to encrypt only, ``disable`` on a network the operator trusts.
    Every host libpq may use counts: the URL's own (a list: ``h1:5432,h2:5432``), its
    ``host`` parameter, else ``$PGHOST``; a ``hostaddr`` or a service file may send the
    connection anywhere, so they need an ``sslmode`` too.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "sslmode" in query or environ.get("PGSSLMODE"):
        return
    # Every host that may be used (the URL's, its host parameter, which libpq lets
    # override them, or $PGHOST when the URL has none): all must be local.
    hosts = _url_hosts(parts.netloc) + query.get("host", "").split(",")
    if not any(hosts):
        hosts = environ.get("PGHOST", "").split(",")
    indirect = [
        name
        for name, present in (
            ("hostaddr", "hostaddr" in query),
            ("$PGHOSTADDR", bool(environ.get("PGHOSTADDR"))),
            ("service", "service" in query),
            ("$PGSERVICE", bool(environ.get("PGSERVICE"))),
        )
        if present
    ]
    if indirect or not all(_is_local(h) for h in hosts):
        why = f" (it names {', '.join(indirect)})" if indirect else ""
        raise StoreError(
            f"kernel store {redact_url(url)}: the connection would not verify the database"
            f" server{why} (libpq's default sslmode=prefer checks no certificate), and the"
            " store holds every kernel's keys: add sslmode=verify-full&sslrootcert=/path/to/"
            "ca.crt to the URL (or set $PGSSLMODE); sslmode=require encrypts without"
            " verifying, sslmode=disable accepts plain text on a network you trust"
        )


class PostgresKernelStore(SQLKernelStore):
    """Kernel records in a PostgreSQL database named by a ``postgresql://`` URL."""

    dialect = POSTGRES
    migrations = POSTGRES_MIGRATIONS

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - psycopg is a dependency
            raise StoreError(
                f"the kernel store {redact_url(url)} needs psycopg 3"
                " (pip install 'kernel-orchestrator[postgresql]')"
            ) from e
        check_server_verification(url)
        self._psycopg = psycopg
        self._dsn = url
        self.url = redact_url(url)
        self._conn: Any = None
        try:
            self._connect()
            self._open_schema()
        except psycopg.Error as e:
            self._drop_connection()
            raise StoreError(f"cannot open {self._explain(e)}") from e

    def _after_fork(self) -> None:
        """The parent's connection is the parent's: left as it is (closing it from here
        would end the parent's session), and a new one opened on first use."""
        super()._after_fork()
        _inherited.append(self._conn)  # never closed, never collected, in this child
        self._conn = None

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop_connection()
            kwargs: dict[str, Any] = {"autocommit": True, "application_name": "kernel-orchestrator"}
            given = set(parse_qs(urlsplit(self._dsn).query))
            if "connect_timeout" not in given and "PGCONNECT_TIMEOUT" not in os.environ:
                kwargs["connect_timeout"] = CONNECT_TIMEOUT
            if "options" not in given and "PGOPTIONS" not in os.environ:
                kwargs["options"] = SESSION_OPTIONS
            kwargs.update({k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given})
            self._conn = self._psycopg.connect(self._dsn, **kwargs)
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        conn = self._connect()
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def _explain(self, error: Exception) -> str | None:
        if not isinstance(error, self._psycopg.Error):
            return None
        text = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, self._psycopg.OperationalError):
            return f"kernel store {self.url} is unreachable: {text}"
        return f"kernel store {self.url}: {text}"

    def _on_failure(self, error: Exception) -> None:
        conn = self._conn
        if conn is not None and (conn.broken or conn.closed):
            self._drop_connection()  # the next call connects again

    def _is_duplicate(self, error: Exception) -> bool:
        return isinstance(error, self._psycopg.errors.UniqueViolation)

    def close(self) -> None:
        with self._lock:
            self._drop_connection()


# Connections a forked child inherited: kept referenced so that their collection never
# runs libpq's terminate on the parent's session.
_inherited: list[Any] = []
