"""Kernels other than ipykernel, as the conformance matrix runs them.

Each is the real kernel, installed the way a user would: IRkernel from Debian
(``r-cran-irkernel``), bash_kernel and xeus-python from PyPI (the project's test
extra). They differ where it matters to a remote launch: IRkernel answers nothing on
control and writes no ports back; xeus-python exits on SIGINT; bash_kernel is built on
ipykernel but has no stdin.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from .. import debian
from ..conftest import REPO

IN_CONTAINERS = ("docker", "kubernetes")
MULTI_IMAGE = "kernel-orchestrator/kernel-multi:latest"
R_IMAGE = "kernel-orchestrator/kernel-r:latest"
OCTAVE_IMAGE = "kernel-orchestrator/kernel-octave:latest"


@dataclass(frozen=True)
class Language:
    """One kernel and the code the matrix runs in it."""

    name: str
    argv: tuple[str, ...]  # on this machine and the test hosts, which share its files
    container_argv: tuple[str, ...]  # in its image
    image: str
    language: str
    hello: str  # prints "hello" and a newline
    fails: str  # a cell that ends in an error
    set_state: str  # state a restart must clear ...
    read_state: str  # ... which this then fails to read
    ask: str | None  # reads one line from stdin and prints it back (None: no stdin)
    busy: str  # prints "started" and a newline, then runs for a minute
    interruptible: bool = True
    reports_errors: bool = True  # a failed cell's reply says "error" (else only its output does)

    def failed(self, result: dict[str, object]) -> bool:
        """Whether a cell failed, by its reply or, for a kernel whose replies do not
        say so, by the "error: " its output starts with."""
        if self.reports_errors:
            return result["status"] == "error"
        return str(result["out"]).startswith("error: ")

    def ensure_installed(self, backend: str) -> None:
        if backend in IN_CONTAINERS:
            build_image(self.image)
        elif self.name == "ir":
            debian.ensure({"/usr/bin/R": "r-cran-irkernel"})
        elif self.name == "octave":
            debian.ensure({"/usr/bin/octave-cli": "octave"})

    def argv_for(self, backend: str) -> list[str]:
        return list(self.container_argv if backend in IN_CONTAINERS else self.argv)

    def config_for(self, backend: str) -> dict[str, str]:
        return {"image": self.image} if backend in IN_CONTAINERS else {}


_built: set[str] = set()


def build_image(image: str) -> None:
    """The kernel's image, built once per session by docker/build.sh (offline base)."""
    if image in _built:
        return
    name = image.split("/", 1)[1].split(":", 1)[0]
    subprocess.run(
        ["bash", str(REPO / "docker" / "build.sh"), "--offline-base", "--only", name],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    _built.add(image)


def _python_module(module: str) -> tuple[str, ...]:
    return (sys.executable, "-m", module, "-f", "{connection_file}")


IR = Language(
    name="ir",
    argv=("R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"),
    container_argv=("R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"),
    image=R_IMAGE,
    language="R",
    hello='cat("hello\\n")',
    fails='stop("boom")',
    set_state="kept <- 5",
    read_state="print(kept)",
    ask='answer <- readline("name? "); cat(answer, "\\n", sep = "")',
    busy='cat("started\\n"); Sys.sleep(60)',
)
BASH = Language(
    name="bash",
    argv=_python_module("bash_kernel"),
    container_argv=("python", "-m", "bash_kernel", "-f", "{connection_file}"),
    image=MULTI_IMAGE,
    language="bash",
    hello="echo hello",
    fails="exit_with_error_zz",  # command not found: a failed cell
    set_state="export KEPT=5",
    read_state='test -n "$KEPT"',
    ask=None,
    busy="echo started; sleep 60",
)
XPYTHON = Language(
    name="xpython",
    argv=_python_module("xpython_launcher"),
    container_argv=("python", "-m", "xpython_launcher", "-f", "{connection_file}"),
    image=MULTI_IMAGE,
    language="python",
    hello='print("hello")',
    fails="raise ValueError('boom')",
    set_state="kept = 5",
    read_state="kept",
    ask="answer = input('name? '); print(answer)",
    busy="import time; print('started', flush=True); time.sleep(60)",
    interruptible=False,  # SIGINT ends it, interrupt_request does nothing
)

OCTAVE = Language(
    name="octave",
    argv=_python_module("octave_kernel"),
    container_argv=("python3", "-m", "octave_kernel", "-f", "{connection_file}"),
    image=OCTAVE_IMAGE,  # (all from Debian, as the hosts' Octave)
    language="octave",
    hello='disp("hello")',
    fails='error("boom")',
    set_state="kept = 5;",
    read_state="kept",
    ask=None,
    busy='disp("started"); pause(60)',
    reports_errors=False,  # octave_kernel (metakernel) answers "ok" and prints the error
)

LANGUAGES = {lang.name: lang for lang in (IR, BASH, XPYTHON, OCTAVE)}
