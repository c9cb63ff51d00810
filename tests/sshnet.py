"""Test infrastructure: real OpenSSH servers in network namespaces, as "remote hosts".

Not part of the product. Tests of the SSH provisioner and the tunnel layer use it to
talk to real ``sshd`` processes over real TCP, with host-key checking, a jump host and
network outages, without leaving this machine.

Topology of one :class:`SSHNet` (``X`` is a per-instance byte, see ``_allocate_net``)::

    root ns  10.213.X.1  --veth--  10.213.X.2   hosta
    root ns  10.213.X.5  --veth--  10.213.X.6   jump
                    jump 10.213.X.9  --veth--  10.213.X.10  hostb

* Each host is a network namespace (``ko-<suffix>-hosta`` ...) running its own sshd on
  port 22 of its veth address(es), with its own ed25519 host key. ``lo`` is up in each,
  so a kernel listening on 127.0.0.1 "remotely" is invisible from the root namespace.
* Only the network is isolated: every host shares this machine's filesystem, users
  and PID space, so a kernel started "remotely" runs the same Python as the tests.
  The remote user is ``root`` (the tests run as root).
* hostb is reachable only *through* jump over SSH: jump has ``ip_forward`` off and the
  root namespace has an ``unreachable 10.213.X.0/24`` route. That route also makes sure
  that nothing addressed to this instance's subnet ever leaves through the machine's
  default route (e.g. while a link is cut): such packets fail locally with
  "No route to host".
* :meth:`SSHNet.cut` / :meth:`SSHNet.restore` take a link down / up without killing
  anything (established TCP connections stall, then resume on restore);
  :meth:`SSHNet.kill_connections` drops every SSH session to a host.

Usage::

    with SSHNet() as net:
        subprocess.run(["ssh", "-F", str(net.ssh_config), "hostb", "true"], check=True)

or, as a session fixture, ``sshnet = pytest.fixture(scope="session")(sshnet_fixture)``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import debian

__all__ = ["SSHHost", "SSHNet", "SSHNetError", "ensure_packages", "reap_stale", "sshnet_fixture"]

SSHD = "/usr/sbin/sshd"
SUBNET_PREFIX = "10.213"
NS_PREFIX = "ko-"
HOST_NAMES = ("hosta", "jump", "hostb")
# Registry of live instances (suffix -> owner pid and start time), so that a later run
# can reap what a killed run left behind, whatever its TMPDIR was.
REGISTRY = Path("/run/ko-sshnet")
LOCK_FILE = Path("/run/lock/ko-sshnet.lock")
READY_TIMEOUT = 20.0


class SSHNetError(RuntimeError):
    pass


# --------------------------------------------------------------------------- packages
def _missing_tools() -> list[str]:
    missing = []
    if not os.access(SSHD, os.X_OK):
        missing.append("openssh-server")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        missing.append("openssh-client")
    if shutil.which("ip") is None:
        missing.append("iproute2")
    return missing


def _port22_listeners() -> list[int]:
    """PIDs of processes listening on TCP port 22 in the root namespace."""
    out = subprocess.run(
        ["ss", "-Hltnp", "sport", "= :22"], capture_output=True, text=True, check=False
    ).stdout
    pids = set()
    for part in out.split("pid=")[1:]:
        digits = part.split(",", 1)[0]
        if digits.isdigit():
            pids.add(int(digits))
    return sorted(pids)


def ensure_packages() -> None:
    """Install openssh-server, openssh-client and iproute2 with apt-get if missing.

    No service is started: a ``policy-rc.d`` that refuses every start is put in place
    for the install if there is none, and should a package still have started an sshd
    listening on port 22 of the root namespace, it is stopped.
    """
    missing = _missing_tools()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SSHNetError(f"need root to install {missing}")
    before = set(_port22_listeners()) if shutil.which("ss") else set()
    try:
        debian.ensure({SSHD: "openssh-server", "ssh-keygen": "openssh-client", "ip": "iproute2"})
    except debian.PackageError as e:
        raise SSHNetError(str(e)) from e
    if shutil.which("ss"):
        started = [p for p in _port22_listeners() if p not in before]
        if started:
            for unit in ("ssh.socket", "ssh.service"):
                subprocess.run(["systemctl", "stop", unit], capture_output=True, check=False)
            subprocess.run(["service", "ssh", "stop"], capture_output=True, check=False)
            for pid in _port22_listeners():
                if pid in started:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
    still = _missing_tools()
    if still:
        raise SSHNetError(f"still missing after apt-get install: {still}")


# --------------------------------------------------------------------------- helpers
def _run(
    cmd: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, check=False, input=input
    )
    if check and proc.returncode != 0:
        raise SSHNetError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, ppid, starttime) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    return comm, int(rest[1]), int(rest[19])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2 :].split()[0] != "Z"


def _banner(ip: str, port: int) -> bool:
    """True if an SSH server answers at ip:port (from this process's namespace)."""
    try:
        with socket.create_connection((ip, port), timeout=1) as s:
            s.settimeout(2)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _netns_list() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_pids(ns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_all(pids_of: Callable[[], list[int]], grace: float = 3.0) -> list[int]:
    """SIGTERM what ``pids_of()`` returns, then SIGKILL; returns the survivors."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = pids_of()
        if not pids:
            return []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not [p for p in pids_of() if _alive(p)]:
                return []
            time.sleep(0.05)
    return [p for p in pids_of() if _alive(p)]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _owner_token() -> str:
    stat = _proc_stat(os.getpid())
    return f"{os.getpid()} {stat[2] if stat else 0}"


def _owner_alive(token: str) -> bool:
    """Is the process of a registry entry ("pid starttime third") still running?"""
    try:
        pid_s, start_s = token.split()[:2]
        stat = _proc_stat(int(pid_s))
    except ValueError:
        return False
    return stat is not None and str(stat[2]) == start_s


def _route_taken(third: int) -> bool:
    out = _run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
    out += _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    return f"{SUBNET_PREFIX}.{third}." in out


def make_user_ca(directory: Path) -> Path:
    """A user certificate authority for a test net (private key ``user_ca``, 0600, and
    ``user_ca.pub``, which the net's sshd trust): certificate mode logs in with it."""
    path = directory / "user_ca"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ko-test-ca", "-f", str(path)])
    path.chmod(0o600)
    return path


def sshd_config_lines(
    listen: Sequence[str],
    host_key: Path,
    pid_file: Path,
    authorized_dir: Path,
    extra: Sequence[str] = (),
    user_ca: Path | None = None,
) -> list[str]:
    """An sshd_config for a test host: keys (and certificates of ``user_ca``) only,
    forwarding on, logs verbose."""
    lines = [f"ListenAddress {ip}" for ip in listen] + [
        "Port 22",
        "AddressFamily inet",
        f"HostKey {host_key}",
        f"PidFile {pid_file}",
        f"AuthorizedKeysFile {authorized_dir}/%u",
        *([f"TrustedUserCAKeys {user_ca}.pub"] if user_ca else []),
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "StrictModes no",
        "UsePAM no",
        "AllowTcpForwarding yes",
        "AllowStreamLocalForwarding yes",
        "GatewayPorts no",
        "X11Forwarding no",
        "PermitTTY yes",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "MaxSessions 100",
        "MaxStartups 100:30:200",
        "LogLevel VERBOSE",
        *extra,
    ]
    for sftp in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server"):
        if os.path.exists(sftp):
            lines.append(f"Subsystem sftp {sftp}")
            break
    return lines


# --------------------------------------------------------------------------- the net
@dataclass
class SSHHost:
    """One "remote host": a network namespace with its own sshd."""

    name: str  # alias in ssh_config: hosta, jump, hostb
    ns: str  # network namespace name
    ip: str  # the address it is reached at (hostb: as seen from jump)
    sshd_pid: int = 0  # the sshd listener
    host_key_pub: str = ""  # "ssh-ed25519 AAAA..."
    host_key: Path = field(default_factory=Path)  # private host key file
    sshd_config: Path = field(default_factory=Path)
    sshd_log: Path = field(default_factory=Path)
    link_ns: str | None = None  # namespace holding the link end cut() downs (None: root)
    link_dev: str = ""
    port: int = 22


class SSHNet:
    """Three OpenSSH servers in fresh network namespaces; see the module docstring.

    Attributes (valid after :meth:`start`): ``workdir``, ``user_key``, ``bad_key``
    (private key paths; ``.pub`` beside them), ``known_hosts``, ``ssh_config``,
    ``hosts`` (name -> :class:`SSHHost`), ``suffix``, ``subnet`` ("10.213.X.0/24").
    """

    def __init__(self, ready_timeout: float = READY_TIMEOUT) -> None:
        self.ready_timeout = ready_timeout
        self.suffix = secrets.token_hex(3)
        self.workdir = Path()
        self.user_key = Path()
        self.user_ca = Path()
        self.bad_key = Path()
        self.known_hosts = Path()
        self.ssh_config = Path()
        self.hosts: dict[str, SSHHost] = {}
        self.subnet = ""
        self._third: int | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._ns_inodes: dict[str, int] = {}
        self._started = False
        self._stopped = False
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> SSHNet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SSHNet:
        """Build the network and start the sshds (an instance is started once)."""
        if self._started:
            return self
        self._started = True
        t0 = time.monotonic()
        ensure_packages()
        reap_stale()
        atexit.register(self.stop)
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"ko-sshnet-{self.suffix}-"))
            self._make_keys()
            self._make_network()
            self._start_sshds()
            self._write_client_files()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Kill everything in our namespaces, delete them and their links, remove workdir.

        Idempotent; raises SSHNetError if something of ours could not be removed.
        """
        if self._stopped or not self._started:
            return
        self._stopped = True
        t0 = time.monotonic()
        problems = _teardown(
            self.suffix,
            [self._ns(n) for n in HOST_NAMES],
            self._third,
            list(self._ns_inodes.values()),
        )
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self.workdir != Path() and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        self.timings["stop"] = time.monotonic() - t0
        if problems:
            raise SSHNetError("SSHNet teardown left: " + "; ".join(problems))

    # ------------------------------------------------------------------ building
    def _ns(self, name: str) -> str:
        return f"{NS_PREFIX}{self.suffix}-{name}"

    def _keygen(self, path: Path, comment: str) -> str:
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
        return path.with_suffix(".pub").read_text().strip()

    @property
    def authorized_dir(self) -> Path:
        """One authorized_keys file per account (``%u``), readable by that account only:
        sshd reads it as the account, so it lives outside the private workdir."""
        return Path("/run") / f"ko-sshnet-{self.suffix}-authorized"

    def _make_keys(self) -> None:
        self.user_key = self.workdir / "id_user"
        self.bad_key = self.workdir / "id_bad"
        user_pub = self._keygen(self.user_key, f"ko-sshnet-{self.suffix}-user")
        self._keygen(self.bad_key, f"ko-sshnet-{self.suffix}-bad")
        self.user_ca = make_user_ca(self.workdir)
        self.authorized_dir.mkdir(mode=0o711)
        self.authorized_dir.chmod(0o711)
        (self.authorized_dir / "root").write_text(user_pub + "\n")

    def authorize_account(self, account: str) -> Path:
        """A new key that logs in as ``account`` (on every host) and as nobody else."""
        import pwd

        entry = pwd.getpwnam(account)
        key = self.workdir / f"id_{account}"
        if not key.exists():
            public = self._keygen(key, f"ko-sshnet-{self.suffix}-{account}")
            path = self.authorized_dir / account
            path.write_text(public + "\n")
            os.chown(path, entry.pw_uid, entry.pw_gid)
            path.chmod(0o600)
        return key

    def _allocate_net(self) -> int:
        """A third octet no other instance (of any process) uses; call under _locked()."""
        start = int(self.suffix, 16) % 256
        for i in range(256):
            third = (start + i) % 256
            if not _route_taken(third):
                return third
        raise SSHNetError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")

    def _make_network(self) -> None:
        with _locked():
            self._third = third = self._allocate_net()
            REGISTRY.mkdir(parents=True, exist_ok=True)
            (REGISTRY / self.suffix).write_text(f"{_owner_token()} {third}")
            self.subnet = f"{SUBNET_PREFIX}.{third}.0/24"
            # Claims the /24 (the marker _allocate_net looks for) and keeps anything
            # for it that no veth route covers from going out of the default route.
            _run(["ip", "route", "add", "unreachable", self.subnet])
        net = f"{SUBNET_PREFIX}.{third}"
        s = self.suffix
        for name in HOST_NAMES:
            ns = self._ns(name)
            _run(["ip", "netns", "add", ns])
            self._ns_inodes[name] = os.stat(f"/run/netns/{ns}").st_ino
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # New namespaces may inherit the root's ip_forward=1: no forwarding anywhere.
            _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
        # root <-> hosta, root <-> jump
        for name, base in (("hosta", 0), ("jump", 4)):
            ns = self._ns(name)
            outer, inner = f"ko-{s}-{name[0]}", f"ko-{s}-{name[0]}i"
            _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns])
            _run(["ip", "addr", "add", f"{net}.{base + 1}/30", "dev", outer])
            _run(["ip", "link", "set", outer, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{net}.{base + 2}/30", "dev", inner])
            _run(["ip", "-n", ns, "link", "set", inner, "up"])
            self.hosts[name] = SSHHost(
                name=name, ns=ns, ip=f"{net}.{base + 2}", link_ns=None, link_dev=outer
            )
        # jump <-> hostb, created directly inside the namespaces
        jns, bns = self._ns("jump"), self._ns("hostb")
        jdev, bdev = f"ko-{s}-jb", f"ko-{s}-bj"
        _run(
            [
                "ip",
                "-n",
                jns,
                "link",
                "add",
                jdev,
                "type",
                "veth",
                "peer",
                "name",
                bdev,
                "netns",
                bns,
            ]
        )
        _run(["ip", "-n", jns, "addr", "add", f"{net}.9/30", "dev", jdev])
        _run(["ip", "-n", jns, "link", "set", jdev, "up"])
        _run(["ip", "-n", bns, "addr", "add", f"{net}.10/30", "dev", bdev])
        _run(["ip", "-n", bns, "link", "set", bdev, "up"])
        self.hosts["hostb"] = SSHHost(
            name="hostb", ns=bns, ip=f"{net}.10", link_ns=jns, link_dev=jdev
        )

    def _start_sshds(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        net = f"{SUBNET_PREFIX}.{self._third}"
        listen = {"hosta": [f"{net}.2"], "jump": [f"{net}.6", f"{net}.9"], "hostb": [f"{net}.10"]}
        for name, host in self.hosts.items():
            hdir = self.workdir / name
            hdir.mkdir(mode=0o700)
            host.host_key = hdir / "ssh_host_ed25519_key"
            host.host_key_pub = self._keygen(host.host_key, f"ko-sshnet-{self.suffix}-{name}")
            host.sshd_config = hdir / "sshd_config"
            host.sshd_log = hdir / "sshd.log"
            lines = sshd_config_lines(
                listen[name],
                host.host_key,
                hdir / "sshd.pid",
                self.authorized_dir,
                user_ca=self.user_ca,
            )
            host.sshd_config.write_text("\n".join(lines) + "\n")
            _run([SSHD, "-t", "-f", str(host.sshd_config)])
            out = open(hdir / "sshd.stderr", "wb")  # noqa: SIM115 - lives as long as sshd
            try:
                proc = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        host.ns,
                        SSHD,
                        "-D",
                        "-e",
                        "-f",
                        str(host.sshd_config),
                        "-E",
                        str(host.sshd_log),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            finally:
                out.close()
            # `ip netns exec` execs the command in place: this pid is sshd's.
            self._procs[name] = proc
            host.sshd_pid = proc.pid

    def _write_client_files(self) -> None:
        self.known_hosts = self.workdir / "known_hosts"
        self.known_hosts.write_text(
            "".join(f"{h.ip} {h.host_key_pub}\n" for h in self.hosts.values())
        )
        (self.workdir / "known_hosts.empty").write_text("")
        blocks = []
        for name, host in self.hosts.items():
            block = [
                f"Host {name}",
                f"    HostName {host.ip}",
                "    User root",
                f"    Port {host.port}",
                f"    IdentityFile {self.user_key}",
                "    IdentitiesOnly yes",
                f"    UserKnownHostsFile {self.known_hosts}",
                "    GlobalKnownHostsFile /dev/null",
                "    StrictHostKeyChecking yes",
                "    CheckHostIP no",
                "    UpdateHostKeys no",
                "    BatchMode yes",
                "    PasswordAuthentication no",
                "    ControlMaster no",
                "    ControlPath none",
                "    ConnectTimeout 10",
                "    LogLevel ERROR",
            ]
            if name == "hostb":
                block.append("    ProxyJump jump")
            blocks.append("\n".join(block))
        self.ssh_config = self.workdir / "ssh_config"
        self.ssh_config.write_text("\n\n".join(blocks) + "\n")

    # ------------------------------------------------------------------ readiness
    _PROBE = (
        "import socket,sys,time\n"
        "d=time.monotonic()+float(sys.argv[1])\n"
        "for a in sys.argv[2:]:\n"
        "  while True:\n"
        "    try:\n"
        "      s=socket.create_connection((a,22),timeout=1);s.settimeout(2)\n"
        "      ok=s.recv(8).startswith(b'SSH-');s.close()\n"
        "      if ok: break\n"
        "    except OSError: pass\n"
        "    if time.monotonic()>d: sys.exit('sshd at %s:22 not ready' % a)\n"
        "    time.sleep(0.02)\n"
    )

    def _wait_ready(self) -> None:
        """Until each sshd answers with its banner: hosta/jump from here, hostb from jump."""
        deadline = time.monotonic() + self.ready_timeout
        for name, host in self.hosts.items():
            proc = self._procs[name]
            if name == "hostb":
                left = max(0.5, deadline - time.monotonic())
                probe = [sys.executable, "-c", self._PROBE, str(left), host.ip]
                ready = self.run("jump", probe, timeout=left + 10).returncode == 0
            else:
                ready = False
                while not ready and proc.poll() is None and time.monotonic() < deadline:
                    ready = _banner(host.ip, host.port)
                    if not ready:
                        time.sleep(0.02)
            if not ready or proc.poll() is not None:
                log = host.sshd_log.read_text(errors="replace") if host.sshd_log.exists() else ""
                raise SSHNetError(
                    f"sshd of {name} ({host.ns}, {host.ip}) not ready "
                    f"(exit={proc.poll()}): {log[-2000:]}"
                )

    # ------------------------------------------------------------------ controls
    def run(
        self,
        name: str,
        cmd: str | Sequence[str],
        *,
        timeout: float = 60,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (argv list, or a string for ``sh -c``) inside the host's namespace."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return subprocess.run(
            ["ip", "netns", "exec", self.hosts[name].ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
        )

    def _link(self, name: str, state: str) -> None:
        host = self.hosts[name]
        prefix = ["ip", "-n", host.link_ns] if host.link_ns else ["ip"]
        _run([*prefix, "link", "set", host.link_dev, state])

    def cut(self, name: str) -> None:
        """Take the link to ``name`` down (hostb: jump<->hostb); nothing is killed."""
        self._link(name, "down")

    def restore(self, name: str) -> None:
        """Bring the link to ``name`` back up (routes come back with it)."""
        self._link(name, "up")

    def connection_pids(self, name: str) -> list[int]:
        """The per-connection sshd processes of ``name`` (descendants of its listener)."""
        listener = self.hosts[name].sshd_pid
        stats = {pid: s for pid in _all_pids() if (s := _proc_stat(pid)) is not None}
        children: dict[int, list[int]] = {}
        for pid, (_, ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        found, todo = [], list(children.get(listener, []))
        while todo:
            pid = todo.pop()
            # Only sshd itself: what a session started (a kernel, say) is left alone,
            # as it would be when the connection is lost for real.
            if stats[pid][0] == "sshd":
                found.append(pid)
                todo.extend(children.get(pid, []))
        return found

    def kill_connections(self, name: str, timeout: float = 5.0) -> int:
        """SIGKILL every per-connection sshd of ``name`` (not the listener); returns count."""
        pids = self.connection_pids(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.02)
        return len(pids)

    def leftovers(self) -> list[str]:
        """What of this instance exists on the machine (empty after a clean stop)."""
        return leftovers(self.suffix, self._third, list(self._ns_inodes.values()))

    def ssh_argv(self, name: str, *cmd: str) -> list[str]:
        """``ssh -F <ssh_config> name cmd...`` as an argv list."""
        return ["ssh", "-F", str(self.ssh_config), name, *cmd]


def _teardown(
    suffix: str, namespaces: Sequence[str], third: int | None, ns_inodes: Sequence[int] = ()
) -> list[str]:
    """Remove every trace of instance ``suffix``; returns what could not be removed."""
    problems: list[str] = []
    present = set(_netns_list())
    for ns in namespaces:
        if ns in present:
            survivors = _kill_all(lambda ns=ns: _netns_pids(ns))
            if survivors:
                problems.append(f"processes {survivors} in {ns}")
    # Root-side veth ends first (deleting a namespace would destroy them too, but
    # asynchronously); the unreachable route goes last, once no link is left.
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    for line in links.splitlines():
        dev = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if dev.startswith(f"ko-{suffix}-"):
            r = _run(["ip", "link", "del", dev], check=False)
            if r.returncode != 0 and "Cannot find device" not in r.stderr:
                problems.append(f"link {dev}: {r.stderr.strip()}")
    for ns in namespaces:
        if ns in present:
            r = _run(["ip", "netns", "del", ns], check=False)
            if r.returncode != 0:
                problems.append(f"netns {ns}: {r.stderr.strip()}")
    if third is not None:
        subnet = f"{SUBNET_PREFIX}.{third}.0/24"
        if _run(["ip", "route", "show", "type", "unreachable", subnet], check=False).stdout:
            _run(["ip", "route", "del", "unreachable", subnet], check=False)
    shutil.rmtree(Path("/run") / f"ko-sshnet-{suffix}-authorized", ignore_errors=True)
    (REGISTRY / suffix).unlink(missing_ok=True)
    # Final check: nothing with our suffix in `ip netns list` or `ip link`.
    deadline = time.monotonic() + 5
    while (left := leftovers(suffix, third, ns_inodes)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        problems.append(f"still present: {left}")
    return problems


_NS_RE = re.compile(rf"^{NS_PREFIX}([0-9a-f]{{6}})-(?:{'|'.join(HOST_NAMES)})$")


def leftovers(suffix: str, third: int | None = None, ns_inodes: Sequence[int] = ()) -> list[str]:
    """What of instance ``suffix`` still exists: namespaces, links, processes, route.

    Processes count if their command line names the instance's workdir or they live in
    one of the network namespaces ``ns_inodes`` (even once those have lost their names).
    """
    links = {f"net:[{ino}]" for ino in ns_inodes}
    left = [f"netns {n}" for n in _netns_list() if n.startswith(f"{NS_PREFIX}{suffix}-")]
    left += [
        f"link {ln.split(':')[1].strip()}"
        for ln in _run(["ip", "-o", "link"], check=False).stdout.splitlines()
        if f"ko-{suffix}-" in ln
    ]
    for pid in _all_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            netns = os.readlink(f"/proc/{pid}/ns/net") if links else ""
        except OSError:
            continue
        if (f"ko-sshnet-{suffix}-".encode() in cmdline or netns in links) and _alive(pid):
            left.append(f"process {pid}: {cmdline.decode(errors='replace')[:120]}")
    if third is not None:
        subnet = f"{SUBNET_PREFIX}.{third}.0/24"
        if _run(["ip", "route", "show", "type", "unreachable", subnet], check=False).stdout:
            left.append(f"route unreachable {subnet}")
    return left


def reap_dead_instances(
    registry: Path,
    in_use: set[str],
    teardown: Callable[[str, int | None], object],
    workdir_prefix: str,
) -> list[str]:
    """Tear down test networks whose owning process is gone (a killed test run).

    ``in_use``: suffixes seen on the machine (namespace names); ``registry`` holds one
    "pid starttime third-octet" file per live instance; ``teardown(suffix, third)``
    removes one; its temporary ``workdir_prefix<suffix>-*`` folders go too.
    """
    reaped = []
    with _locked():
        owners = {}
        if registry.is_dir():
            for entry in registry.iterdir():
                with contextlib.suppress(OSError):
                    owners[entry.name] = entry.read_text().strip()
        for suffix in sorted(in_use | set(owners)):
            token = owners.get(suffix)
            if token is not None and _owner_alive(token):
                continue
            parts = (token or "").split()
            third = int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else None
            teardown(suffix, third)
            for wd in Path(tempfile.gettempdir()).glob(f"{workdir_prefix}{suffix}-*"):
                shutil.rmtree(wd, ignore_errors=True)
            reaped.append(suffix)
    return reaped


def reap_stale() -> list[str]:
    """Tear down instances whose owning process is gone (e.g. a killed test run)."""
    return reap_dead_instances(
        REGISTRY,
        {m.group(1) for n in _netns_list() if (m := _NS_RE.match(n))},
        lambda suffix, third: _teardown(
            suffix, [f"{NS_PREFIX}{suffix}-{n}" for n in HOST_NAMES], third
        ),
        "ko-sshnet-",
    )


def sshnet_fixture() -> Iterator[SSHNet]:
    """Body of a fixture: ``sshnet = pytest.fixture(scope="session")(sshnet_fixture)``."""
    net = SSHNet()
    net.start()
    try:
        yield net
    finally:
        net.stop()
