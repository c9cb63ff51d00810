"""Garbage collection: remove what a crashed orchestrator left behind.

Two kinds of leftovers exist after a crash or ``kill -9``:

* stale records: the kernel they describe is gone. The provisioner's cleanup runs
  (so it can release containers, pods, files) and the record is removed, unless a
  live process owns the kernel (that owner deals with the death itself);
* orphaned resources: a kernel was launched but its record was never saved (the
  orchestrator died in between), or the record was lost. Every installed provisioner
  of ours is asked to remove resources labelled with this deployment's id whose kernel
  id no record owns; resources younger than ``grace_seconds`` are spared because
  another orchestrator process may be starting them right now.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .errors import KernelGoneError
from .manager import AsyncKernelManager
from .provisioning import installed_provisioners, load_provisioner_class
from .provisioning.contract import GarbageContext, OrchestratorProvisionerMixin
from .store import KernelStore

log = logging.getLogger("kernel-orchestrator")


@dataclass
class GarbageReport:
    stale_records: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def collect_garbage(
    store: KernelStore, *, dry_run: bool = False, grace_seconds: float = 60.0
) -> GarbageReport:
    report = GarbageReport()
    owned: set[str] = set()
    for record in await store.list():
        km = AsyncKernelManager(
            kernel_store=store, kernel_name=record.kernel_name, outlive_process=True
        )
        try:
            # Only "does it run?": no ownership, no tunnel.
            await km.reattach(record, verify=False, own=False, connect=False)
        except KernelGoneError:
            if dry_run or await km.discard():
                report.stale_records.append(record.kernel_id)
                continue
            report.problems.append(
                f"kernel {record.kernel_id} has died; its owner has not cleaned it up yet"
            )
        except Exception as e:  # keep the record: we cannot tell whether it is gone
            report.problems.append(f"kernel {record.kernel_id}: {e}")
        owned.add(record.kernel_id)
        km.release()

    ctx = GarbageContext(
        instance=store.instance_id,
        owned_kernel_ids=owned,
        grace_seconds=grace_seconds,
        dry_run=dry_run,
        log=log,
    )
    seen: set[type] = set()
    for name in sorted(installed_provisioners()):
        try:
            cls = load_provisioner_class(name)
        except Exception as e:
            report.problems.append(f"provisioner {name}: {e}")
            continue
        if cls in seen or not issubclass(cls, OrchestratorProvisionerMixin):
            continue
        seen.add(cls)
        try:
            report.orphans.extend(await cls.collect_garbage(ctx))
        except Exception as e:
            report.problems.append(f"provisioner {name}: {e}")
    return report
