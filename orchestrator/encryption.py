"""CurveZMQ transport encryption for kernels reached over a network.

Kernel messages are HMAC-signed but not encrypted: code and outputs cross the wire
in plain text. jupyter_client 8.9+ can provision CurveZMQ keys in the connection
file and ipykernel 7+ uses them. Our policy, per kernel:

* ``auto`` (default): encrypt whenever a kernel's ports can be reached by anyone but
  the orchestrator (a container's address on a Docker network, a remote engine's
  published ports, a pod IP, a compute node, a shared login host, and this machine's
  own loopback when other users' processes share it); a kernel that cannot do
  CurveZMQ there is refused, with an error naming the package to upgrade and the
  setting that accepts plain text. Ports only the orchestrator reaches stay plain;
* ``required``: always encrypt; a kernel that cannot is refused with a clear error;
* ``disabled``: never (only when an operator asks for it).

The kernelspec's provisioner config (``transport_encryption``) wins over the
orchestrator's (``AsyncKernelManager.remote_transport_encryption``), which wins over
the default. The secret key travels like the HMAC key: inside the 0600 connection
file (or mounted Secret), never in argv, env or a pod spec; it is saved in the
kernel store (0600) so re-attach keeps working.
"""

from __future__ import annotations

from typing import Any

import zmq

from .errors import KernelStartError, OrchestratorError

POLICIES = ("auto", "required", "disabled")


def resolve_policy(kernelspec_setting: str, parent: Any) -> str:
    """The policy in force for one kernel."""
    for value in (kernelspec_setting, getattr(parent, "remote_transport_encryption", "")):
        if value:
            value = str(value).lower()
            if value not in POLICIES:
                raise OrchestratorError(
                    f"transport_encryption {value!r} is not one of {', '.join(POLICIES)}"
                )
            return value
    return "auto"


def should_encrypt(policy: str, leaves_machine: bool) -> bool:
    if policy == "required":
        return True
    if policy == "disabled":
        return False
    return leaves_machine


def keypair(parent: Any) -> tuple[str, str]:
    """The kernel's Curve keypair (Z85 text): the manager's on a restart, else a new one."""
    if not zmq.has("curve"):
        raise OrchestratorError("this pyzmq/libzmq build has no CurveZMQ support")
    pub, sec = getattr(parent, "curve_publickey", None), getattr(parent, "curve_secretkey", None)
    if pub and sec:
        return (
            pub.decode() if isinstance(pub, bytes) else pub,
            sec.decode() if isinstance(sec, bytes) else sec,
        )
    new_pub, new_sec = zmq.curve_keypair()
    return new_pub.decode(), new_sec.decode()


def without_curve(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k not in ("curve_publickey", "curve_secretkey")}


def speaks_curve(kernel_spec: Any) -> bool:
    """Whether the kernel reads its Curve keys itself (else a relay encrypts for it).

    Declared by ``metadata.supported_encryption`` (a string or a list holding
    "curve", per the JEP draft), or ours: ``metadata.kernel_orchestrator.encryption``
    "native" or "relay". Undeclared, an ipykernel argv is taken as native (ipykernel
    >= 7.3 reads the keys; an older one is caught when it answers in plain text);
    every other kernel gets the relay: IRkernel, xeus, IJulia and Toree ignore keys."""
    metadata = getattr(kernel_spec, "metadata", None) or {}
    ours = metadata.get("kernel_orchestrator") or {}
    choice = ours.get("encryption") if isinstance(ours, dict) else None
    if choice in ("native", "relay"):
        return bool(choice == "native")
    declared = metadata.get("supported_encryption") or []
    if "curve" in ([declared] if isinstance(declared, str) else declared):
        return True
    argv = list(getattr(kernel_spec, "argv", None) or [])
    return any(a in ("ipykernel_launcher", "ipykernel") for a in argv)


def refuse_unencrypted(policy: str, kernel_id: str, what: str, address: str) -> KernelStartError:
    """The error for a kernel that ignored the Curve keys it was given: under
    ``required``, and under ``auto`` (keys are given there only when others can reach
    its ports), plain text is never accepted silently."""
    why = (
        "transport_encryption is 'required'"
        if policy == "required"
        else f"its ports at {address} can be reached by others than the orchestrator, so"
        " transport_encryption 'auto' refuses plain text"
    )
    return KernelStartError(
        f"kernel {kernel_id}: {what} does not support CurveZMQ transport encryption (it"
        f" ignored its keys: for ipykernel, version >= 7.3 is needed) and {why}; install"
        " ipykernel >= 7.3 there, or set metadata kernel_orchestrator.encryption = 'relay'"
        " in the kernelspec to encrypt through a relay beside the kernel, or set"
        " transport_encryption = 'disabled' in the kernelspec's provisioner config to"
        " accept unencrypted kernel traffic"
    )
