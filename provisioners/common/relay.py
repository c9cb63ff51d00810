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

With ``--interrupt-signal NAME`` (a kernel that only a signal interrupts, such as
IRkernel), an ``interrupt_request`` on control whose signature checks out is served
here: the signal goes to the kernel's process group and a signed ``interrupt_reply``
goes back. So such a kernel is interrupted by an encrypted, authenticated message,
with no signal path from the orchestrator to the host at all.
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


def _signed(key, scheme, parts):
    import hashlib
    import hmac

    if not key:
        return b""
    digest = hmac.new(key, digestmod=getattr(hashlib, scheme.split("-", 1)[1]))
    for part in parts:
        digest.update(part)
    return digest.hexdigest().encode()


def _interrupt_reply(frames, key, scheme, session):
    """The identities and a signed ``interrupt_reply`` for ``frames`` if they are a
    validly signed ``interrupt_request``; None for anything else (forwarded as is)."""
    import datetime
    import hmac
    import uuid

    try:
        at = frames.index(b"<IDS|MSG>")
        signature, header, parent, metadata, content = frames[at + 1 : at + 6]
        request = json.loads(header)
    except (ValueError, TypeError):
        return None
    if request.get("msg_type") != "interrupt_request":
        return None
    if not hmac.compare_digest(
        signature, _signed(key, scheme, [header, parent, metadata, content])
    ):
        return None  # the kernel judges (and drops) what we cannot vouch for
    reply_header = json.dumps(
        {
            "msg_id": uuid.uuid4().hex,
            "session": session,
            "username": "kernel",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "msg_type": "interrupt_reply",
            "version": request.get("version", "5.3"),
        }
    ).encode()
    body = [reply_header, header, b"{}", json.dumps({"status": "ok"}).encode()]
    return [*frames[:at], b"<IDS|MSG>", _signed(key, scheme, body), *body]


def _control(zmq, front, back, key, scheme, interrupt):
    """Control, forwarded both ways, but for interrupt_requests served here."""
    import uuid

    session = uuid.uuid4().hex
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    with contextlib.suppress(zmq.ZMQError):
        while True:
            for sock, _ in poller.poll():
                frames = sock.recv_multipart()
                if sock is back:
                    front.send_multipart(frames)
                elif (reply := _interrupt_reply(frames, key, scheme, session)) is not None:
                    interrupt()
                    front.send_multipart(reply)
                else:
                    back.send_multipart(frames)


def main(argv):
    interrupt_signal = None
    if len(argv) > 2 and argv[1] == "--interrupt-signal":
        name = argv[2].upper()
        interrupt_signal = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        argv = [argv[0], *argv[3:]]
    if len(argv) < 4 or argv[2] != "--":
        _fail("usage: relay.py [--interrupt-signal NAME] CONNECTION_FILE -- KERNEL_ARGV...")
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
    started: list = []  # the kernel's Popen, once there

    def interrupt():
        """The interrupt signal to the kernel's process group (ours: its children get
        it too, and it is a no-op here), or to the kernel alone if we lead no group."""
        if not started or interrupt_signal is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if os.getpgrp() == os.getpid():
                os.killpg(os.getpid(), interrupt_signal)
            else:
                os.kill(started[0].pid, interrupt_signal)

    key = public.get("key", "").encode()
    scheme = public.get("signature_scheme") or "hmac-sha256"
    for channel, (front, back) in zip(CHANNELS, pairs):  # noqa: B905 (Python 3.8 hosts)
        if channel == "control" and interrupt_signal is not None:
            args = (zmq, front, back, key, scheme, interrupt)
            threading.Thread(target=_control, args=args, daemon=True).start()
        else:
            threading.Thread(target=_proxy, args=(zmq, front, back), daemon=True).start()

    kernel_argv = [a.replace("{connection_file}", private_file) for a in argv[3:]]

    # A handler, not SIG_IGN: an ignored signal would stay ignored in the kernel.
    def not_for_us(signum, frame):
        pass

    signal.signal(signal.SIGINT, not_for_us)
    signal.signal(signal.SIGUSR2, not_for_us)
    try:
        kernel = subprocess.Popen(kernel_argv, stdin=subprocess.DEVNULL)
    except OSError as e:
        shutil.rmtree(ipc, ignore_errors=True)
        _fail(f"cannot start {kernel_argv[0]!r}: {e.strerror}")
    started.append(kernel)

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
