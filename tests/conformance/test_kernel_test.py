"""The kernels' own conformance suite (PyPI ``jupyter_kernel_test``) through our managers.

For each kernel, jupyter_kernel_test's ``KernelTests`` runs twice: against the kernel
started locally by stock jupyter_client, and against the same kernel started by
``orchestrator.KernelManager`` on a remote back-end (Docker, SSH; through the relay
where the kernel cannot encrypt). Every test must end the same way on both, and the
basic ones must pass: our launch, relay and tunnels change nothing a kernel's client
can see.
"""

from __future__ import annotations

import asyncio
import json
import unittest
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jupyter_kernel_test  # (its KernelTests, imported here, would be collected)
import pytest
from jupyter_client.manager import start_new_kernel

import orchestrator

from ..conftest import write_kernelspec
from .backends import Backend
from .languages import LANGUAGES, Language
from .test_kernels import open_case
from .test_lifecycle import nothing_left

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]

# Each kernel's samples, after its own project's use of jupyter_kernel_test.
SAMPLES: dict[str, dict[str, Any]] = {
    "ir": {
        "language_name": "R",
        "code_hello_world": 'print("hello, world")',
        "code_stderr": 'message("error")',
        "code_generate_error": 'stop("Test error")',
        "code_execute_result": [{"code": "1 + 1", "result": "[1] 2"}],
        "complete_code_samples": ["fun()", "1 + 2"],
        "incomplete_code_samples": ["fun(", "1 + "],
        "completion_samples": [{"text": "zi", "matches": {"zip"}}],
    },
    "xpython": {
        "language_name": "python",
        "code_hello_world": 'print("hello, world")',
        "code_stderr": 'import sys; print("oops", file=sys.stderr)',
        "code_generate_error": "raise ValueError('Test error')",
        "code_execute_result": [{"code": "6*7", "result": "42"}],
        "code_display_data": [
            {
                "code": "from IPython.display import HTML, display; display(HTML('<b>x</b>'))",
                "mime": "text/html",
            }
        ],
    },
    "bash": {
        "language_name": "bash",
        "code_hello_world": 'echo "hello, world"',
        "code_stderr": 'echo "oops" >&2',
        "code_generate_error": "ls /no/such/path/ko",
        "complete_code_samples": ["echo hi"],
    },
    "octave": {
        "language_name": "octave",
        "code_hello_world": "disp('hello, world')",
        "complete_code_samples": ["disp(1)"],
        "completion_samples": [{"text": "one", "matches": {"ones", "onCleanup"}}],
    },
}
MUST_PASS = ("test_kernel_info", "test_execute_stdout")  # the rest: as stock
# (Octave over SSH only: the image's octave_kernel is Debian's 0.32, not the hosts' 1.1)
CASES = [(b, k) for b in ("docker", "ssh") for k in ("ir", "xpython", "bash")] + [("ssh", "octave")]


def outcomes(kernel: str, start: Callable[[], tuple[Any, Any]]) -> dict[str, str]:
    """jupyter_kernel_test's tests for ``kernel`` on the kernel ``start`` gives:
    {test name: "pass" | "fail" | "skip"}."""

    class Suite(jupyter_kernel_test.KernelTests):  # type: ignore[misc]
        @classmethod
        def setUpClass(cls) -> None:
            cls.km, cls.kc = start()

    for name, value in SAMPLES[kernel].items():
        setattr(Suite, name, value)
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(Suite).run(result)
    found = {t.id().rsplit(".", 1)[-1]: "pass" for t in _tests(Suite)}
    for test, _ in result.failures + result.errors:
        found[test.id().rsplit(".", 1)[-1]] = "fail"
    for test, _ in result.skipped:
        found[test.id().rsplit(".", 1)[-1]] = "skip"
    return found


def _tests(suite_class: type) -> Iterator[unittest.TestCase]:
    yield from unittest.defaultTestLoader.loadTestsFromTestCase(suite_class)


_stock: dict[str, dict[str, str]] = {}


def stock_outcomes(lang: Language, data_dir: str) -> dict[str, str]:
    """The suite against the kernel run locally by stock jupyter_client (once)."""
    if lang.name not in _stock:
        spec = Path(data_dir) / "kernels" / f"stock-{lang.name}"
        spec.mkdir(parents=True, exist_ok=True)
        (spec / "kernel.json").write_text(
            json.dumps({"argv": list(lang.argv), "display_name": lang.name, "language": "x"})
        )
        _stock[lang.name] = outcomes(
            lang.name, lambda: start_new_kernel(kernel_name=f"stock-{lang.name}")
        )
    return _stock[lang.name]


@pytest.fixture(params=CASES, ids=[f"{b}-{k}" for b, k in CASES])
def suite_case(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Backend, Language]]:
    yield from open_case(request, tmp_path, *request.param)


async def test_the_kernels_own_suite_passes_through_our_managers(
    suite_case: tuple[Backend, Language], jupyter_env: dict[str, str], store: Any
) -> None:
    backend, lang = suite_case
    LANGUAGES[lang.name].ensure_installed("local")
    data_dir = jupyter_env["JUPYTER_DATA_DIR"]
    stock = stock_outcomes(lang, data_dir)
    write_kernelspec(
        data_dir,
        "suite",
        backend.provisioner,
        {**backend.config, **lang.config_for(backend.name)},
        argv=lang.argv_for(backend.name),
        language=lang.language,
    )
    managers: list[Any] = []

    def start() -> tuple[Any, Any]:
        km = orchestrator.KernelManager(kernel_name="suite", kernel_store=store)
        km.start_kernel()
        managers.append(km)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        return km, kc

    ours = await asyncio.to_thread(outcomes, lang.name, start)
    assert all(stock[t] == "pass" for t in MUST_PASS), stock
    assert ours == stock, {t: (stock.get(t), ours.get(t)) for t in stock if stock[t] != ours.get(t)}
    assert managers, "the suite started no kernel"
    await nothing_left(backend, store)
