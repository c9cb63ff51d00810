"""The ``kernel-orchestrator`` CLI, each call a separate process as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import procinfo

CLI = str(Path(sys.executable).with_name("kernel-orchestrator"))

pytestmark = pytest.mark.usefixtures("jupyter_env")


def ko(*args: str, check: bool = True, timeout: float = 120, input: str | None = None):  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input if input is not None else "",
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
    return result


def assert_one_line_error(result: Any, text: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and text in lines[0], lines[0]


def test_start_exec_shutdown_across_processes() -> None:
    kernel_id = ko("start", "python3").stdout.strip()
    assert len(kernel_id) == 36
    pid = json.loads(ko("list", "--json").stdout)[0]["provisioner_info"]["pid"]
    assert procinfo.is_running(pid)
    assert ko("exec", kernel_id, "x = 41").stdout == ""
    assert ko("exec", kernel_id, "print(x + 1)").stdout == "42\n"
    assert ko("exec", kernel_id[:8], "x").stdout == "41\n"  # unique prefix, execute_result
    ko("shutdown", kernel_id)
    assert json.loads(ko("list", "--json").stdout) == []
    assert "no kernels" in ko("list").stderr
    for _ in range(50):
        if not procinfo.is_running(pid):
            break
        time.sleep(0.1)
    assert not procinfo.is_running(pid)


def test_exec_reports_errors_and_streams() -> None:
    kernel_id = ko("start", "python3").stdout.strip()
    try:
        result = ko("exec", kernel_id, "import sys; print('out'); print('err', file=sys.stderr)")
        assert result.stdout == "out\n" and result.stderr == "err\n"
        result = ko("exec", kernel_id, "1/0", check=False)
        assert result.returncode == 1
        assert "ZeroDivisionError" in result.stderr and "\x1b[" not in result.stderr
        result = ko("exec", kernel_id, "-", input="print('from stdin')")
        assert result.stdout == "from stdin\n"
    finally:
        ko("shutdown", kernel_id)


def test_start_json_hides_the_key() -> None:
    record = json.loads(ko("start", "python3", "--json", "--label", "owner=alice").stdout)
    try:
        assert record["labels"] == {"owner": "alice"}
        assert record["provisioner_info"]["connection_info"]["key"] == "<redacted>"
        listed = ko("list").stdout
        assert record["kernel_id"] in listed and "owner=alice" in listed and "running" in listed
    finally:
        ko("shutdown", record["kernel_id"])


def test_interrupt_and_restart() -> None:
    kernel_id = ko("start", "python3").stdout.strip()
    try:
        ko("exec", kernel_id, "state = 1")
        runner = start_sleeping_exec(kernel_id)
        ko("interrupt", kernel_id)
        _, err = runner.communicate(timeout=60)
        assert runner.returncode == 1 and "KeyboardInterrupt" in err
        ko("exec", kernel_id, "state")  # state survives an interrupt
        ko("restart", kernel_id)
        result = ko("exec", kernel_id, "state", check=False)
        assert result.returncode == 1 and "NameError" in result.stderr
        assert [r["kernel_id"] for r in json.loads(ko("list", "--json").stdout)] == [kernel_id]
    finally:
        ko("shutdown", kernel_id)


def test_ctrl_c_during_exec_interrupts_the_kernel() -> None:
    kernel_id = ko("start", "python3").stdout.strip()
    try:
        runner = start_sleeping_exec(kernel_id)
        runner.send_signal(signal.SIGINT)
        _, err = runner.communicate(timeout=60)
        assert runner.returncode == 130 and "KeyboardInterrupt" in err
        assert ko("exec", kernel_id, "print('alive')").stdout == "alive\n"
    finally:
        ko("shutdown", kernel_id)


def start_sleeping_exec(kernel_id: str) -> subprocess.Popen[str]:
    """An ``exec`` of a long cell, returned once the cell is really running."""
    runner = subprocess.Popen(
        [CLI, "exec", kernel_id, "import time; print('started', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert runner.stdout is not None
    assert runner.stdout.readline() == "started\n"
    return runner


def test_shutdown_all() -> None:
    ids = [ko("start", "python3").stdout.strip() for _ in range(2)]
    result = ko("shutdown", "--all")
    for kernel_id in ids:
        assert f"shut down {kernel_id}" in result.stderr
    assert json.loads(ko("list", "--json").stdout) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["exec", "00000000-no-such", "1"], "unknown kernel id '00000000-no-such'"),
        (["shutdown", "nope"], "unknown kernel id 'nope'"),
        (["interrupt", "nope"], "unknown kernel id 'nope'"),
        (["restart", "nope"], "unknown kernel id 'nope'"),
        # (every kernelspec on the machine is listed: Debian's ir may be among them)
        (["start", "no-such-spec"], "unknown kernelspec 'no-such-spec' (available: "),
        (["--store", "sqlite:////proc/none/k.db", "list"], "cannot open kernel store"),
        (["--store", "mysql://x/y", "list"], "unsupported kernel store URL scheme"),
        (["shutdown"], "give a KERNEL_ID or --all"),
        (["start", "python3", "--label", "novalue"], "bad --label value 'novalue'"),
    ],
)
def test_bad_input_gives_one_line_errors(args: list[str], message: str) -> None:
    assert_one_line_error(ko(*args, check=False), message)


def test_unknown_provisioner_is_named(jupyter_env: dict[str, str]) -> None:
    spec_dir = Path(jupyter_env["JUPYTER_DATA_DIR"]) / "kernels" / "broken"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "broken",
                "language": "python",
                "metadata": {"kernel_provisioner": {"provisioner_name": "no-such-provisioner"}},
            }
        )
    )
    assert_one_line_error(
        ko("start", "broken", check=False),
        "kernelspec 'broken' names provisioner 'no-such-provisioner', which is not installed",
    )
    result = ko("kernelspec", "install", "no-such-provisioner", "--name", "x", check=False)
    assert result.returncode == 2 and "invalid choice: 'no-such-provisioner'" in result.stderr


def test_dead_kernel_is_reported_and_cleaned() -> None:
    kernel_id = ko("start", "python3").stdout.strip()
    pid = json.loads(ko("list", "--json").stdout)[0]["provisioner_info"]["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    assert json.loads(ko("list", "--json").stdout)[0]["status"] == "dead"
    assert_one_line_error(
        ko("exec", kernel_id, "1", check=False),
        f"kernel {kernel_id} has died; its record and resources were cleaned up",
    )
    assert json.loads(ko("list", "--json").stdout) == []


def test_progress_is_quiet_when_piped() -> None:
    result = ko("start", "python3")
    assert result.stderr == ""
    ko("shutdown", result.stdout.strip())


def test_gc_removes_stale_records_and_orphans(store: Any) -> None:
    import asyncio

    stale = ko("start", "python3").stdout.strip()
    orphan = ko("start", "python3").stdout.strip()
    records = {r["kernel_id"]: r for r in json.loads(ko("list", "--json").stdout)}
    os.kill(records[stale]["provisioner_info"]["pid"], signal.SIGKILL)
    # Simulate a crash between launch and save: the orphan's record is lost.
    asyncio.run(store.delete(orphan))
    orphan_pid = records[orphan]["provisioner_info"]["pid"]
    time.sleep(0.3)

    dry = ko("gc", "--dry-run", "--grace", "0").stdout
    assert f"would remove stale record {stale}" in dry
    assert f"(kernel {orphan})" in dry
    assert procinfo.is_running(orphan_pid)

    out = ko("gc", "--grace", "0").stdout
    assert f"removed stale record {stale}" in out
    assert f"removed orphaned local kernel process {orphan_pid} (kernel {orphan})" in out
    assert not procinfo.is_running(orphan_pid)
    assert json.loads(ko("list", "--json").stdout) == []
    assert "nothing to collect" in ko("gc", "--grace", "0").stderr


def test_gc_spares_young_orphans_and_other_deployments(tmp_path: Path, store: Any) -> None:
    import asyncio

    other_store = f"sqlite:///{tmp_path / 'other.db'}"
    theirs = ko("--store", other_store, "start", "python3").stdout.strip()
    young = ko("start", "python3").stdout.strip()
    young_pid = json.loads(ko("list", "--json").stdout)[0]["provisioner_info"]["pid"]
    asyncio.run(store.delete(young))
    try:
        out = ko("gc", "--grace", "3600").stdout
        assert young not in out and procinfo.is_running(young_pid)
        out = ko("gc", "--grace", "0").stdout
        assert young in out and theirs not in out
        assert (
            json.loads(ko("--store", other_store, "list", "--json").stdout)[0]["status"]
            == "running"
        )
    finally:
        ko("--store", other_store, "shutdown", theirs)


def test_kernelspec_install_local(jupyter_env: dict[str, str], tmp_path: Path) -> None:
    result = ko(
        "kernelspec",
        "install",
        "local",
        "--name",
        "py-local",
        "--display-name",
        "Python (local)",
        "--env",
        "FOO=bar",
    )
    path = Path(result.stdout.strip())
    assert path == Path(jupyter_env["JUPYTER_DATA_DIR"]) / "kernels" / "py-local"
    spec = json.loads((path / "kernel.json").read_text())
    assert (
        spec["metadata"]["kernel_provisioner"]["provisioner_name"]
        == "orchestrator-local-provisioner"
    )
    assert spec["display_name"] == "Python (local)" and spec["env"] == {"FOO": "bar"}
    kernel_id = ko("start", "py-local").stdout.strip()
    assert ko("exec", kernel_id, "import os; print(os.environ['FOO'])").stdout == "bar\n"
    ko("shutdown", kernel_id)

    prefixed = ko(
        "kernelspec", "install", "local", "--name", "p2", "--prefix", str(tmp_path / "pfx")
    ).stdout.strip()
    assert Path(prefixed) == tmp_path / "pfx" / "share" / "jupyter" / "kernels" / "p2"
    assert_one_line_error(
        ko("kernelspec", "install", "local", "--name", "bad name!", check=False),
        "bad kernelspec name 'bad name!'",
    )


def test_kernelspec_install_wraps_any_kernel(jupyter_env: dict[str, str]) -> None:
    """Any argv, as a list, or an installed kernelspec with its files; a xeus kernel
    is marked as one no signal may interrupt; bad values are named."""
    source = Path(jupyter_env["JUPYTER_DATA_DIR"]) / "kernels" / "xsrc"
    source.mkdir(parents=True)
    (source / "logo-64x64.png").write_bytes(b"png")
    (source / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["/usr/bin/xpython", "-f", "{connection_file}"],
                "display_name": "Python (xeus)",
                "language": "python",
                "metadata": {"debugger": True},
            }
        )
    )
    path = Path(
        ko(
            "kernelspec", "install", "local", "--name", "xw", "--from-kernelspec", "xsrc"
        ).stdout.strip()
    )
    spec = json.loads((path / "kernel.json").read_text())
    assert spec["argv"] == ["/usr/bin/xpython", "-f", "{connection_file}"]
    assert spec["display_name"] == "Python (xeus)" and spec["metadata"]["debugger"] is True
    assert spec["metadata"]["kernel_orchestrator"] == {"interrupt_signal": "none"}
    assert (path / "logo-64x64.png").read_bytes() == b"png"

    ir_argv = ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]
    path = Path(
        ko(
            "kernelspec",
            "install",
            "local",
            "--name",
            "r",
            "--language",
            "R",
            "--argv",
            json.dumps(ir_argv),
            "--interrupt-signal",
            "SIGINT",
        ).stdout.strip()
    )
    spec = json.loads((path / "kernel.json").read_text())
    assert spec["argv"] == ir_argv and spec["language"] == "R"
    assert spec["interrupt_mode"] == "signal"
    assert spec["metadata"]["kernel_orchestrator"] == {"interrupt_signal": "SIGINT"}

    for args, error in (
        (["--argv", "R -e x"], "bad --argv 'R -e x': not JSON"),
        (["--argv", '["R"]'], "no argument holds {connection_file}"),
        (
            ["--argv", '["R", "{connection_file}"]', "--interrupt-signal", "SIGNOPE"],
            "bad --interrupt-signal: interrupt signal 'SIGNOPE' is not a signal name",
        ),
        (["--from-kernelspec", "nope"], "--from-kernelspec 'nope': no such kernelspec"),
        (["--from-kernelspec", "xw"], "--from-kernelspec 'xw' already names a provisioner"),
    ):
        assert_one_line_error(
            ko("kernelspec", "install", "local", "--name", "bad", *args, check=False), error
        )
