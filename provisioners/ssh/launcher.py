"""The remote half of the SSH provisioner. Standard library only.

It is not installed on remote hosts: the provisioner sends this file's source over
the SSH channel's stdin and runs it with a constant command line, then sends one
JSON request line. Nothing user-supplied ever reaches a shell, and the kernel's
key travels only on stdin and into a 0600 file in a 0700 directory.

Actions:
  launch   find free ports, write the connection file, start the kernel detached in
           its own session, wait until its processes listen on those ports (another
           process took one: again with others), report {pid, pgid, start, ports, paths}
  status   is the kernel process still the one we started?
  statuses the same for many kernels at once: {"kernels": {id: [pid, start]}}
  signal   send a signal to the kernel's process group
  cleanup  TERM, then KILL the group if still alive; remove the kernel's directory
  list     every kernel directory under the base dir, with its owner labels
  tail     the last lines of a kernel's output
  agent    stay: read one request per line, each with an "id", and answer each with
           {"id": ..., "reply": ...} or {"id": ..., "error": ...}, until stdin closes.
           One agent per host serves every kernel there over the one SSH connection,
           so polling idle kernels starts no remote process at all.

Replies are one JSON object on stdout; errors are {"error": "..."} with exit 1.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

# shipped after the kernel-side helpers' source (remotely); a module in tests
with contextlib.suppress(ImportError):
    from provisioners.common.kernelside import (
        KERNEL_CHANNELS,
        PORT_ATTEMPTS,
        hold_free_ports,
        kernel_cwd,
        kernel_environment,
        remove_relay_dir,
        wait_until_bound,
        write_resources,
    )

CHANNELS = KERNEL_CHANNELS


def _start_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
        return int(raw[raw.rfind(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _running(pid, start):
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
        fields = raw[raw.rfind(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            return False
        return start is None or int(fields[19]) == start
    except OSError:
        if os.path.isdir("/proc"):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kernel_dir(req):
    base = os.path.expanduser(req["base_dir"])
    kernel_id = req["kernel_id"]
    if not kernel_id or "/" in kernel_id or kernel_id.startswith("."):
        raise ValueError(f"bad kernel id {kernel_id!r}")
    return base, os.path.join(base, kernel_id)


def _private_dirs(path):
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def _tail(path, lines=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def launch(req):
    base, kdir = _kernel_dir(req)
    _private_dirs(base)
    _private_dirs(kdir)
    conn_path = os.path.join(kdir, "connection.json")
    log_path = os.path.join(kdir, "kernel.log")
    meta = {
        "kernel_id": req["kernel_id"],
        "instance": req.get("instance", ""),
        "created": time.time(),
    }
    _write_private(os.path.join(kdir, "meta.json"), json.dumps(meta))
    deadline = time.monotonic() + float(req.get("timeout", 60))
    remove_relay_dir(kdir)  # a relay's from before a restart
    for _attempt in range(PORT_ATTEMPTS):
        proc, ports, outcome = _start_on_free_ports(req, conn_path, log_path, deadline)
        meta.update(pid=proc.pid, pgid=proc.pid, start=_start_ticks(proc.pid))
        _write_private(os.path.join(kdir, "meta.json"), json.dumps(meta))
        if outcome != "taken":
            break
    if outcome == "bound":
        return {
            "pid": proc.pid,
            "pgid": proc.pid,
            "start": meta["start"],
            "ports": ports,
            "dir": kdir,
            "connection_file": conn_path,
            "log": log_path,
            "relay": bool(req.get("relay")),
        }
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    if outcome == "timeout":
        why = "kernel did not bind its ports in time"
    elif outcome == "taken":
        why = f"kernel could not bind its ports: in use by others, {PORT_ATTEMPTS} times"
    else:
        why = f"kernel exited during start-up with status {proc.returncode}"
    raise RuntimeError(f"{why}\n--- last lines of its output ---\n{_tail(log_path)}")


def _start_on_free_ports(req, conn_path, log_path, deadline):
    """Start the kernel on ports found free here (any kernel binds what its connection
    file says; only ipykernel would report ports it picked itself)."""
    ip = "127.0.0.1"
    held = hold_free_ports(ip, len(CHANNELS), req.get("port_range"))
    ports = {ch: s.getsockname()[1] for ch, s in zip(CHANNELS, held)}
    info = {f"{ch}_port": ports[ch] for ch in CHANNELS}
    info.update(
        ip=ip,
        transport="tcp",
        key=req["key"],
        signature_scheme=req["signature_scheme"],
        kernel_name=req.get("kernel_name", ""),
    )
    if req.get("curve_secretkey"):
        info.update(curve_publickey=req["curve_publickey"], curve_secretkey=req["curve_secretkey"])
    _write_private(conn_path, json.dumps(info))
    resources = write_resources(os.path.dirname(conn_path), req.get("resources"))
    argv = [a.replace("{resource_dir}", resources) for a in req["argv"]]
    if req.get("relay"):
        # The kernel ignores Curve keys: the relay holds the public ports (with the
        # keys) and starts the kernel on private ipc sockets, filling its placeholders.
        relay_path = os.path.join(os.path.dirname(conn_path), "relay.py")
        _write_private(relay_path, req["relay"]["source"])
        signal_option = req["relay"].get("interrupt_signal")
        options = ["--interrupt-signal", signal_option] if signal_option else []
        argv = [req["relay"]["python"], relay_path, *options, conn_path, "--", *argv]
    else:
        argv = [a.replace("{connection_file}", conn_path) for a in argv]
    env = kernel_environment(os.environ, req.get("env") or {}, req.get("expand") or ())
    env["KERNEL_ORCHESTRATOR_KERNEL_ID"] = req["kernel_id"]
    env["KERNEL_ORCHESTRATOR_INSTANCE"] = req.get("instance", "")
    cwd_fd = None
    try:
        cwd, cwd_fd = kernel_cwd(req)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except BaseException:
        if cwd_fd is not None:
            os.close(cwd_fd)
        for s in held:
            s.close()
        raise
    for s in held:
        s.close()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        raise RuntimeError(f"cannot start {argv[0]!r}: {e.strerror}") from None
    finally:
        os.close(log)
        if cwd_fd is not None:
            os.close(cwd_fd)
    return proc, ports, wait_until_bound(proc, ports.values(), deadline, log_path)


def status(req):
    return {"running": _running(req.get("pid"), req.get("start"))}


def statuses(req):
    kernels = req.get("kernels") or {}
    return {"running": {k: _running(v[0], v[1]) for k, v in kernels.items()}}


def send_signal(req):
    if not _running(req.get("pid"), req.get("start")):
        return {"sent": False}
    try:
        os.killpg(int(req["pgid"]), int(req["signum"]))
    except ProcessLookupError:
        return {"sent": False}
    return {"sent": True}


def cleanup(req):
    _, kdir = _kernel_dir(req)
    pid, start = req.get("pid"), req.get("start")
    if pid is None:
        try:
            with open(os.path.join(kdir, "meta.json")) as f:
                meta = json.load(f)
            pid, start = meta.get("pid"), meta.get("start")
        except (OSError, ValueError):
            pass
    killed = False
    for sig, wait in ((signal.SIGTERM, float(req.get("grace", 3))), (signal.SIGKILL, 3.0)):
        if not _running(pid, start):
            break
        try:
            os.killpg(int(pid), sig)
            killed = True
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _running(pid, start):
            time.sleep(0.05)
    remove_relay_dir(kdir)
    shutil.rmtree(kdir, ignore_errors=True)
    return {"killed": killed, "removed": not os.path.exists(kdir)}


def tail(req):
    """The last lines of the kernel's output (a failed start names why)."""
    _, kdir = _kernel_dir(req)
    return {"text": _tail(os.path.join(kdir, "kernel.log"), int(req.get("lines", 20)))}


def list_kernels(req):
    base = os.path.expanduser(req["base_dir"])
    found = []
    try:
        names = os.listdir(base)
    except OSError:
        return {"kernels": []}
    for name in names:
        try:
            with open(os.path.join(base, name, "meta.json")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        meta["running"] = _running(meta.get("pid"), meta.get("start"))
        meta["age"] = time.time() - float(meta.get("created", 0))
        found.append(meta)
    return {"kernels": found}


# Actions that may take seconds run on a thread of their own inside the agent, so a
# kernel's start-up never delays another kernel's status.
SLOW = ("launch", "cleanup")


def agent(_req):
    import threading

    lock = threading.Lock()

    def answer(msg):
        data = json.dumps(msg) + "\n"
        with lock:
            try:
                sys.stdout.write(data)
                sys.stdout.flush()
            except (BrokenPipeError, OSError):
                os._exit(0)  # the SSH channel is gone: nobody to answer any more

    def handle(msg):
        try:
            answer({"id": msg.get("id"), "reply": ACTIONS[msg["action"]](msg)})
        except Exception as e:
            answer({"id": msg.get("id"), "error": str(e) or type(e).__name__})

    answer({"id": 0, "reply": {"agent": os.getpid()}})
    running: list = []
    for line in iter(sys.stdin.readline, ""):
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("action") in SLOW:
            thread = threading.Thread(target=handle, args=(msg,), daemon=True)
            thread.start()
            running = [t for t in running if t.is_alive()] + [thread]
        elif msg.get("action") != "agent":
            handle(msg)
    # The channel is gone, perhaps mid-launch: let started actions finish (a launch
    # that times out kills its kernel; a submit whose start was cancelled cancels its
    # job) rather than leave what they made behind. Each is bounded by its own timeout.
    deadline = time.monotonic() + 120
    for thread in running:
        thread.join(max(0.0, deadline - time.monotonic()))
    return None


ACTIONS = {
    "launch": launch,
    "status": status,
    "statuses": statuses,
    "signal": send_signal,
    "cleanup": cleanup,
    "list": list_kernels,
    "tail": tail,
    "agent": agent,
}


def main():
    req = json.loads(sys.stdin.readline())
    if req.get("action") == "agent":
        agent(req)
        return
    try:
        reply = ACTIONS[req["action"]](req)
    except Exception as e:
        sys.stdout.write(json.dumps({"error": str(e)}) + "\n")
        sys.exit(1)
    sys.stdout.write(json.dumps(reply) + "\n")


if __name__ == "__main__":  # sent over SSH, the program ends with its own main() call
    main()
