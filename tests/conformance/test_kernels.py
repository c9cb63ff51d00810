"""Kernels of any language on every back-end: the conformance matrix.

Each case runs a real kernel other than ipykernel through one provisioner: start,
output, an error, an ``input()`` round trip through stdin, an interrupt of a running
cell (or, for a kernel a signal would end, an honest refusal that leaves it running),
a restart that clears its state, a shutdown that leaves nothing. The cheap back-ends
run every kernel; Slurm runs IRkernel and a xeus kernel.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator.interrupts import CannotInterruptError

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
    ("ssh", "ir"),
    ("ssh", "bash"),
    ("ssh", "xpython"),
    ("slurm", "ir"),
    ("slurm", "xpython"),
]


@pytest.fixture(params=MATRIX, ids=[f"{b}-{k}" for b, k in MATRIX])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, Language]]:
    backend_name, kernel = request.param
    language = LANGUAGES[kernel]
    language.ensure_installed()
    opened = backends.open_backend(request, tmp_path, backend_name)
    backend = next(opened)
    try:
        yield backend, language
    finally:
        with contextlib.suppress(StopIteration):
            next(opened)


async def execute(kc: Any, code: str, *, answer: str | None = None) -> dict[str, Any]:
    """Run ``code``; its reply content with "out", the text it printed. ``answer`` is
    typed in when the kernel asks for input."""
    out: list[str] = []
    prompts: list[str] = []

    def output(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    def stdin(msg: dict[str, Any]) -> None:
        prompts.append(msg["content"]["prompt"])
        kc.input(answer)

    reply = await kc.execute_interactive(
        code, timeout=60, output_hook=output, allow_stdin=answer is not None, stdin_hook=stdin
    )
    return {**reply["content"], "out": "".join(out), "prompts": prompts}


async def busy_with(kc: Any, code: str) -> str:
    """Start ``code`` and return its msg_id once the kernel reports itself busy with it."""
    msg_id = kc.execute(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = await kc.get_iopub_msg(timeout=30)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "busy"
        ):
            return msg_id  # type: ignore[no-any-return]
    raise AssertionError(f"the kernel never got busy with {code!r}")


async def test_a_kernel_of_any_language(
    case: tuple[Backend, Language], jupyter_env: dict[str, str], store: Any
) -> None:
    backend, lang = case
    name = f"any-{lang.name}"
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        name,
        backend.provisioner,
        backend.config,
        argv=list(lang.argv),
        language=lang.language,
    )
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        hello = await execute(kc, lang.hello)
        assert (hello["status"], hello["out"]) == ("ok", "hello\n"), hello
        assert (await execute(kc, lang.fails))["status"] == "error"
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
            assert reply["content"]["status"] != "ok", reply["content"]
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
        assert (await execute(kc, lang.read_state))["status"] == "error"
        assert (await execute(kc, lang.hello))["out"] == "hello\n"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    await nothing_left(backend, store)
