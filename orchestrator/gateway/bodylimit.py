"""Request bodies capped before they are buffered, and before authentication.

Tornado reads a whole request body into memory before any handler (and so any
authentication) runs: an anonymous 100 MB POST costs the gateway that much memory.
This delegate sits between Tornado's HTTP connection and the application: a body
announced (or found, when chunked) to be larger than the cap is read and thrown
away chunk by chunk, and the request is answered 413 without reaching a handler.
"""

from __future__ import annotations

import json
import typing as t

from tornado import httputil


class _CappedRequest(httputil.HTTPMessageDelegate):
    def __init__(
        self, inner: httputil.HTTPMessageDelegate, conn: httputil.HTTPConnection, limit: int
    ) -> None:
        self._inner = inner
        self._conn = conn
        self._limit = limit
        self._seen = 0
        self._refused = False

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> t.Awaitable[None] | None:
        length = headers.get("Content-Length", "")
        if length and (not length.strip().isdigit() or int(length) > self._limit):
            self._refused = True
            return None
        return self._inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> t.Awaitable[None] | None:
        if self._refused:
            return None
        self._seen += len(chunk)
        if self._seen > self._limit:  # a chunked body that keeps coming
            self._refused = True
            return None
        return self._inner.data_received(chunk)

    def finish(self) -> None:
        if not self._refused:
            self._inner.finish()
            return
        body = json.dumps(
            {
                "message": f"request body larger than {self._limit} bytes",
                "reason": "Payload Too Large",
            }
        ).encode()
        self._conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 413, "Payload Too Large"),
            httputil.HTTPHeaders(
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    "Connection": "close",
                }
            ),
        )
        self._conn.write(body)
        # The client may still be sending: close once the answer is out (Tornado
        # would otherwise keep the connection for another request).
        if hasattr(self._conn, "_disconnect_on_finish"):
            self._conn._disconnect_on_finish = True
        self._conn.finish()

    def on_connection_close(self) -> None:
        if not self._refused:
            self._inner.on_connection_close()


def cap_request_bodies(app: t.Any, limit: int) -> None:
    """Make ``app`` (a tornado Application) refuse bodies over ``limit`` bytes with 413."""
    start_request = app.start_request

    def capped(
        server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _CappedRequest(start_request(server_conn, request_conn), request_conn, limit)

    app.start_request = capped
