# mypy: ignore-errors
"""The Slurm actions of the remote agent on a login host. Standard library only.

Not imported by the orchestrator: its source is appended to the SSH launcher's
(:func:`provisioners.ssh.remote.program`), so these functions run inside the agent on
the login host, beside ``launch``/``status``/``cleanup``, and use its helpers
(``_kernel_dir``, ``_private_dirs``, ``_write_private``, ``_tail``). Every Slurm command
is an argv list (no shell), and the kernel's key reaches only a 0600 file in the
kernel's 0700 directory on the shared file system: never the batch script, ``sbatch``'s
argv or the job's environment.

Kernel directory, ``<base_dir>/<kernel_id>/``:
  connection.json  key and Curve keys (0600); the job's supervisor adds ip and ports
  request.json     the kernel's argv, environment and working directory (0600)
  supervisor.py    the program the batch script execs on the compute node
  relay.py         the Curve relay, for a kernel that cannot encrypt (see common.relay)
  resources/       the kernelspec's own files: what {resource_dir} names in its argv
  meta.json        kernel id, instance, job id, created (what ``gc`` reads)
  state.json       written by the supervisor: node, ports, pid, status, generation
  control.json     a request to the supervisor (restart, kill), then SIGUSR1
  job.out          the job's own output; kernel.log the kernel's
"""

import shlex as _shlex

SLURM_TIMEOUT = 20.0
# squeue's fields, '|'-separated: job id, state, reason, node list, time left, comment
_QUEUE_FORMAT = "%i|%T|%r|%N|%L|%k"


def _slurm(argv, timeout=SLURM_TIMEOUT, stdin=None):
    """Run a Slurm command; its stdout. Failures raise, naming the command."""
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{argv[0]} did not answer within {timeout:g}s") from None
    except OSError as e:
        raise RuntimeError(f"cannot run {argv[0]} on the login host: {e.strerror}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {' '.join(detail)}")
    return proc.stdout


_GONE = ("Invalid job id specified", "already completing or completed", "Job has already finished")


def _scancel(argv):
    """scancel; a job that has already ended is not an error (there is nothing to do)."""
    try:
        _slurm(argv)
    except RuntimeError as e:
        if any(phrase in str(e) for phrase in _GONE):
            return False
        raise
    return True


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def slurm_submit(req):
    """Write the kernel's files, then ``sbatch`` the script read from stdin."""
    base, kdir = _kernel_dir(req)
    _private_dirs(base)
    if os.path.exists(kdir):
        raise RuntimeError(f"kernel directory {kdir} exists already")
    _private_dirs(kdir)
    try:
        _write_private(os.path.join(kdir, "connection.json"), json.dumps(req["connection"]))
        _write_private(os.path.join(kdir, "request.json"), json.dumps(req["launch"]))
        _write_private(os.path.join(kdir, "supervisor.py"), req["supervisor"])
        if req.get("relay_source"):
            _write_private(os.path.join(kdir, "relay.py"), req["relay_source"])
        write_resources(kdir, req.get("resources"))
        meta = {
            "kernel_id": req["kernel_id"],
            "instance": req.get("instance", ""),
            "created": time.time(),
        }
        _write_private(os.path.join(kdir, "meta.json"), json.dumps(meta))
        script = req["script"].replace("{kernel_dir}", _shlex.quote(kdir))
        argv = ["sbatch", "--parsable", *req["args"], "--output=" + os.path.join(kdir, "job.out")]
        out = _slurm(argv, float(req.get("timeout") or SLURM_TIMEOUT), stdin=script)
    except BaseException:
        shutil.rmtree(kdir, ignore_errors=True)
        raise
    job_id = out.strip().split(";")[0]
    if not job_id.isdigit():
        raise RuntimeError(f"sbatch printed no job id: {out.strip()[:200]!r}")
    if not os.path.isdir(kdir):  # the start was cancelled while sbatch ran
        _scancel(["scancel", job_id])
        raise RuntimeError(f"the start was cancelled; job {job_id} has been cancelled")
    meta["job_id"] = job_id
    _write_private(os.path.join(kdir, "meta.json"), json.dumps(meta))
    return {"job_id": job_id, "dir": kdir}


def slurm_poll(req):
    """One ``squeue`` for every job of this account, and the named kernels' states.

    A failing squeue raises: the caller reads that as "unknown", never as "gone".
    """
    out = _slurm(
        ["squeue", "--me", "--noheader", "--states=all", "--format=" + _QUEUE_FORMAT],
        float(req.get("timeout") or SLURM_TIMEOUT),
    )
    jobs = {}
    for line in out.splitlines():
        parts = line.split("|", 5)
        if len(parts) == 6 and parts[0].strip():
            jobs[parts[0].strip()] = {
                "state": parts[1],
                "reason": parts[2],
                "nodes": parts[3],
                "time_left": parts[4],
                "comment": parts[5],
            }
    base = os.path.expanduser(req["base_dir"])
    kernels = {}
    for kernel_id in req.get("kernels") or []:
        if kernel_id and "/" not in kernel_id and not kernel_id.startswith("."):
            kernels[kernel_id] = _read_json(os.path.join(base, kernel_id, "state.json"))
    return {"jobs": jobs, "kernels": kernels}


def slurm_state(req):
    """One kernel's state file (no Slurm command: cheap enough to poll during a start)."""
    _, kdir = _kernel_dir(req)
    return {"state": _read_json(os.path.join(kdir, "state.json"))}


def slurm_signal(req):
    """A signal to the job's batch process (the supervisor), which passes it on."""
    job = str(int(req["job_id"]))
    return {"sent": _scancel(["scancel", "--batch", "--signal=" + str(req["signal"]), job])}


def slurm_control(req):
    """Ask the supervisor to restart or kill the kernel process; the job stays."""
    _, kdir = _kernel_dir(req)
    control = {"action": req["control"], "generation": int(req["generation"]), "at": time.time()}
    _write_private(os.path.join(kdir, "control.json"), json.dumps(control))
    return {"sent": _scancel(["scancel", "--batch", "--signal=USR1", str(int(req["job_id"]))])}


def slurm_cancel(req):
    """End the job (if any) and remove the kernel's directory."""
    if req.get("job_id"):
        _scancel(["scancel", str(int(req["job_id"]))])
    elif req.get("job_name"):  # a submit whose answer never came: its job has our name
        _scancel(["scancel", "--name=" + str(req["job_name"])])
    if req.get("remove", True):
        _, kdir = _kernel_dir(req)
        shutil.rmtree(kdir, ignore_errors=True)
    return {"cancelled": True}


def slurm_tail(req):
    """The last lines of the job's and the kernel's output."""
    _, kdir = _kernel_dir(req)
    lines = int(req.get("lines", 20))
    return {
        "job": _tail(os.path.join(kdir, "job.out"), lines),
        "kernel": _tail(os.path.join(kdir, "kernel.log"), lines),
    }


def slurm_list(req):
    """This account's jobs (with comments) and kernel directories, for ``gc``."""
    reply = slurm_poll({"base_dir": req["base_dir"], "timeout": req.get("timeout")})
    return {"jobs": reply["jobs"], "kernels": list_kernels(req)["kernels"]}


ACTIONS.update(
    slurm_submit=slurm_submit,
    slurm_poll=slurm_poll,
    slurm_state=slurm_state,
    slurm_signal=slurm_signal,
    slurm_control=slurm_control,
    slurm_cancel=slurm_cancel,
    slurm_tail=slurm_tail,
    slurm_list=slurm_list,
)
# Slurm commands may take seconds (a busy controller): each runs on its own thread.
SLOW = SLOW + tuple(n for n in ACTIONS if n.startswith("slurm_") and n != "slurm_state")
