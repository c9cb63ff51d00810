"""A stand-in single-user server for the Hub benchmark: JupyterHub spawns it like
``jupyterhub-singleuser`` and it answers every request with 200, so that fifty users
can have running servers without fifty JupyterLabs. What is measured is the gateway's
traffic to the Hub, not the servers. Standard library only; loopback only.
"""

from __future__ import annotations

import http.server
import os
import urllib.parse


class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    url = urllib.parse.urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    server = http.server.ThreadingHTTPServer((url.hostname or "127.0.0.1", url.port or 0), Answer)
    server.serve_forever()


if __name__ == "__main__":
    main()
