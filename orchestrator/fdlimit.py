"""The gateway's open files: as many as the system lets it have, and a clear refusal
before they run out.

Every kernel costs the gateway descriptors (its zmq sockets, a tunnel, an engine
connection, each client's websocket). jupyter_server raises the soft limit only to
its floor of 4,096 whatever the hard limit allows, so a default install stopped near
900 Docker kernels with "Too many open files" wherever the next descriptor was
needed: in the middle of a start, in the store, on a client's connection. Here the
soft limit goes up to the hard one at start, and a kernel start that would leave
fewer than :data:`RESERVE` descriptors free is refused, naming the limit to raise.
"""

from __future__ import annotations

import os
import resource
import typing as t

from .errors import KernelLimitError

#: Descriptors kept free for all that is not a new kernel: the listening sockets, the
#: store, logs, the websockets of clients of the kernels already running.
RESERVE = 256
#: Most a kernel start may need at once (sockets, tunnel, engine and store connections).
PER_START = 32
_NR_OPEN = "/proc/sys/fs/nr_open"  # Linux's ceiling for a soft limit of "unlimited"


def raise_soft_limit() -> tuple[int, int] | None:
    """Raise this process's soft open-files limit to its hard limit; (old, new) when it
    changed, None when it was there already (or cannot be changed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open(_NR_OPEN) as f:
                target = int(f.read())
        except (OSError, ValueError):
            return None
    if soft != resource.RLIM_INFINITY and soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return None
    return soft, target


def raise_zmq_socket_limit(ctx: t.Any = None) -> tuple[int, int] | None:
    """Let the process's zmq context hold as many sockets as it has open files.

    libzmq allows a context 1,023 sockets unless told otherwise, and the gateway keeps
    one per kernel (its activity subscription) and four per client websocket: near
    1,000 kernels, every new websocket or kernel failed with "Too many open files"
    while descriptors were still free. The limit only takes effect before the
    context's first socket: this runs when a context is made (the process's own, and
    the one jupyter_client's multi-kernel manager makes for its kernels' sockets).
    (old, new) when it changed."""
    import zmq

    if ctx is None:
        ctx = zmq.Context.instance()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = int(ctx.get(zmq.SOCKET_LIMIT))
    wanted = ceiling if soft == resource.RLIM_INFINITY else min(int(soft), ceiling)
    current = int(ctx.get(zmq.MAX_SOCKETS))
    if wanted <= current:
        return None
    ctx.set(zmq.MAX_SOCKETS, wanted)
    return current, wanted


def open_files() -> tuple[int, int]:
    """(descriptors open now, soft limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return len(os.listdir("/proc/self/fd")), soft


def refuse_start_when_short() -> None:
    """Raise :class:`KernelLimitError` when a kernel start could run the process out of
    descriptors; the running kernels and their clients keep theirs."""
    used, soft = open_files()
    if soft != resource.RLIM_INFINITY and soft - used < RESERVE + PER_START:
        raise KernelLimitError(
            f"the gateway has {used} of its {soft} open files in use and keeps {RESERVE}"
            " free for the kernels it runs: no new kernel now. Raise its open-files limit"
            " (LimitNOFILE= in its systemd unit, ulimit -n, or the container runtime's"
            " nofile ulimit)"
        )
