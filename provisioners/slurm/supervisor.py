"""The kernel's supervisor inside a Slurm job, on the compute node. Standard library only.

The batch script execs ``python supervisor.py KERNEL_DIR``, so this process *is* the
job's batch process: what ``scancel --batch --signal=...`` sends reaches it, and the
job lasts as long as it does. It never opens a connection to the orchestrator; it
talks through files in the kernel's 0700 directory on the shared file system (see
:mod:`provisioners.slurm.login`).

* It binds the kernel to the node's own address (Slurm's ``NodeAddr``, which the login
  host reaches), on ports found free on the node and confirmed bound by the kernel's
  own processes (see :mod:`provisioners.common.kernelside`): kernels of any language,
  and none collides with another on a shared node. The key comes from
  ``connection.json`` (0600), never from argv or environment.
* SIGINT (and SIGUSR2, Toree's interrupt) goes to the kernel's process group: an
  interrupt, never a kill.
* SIGUSR1 reads ``control.json``: ``restart`` starts a new kernel process in the same
  job (users do not queue again), ``kill`` ends the kernel process only.
* SIGTERM (scancel, the walltime, preemption) ends the kernel, then the job.
* A kernel that exits is reported in ``state.json``; if no restart is asked for within
  ``restart_grace`` seconds the job ends, so an idle allocation is not left behind.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

# written after the kernel-side helpers' source (on the node); a module in tests
with contextlib.suppress(ImportError):
    from provisioners.common.kernelside import (
        KERNEL_CHANNELS,
        PORT_ATTEMPTS,
        hold_free_ports,
        kernel_cwd,
        kernel_environment,
        remove_relay_dir,
        wait_until_bound,
    )

CHANNELS = KERNEL_CHANNELS


class Supervisor:
    def __init__(self, kdir):
        self.kdir = kdir
        self.conn_path = os.path.join(kdir, "connection.json")
        with open(os.path.join(kdir, "request.json")) as f:
            self.request = json.load(f)
        self.node = self.request.get("bind") or node_address()
        self.proc = None
        self.generation = 0
        self.control_pending = False
        self.stopping = False
        self.state = {}

    # ------------------------------------------------------------------ files
    def write_state(self, **fields):
        self.state.update(
            fields,
            generation=self.generation,
            supervisor=os.getpid(),
            node=self.node,
            job_id=os.environ.get("SLURM_JOB_ID", ""),
            updated=time.time(),
        )
        tmp = os.path.join(self.kdir, "state.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.state, f)
        os.replace(tmp, os.path.join(self.kdir, "state.json"))

    def read_connection(self):
        with open(self.conn_path) as f:
            return json.load(f)

    # ------------------------------------------------------------------ kernel
    def start_kernel(self):
        """Start the kernel on ports found free on this node (it binds what its
        connection file says); another process taking one first: again with others."""
        for _attempt in range(PORT_ATTEMPTS):
            outcome = self._start_on_free_ports()
            if outcome != "taken":
                return
        self.write_state(
            status="exited",
            exit=self.proc.returncode if self.proc else 127,
            error=f"the kernel could not bind its ports: in use by others, {PORT_ATTEMPTS} times",
        )

    def _start_on_free_ports(self):
        held = hold_free_ports(self.node, len(CHANNELS), self.request.get("port_range"))
        ports = {ch: s.getsockname()[1] for ch, s in zip(CHANNELS, held)}
        info = self.read_connection()
        info.update({f"{ch}_port": ports[ch] for ch in CHANNELS}, ip=self.node, transport="tcp")
        fd = os.open(self.conn_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        relay = self.request.get("relay") or {}
        remove_relay_dir(self.kdir)  # a relay's from before a restart
        resources = os.path.join(self.kdir, "resources")
        argv = [a.replace("{resource_dir}", resources) for a in self.request["argv"]]
        if relay:
            # The kernel ignores Curve keys: the relay holds the public ports (with
            # the keys) and starts the kernel on private ipc sockets.
            relay_path = os.path.join(self.kdir, "relay.py")
            signal_option = relay.get("interrupt_signal")
            options = ["--interrupt-signal", signal_option] if signal_option else []
            argv = [relay["python"], relay_path, *options, self.conn_path, "--", *argv]
        else:
            argv = [a.replace("{connection_file}", self.conn_path) for a in argv]
        env = kernel_environment(
            os.environ, self.request.get("env") or {}, self.request.get("expand") or ()
        )
        env["KERNEL_ORCHESTRATOR_KERNEL_ID"] = self.request.get("kernel_id", "")
        env["KERNEL_ORCHESTRATOR_INSTANCE"] = self.request.get("instance", "")
        try:
            cwd, cwd_fd = kernel_cwd(self.request)
        except RuntimeError as e:
            for s in held:
                s.close()
            self.write_state(status="exited", exit=127, error=str(e))
            return "exited"
        log_path = os.path.join(self.kdir, "kernel.log")
        try:
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except BaseException:
            if cwd_fd is not None:
                os.close(cwd_fd)
            raise
        log_offset = os.fstat(log).st_size
        self.write_state(status="starting", ports=None, pid=None, exit=None)
        for s in held:
            s.close()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            self.proc = None
            self.write_state(status="exited", exit=127, error=f"cannot start {argv[0]}: {e}")
            return "exited"
        finally:
            os.close(log)
            if cwd_fd is not None:
                os.close(cwd_fd)
        deadline = time.monotonic() + float(self.request.get("timeout", 60))
        outcome = wait_until_bound(self.proc, ports.values(), deadline, log_path, log_offset)
        if outcome == "bound":
            self.write_state(status="running", ports=ports, pid=self.proc.pid)
        elif outcome == "timeout":
            self.signal_kernel(signal.SIGKILL)
            self.proc.wait()
            self.write_state(status="exited", exit=-9, error="the kernel bound no ports in time")
        elif outcome == "exited":
            self.write_state(status="exited", exit=self.proc.returncode)
        return outcome

    def signal_kernel(self, signum):
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def stop_kernel(self, grace=3.0):
        if self.proc is None:
            return
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            self.signal_kernel(signum)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.proc.poll() is None:
                time.sleep(0.05)
        self.proc.poll()

    # ------------------------------------------------------------------ signals
    def on_interrupt(self, signum, frame):
        self.signal_kernel(signum)  # SIGINT, or SIGUSR2 for kernels interrupted by it

    def on_control(self, signum, frame):
        self.control_pending = True

    def on_terminate(self, signum, frame):
        self.stopping = True

    def handle_control(self):
        self.control_pending = False
        try:
            with open(os.path.join(self.kdir, "control.json")) as f:
                control = json.load(f)
        except (OSError, ValueError):
            return
        if control.get("action") == "kill":
            self.stop_kernel(grace=0.5)
        elif control.get("action") == "restart" and int(control["generation"]) > self.generation:
            self.stop_kernel()
            self.generation = int(control["generation"])
            self.start_kernel()

    # ------------------------------------------------------------------ main
    def run(self):
        signal.signal(signal.SIGINT, self.on_interrupt)
        signal.signal(signal.SIGUSR2, self.on_interrupt)
        signal.signal(signal.SIGUSR1, self.on_control)
        signal.signal(signal.SIGTERM, self.on_terminate)
        self.start_kernel()
        grace = float(self.request.get("restart_grace", 60))
        exited_at = None
        while not self.stopping:
            if self.control_pending:
                self.handle_control()
            if self.proc is not None and self.proc.poll() is None:
                exited_at = None
            elif exited_at is None:
                exited_at = time.monotonic()
                code = self.proc.returncode if self.proc is not None else 127
                if self.state.get("status") != "exited" or self.state.get("exit") != code:
                    self.write_state(status="exited", exit=code)
            elif time.monotonic() - exited_at > grace:
                remove_relay_dir(self.kdir)
                return int(self.state.get("exit") or 0) & 0xFF
            time.sleep(0.1)
        self.stop_kernel()
        remove_relay_dir(self.kdir)
        self.write_state(
            status="exited",
            exit=self.proc.returncode if self.proc else None,
            error="the job was ended",
        )
        return 0


def node_address():
    """This node's address as Slurm knows it (``NodeAddr``): the one the login host uses."""
    name = os.environ.get("SLURMD_NODENAME", "")
    if name:
        try:
            out = subprocess.run(
                ["scontrol", "show", "node", "-o", name],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            ).stdout
            for field in out.split():
                if field.startswith("NodeAddr="):
                    return field.split("=", 1)[1]
        except (OSError, subprocess.TimeoutExpired):
            pass
    import socket

    return socket.gethostbyname(socket.gethostname())


if __name__ == "__main__":
    sys.exit(Supervisor(sys.argv[1]).run())
