"""Local kernels that another orchestrator process can re-attach to.

jupyter_client's ``LocalProvisioner`` only knows the ``Popen`` object of the process
that launched the kernel, so after the orchestrator restarts it reports the kernel
dead, and its kernels die with their parent anyway (ipykernel watches
``JPY_PARENT_PID``). Under a kernel-orchestrator manager this subclass:

* launches the kernel independent of the orchestrator process (its own session, no
  parent watch), with stdout/stderr in a private log file instead of our terminal;
* saves ``pid``, process group and process start time, and after a re-attach polls,
  signals and waits on the kernel by pid, guarded against pid reuse;
* marks the process environment with the kernel id and deployment id so
  ``kernel-orchestrator gc`` can find kernels no record owns.

Under a stock manager it behaves exactly like the stock provisioner.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client.provisioning.local_provisioner import LocalProvisioner as StockLocalProvisioner
from traitlets import Unicode

from orchestrator import procinfo
from orchestrator.encryption import keypair, resolve_policy, should_encrypt
from orchestrator.errors import KernelStartError, ReattachError
from orchestrator.labels import ENV_INSTANCE, ENV_KERNEL_ID
from orchestrator.paths import kernel_log_dir, open_private
from orchestrator.provisioning.contract import (
    GarbageContext,
    LivenessWatch,
    OrchestratorProvisionerMixin,
)
from orchestrator.users import user_slug

from .common.kernelside import open_working_dir
from .common.workdir import WorkingDirMapping


class LocalProvisioner(  # type: ignore[misc, metaclass]
    WorkingDirMapping, OrchestratorProvisionerMixin, StockLocalProvisioner
):
    """The stock local provisioner, made re-attachable across orchestrator processes."""

    kernelspec_summary = "kernels as local processes (re-attachable across restarts)"

    account = Unicode(
        "",
        config=True,
        help="Run the kernel as this OS account ('{username}' becomes the owner's name),"
        " in a private directory that holds its connection file; needs root.",
    )

    start_ticks: int | None = None
    log_path: str | None = None
    attached: bool = False  # True when we track the kernel by pid, not by Popen
    private_dir: str | None = None

    # ------------------------------------------------------------- lifecycle
    @property
    def has_process(self) -> bool:
        return self.process is not None or (self.attached and self.pid is not None)

    def _resolve_account(self, env: dict[str, str]) -> pwd.struct_passwd:
        owner = env.get("KERNEL_USERNAME", "")
        if "{username}" in self.account and not owner:
            raise KernelStartError(f"account {self.account!r} needs the kernel's user name")
        name = self.account.replace("{username}", user_slug(owner))
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            raise KernelStartError(
                f"there is no OS account {name!r} to run the kernel of {owner or 'this user'!r} as"
            ) from None
        if os.geteuid() != 0:
            raise KernelStartError(
                f"running kernels as the account {name!r} needs the orchestrator to run as root"
            )
        if account.pw_uid in (0, os.geteuid()):
            raise KernelStartError(f"account {name!r} is the orchestrator's own: refused")
        return account

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        account = self._resolve_account(kwargs.get("env") or {}) if self.account else None
        if account is not None and self.parent is not None:
            # The connection file goes into a directory the account can enter but not
            # change: it cannot swap the file for a link that a restart would follow.
            self.private_dir = private_kernel_dir(self.private_dir, str(self.kernel_id), account)
            self.parent.connection_file = os.path.join(self.private_dir, "kernel.json")
        shared = bool(getattr(self.parent, "shared_loopback", False))  # a stock manager has none
        if self.parent is not None and (account is not None or shared):
            self._encrypt_loopback()
        kwargs = await super().pre_launch(**kwargs)
        if account is not None and self.private_dir:
            give_file(os.path.join(self.private_dir, "kernel.json"), account)
            home = os.path.join(self.private_dir, "home")
            kwargs["env"].update(HOME=home, USER=account.pw_name)
            kwargs["env"]["LOGNAME"] = account.pw_name
            kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[], cwd=home)
        if self.working_dir_map and (mapped := self.choose_working_dir(kwargs["env"])):
            # Entered by descriptor as for remote kernels; a host kernel's account must
            # own (or root) every step, since root opens it here.
            try:
                self._cwd_fd = open_working_dir(
                    mapped.path, mapped.root, account.pw_uid if account else None
                )
            except RuntimeError as e:
                raise KernelStartError(str(e)) from None
            kwargs["cwd"] = f"/proc/self/fd/{self._cwd_fd}"
        if self.managed_by_orchestrator:
            env = kwargs["env"]
            env[ENV_KERNEL_ID] = str(self.kernel_id)
            env[ENV_INSTANCE] = self.orchestrator_instance
            env.pop("JPY_PARENT_PID", None)
            kwargs["independent"] = True
        return kwargs

    def _encrypt_loopback(self) -> None:
        """Give the kernel CurveZMQ keys: other users' processes share this loopback,
        and IOPub can be read without the HMAC key. (Kept over restarts.)"""
        km = self.parent
        policy = resolve_policy("", km)
        if not should_encrypt(policy, leaves_machine=True) or km.curve_publickey:
            return
        public, secret = keypair(km)
        km.curve_publickey, km.curve_secretkey = public.encode(), secret.encode()

    _cwd_fd: int | None = None  # the mapped working directory, open until the launch

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        try:
            return await self._launch(cmd, **kwargs)
        finally:
            if self._cwd_fd is not None:
                os.close(self._cwd_fd)
                self._cwd_fd = None

    async def _launch(self, cmd: list[str], **kwargs: Any) -> Any:
        if not self.managed_by_orchestrator:
            return await super().launch_kernel(cmd, **kwargs)
        log_path = kernel_log_dir() / f"kernel-{self.kernel_id}.log"
        fd = open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            kwargs.setdefault("stdout", fd)
            kwargs.setdefault("stderr", fd)
            kwargs.setdefault("stdin", subprocess.DEVNULL)
            info = await super().launch_kernel(cmd, **kwargs)
        finally:
            os.close(fd)
        self.log_path = str(log_path)
        self.attached = False
        self.start_ticks = procinfo.start_ticks(self.pid) if self.pid else None
        return info

    async def poll(self) -> int | None:
        if self.process is not None:
            return await super().poll()
        if self.attached and self.pid is not None:
            return None if procinfo.is_running(self.pid, self.start_ticks) else 1
        return 0

    def _current_pid(self) -> int | None:
        if self.process is not None:
            return int(self.process.pid)
        return self.pid if self.attached else None

    def watch_liveness(self, notify: Callable[[], None]) -> LivenessWatch | None:
        """Told by a process descriptor, which becomes readable when the kernel exits: one
        descriptor per kernel, and no wake-up while it runs."""
        pid = self._current_pid()
        if pid is None or not hasattr(os, "pidfd_open"):
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already (the poll says so), or no pidfds on this kernel
            return None
        if self.process is None and not procinfo.is_running(pid, self.start_ticks):
            os.close(fd)  # the pid is another process's now
            return None
        loop = asyncio.get_running_loop()
        state = {"open": True, "ended": False}

        def ended() -> None:
            loop.remove_reader(fd)  # (it stays readable)
            state["ended"] = True
            notify()

        def cancel() -> None:
            if state["open"]:
                state["open"] = False
                if not state["ended"]:
                    loop.remove_reader(fd)
                os.close(fd)

        loop.add_reader(fd, ended)
        return LivenessWatch(
            pushed=lambda: state["open"] and not state["ended"] and self._current_pid() == pid,
            cancel=cancel,
        )

    async def wait(self) -> int | None:
        if self.process is not None:
            return await StockLocalProvisioner.wait(self)
        while await self.poll() is None:
            await asyncio.sleep(0.05)
        self.attached = False
        return 1

    async def send_signal(self, signum: int) -> None:
        if self.process is not None:
            return await super().send_signal(signum)
        if not (self.attached and procinfo.is_running(self.pid, self.start_ticks)):
            return None
        if self.pgid:
            try:
                os.killpg(self.pgid, signum)
                return None
            except OSError:
                pass
        assert self.pid is not None
        os.kill(self.pid, signum)
        return None

    async def kill(self, restart: bool = False) -> None:
        if self.process is not None:
            return await super().kill(restart=restart)
        with contextlib.suppress(ProcessLookupError):
            await self.send_signal(signal.SIGKILL)
        return None

    async def terminate(self, restart: bool = False) -> None:
        if self.process is not None:
            return await super().terminate(restart=restart)
        with contextlib.suppress(ProcessLookupError):
            await self.send_signal(signal.SIGTERM)
        return None

    async def cleanup(self, restart: bool = False) -> None:
        if self.ports_cached and not self.connection_info and self.parent is not None:
            # A start that failed before the connection info was recorded: the
            # cached ports live only on the manager.
            self.connection_info = self.parent.get_connection_info()
        await super().cleanup(restart=restart)
        if not restart and self.log_path:
            with contextlib.suppress(OSError):
                Path(self.log_path).unlink()
            self.log_path = None
        if not restart and self.private_dir:
            shutil.rmtree(self.private_dir, ignore_errors=True)
            self.private_dir = None

    async def startup_diagnostics(self, lines: int = 20) -> str:
        if not self.log_path:
            return ""
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ----------------------------------------------------------- persistence
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(
            {
                "start_ticks": self.start_ticks,
                "log_path": self.log_path,
                "cwd": str(self.cwd) if self.cwd else None,
                "ports_cached": bool(self.ports_cached),
                "private_dir": self.private_dir,
                # Where the pid means this kernel: a process elsewhere cannot judge it.
                "machine": procinfo.machine_id(),
                # Whether that machine (a container) ends with its owner: then a lapsed
                # owner means a gone kernel, which another machine may clean up.
                "ends_with_owner": procinfo.namespace_ends_with_me(),
            }
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        machine = provisioner_info.get("machine")
        if machine and procinfo.machine_id() and machine != procinfo.machine_id():
            if provisioner_info.get("ends_with_owner") and getattr(self.parent, "is_owner", False):
                # We took the kernel over, so its owner's lease lapsed, and its
                # container ended with that owner: the kernel is gone. Its pid means
                # nothing here, so nothing is signalled; the record is cleaned up.
                await super().load_provisioner_info({**provisioner_info, "pid": None, "pgid": None})
                self.process = None
                self.attached = False
                return
            # Its pid means nothing here: polling it would call a running kernel gone
            # (and clean up its record). Only a process on its machine can drive it.
            raise ReattachError(
                f"kernel {self.kernel_id} is a local process of another machine (or pid"
                " namespace); only an orchestrator process there can reach it"
            )
        await super().load_provisioner_info(provisioner_info)
        self.start_ticks = provisioner_info.get("start_ticks")
        self.log_path = provisioner_info.get("log_path")
        self.cwd = provisioner_info.get("cwd")
        self.private_dir = provisioner_info.get("private_dir")
        # Keep the kernel's ports on a restart after re-attach, as a restart in the
        # original process would.
        self.ports_cached = bool(provisioner_info.get("ports_cached"))
        self.process = None
        self.attached = self.pid is not None

    # --------------------------------------------------------- garbage in gc
    @classmethod
    async def collect_garbage(cls, ctx: GarbageContext) -> list[str]:
        """Kill local kernel processes of this deployment that no record owns."""
        found: list[str] = []
        me = os.getpid()
        # A local kernel shares our network namespace; a process in another one (a
        # container, a remote host's namespace) is some other provisioner's to judge.
        here = procinfo.network_namespace("self")
        for pid in procinfo.all_pids():
            if pid == me or procinfo.network_namespace(pid) != here:
                continue
            env = procinfo.environ(pid)
            if env.get(ENV_INSTANCE) != ctx.instance:
                continue
            kernel_id = env.get(ENV_KERNEL_ID, "")
            if not kernel_id or kernel_id in ctx.owned_kernel_ids:
                continue
            age = procinfo.age_seconds(pid)
            if age is not None and age < ctx.grace_seconds:
                continue  # possibly being started right now by another process
            found.append(f"local kernel process {pid} (kernel {kernel_id})")
            if not ctx.dry_run:
                await _stop_process_group(pid)
                with contextlib.suppress(OSError):
                    (kernel_log_dir() / f"kernel-{kernel_id}.log").unlink()
        return found


def _is_gateway_owned_dir(path: str) -> bool:
    """Whether ``path`` is a real directory of this (root) process that nobody else may
    change: not a link, owned by us, writable by no group or other."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def private_kernel_dir(current: str | None, kernel_id: str, account: pwd.struct_passwd) -> str:
    """The kernel's private directory: ``current`` if it is still ours, else a new one.

    Layout: the directory is root's, mode 0710, group the account's (it may enter, not
    list or change it); it holds the connection file (the account's, 0600) and
    ``home/``, the account's own 0700 directory (its HOME and working directory).
    Everything is made by descriptor, so no name the account controls is followed.
    """
    if current and _is_gateway_owned_dir(current):
        return current
    path = tempfile.mkdtemp(prefix=f"kernel-{kernel_id}-")  # 0700, ours, a fresh name
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.mkdir("home", 0o700, dir_fd=fd)
        os.chown("home", account.pw_uid, account.pw_gid, dir_fd=fd, follow_symlinks=False)
        os.fchown(fd, os.geteuid(), account.pw_gid)
        os.fchmod(fd, 0o710)
    finally:
        os.close(fd)
    return path


def give_file(path: str, account: pwd.struct_passwd) -> None:
    """Make the regular file at ``path`` the account's, mode 0600, by descriptor: a
    link (symbolic or hard) there is refused, never followed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise KernelStartError(f"connection file {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise KernelStartError(f"connection file {path} is not a plain file: refused")
        os.fchown(fd, account.pw_uid, account.pw_gid)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


async def _stop_process_group(pid: int, grace: float = 3.0) -> None:
    """TERM the process group of ``pid``, then KILL it if still there after ``grace``."""
    start = procinfo.start_ticks(pid)
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        for _ in range(int(wait / 0.05)):
            if not procinfo.is_running(pid, start):
                return
            await asyncio.sleep(0.05)
