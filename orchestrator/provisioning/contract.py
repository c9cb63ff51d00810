"""The contract every kernel-orchestrator provisioner implements, on top of jupyter_client's.

A provisioner is ``OrchestratorProvisionerMixin`` mixed in before jupyter_client's
``KernelProvisionerBase`` (or a subclass of it), registered under the
``jupyter_client.kernel_provisioners`` entry points. The core (managers, ``gc``, the
CLI) knows provisioners only through this module and those entry points, so imports
run one way: provisioners depend on the core, never the reverse.

What the mixin adds:

* ``orchestrator_instance`` / labels: resources are marked with the kernel id and the
  orchestrator deployment's id, so garbage collection can find its own leftovers.
* ``state_changed()``: a provisioner whose saved state changes (a new container id, a
  tunnel rebuilt on other ports) asks its manager to save the record again.
* ``collect_garbage()``: a class-level hook ``kernel-orchestrator gc`` calls to remove
  resources of this deployment that no record owns.
* ``add_kernelspec_arguments()`` / ``kernelspec_config()``: how
  ``kernel-orchestrator kernelspec install PROVISIONER`` writes a kernelspec for it.
* ``startup_diagnostics()``: the last lines a failed kernel printed, for error messages.
* ``reconnect()`` / ``release()``: after ``load_provisioner_info`` (which only loads
  state, so a status check opens nothing), ``reconnect`` makes the kernel reachable
  from this process (tunnels, port-forwards); ``release`` lets go of everything this
  process holds for the kernel (tunnels, connections, threads) without stopping it.
* ``follow()``: another process restarted the kernel; move this process to it.
* ``watch_liveness()``: tell the auto-restarter when the kernel may have ended, so an
  idle kernel costs no timer (see rule 5).

The rules a provisioner must keep (the managers rely on them):

1. **Who calls what.** A kernel's life in one process is one of these transitions,
   each driven by the manager (:mod:`orchestrator.manager`):

   - *start*: ``pre_launch`` -> ``launch_kernel`` (which calls ``state_changed()`` as
     soon as anything exists, so a crash leaves a record to clean up after);
   - *restart in place* (by the owner): ``shutdown_requested``/``kill`` ->
     ``cleanup(restart=True)`` -> ``pre_launch`` -> ``launch_kernel``; ``cleanup``
     with ``restart=True`` must keep what clients of this process connect to (local
     ports of tunnels and forwards, published ports) so the new process is behind the
     same endpoint where the back-end allows it;
   - *re-attach* (a process that did not start it; also ``gc``/``list`` status checks):
     ``load_provisioner_info`` only (it opens nothing), then ``poll``, then
     ``reconnect`` unless only the status was wanted;
   - *follow* (another process restarted it; a gateway replica, a client process):
     ``follow(saved)``, with the state the restarting process saved;
   - *take-over* (this process becomes the owner): ``follow`` with the latest record,
     then the manager's restarter starts calling ``poll``;
   - *release* (``detach``, exit, ownership lost) and *drop* (a failed restart, the
     restart limit): ``release``, after ``cleanup(restart=False)`` for a drop.

2. **``poll()`` returning None means "running or unknown", never "dead".** Return an
   exit status only when the kernel is known to be gone: a tunnel that is down, an
   engine or API server that does not answer is "unknown", or the restarter restarts
   a kernel that is still running, and its state is lost.
3. **The endpoint may change** on restart and follow (a new pod or container
   address). ``connection_info`` after ``launch_kernel`` and after ``follow`` is what
   clients of *this* process must use; the manager compares it with the one before
   and moves every client it knows of (:mod:`orchestrator.endpoint`). Keep it stable
   where the back-end allows: then clients need not move at all.
4. **Process-local state.** Part of a saved state belongs to the process that saved it
   (its tunnels' local ports): name those keys in ``process_local_state`` and the
   default ``follow`` keeps this process's own values.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..labels import LABEL_INSTANCE, LABEL_KERNEL_ID


@dataclass
class GarbageContext:
    """What ``collect_garbage`` needs to know: who we are and which kernels we own."""

    instance: str
    owned_kernel_ids: set[str]
    grace_seconds: float = 60.0
    dry_run: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("kernel-orchestrator"))


@dataclass
class LivenessWatch:
    """A subscription to what a back-end pushes about one kernel's process.

    The provisioner calls the ``notify`` it was given (from any thread, any number of
    times) whenever the kernel may have ended or the source's health changed; the
    auto-restarter then polls.
    """

    #: True while an exit of the kernel's current process would be told: the source is
    #: up and the watch is on that process.
    pushed: Callable[[], bool]
    #: Stop telling (idempotent).
    cancel: Callable[[], None]


class OrchestratorProvisionerMixin:
    """Mixed in before ``KernelProvisionerBase`` (or a subclass of it)."""

    if TYPE_CHECKING:  # provided by KernelProvisionerBase
        parent: Any
        kernel_id: str
        log: logging.Logger

    @property
    def orchestrator_instance(self) -> str:
        """The deployment id from the managing orchestrator ('' under a stock manager)."""
        return str(getattr(self.parent, "orchestrator_instance", "") or "")

    @property
    def managed_by_orchestrator(self) -> bool:
        """True when a kernel-orchestrator manager (with a kernel store) drives us."""
        return getattr(self.parent, "kernel_store", None) is not None

    def resource_labels(self) -> dict[str, str]:
        """Labels to put on every resource created for this kernel."""
        labels = {LABEL_KERNEL_ID: str(self.kernel_id)}
        if self.orchestrator_instance:
            labels[LABEL_INSTANCE] = self.orchestrator_instance
        return labels

    async def state_changed(self) -> None:
        """Ask the manager to save this kernel's record again."""
        save = getattr(self.parent, "save_record", None)
        if save is not None:
            await save()

    # How long wait() sleeps between polls; a provisioner that learns of changes some
    # other way (a watch) overrides wait_for_change instead.
    poll_interval = 0.1

    async def wait_for_change(self) -> None:
        """Sleep until the kernel's state may have changed."""
        await asyncio.sleep(self.poll_interval)

    async def wait(self) -> int | None:
        """Wait for the kernel to end; its exit status (as ``poll()`` reports it)."""
        while (status := await self.poll()) is None:  # type: ignore[attr-defined]
            await self.wait_for_change()
        return status  # type: ignore[no-any-return]

    # What a start is waiting for, in words ("job 12 pending (Priority)"): the CLI's
    # progress line shows it, and a start that times out names it.
    start_phase = ""

    def status_fields(self) -> dict[str, Any]:
        """Provisioner-specific state for the gateway's kernel model (``provisioner``)."""
        return {"phase": self.start_phase} if self.start_phase else {}

    async def reconnect(self) -> None:
        """Make a re-attached kernel reachable from this process (open its tunnels).

        Called by the manager after ``load_provisioner_info`` when re-attaching, and by
        the default :meth:`follow`; with tunnels already open, it points them at the
        kernel's current process, keeping their local ports where it can.
        """

    #: Keys of the saved state that belong to the process that saved it (the local
    #: ports of its tunnels): following another process's restart keeps ours.
    process_local_state: tuple[str, ...] = ()

    async def follow(self, saved: dict[str, Any]) -> None:
        """Move this process to the kernel process another process's restart made.

        ``saved`` is that process's state (``get_provisioner_info``). Called by the
        manager of a process that did not do the restart (a gateway replica serving the
        kernel's clients, a process taking the kernel over). The default loads
        ``saved`` with this process's own ``process_local_state`` kept, and calls
        :meth:`reconnect`; afterwards ``connection_info`` is where this process's
        clients reach the kernel (see rule 3 in the module docstring).
        """
        mine = await self.get_provisioner_info()  # type: ignore[attr-defined]
        kept = {k: mine[k] for k in self.process_local_state if mine.get(k) is not None}
        await self.load_provisioner_info({**saved, **kept})  # type: ignore[attr-defined]
        await self.reconnect()

    def release(self) -> None:
        """Release what this process holds for the kernel; the kernel keeps running."""

    def watch_liveness(self, notify: Callable[[], None]) -> LivenessWatch | None:
        """Call ``notify`` (from any thread) when the kernel may have ended; None when
        this back-end pushes nothing, and the restarter keeps polling on its timer.
        See rule 5 in the module docstring."""
        return None

    async def startup_diagnostics(self, lines: int = 20) -> str:
        """The last ``lines`` of the kernel's own output, if this provisioner can get them."""
        return ""

    @classmethod
    async def collect_garbage(cls, ctx: GarbageContext) -> list[str]:
        """Remove resources of ``ctx.instance`` that no owned kernel id claims.

        Returns one line per resource removed (or that would be, with ``dry_run``).
        """
        return []

    # ------------------------------------------------------------ kernelspecs
    kernelspec_summary = ""

    @classmethod
    def add_kernelspec_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this provisioner's options to ``kernelspec install``."""

    @classmethod
    def kernelspec_config(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The ``kernel_provisioner.config`` written into the kernelspec."""
        return {}

    @classmethod
    def kernelspec_argv(cls, args: argparse.Namespace) -> list[str]:
        """The kernel command line written into the kernelspec."""
        python = getattr(args, "python", None) or "python"
        return [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


def client_connection_info(
    provisioner: Any, ip: str, ports: dict[str, int], curve: tuple[str, str] | None = None
) -> dict[str, Any]:
    """What clients connect to: ``ip`` and ``ports``, the session key, Curve keys if any.

    A re-attached provisioner keeps the key it saved (the manager's session gets it
    from us); a new launch takes the manager's.
    """
    info: dict[str, Any] = dict(provisioner.connection_info or {})
    if not info.get("key"):
        km = provisioner.parent
        info.update(
            key=km.session.key,
            signature_scheme=km.session.signature_scheme,
            kernel_name=km.kernel_name,
        )
    info.update({f"{ch}_port": int(ports[ch]) for ch in CHANNELS})
    info.update(ip=ip, transport="tcp")
    if curve:
        info.update(curve_publickey=curve[0], curve_secretkey=curve[1])
    return info


def kernelspec_configs(provisioner_name: str) -> list[dict[str, Any]]:
    """The ``kernel_provisioner.config`` of every installed kernelspec using a provisioner.

    ``gc`` uses it to find the hosts, engines and clusters this machine's kernelspecs
    point at.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    try:
        specs = KernelSpecManager().get_all_specs()
    except Exception:
        return []
    configs = []
    for spec in specs.values():
        stanza = (spec.get("spec", {}).get("metadata") or {}).get("kernel_provisioner") or {}
        if stanza.get("provisioner_name") == provisioner_name:
            configs.append(dict(stanza.get("config") or {}))
    return configs
