# ruff: noqa: E501
"""Tenant isolation at the gateway: hostile input refused exactly, secrets kept in.

Fast cases (users file, log redaction, kernel environment) run in-process against
the real parsing and filtering code; the attacks run against a real gateway with
two users and real kernels, and must fail for the attacker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import typing as t
from pathlib import Path

import pytest

from orchestrator.gateway.environment import base_environment, kernel_environment
from orchestrator.gateway.redact import REDACTED, RedactingFilter, redact
from orchestrator.users import UsersFileError, load_users_file, parse_users, user_slug

GOOD = "t" * 32


# ------------------------------------------------------------------ users file
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({GOOD: ""}, "the user name is empty"),
        ({GOOD: "   "}, "the user name is empty"),
        ({GOOD: 7}, "the user name is empty"),
        ({GOOD: "admin"}, "user name 'admin' is reserved"),
        ({GOOD: "Root"}, "user name 'Root' is reserved"),
        ({GOOD: "system:kube"}, "must be 1-64 letters"),
        ({GOOD: "a/b"}, "must be 1-64 letters"),
        ({GOOD: "-alice"}, "must be 1-64 letters"),
        ({GOOD: "x" * 65}, "must be 1-64 letters"),
        ({"short": "alice"}, "the token must be at least 24 characters"),
        ({GOOD: "alice", "u" * 32: "Alice"}, "the name is listed twice"),
        ({GOOD: "alice.b", "u" * 32: "alice-b"}, "becomes 'alice-b' in account names"),
        ({"users": [{"name": "a", "token": GOOD}, {"name": "b", "token": GOOD}]}, "already used"),
        ({"users": [{"name": "a", "token": GOOD, "groups": "x"}]}, "groups must be a list"),
        ({"users": [{"name": "a", "token": GOOD, "role": "admin"}]}, "unknown keys ['role']"),
        ({"users": {"a": GOOD}}, "'users' must be a list"),
        ({"users": ["a"]}, "users[0] must be an object"),
        (["alice"], "expected a JSON object"),
        ({"a" * 30: "alice"}, "already used by another identity"),  # the admin token
    ],
)
def test_users_file_refusals(raw: object, message: str) -> None:
    with pytest.raises(UsersFileError) as info:
        parse_users(raw, "users.json", admin_token="a" * 30)
    assert message in str(info.value)
    assert GOOD not in str(info.value)  # the refusal never shows a token


def test_users_file_with_groups_and_slugs(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": [{"name": "Ana.M", "token": GOOD, "groups": ["hpc"]}]}))
    for mode in (0o644, 0o604, 0o660, 0o650):
        path.chmod(mode)
        with pytest.raises(UsersFileError, match=rf"others can read it \(mode {mode:o}\)"):
            load_users_file(path)
    path.chmod(0o440)  # a Kubernetes Secret volume with the pod's fsGroup
    assert len(load_users_file(path)) == 1
    path.chmod(0o600)
    (user,) = load_users_file(path)
    assert (user.name, user.groups, user_slug(user.name)) == ("Ana.M", ("hpc",), "ana-m")
    assert GOOD not in repr(user)
    path.write_text("{nope")
    with pytest.raises(UsersFileError, match="not valid JSON"):
        load_users_file(path)
    with pytest.raises(UsersFileError, match="cannot read the users file"):
        load_users_file(tmp_path / "missing.json")


# -------------------------------------------------------------- log redaction
SECRET = "s3cr3t-" + "k" * 30


@pytest.mark.parametrize(
    "line",
    [
        f"400 GET /api/kernels?token={SECRET} (127.0.0.1) 1.2ms",
        f"404 GET /api/kernels/x/channels?session_id=1&token={SECRET}",
        f"Authorization: token {SECRET}",
        f"{{'Authorization': 'Bearer {SECRET}'}}",
        f"a client sent {SECRET} as a kernel name",
        f"401 POST /api/kernels?_xsrf=x&auth_token={SECRET}",
    ],
)
def test_tokens_never_reach_a_log_line(line: str) -> None:
    assert SECRET not in redact(line, [SECRET])
    assert REDACTED in redact(line, [SECRET])


def test_redacting_filter_rewrites_records_and_tracebacks() -> None:
    flt = RedactingFilter(lambda: [SECRET])
    try:
        raise ValueError(f"bad token {SECRET}")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, "f", 1, "got %s", (SECRET,), sys.exc_info())
    assert flt.filter(record)
    text = logging.Formatter().format(record)
    assert SECRET not in text and "got [secret]" in text and "ValueError" in text


def test_json_logs_are_redacted_like_text_logs() -> None:
    import io
    import sys

    from orchestrator.gateway.logs import JSONFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(RedactingFilter(lambda: [SECRET]))
    logger = logging.getLogger("ko-json-redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise ValueError(f"bad token {SECRET}")
    except ValueError:
        logger.error("request with %s failed", SECRET, exc_info=sys.exc_info())
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert SECRET not in stream.getvalue()
    assert "ValueError: bad token [secret]" in line["exc"] and "[secret]" in line["msg"]


# ---------------------------------------------------------- kernel environment
def test_kernels_get_none_of_the_gateways_environment() -> None:
    gateway_env = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "KERNEL_ORCHESTRATOR_TOKEN": "admin-secret",
        "KERNEL_ORCHESTRATOR_STORE": "sqlite:////srv/kernels.db",
        "AWS_SECRET_ACCESS_KEY": "x",
        "JUPYTER_TOKEN": "y",
    }
    base = base_environment(["PATH", "LANG", "KERNEL_*", "JUPYTER_TOKEN"], gateway_env)
    assert base == {"PATH": "/usr/bin", "LANG": "C.UTF-8"}
    env = kernel_environment(
        base, {"KERNEL_USERNAME": "admin", "KERNEL_ORCHESTRATOR_TOKEN": "forged"}, "bob"
    )
    assert env["KERNEL_USERNAME"] == "bob" and "KERNEL_ORCHESTRATOR_TOKEN" not in env


# ------------------------------------------------------- attacks on a gateway
from tests.test_gateway import (  # noqa: E402
    ADMIN_TOKEN,
    ALICE,
    BOB,
    Gateway,
    KernelSocket,
    call,
    running_gateway,
    status_of,
)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _raw_post(port: int, size: int) -> bytes:
    """POST ``size`` bytes without a token, streamed; the status line it gets back."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(
            b"POST /api/kernels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
        )
        chunk = b"x" * (1 << 20)
        sent = 0
        try:
            while sent < size:
                s.sendall(chunk[: size - sent])
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        while data := s.recv(65536):
            reply += data
        return reply


def restricted_gpu_spec(jupyter_env: dict[str, str]) -> None:
    """A Docker kernelspec ``gpu`` that only alice may use (configured as ``GPU``: the
    gateway makes configured names canonical too)."""
    spec = Path(jupyter_env["JUPYTER_DATA_DIR"]) / "kernels" / "gpu"
    spec.mkdir(parents=True)
    provisioner = {
        "provisioner_name": "docker-provisioner",
        "config": {"image": "kernel-orchestrator/never-built:1", "user_map": "secret-layout"},
    }
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "GPU",
                "language": "python",
                "env": {"SITE_SECRET": "operator-only"},
                "metadata": {"kernel_provisioner": provisioner},
            }
        )
    )
    (spec / "logo-64x64.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    config = Path(jupyter_env["JUPYTER_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"GatewayKernelSpecManager": {"kernelspec_access": {"GPU": ["alice"]}}})
    )


@pytest.fixture
def two_users(tmp_path: Path, jupyter_env: dict[str, str], kernel_accounts: object):  # type: ignore[no-untyped-def]
    restricted_gpu_spec(jupyter_env)
    with running_gateway(tmp_path) as gw:
        yield gw


@pytest.mark.slow
async def test_unauthenticated_big_body_is_refused_unbuffered(two_users: Gateway) -> None:
    assert two_users.proc is not None
    before = _rss_kib(two_users.proc.pid)
    reply = _raw_post(two_users.port, 100 * 1024 * 1024)
    after = _rss_kib(two_users.proc.pid)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"request body larger than 1048576 bytes" in reply
    assert after - before < 20 * 1024, (before, after)  # memory stays flat
    # an authenticated user meets the same cap
    code, body = await status_of(
        two_users.url, ALICE, "POST", "/api/kernels", {"name": "python3", "pad": "x" * (2 << 20)}
    )
    assert code == 413 and "larger than" in body["message"]


@pytest.mark.slow
async def test_tokens_in_urls_never_reach_the_log(two_users: Gateway) -> None:
    for token in (ALICE, ADMIN_TOKEN, "not-a-token-" + "z" * 20):
        for path in ("/api/kernels/nope", "/api/kernels", "/api/kernels/nope/channels"):
            await status_of(two_users.url, "", "GET", f"{path}?token={token}")
        await status_of(two_users.url, "", "POST", f"/api/kernels?token={token}", {"name": 1})
    time.sleep(0.5)
    log = two_users.log.read_text()
    assert "/api/kernels" in log  # the requests were logged ...
    for token in (ALICE, ADMIN_TOKEN, BOB, "z" * 20):
        assert token not in log  # ... but no token


@pytest.mark.slow
async def test_readyz_tells_anonymous_callers_nothing(two_users: Gateway) -> None:
    code, body = await status_of(two_users.url, "", "GET", "/readyz")
    assert (code, body) == (200, {"status": "ready"})
    code, body = await status_of(two_users.url, ADMIN_TOKEN, "GET", "/readyz")
    assert code == 200 and body["kernels"] == 0


@pytest.mark.slow
async def test_a_users_kernel_sees_no_gateway_secret_and_no_foreign_socket(
    two_users: Gateway,
) -> None:
    kernel = await call(two_users.url, ALICE, "POST", "/api/kernels", {"name": "python3"})
    ws = await KernelSocket.open(two_users.url, ALICE, kernel["id"])
    try:
        code = (
            "import os, json; print(json.dumps(sorted(k for k in os.environ"
            " if 'TOKEN' in k"
            " or k.startswith(('KERNEL_ORCHESTRATOR_STORE', 'JUPYTER')))))"
        )
        out = (await ws.execute(code))["out"]
        assert json.loads(out) == []
        # bob's socket on alice's kernel: the same 404 as a kernel that does not exist,
        # and alice's socket keeps working
        from tornado.httpclient import HTTPClientError

        for kernel_id in (kernel["id"], "00000000-0000-0000-0000-000000000000"):
            with pytest.raises(HTTPClientError) as info:
                await KernelSocket.open(two_users.url, BOB, kernel_id)
            assert info.value.code == 404
        assert (await ws.execute("print(6 * 7)"))["out"] == "42\n"
    finally:
        ws.close()


HOSTILE_REQUESTS = [
    # (token, method, path, body, status, message)
    ("", "GET", "/api/kernels", None, 403, None),
    ("wrong-" + "x" * 30, "GET", "/api/kernels", None, 403, None),
    ("", "POST", "/api/kernels", {"name": "python3"}, 403, None),
    (ALICE, "POST", "/api/kernels", ["python3"], 400, "request body must be a JSON object"),
    (ALICE, "POST", "/api/kernels", {"name": 3}, 404, "no such kernelspec: 3"),
    (ALICE, "POST", "/api/kernels", {"name": "nope"}, 404, "no such kernelspec: nope"),
    (ALICE, "POST", "/api/kernels", {"name": "python3-host"}, 404, "no such kernelspec"),
    (ALICE, "POST", "/api/kernels", {"name": "python3", "env": []}, 400, "env must be an object"),
    (ALICE, "POST", "/api/kernels", {"name": "python3", "env": {"PATH": "/x"}}, 400, "'PATH' is not allowed"),
    (ALICE, "POST", "/api/kernels", {"name": "python3", "env": {"KERNEL_A": 1}}, 400, "'KERNEL_A' has an invalid value"),
    (ALICE, "POST", "/api/kernels", {"name": "python3", "env": {"KERNEL_A": "a\0b"}}, 400, "'KERNEL_A' has an invalid value"),
    (ALICE, "GET", "/api/kernelspecs/python3-host", None, 404, "Kernel spec python3-host not found"),
    (ALICE, "GET", "/kernelspecs/python3-host/kernel.json", None, 404, None),
    (ALICE, "GET", "/api/kernels/00000000-0000-0000-0000-000000000000", None, 404, "Kernel does not exist"),
    (ALICE, "POST", "/api/kernels/00000000-0000-0000-0000-000000000000/restart", None, 404, "Kernel does not exist"),
    (ALICE, "GET", "/api/sessions", None, 404, None),
    (ALICE, "GET", "/api/contents", None, 404, None),
    (ALICE, "GET", "/api/terminals", None, 404, None),
    # Nothing of the gateway's disk is served: its working directory holds the users
    # file and the store (every token, every kernel key).
    (BOB, "GET", "/files/users.json", None, 404, None),
    (BOB, "GET", "/files/store/kernels.db", None, 404, None),
    (BOB, "GET", "/files/gateway.log", None, 404, None),
    (BOB, "GET", "/files/", None, 404, None),
    (BOB, "GET", "/files/runtime/jupyter_cookie_secret", None, 404, None),
    (ADMIN_TOKEN, "GET", "/files/users.json", None, 404, None),
    (BOB, "GET", "/static/base/images/favicon.ico", None, 404, None),
    (BOB, "GET", "/favicon.ico", None, 404, None),
    (BOB, "GET", "/nbconvert/html/users.json", None, 404, None),
    (BOB, "GET", "/view/users.json", None, 404, None),
    (BOB, "GET", "/edit/users.json", None, 404, None),
    (BOB, "GET", "/tree", None, 404, None),
    (BOB, "GET", "/lab", None, 404, None),
    # Jupyter Server's own routes that a gateway does not serve.
    (BOB, "GET", "/login", None, 404, None),
    (BOB, "GET", "/logout", None, 404, None),
    (BOB, "GET", "/api", None, 404, None),
    (BOB, "GET", "/api/status", None, 404, None),
    (BOB, "GET", "/api/me", None, 404, None),
    (BOB, "GET", "/api/spec.yaml", None, 404, None),
    (BOB, "GET", "/api/events/subscribe", None, 404, None),
    (BOB, "POST", "/api/security/csp-report", {"csp-report": {"x": "y" * 1000}}, 404, None),
    (BOB, "GET", "/api/config/notebook", None, 404, None),
    (BOB, "GET", "/metrics", None, 404, None),
    ("", "GET", "/metrics", None, 403, None),
    # Kernelspec names in another case (jupyter_client finds them case-insensitively):
    # bob may not use alice's gpu kernelspec in any spelling.
    (BOB, "GET", "/api/kernelspecs/gpu", None, 404, "Kernel spec gpu not found"),
    (BOB, "GET", "/api/kernelspecs/GPU", None, 404, "Kernel spec GPU not found"),
    (BOB, "GET", "/api/kernelspecs/Gpu", None, 404, "Kernel spec Gpu not found"),
    (BOB, "GET", "/kernelspecs/GPU/kernel.json", None, 404, None),
    (BOB, "GET", "/kernelspecs/GPU/logo-64x64.png", None, 404, None),
    (BOB, "POST", "/api/kernels", {"name": "GPU"}, 404, "no such kernelspec: GPU"),
    (BOB, "POST", "/api/kernels", {"name": "gPu"}, 404, "no such kernelspec: gPu"),
    (BOB, "POST", "/api/kernels", {"name": "gpu\n"}, 404, "no such kernelspec"),
    (BOB, "POST", "/api/kernels", {"name": "\u212apu"}, 404, "no such kernelspec"),
    (BOB, "POST", "/api/kernels", {"name": "PYTHON3-HOST"}, 404, "no such kernelspec"),
    (ALICE, "GET", "/api/kernelspecs/PYTHON3-HOST", None, 404, None),
    # a kernelspec's own configuration is the operator's, not a tenant's
    (ALICE, "GET", "/kernelspecs/gpu/kernel.json", None, 404, None),
    (ALICE, "GET", "/kernelspecs/python3/kernel.json", None, 404, None),
    (ALICE, "GET", "/kernelspecs/gpu/.hidden.png", None, 404, None),
    # malformed start requests
    (ALICE, "POST", "/api/kernels", {"name": "python3", "path": {}}, 400, "path must be a relative API path"),
    (ALICE, "POST", "/api/kernels", {"name": "python3", "path": "../../etc"}, 400, "without '..'"),
    (ALICE, "POST", "/api/kernels", {"name": "python3", "path": "a/../../b"}, 400, "without '..'"),
    (ALICE, "POST", "/api/kernels", {"name": "python3", "path": "x" * 5000}, 400, "at most 4096"),
    (ALICE, "POST", "/api/kernels", {"name": "python3", "env": {"KERNEL_A\n": "x"}}, 400, "is not a valid name"),
    (ALICE, "POST", "/api/kernels", {"name": "python3", "env": {"KERNEL_A=B": "x"}}, 400, "is not a valid name"),
]  # fmt: skip


@pytest.mark.slow
async def test_hostile_requests_get_exact_refusals_and_leave_nothing(
    two_users: Gateway, jupyter_env: dict[str, str]
) -> None:
    for token, method, path, body, status, message in HOSTILE_REQUESTS:
        code, reply = await status_of(two_users.url, token, method, path, body)
        assert code == status, (method, path, body, code, reply)
        if message:
            assert message in reply["message"], (path, reply)
    assert await call(two_users.url, ADMIN_TOKEN, "GET", "/api/kernels") == []
    # a login attempt is no oracle for the admin token: every token gets the same answer
    answers = set()
    for token in (ADMIN_TOKEN, ALICE, "x" * 40):
        code, _ = await status_of(
            two_users.url, "", "POST", "/login", {"password": token, "_xsrf": "x"}
        )
        answers.add(code)
    assert len(answers) == 1 and answers != {500}, answers


@pytest.mark.slow
async def test_start_errors_show_tenants_no_internal_address(
    two_users: Gateway, jupyter_env: dict[str, str]
) -> None:
    """A back-end failure names the engine's socket, hosts, key paths: the operator
    sees them, a tenant gets the message without them and a reference to the log."""
    spec = Path(jupyter_env["JUPYTER_DATA_DIR"]) / "kernels" / "broken"
    spec.mkdir(parents=True)
    provisioner = {
        "provisioner_name": "docker-provisioner",
        "config": {"docker_host": "tcp://127.0.0.1:9"},
    }
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "broken",
                "language": "python",
                "metadata": {"kernel_provisioner": provisioner},
            }
        )
    )
    code, reply = await status_of(two_users.url, ALICE, "POST", "/api/kernels", {"name": "broken"})
    assert code == 400 and "unreachable" in reply["message"], reply
    assert "127.0.0.1:9" not in reply["message"] and "[internal]" in reply["message"]
    reference = reply["message"].split("(reference ")[1].split(":")[0]
    assert reference in two_users.log.read_text()  # the whole text is in the log
    code, reply = await status_of(
        two_users.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "broken"}
    )
    assert code == 400 and "tcp://127.0.0.1:9" in reply["message"]


@pytest.mark.slow
async def test_a_profile_is_only_for_its_allowed_users(
    two_users: Gateway, jupyter_env: dict[str, str], tmp_path: Path
) -> None:
    """Bob asks for alice's GPU profile: 403 from the gateway, before anything reaches a
    cluster (this kernelspec's API server is a closed loopback port)."""
    from .conftest import write_kernelspec

    token = tmp_path / "sa-token"
    token.write_text("not-a-real-token")
    config = {
        "api_url": "https://127.0.0.1:9",
        "api_token_file": str(token),
        "image": "kernel-orchestrator/kernel-python:latest",
        "profiles": {"gpu": {"gpus": 1, "allowed": ["alice", "@gpu-users"]}},
    }
    write_kernelspec(jupyter_env["JUPYTER_DATA_DIR"], "kube", "kubernetes-provisioner", config)
    body = {"name": "kube", "env": {"KERNEL_PROFILE": "gpu"}}
    code, reply = await status_of(two_users.url, BOB, "POST", "/api/kernels", body)
    assert code == 403, reply
    assert reply["message"] == "kubernetes profile 'gpu' is not available to user 'bob'"
    forged = {**body["env"], "KERNEL_USERNAME": "alice", "KERNEL_USER_GROUPS": "gpu-users"}
    code, reply = await status_of(
        two_users.url, BOB, "POST", "/api/kernels", {"name": "kube", "env": forged}
    )
    assert code == 403, reply  # who bob is, and his groups, are the gateway's say
    # alice may: her start gets past the check (and fails later, at the dead API server)
    code, reply = await status_of(two_users.url, ALICE, "POST", "/api/kernels", body)
    assert code == 400 and "not available" not in reply["message"], reply
    assert await call(two_users.url, ADMIN_TOKEN, "GET", "/api/kernels") == []


@pytest.mark.slow
async def test_kernelspecs_are_canonical_and_show_tenants_no_configuration(
    two_users: Gateway,
) -> None:
    mine = (await call(two_users.url, ALICE, "GET", "/api/kernelspecs"))["kernelspecs"]
    theirs = (await call(two_users.url, BOB, "GET", "/api/kernelspecs"))["kernelspecs"]
    assert "gpu" in mine and "gpu" not in theirs
    gpu = await call(two_users.url, ALICE, "GET", "/api/kernelspecs/GPU")
    assert gpu["name"] == "gpu"
    assert gpu["spec"] == {
        "display_name": "GPU",
        "language": "python",
        "interrupt_mode": "signal",
        "argv": [],
        "env": {},
        "metadata": {},
    }
    assert "secret-layout" not in json.dumps(mine) and "operator-only" not in json.dumps(mine)
    assert gpu["resources"]["logo-64x64"].endswith("/kernelspecs/gpu/logo-64x64.png")
    from tornado.httpclient import AsyncHTTPClient

    logo = await AsyncHTTPClient().fetch(
        f"{two_users.url}/kernelspecs/GPU/logo-64x64.png",
        headers={"Authorization": f"token {ALICE}"},
    )
    assert logo.body.startswith(b"\x89PNG")
    # the operator sees the whole configuration
    full = await call(two_users.url, ADMIN_TOKEN, "GET", "/api/kernelspecs/gpu")
    assert full["spec"]["metadata"]["kernel_provisioner"]["config"]["user_map"] == "secret-layout"


def test_the_gateway_mounts_only_its_allow_listed_routes(
    tmp_path: Path, jupyter_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route inventory: every Tornado rule actually mounted, whoever mounted it,
    is one of the gateway's; Jupyter Server's files, login, status, static, events,
    nbconvert and extension routes are not."""
    from orchestrator.gateway.app import GatewayApp
    from orchestrator.gateway.routes import mounted_routes

    monkeypatch.chdir(tmp_path)
    app = GatewayApp()
    app.initialize(["--GatewayApp.default_kernelspecs=False", "--allow-root", "--port=0"])
    try:
        mounted = [(pattern, cls.__name__) for pattern, cls in mounted_routes(app.web_app)]
        kid, name = r"(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)", r"(?P<kernel_name>[\w\.\-%]+)"
        assert mounted == [
            ("/healthz$", "HealthHandler"),
            ("/readyz$", "ReadyHandler"),
            ("/metrics$", "MetricsHandler"),
            ("/api/resolvePath$", "PathResolverHandler"),
            ("/api/kernelspecs$", "MainKernelSpecHandler"),
            (f"/api/kernelspecs/{name}$", "KernelSpecHandler"),
            (f"/kernelspecs/{name}/(?P<path>.*)$", "KernelSpecResourceHandler"),
            ("/api/kernels$", "MainKernelHandler"),
            (f"/api/kernels/{kid}$", "KernelHandler"),
            (f"/api/kernels/{kid}/(?P<action>restart|interrupt)$", "KernelActionHandler"),
            (f"/api/kernels/{kid}/channels$", "ChannelsHandler"),
            ("(.*)$", "Template404"),
        ]
        # caps an operator raises, not "no limit", by default
        assert app.kernel_manager.max_kernels_per_user == 10
        assert (app.max_websockets_per_user, app.max_websocket_message) == (24, 1 << 20)
        assert app.websocket_bytes_per_second == 16 << 20
        assert (app.header_timeout, app.body_timeout) == (30, 60)
        # Jupyter Server's root is an empty private directory, not the working one
        root = Path(app.root_dir)
        assert root != tmp_path and not any(root.iterdir())
        assert root.stat().st_mode & 0o777 == 0o700
        assert app.contents_manager.get_extra_handlers() == []
        # an extension's late add_handlers is caught as well
        from jupyter_server.base.handlers import JupyterHandler

        from orchestrator.gateway.routes import RouteError, enforce

        class Stray(JupyterHandler):
            pass

        app.web_app.add_handlers(".*$", [(r"/stray", Stray)])
        removed = enforce(app.web_app)
        assert removed == ["/stray$"]
        assert "Stray" not in {cls.__name__ for _, cls in mounted_routes(app.web_app)}
        assert issubclass(RouteError, RuntimeError)
    finally:
        app.kernel_manager.kernel_store.close()


def test_a_shared_host_encrypts_what_is_forwarded_to_its_loopback(
    tmp_path: Path, jupyter_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.gateway.app import GatewayApp

    monkeypatch.chdir(tmp_path)
    for argv, shared in (([], False), (["--GatewayApp.shared_host=True"], True)):
        app = GatewayApp()
        app.initialize(
            ["--GatewayApp.default_kernelspecs=False", "--allow-root", "--port=0", *argv]
        )
        try:
            assert app.kernel_manager.shared_loopback is shared
        finally:
            app.kernel_manager.kernel_store.close()
            GatewayApp.clear_instance()


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("gpu", "gpu"),
        ("GPU", "gpu"),
        ("Python3.11_x-y", "python3.11_x-y"),
        ("gpu\n", None),
        ("\u212apu", None),  # the Kelvin sign lowers to 'k'
        ("g/pu", None),
        ("", None),
        ("x" * 129, None),
        (3, None),
        (None, None),
    ],
)
def test_canonical_kernel_names(name: object, canonical: str | None) -> None:
    from orchestrator.gateway.kernelspecs import canonical_kernel_name

    assert canonical_kernel_name(name) == canonical


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("host_kernelspecs", {"python3": "{username}"}, "must be {username} with a fixed prefix"),
        ("host_kernelspecs", {"python3": "shared"}, "every user's kernels would share one account"),
        ("host_kernelspecs", {"python3": "ko-{username}; rm"}, "fixed prefix or suffix"),
        ("host_kernelspecs", {"py/3": "ko-{username}"}, "'py/3' is not a kernelspec name"),
        ("kernelspec_access", {"GPU": ["a"], "gpu": ["b"]}, "names the kernelspec 'gpu' twice"),
        ("kernelspec_access", {"gpu\n": ["a"]}, "is not a kernelspec name"),
    ],
)
def test_kernelspec_settings_refusals(setting: str, value: object, message: str) -> None:
    from traitlets import TraitError

    from orchestrator.gateway.kernelspecs import GatewayKernelSpecManager

    with pytest.raises((TraitError, ValueError)) as info:
        GatewayKernelSpecManager(**{setting: value})
    assert message in str(info.value)
    assert f"GatewayKernelSpecManager.{setting}" in str(info.value)


@pytest.mark.parametrize("name", ["alice\n", "alice\r", "al ice", "alice\x00"])
def test_user_names_are_anchored_at_the_true_end(name: str) -> None:
    with pytest.raises(UsersFileError, match="must be 1-64 letters"):
        parse_users({GOOD: name}, "users.json")


@pytest.fixture
def host_only_spec(jupyter_env: dict[str, str]) -> str:
    """A local kernelspec the operator did not enable for users."""
    import sys as _sys

    spec = Path(jupyter_env["JUPYTER_DATA_DIR"]) / "kernels" / "python3-host"
    spec.mkdir(parents=True)
    argv = [_sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "host", "language": "python"})
    )
    return "python3-host"


@pytest.mark.slow
async def test_host_kernels_run_as_their_users_account_and_reach_no_secret(
    host_only_spec: str, two_users: Gateway, jupyter_env: dict[str, str]
) -> None:
    specs = (await call(two_users.url, ALICE, "GET", "/api/kernelspecs"))["kernelspecs"]
    assert "python3" in specs and host_only_spec not in specs
    kernel = await call(two_users.url, ALICE, "POST", "/api/kernels", {"name": "python3"})
    store = jupyter_env["KERNEL_ORCHESTRATOR_STORE"].removeprefix("sqlite:///")
    ws = await KernelSocket.open(two_users.url, ALICE, kernel["id"])
    try:
        code = (
            "import os, pwd\n"
            "print(pwd.getpwuid(os.getuid()).pw_name)\n"
            f"for p in ({store!r}, {str(two_users.users)!r}):\n"
            "    try:\n"
            "        open(p).read(1); print('READ', p)\n"
            "    except OSError as e:\n"
            "        print(type(e).__name__)\n"
        )
        out = (await ws.execute(code))["out"].split()
        assert out == ["ko-alice", "PermissionError", "PermissionError"]
        # Bob's host kernel shares this loopback: it subscribes to Alice's IOPub and
        # hears nothing, since her ports are CurveZMQ-encrypted.
        app = "from ipykernel.kernelapp import IPKernelApp as A; app = A.instance();"
        port, curve = (await ws.execute(f"{app} print(app.iopub_port, bool(app.curve_secretkey))"))[
            "out"
        ].split()
        assert curve == "True"
        theirs = await call(two_users.url, BOB, "POST", "/api/kernels", {"name": "python3"})
        spy = await KernelSocket.open(two_users.url, BOB, theirs["id"])
        try:
            await spy.execute(
                "import zmq; s = zmq.Context().socket(zmq.SUB); s.setsockopt(zmq.SUBSCRIBE, b'');"
                f" s.connect('tcp://127.0.0.1:{port}')"
            )
            assert (await ws.execute("print('alice-private')"))["out"] == "alice-private\n"
            heard = await spy.execute(
                "heard = []\nwhile s.poll(2000): heard.append(s.recv_multipart())\nprint(len(heard))"
            )
            assert heard["out"] == "0\n"
        finally:
            spy.close()
        await call(two_users.url, BOB, "DELETE", f"/api/kernels/{theirs['id']}")
    finally:
        ws.close()
    # bob cannot resolve paths through alice's kernel: the answer of a missing one
    for kernel_id in (kernel["id"], "00000000-0000-0000-0000-000000000000"):
        reply = await call(two_users.url, BOB, "GET", f"/api/resolvePath?path=x&kernel={kernel_id}")
        assert reply == {
            "resolved": [],
            "unresolved": [{"scope": "kernel", "reason": f"Kernel {kernel_id} could not be found"}],
        }
    await call(two_users.url, ALICE, "DELETE", f"/api/kernels/{kernel['id']}")
    assert not list(Path("/tmp").glob(f"kernel-{kernel['id']}-*"))  # its private dir is gone


@pytest.mark.slow
async def test_a_host_kernel_cannot_make_the_gateway_follow_a_link(two_users: Gateway) -> None:
    """Alice's host kernel swaps its connection file for a link to a root-owned file,
    then restarts (by REST, then by dying): the root gateway must never write or chown
    through it. Her directory is root's (she may enter it, not change it); her HOME and
    working directory are her own."""
    import os
    import uuid

    canary = Path("/root") / f"ko-canary-{uuid.uuid4().hex}"
    canary.write_text("root's")
    canary.chmod(0o600)
    kernel = await call(two_users.url, ALICE, "POST", "/api/kernels", {"name": "python3"})
    kid = kernel["id"]
    ws = await KernelSocket.open(two_users.url, ALICE, kid)
    swap = (
        "import os\n"
        "from ipykernel.kernelapp import IPKernelApp as A\n"
        "f = A.instance().abs_connection_file\n"
        "d = os.path.dirname(f)\n"
        "for act in (lambda: os.unlink(f), lambda: os.rename(f, f + '.x'),\n"
        f"            lambda: os.symlink({str(canary)!r}, d + '/other.json')):\n"
        "    try:\n"
        "        act(); print('DONE')\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__)\n"
        "print(os.getcwd() == os.environ['HOME'], os.access('.', os.W_OK))\n"
    )
    try:
        out = (await ws.execute(swap))["out"].split()
        assert out == ["PermissionError"] * 3 + ["True", "True"], out
        (private,) = Path("/tmp").glob(f"kernel-{kid}-*")
        info, conn = private.lstat(), (private / "kernel.json").lstat()
        import pwd

        alice = pwd.getpwnam("ko-alice")
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, alice.pw_gid, 0o710)
        assert (conn.st_uid, conn.st_mode & 0o777) == (alice.pw_uid, 0o600)
        await call(two_users.url, ALICE, "POST", f"/api/kernels/{kid}/restart")
        assert (await ws.execute("print(6 * 7)"))["out"] == "42\n"
        ws.send("execute_request", {"code": "import os; os._exit(1)", "silent": False})
        back, deadline = "", time.monotonic() + 90
        while back != "back\n" and time.monotonic() < deadline:
            with contextlib.suppress(asyncio.TimeoutError):
                back = (await ws.execute("print('back')", timeout=10))["out"]
        assert back == "back\n"  # the auto-restarter brought it back
        st = os.stat(canary)
        assert (st.st_uid, st.st_mode & 0o777, canary.read_text()) == (0, 0o600, "root's")
    finally:
        ws.close()
        canary.unlink()
        await status_of(two_users.url, ALICE, "DELETE", f"/api/kernels/{kid}")
    assert not list(Path("/tmp").glob(f"kernel-{kid}-*"))


@pytest.fixture
def capped(tmp_path: Path, jupyter_env: dict[str, str], kernel_accounts: object):  # type: ignore[no-untyped-def]
    """A two-user gateway with small websocket caps."""
    with running_gateway(
        tmp_path,
        "--",
        "--GatewayApp.max_websockets_per_user=3",
        "--GatewayApp.max_websocket_message=1048576",
        "--RestartProofWebsocketConnection.hold_bytes_per_user=2097152",
        "--GatewayApp.header_timeout=2",
        "--RestartProofWebsocketConnection.max_client_backlog=4194304",
        "--GatewayApp.max_kernel_message=16777216",
    ) as gw:
        yield gw


@pytest.mark.slow
async def test_websockets_are_capped_per_user_and_per_frame(capped: Gateway) -> None:
    from tornado.httpclient import HTTPClientError

    kernel = await call(capped.url, ALICE, "POST", "/api/kernels", {"name": "python3"})
    kid = kernel["id"]
    theirs = await call(capped.url, BOB, "POST", "/api/kernels", {"name": "python3"})
    sockets = [await KernelSocket.open(capped.url, ALICE, kid) for _ in range(3)]
    try:
        with pytest.raises(HTTPClientError) as info:
            await KernelSocket.open(capped.url, ALICE, kid)
        assert info.value.code == 429
        # another user is not affected, and a closed socket frees its place
        bob = await KernelSocket.open(capped.url, BOB, theirs["id"])
        assert (await bob.execute("print('bob')"))["out"] == "bob\n"
        bob.close()
        sockets.pop().close()
        await asyncio.sleep(0.5)
        sockets.append(await KernelSocket.open(capped.url, ALICE, kid))
        # a frame over max_websocket_message closes that socket (1009), unread
        big = sockets[0]
        big.conn.write_message("x" * (1024 * 1024 + 1))
        assert await asyncio.wait_for(_closed(big), 30) == 1009
        assert (await sockets[1].execute("print(6 * 7)"))["out"] == "42\n"
    finally:
        for ws in sockets:
            ws.close()
        for k in (kernel, theirs):
            await status_of(capped.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{k['id']}")


@pytest.mark.slow
async def test_a_restart_hold_keeps_no_more_than_the_users_byte_cap(capped: Gateway) -> None:
    """Alice kills her kernel and floods her websocket while it is restarted: what the
    hold keeps is bounded (hold_bytes_per_user), the socket is closed, the gateway's
    memory stays flat, and her kernel comes back for a new socket."""
    assert capped.proc is not None
    kernel = await call(capped.url, ALICE, "POST", "/api/kernels", {"name": "python3"})
    kid = kernel["id"]
    ws = await KernelSocket.open(capped.url, ALICE, kid)
    try:
        assert (await ws.execute("print('up')"))["out"] == "up\n"
        before = _rss_kib(capped.proc.pid)
        ws.send("execute_request", {"code": "import os; os._exit(1)", "silent": False})
        await asyncio.sleep(0.5)  # the kernel is gone: its iopub disconnected, a hold began
        for _ in range(40):  # at once: however soon the kernel is back
            try:
                ws.send("execute_request", {"code": "#" + "p" * (900 * 1024), "silent": True})
            except Exception:  # closed under us
                break
        closed = await asyncio.wait_for(_closed(ws), 60)
        assert closed == 1009
        assert _rss_kib(capped.proc.pid) - before < 40 * 1024
        again = await KernelSocket.open(capped.url, ALICE, kid)
        try:
            back, deadline = "", time.monotonic() + 90
            while back != "back\n" and time.monotonic() < deadline:
                with contextlib.suppress(asyncio.TimeoutError):
                    back = (await again.execute("print('back')", timeout=10))["out"]
            assert back == "back\n"
        finally:
            again.close()
    finally:
        ws.close()
        await status_of(capped.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kid}")


@pytest.mark.slow
async def test_a_client_that_sends_no_headers_holds_no_connection(capped: Gateway) -> None:
    """Slowloris: headers that never end, and an idle keep-alive connection, are closed
    after header_timeout (Tornado's default is an hour)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", capped.port), timeout=30) as s:
        s.sendall(b"GET /api/kernels HTTP/1.1\r\nHost: x\r\n")  # and never the end
        assert s.recv(1024) == b""  # closed by the gateway
    assert time.monotonic() - started < 15
    with socket.create_connection(("127.0.0.1", capped.port), timeout=30) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
        s.settimeout(30)
        while s.recv(4096):  # the rest of the body, then the close of the idle connection
            pass
    assert time.monotonic() - started < 30


@pytest.mark.slow
async def test_a_kernel_flooding_a_client_that_does_not_read_is_cut_off(capped: Gateway) -> None:
    """Alice's kernel writes 200 MB of display data to a websocket whose client reads
    nothing: past max_client_backlog the gateway closes that websocket (1008) rather
    than buffer it all; a message over max_kernel_message never arrives; the gateway's
    memory stays flat and her kernel serves a new socket."""
    assert capped.proc is not None
    kernel = await call(capped.url, ALICE, "POST", "/api/kernels", {"name": "python3"})
    kid = kernel["id"]
    ws = await KernelSocket.open(capped.url, ALICE, kid)
    try:
        before = _rss_kib(capped.proc.pid)
        flood = (
            "from IPython.display import display\n"
            "for _ in range(200): display({'text/plain': 'x' * 1_000_000}, raw=True)"
        )
        ws.send("execute_request", {"code": flood, "silent": False})
        await asyncio.sleep(8)  # read nothing meanwhile: Tornado's client stops reading
        grown_kib = _rss_kib(capped.proc.pid) - before
        # Closed: with a close frame (1008), or cut off after the close handshake's own
        # time-out when the close frame waits behind what the client never read.
        assert await asyncio.wait_for(_closed(ws), 60) in (1008, None)
        assert "its client reads slower than the kernel writes" in capped.log.read_text()
        assert grown_kib < 60 * 1024, grown_kib
        # A message over max_kernel_message is never taken in: it costs its own
        # connection (which zmq opens again), not the gateway's memory.
        again = await KernelSocket.open(capped.url, ALICE, kid)
        try:
            before = _rss_kib(capped.proc.pid)
            big = "print('y' * 20_000_000, end='')"
            with contextlib.suppress(asyncio.TimeoutError):
                await again.execute(big, timeout=10)
            assert _rss_kib(capped.proc.pid) - before < 15 * 1024
        finally:
            again.close()
        fresh = await KernelSocket.open(capped.url, ALICE, kid)
        try:
            assert (await fresh.execute("print('still here')", timeout=60))["out"] == (
                "still here\n"
            )
        finally:
            fresh.close()
    finally:
        ws.close()
        await status_of(capped.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kid}")


async def _closed(ws: KernelSocket) -> int | None:
    """Read until the gateway closes the socket; its close code."""
    while await ws.conn.read_message() is not None:
        pass
    return t.cast("int | None", ws.conn.close_code)


# ------------------------------------------------ SSH accounts: kernelspec and CLI input
SSH_ACCOUNT_REFUSALS = [
    ({"owner": "", "user": "ko-{username}"}, "need the kernel's user name (KERNEL_USERNAME)"),
    ({"owner": "", "identity_file": "/keys/{username}"}, "need the kernel's user name"),
    (
        {"owner": "alice", "user": "shared", "multi_tenant": True},
        "would share one remote account (no user is mapped)",
    ),
    (
        {"owner": "carol", "user_map": {"alice": "ko-alice"}, "multi_tenant": True},
        "(user_map has no entry for 'carol')",
    ),
    ({"owner": "alice", "user_map": {"alice": ""}}, "user_map['alice'] must be an account name"),
    ({"owner": "alice", "user_map": {"alice": 5}}, "user_map['alice'] must be an account name"),
    (
        {"owner": "alice", "user_map": {"alice": {"user": "a", "shell": "/bin/sh"}}},
        "user_map['alice'] has unknown keys: shell",
    ),
]


@pytest.mark.parametrize("given, message", SSH_ACCOUNT_REFUSALS)
def test_ssh_account_mapping_refusals(given: dict[str, object], message: str) -> None:
    from orchestrator.errors import KernelStartError
    from provisioners.ssh.accounts import account_for

    args: dict[str, object] = {
        "user": "",
        "identity_file": "",
        "user_map": {},
        "multi_tenant": False,
        "shared_account": False,
        **given,
    }
    owner = str(args.pop("owner"))
    with pytest.raises(KernelStartError) as info:
        account_for(owner, **args)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_ssh_account_mapping() -> None:
    from provisioners.ssh.accounts import RemoteAccount, account_for

    common = {"identity_file": "/keys/{username}", "multi_tenant": True, "shared_account": False}
    mapped = {"bob": {"user": "robert", "identity_file": "/k/bob"}}
    assert account_for("Alice.B", user="ko-{username}", user_map=mapped, **common) == (
        RemoteAccount("ko-alice-b", "/keys/alice-b", owner="Alice.B")
    )
    assert account_for("bob", user="ko-{username}", user_map=mapped, **common) == (
        RemoteAccount("robert", "/k/bob", owner="bob")
    )
    # one shared account, accepted when the operator says so
    shared = {**common, "identity_file": "", "shared_account": True}
    assert account_for("alice", user="jupyter", user_map={}, **shared) == RemoteAccount(
        "jupyter", owner="alice"
    )


@pytest.mark.parametrize(
    "items, message",
    [
        (["alice"], "--user-map 'alice' must look like USER=ACCOUNT[:IDENTITY_FILE]"),
        (["=ko-alice"], "--user-map '=ko-alice' must look like"),
        (["alice="], "--user-map 'alice=' must look like"),
        (["alice=a", "alice=b"], "--user-map names 'alice' twice"),
    ],
)
def test_cli_user_map_refusals(items: list[str], message: str, jupyter_env: dict[str, str]) -> None:
    import subprocess
    import sys

    cli = str(Path(sys.executable).with_name("kernel-orchestrator"))
    argv = [cli, "kernelspec", "install", "ssh-provisioner", "--name", "hpc", "--host", "login1"]
    for item in items:
        argv += ["--user-map", item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert not (Path(jupyter_env["JUPYTER_DATA_DIR"]) / "kernels" / "hpc").exists()


@pytest.mark.slow
async def test_users_file_alone_means_no_admin_token(
    tmp_path: Path, jupyter_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KERNEL_ORCHESTRATOR_TOKEN", raising=False)
    gw = Gateway(tmp_path, admin=False).start()
    try:
        assert await call(gw.url, ALICE, "GET", "/api/kernels") == []
        assert (await status_of(gw.url, ADMIN_TOKEN, "GET", "/api/kernels"))[0] == 403
        assert "gateway token" not in gw.log.read_text()
    finally:
        gw.kill(signal.SIGTERM)


@pytest.mark.parametrize(
    ("argv", "stdin", "mode", "message"),
    [
        (
            ["--token", "s3cret-" + "x" * 30],
            "",
            None,
            "would leave the token in this process's argv",
        ),
        (["--token", "-"], "", None, "serve --token -: no token on stdin"),
        (["--token-file", "TOKEN"], "", 0o644, "others can read it (mode 644); chmod 600 it"),
        (["--token-file", "TOKEN"], "", 0o604, "others can read it (mode 604)"),
        (["--token-file", "MISSING"], "", None, "--token-file"),
    ],
)
def test_serve_takes_no_token_from_argv(
    argv: list[str],
    stdin: str,
    mode: int | None,
    message: str,
    tmp_path: Path,
    jupyter_env: dict[str, str],
) -> None:
    import subprocess
    import sys

    token_file = tmp_path / "token"
    token_file.write_text("t" * 40)
    if mode is not None:
        token_file.chmod(mode)
    argv = [
        str(token_file) if a == "TOKEN" else str(tmp_path / "missing") if a == "MISSING" else a
        for a in argv
    ]
    cli = str(Path(sys.executable).with_name("kernel-orchestrator"))
    done = subprocess.run(
        [cli, "serve", "--port", "0", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert "x" * 30 not in done.stderr


@pytest.mark.slow
async def test_the_operator_token_from_a_file_or_stdin_stays_out_of_argv(
    tmp_path: Path, jupyter_env: dict[str, str]
) -> None:
    import os
    import subprocess
    import sys

    from tests.test_gateway import free_port, wait_http

    cli = str(Path(sys.executable).with_name("kernel-orchestrator"))
    token = "op-" + "q" * 40
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "KERNEL_ORCHESTRATOR_TOKEN"}
    for how in (["--token-file", str(token_file)], ["--token", "-"]):
        port = free_port()
        proc = subprocess.Popen(
            [cli, "serve", "--port", str(port), "--allow-root", *how],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
        )
        try:
            assert proc.stdin is not None
            proc.stdin.write(f"{token}\n".encode())
            proc.stdin.close()
            wait_http(f"http://127.0.0.1:{port}/readyz")
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert token.encode() not in cmdline
            assert await call(f"http://127.0.0.1:{port}", token, "GET", "/api/kernels") == []
        finally:
            proc.terminate()
            proc.wait(30)


@pytest.mark.slow
async def test_warm_pools_are_not_filled_when_the_provisioners_config_names_the_user(
    tmp_path: Path, jupyter_env: dict[str, str]
) -> None:
    """``{username}`` in the provisioner's traitlets config (not in the kernelspec) makes
    kernels differ by user too: a pooled one, started for nobody, would be wrong for
    whoever it is handed to."""
    config = Path(jupyter_env["JUPYTER_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"LocalProvisioner": {"account": "ko-{username}"}})
    )
    from .conftest import write_kernelspec

    # A kernelspec whose kernels start in each request's notebook directory neither.
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "mapped",
        "orchestrator-local-provisioner",
        {"working_dir_map": {"/srv/notebooks": "/srv/notebooks"}},
    )
    gw = Gateway(
        tmp_path, "--warm-pool", "python3=2", "--warm-pool", "mapped=1", users=False
    ).start()
    try:
        deadline = time.monotonic() + 20
        while gw.log.read_text().count("not filled") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert "warm pool python3: not filled" in gw.log.read_text()
        assert "warm pool mapped: not filled" in gw.log.read_text()
        assert await call(gw.url, ADMIN_TOKEN, "GET", "/api/kernels") == []
    finally:
        gw.kill(signal.SIGTERM)


def test_a_user_removed_from_the_users_file_is_revoked(tmp_path: Path) -> None:
    """What certificate mode asks before it mints (orchestrator.users.is_revoked): the
    users file as it is now, re-read when it changes."""
    from orchestrator.gateway.auth import OrchestratorIdentityProvider
    from orchestrator.users import is_revoked, remove_revocation_check

    users = tmp_path / "users.json"
    tokens = {"alice": "a" * 32, "bob": "b" * 32}
    users.write_text(json.dumps({token: name for name, token in tokens.items()}))
    users.chmod(0o600)
    provider = OrchestratorIdentityProvider(user_tokens_file=str(users))
    try:
        assert not is_revoked("alice") and not is_revoked("bob")
        users.write_text(json.dumps({tokens["bob"]: "bob"}))
        os.utime(users, ns=(time.time_ns() + 10**9,) * 2)  # (a new stamp, surely)
        assert is_revoked("alice") and not is_revoked("bob")
        assert not is_revoked("admin")  # the operator is never revoked
    finally:
        remove_revocation_check(provider.no_longer_a_user)
