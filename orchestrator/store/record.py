"""The persisted description of one kernel.

A record is everything a *different* orchestrator process needs to find a kernel
again and drive it: the provisioner's own state (which embeds the connection info and
its HMAC key), the kernelspec as it was at launch time (so a later edit or removal of
the kernelspec cannot strand a running kernel), and the launch arguments a restart
needs (jupyter_client never hands ``restart=True`` state to a provisioner, so the
manager has to keep it itself).
"""

from __future__ import annotations

import base64
import time
from dataclasses import asdict, dataclass, field
from typing import Any

_BYTES_TAG = "__bytes_b64__"

#: The label naming the user a kernel belongs to (the store also keeps it in a column,
#: so limits per user are counted there).
TENANT_LABEL = "owner"
#: The label of a warm pool's unclaimed kernel: the pool (its kernelspec name).
POOL_LABEL = "pool"


def to_jsonable(value: Any) -> Any:
    """Convert ``value`` to something ``json.dumps`` accepts, losslessly.

    jupyter_client keeps the session key and CurveZMQ keys as ``bytes``; they are
    tagged so that :func:`from_jsonable` restores them as ``bytes`` again.
    """
    if isinstance(value, bytes):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    # Paths, enums and similar: keep their text form rather than failing a save.
    return str(value)


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable`."""
    if isinstance(value, dict):
        if set(value) == {_BYTES_TAG}:
            return base64.b64decode(value[_BYTES_TAG])
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


@dataclass
class KernelRecord:
    """One kernel as saved in the kernel store."""

    kernel_id: str
    kernel_name: str
    provisioner_name: str
    provisioner_info: dict[str, Any] = field(default_factory=dict)
    kernel_spec: dict[str, Any] = field(default_factory=dict)
    launch_args: dict[str, Any] = field(default_factory=dict)
    connection_file: str = ""
    instance: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.time)
    restarts: int = 0
    # Ownership, as the store had it when this record was read (the store's own
    # columns are the truth; these are never written back from a record).
    owner: dict[str, Any] = field(default_factory=dict)
    lease_expires: float = 0.0
    generation: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (bytes tagged) suitable for storage."""
        return to_jsonable(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> KernelRecord:
        """Rebuild a record, ignoring fields written by a newer version."""
        data = from_jsonable(data)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def public_dict(self) -> dict[str, Any]:
        """The record without secrets, for printing (``list --json``, ``start --json``).

        The HMAC key and CurveZMQ secret key are replaced by a marker: printing a
        record must never leak the key that authenticates every kernel message.
        """
        data = self.to_json_dict()
        redact_secrets(data)
        return data


_SECRET_KEYS = {"key", "curve_secretkey", "curve_serverkey_secret", "password", "passphrase"}


def redact_secrets(data: Any) -> None:
    """Replace the values of secret-looking keys in nested dicts, in place."""
    if isinstance(data, dict):
        for k in list(data):
            if k in _SECRET_KEYS and data[k]:
                data[k] = "<redacted>"
            else:
                redact_secrets(data[k])
    elif isinstance(data, list):
        for item in data:
            redact_secrets(item)
