"""A private PostgreSQL server for the tests: Debian's binaries, our own data directory.

The server is a cluster of its own (``initdb``) in a temporary directory owned by the
``postgres`` account, listening on a free port of 127.0.0.1 only, with password
(SCRAM) authentication. Nothing of the machine's own PostgreSQL service is used or
started. Clients get the password through a 0600 password file (``PGPASSFILE``),
so it is in no URL, argv or log.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from . import debian


def _bindir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        debian.ensure({"/usr/bin/pg_config": "postgresql", "/usr/bin/psql": "postgresql"})
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise RuntimeError("Debian's postgresql package installed no initdb")
    return versions[-1].parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL server process; see the module docstring."""

    user = "ko"

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.account = pwd.getpwnam("postgres")
        self.root = Path(tempfile.mkdtemp(prefix="ko-pg-"))
        os.chown(self.root, self.account.pw_uid, self.account.pw_gid)
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        # The clients' password file: root's, 0600 (libpq refuses a looser one).
        self.passfile = Path(tempfile.mkdtemp(prefix="ko-pgpass-")) / "pgpass"
        self.passfile.write_text(f"127.0.0.1:{self.port}:*:{self.user}:{self.password}\n")
        self.passfile.chmod(0o600)
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def _as_postgres(self, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            ["runuser", "-u", "postgres", "--", *argv],
            capture_output=True,
            text=True,
            check=True,
            cwd=self.root,
            **kwargs,
        )

    def init(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        os.chown(pwfile, self.account.pw_uid, self.account.pw_gid)
        pwfile.chmod(0o600)
        self._as_postgres(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
        )
        pwfile.unlink()
        self.socket_dir.mkdir()
        os.chown(self.socket_dir, self.account.pw_uid, self.account.pw_gid)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 200\nfsync = off\nfull_page_writes = off\n"
                "shared_buffers = 32MB\n"
            )

    def start(self) -> None:
        if not self.data.exists():
            self.init()
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server's for its life
        self.process = subprocess.Popen(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "server.log").read_text()[-3000:]
        return ""

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: a fast shutdown, or (``kill``) SIGKILL of the whole group."""
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        if kill:  # the postmaster's children die with it; its lock files stay
            (self.data / "postmaster.pid").unlink(missing_ok=True)
            for leftover in self.socket_dir.glob(".s.PGSQL.*"):
                leftover.unlink(missing_ok=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._leftovers():
                time.sleep(0.1)

    def _leftovers(self) -> bool:
        found = subprocess.run(
            ["pgrep", "-f", f"-D {self.data}"], capture_output=True, check=False
        ).stdout
        return bool(found.strip())

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs besides the URL (the password file)."""
        return {"PGPASSFILE": str(self.passfile)}

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its URL (password from :attr:`env`)."""
        self._databases += 1
        name = f"kernels_{os.getpid()}_{self._databases}"
        subprocess.run(
            [
                str(self.bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                name,
            ],
            env={**os.environ, **self.env},
            capture_output=True,
            check=True,
        )
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.passfile.parent, ignore_errors=True)
