"""Ports for a kernel, chosen on the kernel's side. Standard library only.

Not imported where the kernel runs: its source is shipped ahead of the SSH launcher's
and the Slurm supervisor's (see :mod:`provisioners.ssh.remote` and the Slurm
provisioner), which call these functions by name.

Why ports are chosen here and not by the kernel: a kernel given port 0 binds a free
port, but only ipykernel writes the port it got back into the connection file;
IRkernel, xeus and IJulia bind what the file says and tell nobody. So the ports are
found free here, on the kernel's host, written into the file, and then confirmed as
*bound by the kernel's own processes* (its session's sockets in ``/proc``), which a
stranger's socket on a shared host cannot fake. If another process took a port in
the moment between our check and the kernel's bind, the kernel fails to bind and the
start is tried again with other ports.
"""

import errno
import os
import socket
import stat
import time

KERNEL_CHANNELS = ("shell", "iopub", "stdin", "control", "hb")

#: How many times a start whose ports were taken by another process is retried.
PORT_ATTEMPTS = 3

_IN_USE = ("Address already in use", "EADDRINUSE")

#: Written by the relay (:mod:`provisioners.common.relay`) beside the connection file
#: when its socket directory had to go under the temp dir.
RELAY_DIR_NOTE = "relay-ipc"


def hold_free_ports(ip, count, port_range=None):
    """``count`` distinct free ports on ``ip`` as bound sockets, held until the kernel
    is about to start (closing them frees the ports for it). ``port_range`` (lo, hi)
    limits the search, as firewalls between the gateway and the kernel may need."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    candidates = range(port_range[0], port_range[1] + 1) if port_range else [0] * count * 4
    held = []
    for port in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((ip, port))
        except OSError:
            sock.close()
            continue
        held.append(sock)
        if len(held) == count:
            return held
    for sock in held:
        sock.close()
    where = f" in range {port_range[0]}-{port_range[1]}" if port_range else ""
    raise RuntimeError(f"no {count} free ports on {ip}{where}")


def _session_socket_inodes(session_id):
    """Inodes of the sockets open in any process of the session ``session_id``."""
    inodes = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                raw = f.read()
            if int(raw[raw.rfind(")") + 2 :].split()[3]) != session_id:
                continue
            fds = os.listdir(f"/proc/{name}/fd")
        except (OSError, ValueError, IndexError):
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{name}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _listening_inodes(ports):
    """{inode: port} of TCP sockets listening on any of ``ports`` in this namespace."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in ports:
                found[fields[9]] = port
    return found


def bound_by_session(session_id, ports):
    """The subset of ``ports`` the session's processes listen on (Linux ``/proc``);
    None where ``/proc`` cannot tell (then the kernel's first answer decides)."""
    if not os.path.isdir("/proc/net"):
        return None
    listening = _listening_inodes(set(ports))
    if not listening:
        return set()
    mine = _session_socket_inodes(session_id)
    return {port for inode, port in listening.items() if inode in mine}


def wait_until_bound(proc, ports, deadline, log_path, log_offset=0):
    """Wait until the kernel ``proc`` (a session leader) listens on all ``ports``.

    Returns "bound", "taken" (it exited because a port was in use, as its output from
    ``log_offset`` on says: try other ports), "exited" or "timeout"."""
    wanted = set(ports)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "taken" if _said_in_use(log_path, log_offset) else "exited"
        bound = bound_by_session(proc.pid, wanted)
        if bound is None or bound == wanted:
            return "bound"
        time.sleep(0.05)
    return "timeout"


def _said_in_use(log_path, offset):
    try:
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            text = f.read()[-20000:]
    except OSError:
        return False
    return any(marker in text for marker in _IN_USE)


def remove_relay_dir(kernel_dir):
    """Remove the socket directory a relay of this kernel made under the temp dir (a
    relay killed with its kernel could not). Only a ``korelay*`` directory (not a
    link) of this account is touched, whatever the note says."""
    import shutil
    import stat

    note = os.path.join(kernel_dir, RELAY_DIR_NOTE)
    try:
        with open(note) as f:
            path = f.read().strip()
        os.unlink(note)
        st = os.lstat(path)
    except OSError:
        return
    if (
        os.path.isabs(path)
        and os.path.basename(path).startswith("korelay")
        and stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.getuid()
    ):
        shutil.rmtree(path, ignore_errors=True)


def kernel_environment(base, env, expand):
    """The kernel's environment: ``base`` (where it runs) updated by ``env``, with the
    names in ``expand`` (kernelspec entries) expanded from ``base`` as jupyter_client
    expands them locally: ``${VAR}`` / ``$VAR``, unknown names left as written."""
    from string import Template

    result = dict(base)
    for name, value in env.items():
        result[name] = Template(value).safe_substitute(base) if name in expand else value
    return result


def write_resources(kernel_dir, shipped):
    """Write the kernelspec's files (``{path: [base64, executable]}``) under
    ``kernel_dir/resources`` (0700 directories, 0600/0700 files); return that directory.
    Paths are checked: nothing is written outside it."""
    import base64

    root = os.path.join(kernel_dir, "resources")
    os.makedirs(root, mode=0o700, exist_ok=True)
    for rel, (data, executable) in (shipped or {}).items():
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad kernelspec file path {rel!r}")
        path = os.path.join(root, *parts)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(data))
        os.chmod(path, 0o700 if executable else 0o600)
    return root


def open_working_dir(path, root, owner=None):
    """A descriptor of the directory ``path`` under ``root`` (see
    :mod:`provisioners.common.workdir`): the root is opened as named (an operator's
    path, symbolic links allowed), every component below it without following a link.
    The kernel is started in this very directory (``cwd=/proc/self/fd/N``), so a link
    swapped in after the check leads nowhere. Errors name the directory and why.

    ``owner``: the uid of the account the kernel will run as, when that is not this
    process's (root starting a host kernel): then every directory on the way must be
    that account's or root's, since root's open would pass where the account's would
    not."""
    mine = os.geteuid() if owner is None else owner
    rel = os.path.relpath(path, root)
    if rel == ".":
        parts = []
    elif rel == ".." or rel.startswith("../"):
        raise RuntimeError(f"working directory {path} is not under {root}")
    else:
        parts = rel.split("/")
    flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(root, flags)
    except OSError as e:
        raise RuntimeError(f"working directory root {root}: {e.strerror}") from None
    info = os.fstat(fd)
    if info.st_uid not in (mine, 0):
        # (another account made it first, under a shared parent: what it holds, a
        # planted module the kernel would import, is not ours)
        os.close(fd)
        raise RuntimeError(
            f"working directory root {root} belongs to uid {info.st_uid}, not to the"
            f" kernel's account (uid {mine}) or root"
        )
    _refuse_world_writable(fd, root)
    walked = root
    for part in parts:
        walked = os.path.join(walked, part)
        try:
            child = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as e:
            link = e.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd)
            os.close(fd)
            if link:
                raise RuntimeError(
                    f"working directory {path}: {walked} is a symbolic link (links below"
                    f" {root} are not followed)"
                ) from None
            if e.errno == errno.ENOTDIR:
                raise RuntimeError(
                    f"working directory {path}: {walked} is not a directory"
                ) from None
            raise RuntimeError(f"working directory {path}: {walked}: {e.strerror}") from None
        os.close(fd)
        fd = child
        _refuse_world_writable(fd, walked)
        if owner is not None and os.fstat(fd).st_uid not in (owner, 0):
            os.close(fd)
            raise RuntimeError(
                f"working directory {path}: {walked} is not the kernel's account's"
                f" (uid {owner}) or root's"
            )
    return fd


def _refuse_world_writable(fd, name):
    """A directory any account may write to (without the sticky bit) is refused, and its
    descriptor closed: anyone could have planted what the kernel would import from it,
    or swapped the next directory of the path for their own."""
    mode = os.fstat(fd).st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        os.close(fd)
        raise RuntimeError(
            f"working directory {name} is writable by every account and not sticky: its"
            " files may be anyone's"
        )


def _is_link(name, dir_fd):
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def kernel_cwd(req):
    """(cwd for Popen, descriptor to close after it) for a launch request: the mapped
    working directory opened by descriptor, else the plain ``cwd`` (or home)."""
    mapped = req.get("working_dir")
    if mapped:
        fd = open_working_dir(mapped["path"], mapped["root"])
        return f"/proc/self/fd/{fd}", fd
    return os.path.expanduser(req.get("cwd") or "~"), None
