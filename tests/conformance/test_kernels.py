"""Kernels of any language on every back-end: the conformance matrix.

Each case runs a real kernel other than ipykernel through one provisioner: start,
output, an error, an ``input()`` round trip through stdin, an interrupt of a running
cell (or, for a kernel a signal would end, an honest refusal that leaves it running),
a restart that clears its state, a shutdown that leaves nothing. Local, Docker and SSH
run every kernel (Docker from the project's images: kernel-r, kernel-multi and
kernel-octave); Slurm and Kubernetes run IRkernel and a xeus kernel.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator.interrupts import CannotInterruptError

from .. import debian
from ..conftest import write_kernelspec
from . import backends
from .backends import Backend
from .languages import LANGUAGES, Language
from .test_lifecycle import nothing_left

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]

MATRIX = [
    ("local", "ir"),
    ("local", "bash"),
    ("local", "xpython"),
    ("local", "octave"),
    ("docker", "ir"),
    ("docker", "bash"),
    ("docker", "xpython"),
    ("docker", "octave"),
    ("ssh", "ir"),
    ("ssh", "bash"),
    ("ssh", "xpython"),
    ("ssh", "octave"),
    ("slurm", "ir"),
    ("slurm", "xpython"),
    ("kubernetes", "ir"),
    ("kubernetes", "xpython"),
]


def open_case(
    request: pytest.FixtureRequest, tmp_path: Path, backend_name: str, kernel: str
) -> Iterator[tuple[Backend, Language]]:
    language = LANGUAGES[kernel]
    language.ensure_installed(backend_name)
    opened = backends.open_backend(request, tmp_path, backend_name)
    backend = next(opened)
    try:
        yield backend, language
    finally:
        with contextlib.suppress(StopIteration):
            next(opened)


@pytest.fixture(params=MATRIX, ids=[f"{b}-{k}" for b, k in MATRIX])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, Language]]:
    yield from open_case(request, tmp_path, *request.param)


async def execute(kc: Any, code: str, *, answer: str | None = None) -> dict[str, Any]:
    """Run ``code``; its reply content with "out", the text it printed. ``answer`` is
    typed in when the kernel asks for input."""
    out: list[str] = []
    prompts: list[str] = []

    def output(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":  # (Octave's terminal ends lines with \r\n)
            out.append(msg["content"]["text"].replace("\r\n", "\n"))

    def stdin(msg: dict[str, Any]) -> None:
        prompts.append(msg["content"]["prompt"])
        kc.input(answer)

    reply = await kc.execute_interactive(
        code, timeout=60, output_hook=output, allow_stdin=answer is not None, stdin_hook=stdin
    )
    return {**reply["content"], "out": "".join(out), "prompts": prompts}


@contextlib.asynccontextmanager
async def running_kernel(
    backend: Backend,
    lang: Language,
    jupyter_env: dict[str, str],
    store: Any,
    name: str,
    *,
    config: dict[str, Any] | None = None,
    argv: list[str] | None = None,
    files: dict[str, str] | None = None,
    **spec: Any,
) -> AsyncIterator[tuple[Any, Any]]:
    """``lang``'s kernel on ``backend`` (kernelspec ``name``, with ``files`` beside its
    kernel.json), ready, with a started client; afterwards shut down, and nothing of
    it (record, process, container, job, relay directory) left."""
    before = relay_dirs()
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        name,
        backend.provisioner,
        {**backend.config, **lang.config_for(backend.name), **(config or {})},
        argv=argv or lang.argv_for(backend.name),
        language=lang.language,
        **spec,
    )
    spec_dir = Path(jupyter_env["JUPYTER_DATA_DIR"]) / "kernels" / name
    for rel, text in (files or {}).items():
        (spec_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (spec_dir / rel).write_text(text)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    await nothing_left(backend, store)
    assert relay_dirs() <= before, "a relay left its socket directory behind"


def relay_dirs() -> set[str]:
    return {str(p) for p in Path("/tmp").glob("korelay*")}


async def iopub_until(kc: Any, msg_id: str, wanted: Any, what: str) -> None:
    """Read IOPub until a message of the request ``msg_id`` satisfies ``wanted``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = await kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and wanted(msg):
            return
    raise AssertionError(f"the kernel never {what}")


async def busy_with(kc: Any, code: str) -> str:
    """Start ``code`` and return its msg_id once the cell itself runs (it printed
    "started"). A "busy" status is not enough: IRkernel reports busy before it
    guards the cell, and an interrupt in between ends R (stock jupyter_client too)."""
    msg_id: str = kc.execute(code)
    await iopub_until(
        kc,
        msg_id,
        lambda msg: msg["msg_type"] == "stream" and "started" in msg["content"]["text"],
        f"started running {code!r}",
    )
    return msg_id


async def idle_after(kc: Any, msg_id: str) -> None:
    """Wait for the kernel's idle status that ends the request ``msg_id``."""
    await iopub_until(
        kc,
        msg_id,
        lambda msg: msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle",
        f"went idle after {msg_id}",
    )


async def test_a_kernel_of_any_language(
    case: tuple[Backend, Language], jupyter_env: dict[str, str], store: Any
) -> None:
    backend, lang = case
    async with running_kernel(backend, lang, jupyter_env, store, f"any-{lang.name}") as (km, kc):
        hello = await execute(kc, lang.hello)
        assert (hello["status"], hello["out"]) == ("ok", "hello\n"), hello
        assert lang.failed(await execute(kc, lang.fails))
        if lang.ask is not None:
            asked = await execute(kc, lang.ask, answer="world")
            assert asked["prompts"] == ["name? "], asked
            assert (asked["status"], asked["out"]) == ("ok", "world\n"), asked

        assert (await execute(kc, lang.set_state))["status"] == "ok"
        msg_id = await busy_with(kc, lang.busy)
        if lang.interruptible:
            await km.interrupt_kernel()
            reply = await kc.get_shell_msg(timeout=30)  # long before the minute is up
            assert reply["parent_header"]["msg_id"] == msg_id
            if lang.reports_errors:  # (octave_kernel's interrupted cell says "ok")
                assert reply["content"]["status"] != "ok", reply["content"]
            # IRkernel aborts what reached it before it went idle: wait, as Lab does
            await idle_after(kc, msg_id)
            # interrupted, not ended: the state is still there
            assert (await execute(kc, lang.read_state))["status"] == "ok"
        else:
            with pytest.raises(CannotInterruptError, match="cannot be interrupted"):
                await km.interrupt_kernel()
            assert await km.is_alive()  # refused, not killed

        # a restart (of a busy kernel, for the one that could not be interrupted)
        # clears the state
        await km.restart_kernel(now=not lang.interruptible)
        await kc.wait_for_ready(timeout=60)
        assert lang.failed(await execute(kc, lang.read_state))
        assert (await execute(kc, lang.hello))["out"] == "hello\n"


RELAYED = [
    ("docker", "ir"),
    ("docker", "xpython"),
    ("ssh", "ir"),
    ("ssh", "xpython"),
    ("slurm", "ir"),
    ("slurm", "xpython"),
]


@pytest.fixture(params=RELAYED, ids=[f"{b}-{k}" for b, k in RELAYED])
def relayed_case(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Backend, Language]]:
    yield from open_case(request, tmp_path, *request.param)


@dataclass
class KernelSide:
    """Where a kernel runs, as a test on this machine reaches it."""

    enter: list[str]  # prefix running a command in the kernel's network namespace
    ports: list[int]  # the kernel's public ports there
    run: list[str]  # prefix running a command beside the kernel, as "another account"
    read: list[str]  # prefix running a command beside the kernel, as the kernel's account
    note: str  # the relay's note (path of its socket directory)


def the_kernel_side(backend: Backend, km: Any) -> KernelSide:
    prov = km.provisioner
    if backend.name == "docker":
        import docker

        client = docker.from_env()
        try:
            pid = client.api.inspect_container(prov.container_id)["State"]["Pid"]
        finally:
            client.close()
        return KernelSide(
            ["nsenter", "-t", str(pid), "-n"],
            list(range(50001, 50006)),
            ["docker", "exec", "-u", "1001", prov.container_id],
            ["docker", "exec", prov.container_id],
            "/run/kernel/relay-ipc",
        )
    net = backend.extra["net"]
    other = ["runuser", "-u", "nobody", "--"]
    if backend.name == "ssh":
        ports = [int(p) for p in prov.remote["ports"].values()]
        enter = ["ip", "netns", "exec", net.hosts[prov.host].ns]
        return KernelSide(enter, ports, other, [], f"{prov.remote['dir']}/relay-ipc")
    (node,) = [name for name, ip in net.node_ips.items() if ip == prov.node]
    ports = [int(p) for p in prov.remote_ports.values()]
    note = str(Path(prov.remote_dir) / str(km.kernel_id) / "relay-ipc")
    return KernelSide(["ip", "netns", "exec", net.ns(node)], ports, other, [], note)


async def capture_a_marker(
    backend: Backend, km: Any, kc: Any, lang: Language, tmp_path: Path
) -> tuple[bytes, str]:
    """What crossed the kernel's public ports on its host while a cell printed a
    marker (a pcap), and the marker."""
    side = the_kernel_side(backend, km)
    pcap = tmp_path / "kernel.pcap"
    capture = subprocess.Popen(
        [
            *side.enter,
            str(shutil.which("tcpdump")),
            "--immediate-mode",
            "-i",
            "any",
            "-U",
            "-s",
            "0",
            "-w",
            str(pcap),
            " or ".join(f"tcp port {p}" for p in side.ports),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert capture.stderr is not None
    try:
        while "listening on" not in (line := capture.stderr.readline()):
            assert line, "tcpdump did not start"
        marker = "MARK" + "-" + "7f3e" * 3
        code = lang.hello.replace("hello", marker)
        assert (await execute(kc, code))["out"] == marker + "\n"
        time.sleep(0.5)
    finally:
        capture.terminate()
        capture.wait(10)
        capture.stderr.close()
    return pcap.read_bytes(), marker


async def test_a_relayed_kernel_is_encrypted_on_the_wire(
    relayed_case: tuple[Backend, Language], jupyter_env: dict[str, str], store: Any, tmp_path: Path
) -> None:
    """A kernel that cannot do CurveZMQ, on a host or node other users share: its
    traffic there is encrypted by the relay (a capture of the kernel's ports sees no
    marker the cell prints), and the relay's sockets sit in a directory another
    account cannot enter."""
    backend, lang = relayed_case
    debian.ensure({"tcpdump": "tcpdump"})
    # (a container on Docker's own bridge is reached by the orchestrator alone, and is
    # plain by default: encryption is required here, as an operator's network has it)
    config = {"transport_encryption": "required"} if backend.name == "docker" else None
    async with running_kernel(
        backend, lang, jupyter_env, store, f"enc-{lang.name}", config=config
    ) as (km, kc):
        assert km.provisioner.encryption == "relay"
        data, marker = await capture_a_marker(backend, km, kc, lang, tmp_path)
        assert len(data) > 2000, "the capture saw no kernel traffic"
        assert marker.encode() not in data and b"7f3e7f3e" not in data

        # the relay's sockets: a 0700 directory of the kernel's account, and another
        # account cannot connect to them
        side = the_kernel_side(backend, km)
        ipc = subprocess.run(
            [*side.read, "cat", side.note], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        probe = (
            "import os,socket,stat,sys; d=sys.argv[1]\n"
            "try: os.listdir(d)\nexcept PermissionError: pass\nelse: sys.exit(4)\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try: s.connect(d + '/k-1')\nexcept PermissionError: sys.exit(3)"
        )
        other = subprocess.run(
            [*side.run, "python3", "-c", probe, ipc],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert other.returncode == 3, (other.returncode, other.stderr)


async def test_the_capture_sees_plain_text_without_the_relay(
    request: pytest.FixtureRequest, jupyter_env: dict[str, str], store: Any, tmp_path: Path
) -> None:
    """The control for the test above: with encryption disabled the same capture
    does show the marker, so seeing none there means something."""
    debian.ensure({"tcpdump": "tcpdump"})
    for backend, lang in open_case(request, tmp_path, "ssh", "xpython"):
        async with running_kernel(
            backend,
            lang,
            jupyter_env,
            store,
            "plain",
            config={"transport_encryption": "disabled"},
        ) as (km, kc):
            assert km.provisioner.encryption == "plain"
            data, marker = await capture_a_marker(backend, km, kc, lang, tmp_path)
            assert marker.encode() in data


ENV_CASES = [("ssh", "bash"), ("docker", "bash")]


@pytest.fixture(params=ENV_CASES, ids=[f"{b}-{k}" for b, k in ENV_CASES])
def env_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, Language]]:
    yield from open_case(request, tmp_path, *request.param)


async def test_kernelspec_env_is_never_expanded_from_the_gateway(
    env_case: tuple[Backend, Language],
    jupyter_env: dict[str, str],
    store: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """jupyter_client expands a kernelspec's ``${VAR}`` from the server's environment;
    a remote kernel must not see the gateway's variables that way. An SSH host expands
    from its own environment, a container gets the value as written."""
    backend, lang = env_case
    monkeypatch.setenv("KO_GATEWAY_ONLY", "gateway-secret")
    env = {"SEEN": "[${KO_GATEWAY_ONLY}]", "WHERE": "${HOME}"}
    async with running_kernel(backend, lang, jupyter_env, store, "envx", env=env) as (_, kc):
        out = (await execute(kc, 'echo "$SEEN|$WHERE|$HOME"'))["out"].strip()
        seen, where, home = out.split("|")
        assert seen == "[${KO_GATEWAY_ONLY}]"
        assert where == (home if backend.name == "ssh" else "${HOME}")


LAUNCH_PY = """\
import os, runpy, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "data", "word.txt")) as f:
    os.environ["FROM_RESOURCE"] = f.read().strip()
os.environ["PREFIX_WAS"] = sys.argv.pop(1)
sys.argv[0] = "bash_kernel"
runpy.run_module("bash_kernel", run_name="__main__")
"""
FILE_CASES = ["local", "docker", "ssh", "slurm", "kubernetes"]


@pytest.fixture(params=FILE_CASES)
def files_case(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Backend, Language]]:
    yield from open_case(request, tmp_path, request.param, "bash")


async def test_kernelspec_files_and_placeholders_reach_the_kernel(
    files_case: tuple[Backend, Language], jupyter_env: dict[str, str], store: Any
) -> None:
    """A kernelspec whose argv runs a script of its own ({resource_dir}) with a data
    file beside it, and names {prefix}: every back-end ships the files to the kernel's
    side and fills the placeholders with that side's paths (never the gateway's)."""
    backend, lang = files_case
    python = "python" if backend.name in ("docker", "kubernetes") else lang.argv[0]
    prefix = sys.prefix if backend.name == "local" else "/kernel/side/prefix"
    async with running_kernel(
        backend,
        lang,
        jupyter_env,
        store,
        "files",
        config={} if backend.name == "local" else {"kernel_prefix": prefix},
        argv=[python, "{resource_dir}/launch.py", "{prefix}", "-f", "{connection_file}"],
        files={"launch.py": LAUNCH_PY, "data/word.txt": "shipped\n"},
    ) as (_, kc):
        out = (await execute(kc, 'echo "$FROM_RESOURCE|$PREFIX_WAS"'))["out"].strip()
        assert out == f"shipped|{prefix}"
