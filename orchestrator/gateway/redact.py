"""No token in any log line.

Tornado writes the request URI, query string included, into its warning for a
failed request (``400 GET /api/kernels?token=...``), and a client may put a token
anywhere a value goes. This filter sits on every handler of the gateway's loggers
and rewrites each record before it is formatted: ``token=...`` query values,
``Authorization`` header values and every token the gateway knows become ``[secret]``.
"""

from __future__ import annotations

import logging
import re
import typing as t

REDACTED = "[secret]"
_PATTERNS = (
    re.compile(r"(?i)((?:^|[?&;\s\"'])(?:_xsrf|token|auth_token|access_token)=)[^&\s\"']+"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:token|bearer|basic)\s+)[^\s\"',}]+"),
)


def redact(text: str, secrets: t.Iterable[str] = ()) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(rf"\1{REDACTED}", text)
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and traceback) with every secret redacted."""

    def __init__(self, secrets: t.Callable[[], t.Iterable[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        known = list(self._secrets())
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep it as logging would
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, known)
        record.msg, record.args = redact(message, known), ()
        return True


def install(loggers: t.Iterable[logging.Logger], secrets: t.Callable[[], t.Iterable[str]]) -> None:
    """Put one RedactingFilter on every handler of ``loggers`` (and the root logger)."""
    flt = RedactingFilter(secrets)
    for logger in [*loggers, logging.getLogger()]:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(flt)
