"""Structured (JSON lines) logs for the gateway, each line carrying the kernel id.

A log line about a kernel names it in its message (every line our managers and
Jupyter Server's kernel manager write does); the formatter lifts that id into its own
``kernel_id`` field so log pipelines can filter by kernel without parsing text.
Tokens never appear: the gateway's RedactingFilter rewrites each record (message and
traceback) before any formatter runs, and this one uses that traceback text.
"""

from __future__ import annotations

import json
import logging
import re
import time

_KERNEL_ID = re.compile(r"\b([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        kernel_id = getattr(record, "kernel_id", None)
        if kernel_id is None:
            match = _KERNEL_ID.search(message)
            kernel_id = match.group(1) if match else None
        if kernel_id:
            entry["kernel_id"] = kernel_id
        if record.exc_text:  # rendered, and redacted, by the gateway's RedactingFilter
            entry["exc"] = record.exc_text
        elif record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def use_json_logs(logger: logging.Logger) -> None:
    for handler in logger.handlers or logging.getLogger().handlers:
        handler.setFormatter(JSONFormatter())
