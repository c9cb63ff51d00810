"""Test infrastructure: a real Slurm cluster in network namespaces.

Not part of the product. The Slurm provisioner's tests run against it: Debian's
``slurm-wlm`` and ``munge``, real ``sbatch``/``squeue``/``scancel``, real job steps.

Topology of one :class:`SlurmNet` (``X`` is a per-instance byte)::

    root ns 10.214.X.1 --veth-- 10.214.X.2  login   (sshd, slurmctld)
                                login: bridge 10.214.X.129/25
                                   |-- veth -- 10.214.X.130  node1  (slurmd)
                                   `-- veth -- 10.214.X.131  node2  (slurmd)

* The orchestrator (the tests, in the root namespace) reaches only the login host's
  sshd: the compute nodes sit on a bridge inside the login namespace, which does not
  forward, and the root namespace has an ``unreachable 10.214.X.0/24`` route. So a
  kernel on a node is reachable only through the login node's SSH connection, as on
  clusters whose nodes the hub cannot reach.
* Every namespace shares this machine's file system (the cluster's "shared file
  system": home directories), users and pid space. One ``munged`` in the root
  namespace, on a private socket, serves them all. The namespaces also share the
  hostname, so ``SlurmctldHost`` is that hostname with the controller's address.
* :meth:`cut` / :meth:`restore` take a node's link down / up; :meth:`kill_slurmd`,
  :meth:`start_slurmd`, :meth:`freeze_controller`, :meth:`thaw_controller` play
  node and controller failures.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import debian
from .sshnet import (
    SSHD,
    SSHNetError,
    _alive,
    _kill_all,
    _locked,
    _netns_list,
    _netns_pids,
    _owner_token,
    _run,
    ensure_packages,
    make_user_ca,
    reap_dead_instances,
    sshd_config_lines,
)

SUBNET_PREFIX = "10.214"
NODES = ("node1", "node2")
NAMES = ("login", *NODES)
REGISTRY = Path("/run/ko-slurmnet")
PACKAGES = {
    "/usr/sbin/slurmctld": "slurmctld",
    "/usr/sbin/slurmd": "slurmd",
    "/usr/bin/sbatch": "slurm-client",
    "/usr/sbin/munged": "munge",
}
READY_TIMEOUT = 60.0


def ensure_slurm_packages() -> None:
    """Debian's slurm-wlm and munge (no service is started: their daemons here are ours)."""
    ensure_packages()
    debian.ensure(PACKAGES)


class SlurmNet:
    """A login host and two compute nodes; see the module docstring.

    Attributes after :meth:`start`: ``workdir``, ``conf`` (slurm.conf), ``user_key``,
    ``known_hosts``, ``login_ip``, ``node_ips``, ``suffix``.
    """

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.workdir = Path()
        self.conf = Path()
        self.user_key = Path()
        self.user_ca = Path()
        self.known_hosts = Path()
        self.login_ip = ""
        self.controller_ip = ""
        self.node_ips: dict[str, str] = {}
        self._third: int | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._started = self._stopped = False
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SlurmNet:
        if self._started:
            return self
        self._started = True
        t0 = time.monotonic()
        ensure_slurm_packages()
        reap_stale()
        atexit.register(self.stop)
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"ko-slurmnet-{self.suffix}-"))
            # Every account submits jobs: it reads slurm.conf and reaches munge's socket.
            self.workdir.chmod(0o755)
            (self.workdir / "private").mkdir(mode=0o700)
            self._make_network()
            self._write_config()
            self._start_munge()
            self._start_login()
            for node in NODES:
                self.start_slurmd(node)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self._stopped or not self._started:
            return
        self._stopped = True
        problems = _teardown(self.suffix, self._third)
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if problems:
            raise SSHNetError("SlurmNet teardown left: " + "; ".join(problems))

    def __enter__(self) -> SlurmNet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ building
    def ns(self, name: str) -> str:
        return f"ko-{self.suffix}-{name}"

    def _make_network(self) -> None:
        with _locked():
            self._third = third = _free_third()
            REGISTRY.mkdir(parents=True, exist_ok=True)
            (REGISTRY / self.suffix).write_text(f"{_owner_token()} {third}")
            _run(["ip", "route", "add", "unreachable", f"{SUBNET_PREFIX}.{third}.0/24"])
        net, s = f"{SUBNET_PREFIX}.{third}", self.suffix
        for name in NAMES:
            _run(["ip", "netns", "add", self.ns(name)])
            _run(["ip", "-n", self.ns(name), "link", "set", "lo", "up"])
            _run(["ip", "netns", "exec", self.ns(name), "sysctl", "-qw", "net.ipv4.ip_forward=0"])
        login = self.ns("login")
        _run(
            [
                "ip",
                "link",
                "add",
                f"ko-{s}-l",
                "type",
                "veth",
                "peer",
                "name",
                f"ko-{s}-li",
                "netns",
                login,
            ]
        )
        _run(["ip", "addr", "add", f"{net}.1/30", "dev", f"ko-{s}-l"])
        _run(["ip", "link", "set", f"ko-{s}-l", "up"])
        _run(["ip", "-n", login, "addr", "add", f"{net}.2/30", "dev", f"ko-{s}-li"])
        _run(["ip", "-n", login, "link", "set", f"ko-{s}-li", "up"])
        self.login_ip = f"{net}.2"
        bridge = f"ko-{s}-br"
        _run(["ip", "-n", login, "link", "add", bridge, "type", "bridge"])
        _run(["ip", "-n", login, "addr", "add", f"{net}.129/25", "dev", bridge])
        _run(["ip", "-n", login, "link", "set", bridge, "up"])
        self.controller_ip = f"{net}.129"
        for i, node in enumerate(NODES):
            outer, inner = f"ko-{s}-n{i + 1}", f"ko-{s}-n{i + 1}i"
            _run(
                [
                    "ip",
                    "-n",
                    login,
                    "link",
                    "add",
                    outer,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    inner,
                    "netns",
                    self.ns(node),
                ]
            )
            _run(["ip", "-n", login, "link", "set", outer, "master", bridge, "up"])
            ip = f"{net}.{130 + i}"
            _run(["ip", "-n", self.ns(node), "addr", "add", f"{ip}/25", "dev", inner])
            _run(["ip", "-n", self.ns(node), "link", "set", inner, "up"])
            self.node_ips[node] = ip

    def _write_config(self) -> None:
        wd = self.workdir
        for sub in ("state", "log", "spool"):
            (wd / sub).mkdir(mode=0o755)
        host = socket.gethostname()
        nodes = "\n".join(
            f"NodeName={n} NodeAddr={ip} CPUs=16 RealMemory=16000 State=UNKNOWN"
            for n, ip in self.node_ips.items()
        )
        self.conf = wd / "slurm.conf"
        self.conf.write_text(
            f"""ClusterName=ko{self.suffix}
SlurmctldHost={host}({self.controller_ip})
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={wd / "munge.sock"}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={wd / "state"}
SlurmdSpoolDir={wd / "spool"}/%n
SlurmctldPidFile={wd / "slurmctld.pid"}
SlurmdPidFile={wd / "spool"}/slurmd-%n.pid
SlurmctldLogFile={wd / "log" / "slurmctld.log"}
SlurmdLogFile={wd / "log"}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# The nodes claim more CPUs than this machine has, so that 20 one-CPU kernels fit.
SlurmdParameters=config_overrides
SlurmdTimeout=8
SlurmctldTimeout=30
MessageTimeout=4
MinJobAge=600
KillWait=2
InactiveLimit=0
MpiDefault=none
SchedulerParameters=sched_interval=1
{nodes}
PartitionName=batch Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
PartitionName=held Nodes={",".join(NODES)} MaxTime=INFINITE State=DOWN
"""
        )
        (wd / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n")

    def _spawn(self, key: str, argv: Sequence[str], ns: str | None = None) -> None:
        log = open(self.workdir / "log" / f"{key}.out", "wb")  # noqa: SIM115
        try:
            prefix = ["ip", "netns", "exec", ns] if ns else []
            self._procs[key] = subprocess.Popen(
                [*prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=self.env(),
            )
        finally:
            log.close()

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _start_munge(self) -> None:
        private = self.workdir / "private"
        key = private / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                "-f",
                f"--socket={self.workdir / 'munge.sock'}",
                f"--key-file={key}",
                f"--pid-file={private / 'munged.pid'}",
                f"--log-file={private / 'munged.log'}",
                f"--seed-file={private / 'munged.seed'}",
                "--num-threads=4",
            ],
        )
        deadline = time.monotonic() + 10
        while not (self.workdir / "munge.sock").exists():
            if time.monotonic() > deadline or self._procs["munged"].poll() is not None:
                raise SSHNetError("munged did not start: " + self._tail(private / "munged.log"))
            time.sleep(0.05)

    def _start_login(self) -> None:
        private = self.workdir / "private"
        self.user_key = private / "id_user"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.user_key)])
        host_key = private / "ssh_host_ed25519_key"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        self.authorized_dir.mkdir(mode=0o711)
        (self.authorized_dir / "root").write_text(self.user_key.with_suffix(".pub").read_text())
        self.user_ca = make_user_ca(private)
        self.known_hosts = private / "known_hosts"
        pub = host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"{self.login_ip} {pub[0]} {pub[1]}\n")
        config = private / "sshd_config"
        lines = sshd_config_lines(
            [self.login_ip],
            host_key,
            private / "sshd.pid",
            self.authorized_dir,
            extra=[f"SetEnv SLURM_CONF={self.conf}"],
            user_ca=self.user_ca,
        )
        config.write_text("\n".join(lines) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        _run([SSHD, "-t", "-f", str(config)])
        self._spawn("sshd", [SSHD, "-D", "-e", "-f", str(config)], self.ns("login"))
        self.start_controller()

    @property
    def authorized_dir(self) -> Path:
        return Path("/run") / f"ko-slurmnet-{self.suffix}-authorized"

    def authorize_account(self, account: str) -> Path:
        """A key that logs in to the login host as ``account``."""
        import pwd

        entry = pwd.getpwnam(account)
        key = self.workdir / "private" / f"id_{account}"
        if not key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
            path = self.authorized_dir / account
            path.write_text(key.with_suffix(".pub").read_text())
            os.chown(path, entry.pw_uid, entry.pw_gid)
            path.chmod(0o600)
        return key

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        out = ""
        while time.monotonic() < deadline:
            r = self.run("login", ["sinfo", "-h", "-N", "-o", "%N %T"])
            out = r.stdout + r.stderr
            states = dict(line.split()[:2] for line in r.stdout.splitlines() if line.strip())
            if r.returncode == 0 and all(states.get(n) == "idle" for n in NODES):
                return
            for key, proc in self._procs.items():
                if proc.poll() is not None and key in ("slurmctld", "sshd", "munged"):
                    raise SSHNetError(f"{key} exited: {self.logs()}")
            time.sleep(0.2)
        raise SSHNetError(f"the cluster did not come up: {out.strip()}\n{self.logs()}")

    def _tail(self, path: Path, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{self._tail(p)}" for p in sorted((self.workdir / "log").iterdir())
        )

    # ------------------------------------------------------------------ controls
    def run(
        self, name: str, argv: Sequence[str], *, timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in one of the cluster's namespaces, with its SLURM_CONF."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns(name), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env(),
        )
        if check and proc.returncode != 0:
            raise SSHNetError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        return proc

    def scontrol(self, *args: str) -> str:
        return self.run("login", ["scontrol", *args], check=True).stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows, finished ones included."""
        out = self.run(
            "login", ["squeue", "-a", "-h", "-t", "all", "-o", "%i|%T|%j|%k|%u|%N|%r"], check=True
        ).stdout
        keys = ("id", "state", "name", "comment", "user", "nodes", "reason")
        return [
            dict(zip(keys, line.split("|"), strict=False))
            for line in out.splitlines()
            if line.strip()
        ]

    def live_jobs(self) -> list[dict[str, str]]:
        return [
            j
            for j in self.jobs()
            if j["state"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED")
        ]

    def start_controller(self) -> None:
        self._spawn(
            "slurmctld",
            ["/usr/sbin/slurmctld", "-D", "-f", str(self.conf)]
            + ([] if "slurmctld-started" in self.timings else ["-c"]),
            self.ns("login"),
        )
        self.timings["slurmctld-started"] = time.monotonic()

    def freeze_controller(self) -> None:
        """slurmctld stops answering (SIGSTOP): status commands time out."""
        os.kill(self._procs["slurmctld"].pid, signal.SIGSTOP)

    def thaw_controller(self) -> None:
        os.kill(self._procs["slurmctld"].pid, signal.SIGCONT)

    def start_slurmd(self, node: str) -> None:
        self._spawn(
            f"slurmd-{node}",
            ["/usr/sbin/slurmd", "-D", "-N", node, "-f", str(self.conf)],
            self.ns(node),
        )

    def kill_slurmd(self, node: str) -> None:
        proc = self._procs[f"slurmd-{node}"]
        proc.kill()
        proc.wait(timeout=10)

    def cut(self, node: str) -> None:
        _run(
            [
                "ip",
                "-n",
                self.ns("login"),
                "link",
                "set",
                f"ko-{self.suffix}-n{_index(node)}",
                "down",
            ]
        )

    def restore(self, node: str) -> None:
        _run(
            ["ip", "-n", self.ns("login"), "link", "set", f"ko-{self.suffix}-n{_index(node)}", "up"]
        )

    def resume(self, node: str) -> None:
        """Bring a node that failed back into service."""
        with contextlib.suppress(SSHNetError):
            self.scontrol("update", f"NodeName={node}", "State=RESUME")

    def leftovers(self) -> list[str]:
        return leftovers(self.suffix, self._third)


def _index(node: str) -> int:
    return NODES.index(node) + 1


def _free_third() -> int:
    taken = _run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
    for third in range(256):
        if f"{SUBNET_PREFIX}.{third}." not in taken:
            return third
    raise SSHNetError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")


def _namespaces(suffix: str) -> list[str]:
    return [n for n in _netns_list() if n in {f"ko-{suffix}-{name}" for name in NAMES}]


def _own_processes(suffix: str) -> list[int]:
    """Processes of this instance outside its namespaces (munged), by their command line."""
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if f"ko-slurmnet-{suffix}-".encode() in cmdline and pid != os.getpid():
                found.append(pid)
    return found


def _teardown(suffix: str, third: int | None) -> list[str]:
    problems = []
    for ns in _namespaces(suffix):
        # A stopped controller would never see its SIGTERM.
        for pid in _netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if survivors := _kill_all(lambda ns=ns: _netns_pids(ns)):
            problems.append(f"processes {survivors} in {ns}")
    if survivors := _kill_all(lambda: _own_processes(suffix)):
        problems.append(f"processes {survivors}")
    _run(["ip", "link", "del", f"ko-{suffix}-l"], check=False)
    for ns in _namespaces(suffix):
        r = _run(["ip", "netns", "del", ns], check=False)
        if r.returncode != 0:
            problems.append(f"netns {ns}: {r.stderr.strip()}")
    if third is not None:
        _run(["ip", "route", "del", "unreachable", f"{SUBNET_PREFIX}.{third}.0/24"], check=False)
    shutil.rmtree(Path("/run") / f"ko-slurmnet-{suffix}-authorized", ignore_errors=True)
    (REGISTRY / suffix).unlink(missing_ok=True)
    return problems


def leftovers(suffix: str, third: int | None = None) -> list[str]:
    left = [f"netns {n}" for n in _namespaces(suffix)]
    left += [f"process {p}" for p in _own_processes(suffix) if _alive(p)]
    if third is not None:
        subnet = f"{SUBNET_PREFIX}.{third}.0/24"
        if _run(["ip", "route", "show", "type", "unreachable", subnet], check=False).stdout:
            left.append(f"route unreachable {subnet}")
    return left


_NS_RE = re.compile(r"^ko-([0-9a-f]{6})-(?:login|node1|node2)$")


def reap_stale() -> list[str]:
    """Tear down clusters whose owning process is gone (a killed test run)."""
    in_use = {m.group(1) for n in _netns_list() if (m := _NS_RE.match(n))}
    return reap_dead_instances(REGISTRY, in_use, _teardown, "ko-slurmnet-")


def slurmnet_fixture() -> Iterator[SlurmNet]:
    """Body of a session fixture."""
    net = SlurmNet()
    net.start()
    try:
        yield net
    finally:
        net.stop()
