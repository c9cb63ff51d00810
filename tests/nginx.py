"""Debian's nginx as the tests' load balancer: round-robin over gateway replicas.

It proxies HTTP and WebSockets (the kernel channels) to every replica in turn, on
127.0.0.1 only, from a private prefix directory; the machine's own nginx service is
neither used nor started. A request that cannot reach a replica (it was just killed)
goes to the next one, as with any production load balancer in front of replicas.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from . import debian
from .pgserver import free_port

NGINX = "/usr/sbin/nginx"

_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream gateways {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
            proxy_buffering off;
        }}
    }}
}}
"""


class Nginx:
    """One nginx balancing over ``ports`` (the replicas, on 127.0.0.1)."""

    def __init__(self, ports: list[int]) -> None:
        debian.ensure({NGINX: "nginx-light"})
        self.prefix = Path(tempfile.mkdtemp(prefix="ko-nginx-"))
        self.port = free_port()
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in ports
        )
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(_CONF.format(prefix=self.prefix, port=self.port, servers=servers))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        check = subprocess.run(
            [NGINX, "-t", "-p", str(self.prefix), "-c", str(self.conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration: {check.stderr}")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.prefix / "stderr.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 20
        import socket

        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"nginx did not start: {(self.prefix / 'error.log').read_text()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)
