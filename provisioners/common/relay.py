"""A CurveZMQ relay beside a kernel that cannot encrypt. Python and pyzmq only.

Usage (where the kernel runs: in its container or pod, SSH session or Slurm job)::

    python relay.py CONNECTION_FILE -- KERNEL ARGV ... {connection_file} ...

Only ipykernel >= 7.3 reads ``curve_secretkey``; IRkernel, xeus and IJulia ignore it
and would talk plain text on the network. So the relay is the Curve server on the
five public endpoints of ``CONNECTION_FILE`` (with its keys), and the kernel gets a
second, private connection file without keys, on ``ipc://`` sockets in a 0700
directory of its own account: loopback is shared with every user of a host or node,
and with a pod's sidecars, a directory only this account can enter is not.

How each channel is carried, and why:

* shell, control, stdin: ROUTER in front, DEALER behind. The back shell and stdin
  sockets share one routing identity, because a kernel sends ``input_request`` on
  stdin to the identity its shell request came from; with two identities the prompt
  would be dropped and ``input()`` would hang.
* iopub: XPUB in front with ``XPUB_VERBOSE`` (every client's subscription reaches
  the kernel), XSUB behind.
* heartbeat: forwarded, never answered here: a relay that answered would make a dead
  kernel look alive.

The kernel runs as the relay's child in the relay's process group: an interrupt sent
to the group (SIGINT, or Toree's SIGUSR2) reaches the kernel and is ignored here;
SIGTERM is passed on; the relay exits when the kernel does, with its status, and
removes the private directory. Its keys come from the connection file (0600), never
from argv or the environment.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
#: The file beside the connection file that names a private directory made elsewhere.
RELAY_DIR_NOTE = "relay-ipc"


def _fail(message):
    sys.stderr.write(f"kernel-orchestrator relay: {message}\n")
    sys.stderr.flush()
    os._exit(70)


def private_dir(near):
    """A fresh 0700 directory for the kernel's sockets, under the node's temp dir:
    short enough for a socket path, local to the node (not a shared file system), and
    plain (xeus-python 0.19 fails to bind ipc paths with some dashes in them)."""
    path = tempfile.mkdtemp(prefix="korelay")  # 0700, letters, digits and "_" only
    # Where it is, for the launcher's clean-up after a kill that gave us no chance.
    fd = os.open(
        os.path.join(os.path.dirname(os.path.abspath(near)), RELAY_DIR_NOTE),
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
        0o600,
    )
    with os.fdopen(fd, "w") as f:
        f.write(path)
    return path


def _front(ctx, zmq, kind, info, channel):
    sock = ctx.socket(kind)
    sock.linger = 0
    sock.curve_secretkey = info["curve_secretkey"].encode()
    sock.curve_publickey = info["curve_publickey"].encode()
    sock.curve_server = True
    if kind == zmq.XPUB:
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting client takes its id back
    ip = info.get("ip") or "127.0.0.1"
    host = f"[{ip}]" if ":" in ip else ip
    try:
        sock.bind(f"tcp://{host}:{int(info[f'{channel}_port'])}")
    except zmq.ZMQError as e:
        _fail(f"cannot bind the {channel} port {info[f'{channel}_port']}: {e}")
    return sock


def _back(ctx, kind, path, identity=None):
    sock = ctx.socket(kind)
    sock.linger = 0
    if identity is not None:
        sock.identity = identity
    sock.connect(f"ipc://{path}")
    return sock


def _proxy(zmq, front, back):
    with contextlib.suppress(zmq.ZMQError):  # the context ends with the relay
        zmq.proxy(front, back)


def main(argv):
    if len(argv) < 4 or argv[2] != "--":
        _fail("usage: relay.py CONNECTION_FILE -- KERNEL_ARGV...")
    try:
        import zmq
    except ImportError as e:
        _fail(f"the relay needs pyzmq in {sys.executable}: {e}")
    if not zmq.has("curve"):
        _fail(f"the pyzmq in {sys.executable} has no CurveZMQ (libzmq without libsodium)")
    with open(argv[1]) as f:
        public = json.load(f)
    if not public.get("curve_secretkey"):
        _fail(f"{argv[1]} has no curve keys: there is nothing to relay")

    ipc = private_dir(argv[1])
    private = {k: v for k, v in public.items() if not k.startswith("curve_")}
    private.update(transport="ipc", ip=os.path.join(ipc, "k"))
    for number, channel in enumerate(CHANNELS, start=1):
        private[f"{channel}_port"] = number
    private_file = os.path.join(ipc, "connection.json")
    fd = os.open(private_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(private, f)

    def endpoint(channel):
        return f"{private['ip']}-{private[f'{channel}_port']}"

    ctx = zmq.Context()
    identity = b"ko-relay-" + os.urandom(8).hex().encode()
    kinds = {"shell": zmq.ROUTER, "stdin": zmq.ROUTER, "control": zmq.ROUTER, "hb": zmq.ROUTER}
    pairs = []
    for channel in CHANNELS:
        if channel == "iopub":
            front = _front(ctx, zmq, zmq.XPUB, public, channel)
            back = _back(ctx, zmq.XSUB, endpoint(channel))
        else:
            front = _front(ctx, zmq, kinds[channel], public, channel)
            # one identity for shell, stdin and control (stdin prompts follow shell's)
            back = _back(ctx, zmq.DEALER, endpoint(channel), None if channel == "hb" else identity)
        pairs.append((front, back))
    for front, back in pairs:
        threading.Thread(target=_proxy, args=(zmq, front, back), daemon=True).start()

    kernel_argv = [a.replace("{connection_file}", private_file) for a in argv[3:]]

    # A handler, not SIG_IGN: an ignored signal would stay ignored in the kernel.
    def interrupt(signum, frame):
        pass

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGUSR2, interrupt)
    try:
        kernel = subprocess.Popen(kernel_argv, stdin=subprocess.DEVNULL)
    except OSError as e:
        shutil.rmtree(ipc, ignore_errors=True)
        _fail(f"cannot start {kernel_argv[0]!r}: {e.strerror}")

    def terminate(signum, frame):
        kernel.send_signal(signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    status = kernel.wait()
    shutil.rmtree(ipc, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(os.path.dirname(os.path.abspath(argv[1])), RELAY_DIR_NOTE))
    sys.stdout.flush()
    os._exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main(sys.argv)
