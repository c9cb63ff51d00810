"""CurveZMQ for kernels reached over a network: deciding, and confirming with the kernel.

A provisioner whose kernel ports are reachable by others gives the kernel a keypair
(per the ``transport_encryption`` policy); ports on this machine's loopback count as
reachable by others when other users' processes share it (``shared_loopback``).
When the kernel first answers, an answer that came in plain text means the kernel
ignored its keys (an ipykernel without CurveZMQ support): the kernel is refused, with
an error saying what to upgrade and what to set. Plain text is never accepted
silently where keys were given.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from traitlets import HasTraits, Unicode

from orchestrator.encryption import (
    keypair,
    refuse_unencrypted,
    resolve_policy,
    should_encrypt,
    speaks_curve,
)
from orchestrator.interrupts import interrupt_signal
from orchestrator.liveness import Answer, wait_for_answer

#: The relay's program (Python and pyzmq only), shipped to where the kernel runs.
RELAY_SOURCE = Path(__file__).with_name("relay.py").read_text()


class CurveNegotiation(HasTraits):
    """Mixed into provisioners of networked kernels (Docker, Kubernetes, SSH, Slurm)."""

    if False:  # for type checkers: provided by the provisioner
        parent: Any
        kernel_spec: Any
        kernel_id: str
        log: Any
        connection_info: Any
        transport_encryption: str

        async def poll(self) -> int | None: ...

    relay_python = Unicode(
        "",
        config=True,
        help="Python (with pyzmq) that runs the Curve relay beside a kernel that cannot"
        " encrypt, where the kernel runs ('': python3 in a container or pod, the"
        " provisioner's python on an SSH host or Slurm node).",
    )

    _curve: tuple[str, str] | None = None
    _policy: str = "auto"
    #: The keys go to a relay beside the kernel, which cannot use them itself.
    relayed: bool = False

    def choose_curve(self, *, leaves_machine: bool) -> tuple[str, str] | None:
        """Decide for this launch; the keypair the kernel gets, or None.

        ``leaves_machine``: the kernel's ports can be reached from elsewhere. Ports
        forwarded to this machine's loopback are reachable by others too when other
        users' processes share it (a multi-user gateway's host kernels)."""
        km = self.parent
        leaves_machine = leaves_machine or bool(getattr(km, "shared_loopback", False))
        self._policy = resolve_policy(self.transport_encryption, km)
        self._curve = (
            keypair(km) if should_encrypt(self._policy, leaves_machine=leaves_machine) else None
        )
        self.relayed = bool(self._curve) and not speaks_curve(getattr(self, "kernel_spec", None))
        return self._curve

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()  # type: ignore[misc]
        info["relayed"] = self.relayed
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)  # type: ignore[misc]
        self.relayed = bool(provisioner_info.get("relayed"))

    def relay_interrupt_signal(self) -> str | None:
        """The signal the relay sends for an interrupt_request: the kernel's signal
        where its kernelspec interrupts by signal (None: the request goes to the kernel,
        or no signal may be sent)."""
        spec = getattr(self, "kernel_spec", None)
        if spec is None or spec.interrupt_mode != "signal":
            return None
        signum = interrupt_signal(spec)
        return signal.Signals(signum).name if signum is not None else None

    @property
    def encryption(self) -> str:
        """What protects this kernel's traffic: "curve" (the kernel's own), "relay"
        (a Curve relay beside it) or "plain"."""
        if not (self._curve or (self.connection_info or {}).get("curve_secretkey")):
            return "plain"
        return "relay" if self.relayed else "curve"

    async def first_answer(self, timeout: float, *, image: str, address: str) -> Answer | None:
        """The kernel's first kernel_info reply within ``timeout`` (None: none came, or
        the kernel ended); a plain-text answer to keys we gave is settled by the policy."""

        async def running() -> bool:
            return await self.poll() is None

        answer = await wait_for_answer(
            self.connection_info, self.parent.session, timeout, alive=running
        )
        if answer is not None and self._curve and not answer.encrypted:
            raise refuse_unencrypted(self._policy, str(self.kernel_id), image, address)
        return answer


def relay_command(
    python: str,
    relay_path: str,
    connection_file: str,
    argv: list[str],
    interrupt_signal: str | None = None,
) -> list[str]:
    """The command that runs the kernel ``argv`` (``{connection_file}`` unfilled: the
    relay fills it with its private connection file) behind the relay, which serves
    interrupt_requests with ``interrupt_signal`` if given."""
    options = ["--interrupt-signal", interrupt_signal] if interrupt_signal else []
    return [python, relay_path, *options, connection_file, "--", *argv]
