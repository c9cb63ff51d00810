"""``kernel-orchestrator gc`` for Docker: containers of this deployment no record owns."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.labels import LABEL_INSTANCE, LABEL_KERNEL_ID
from orchestrator.provisioning.contract import GarbageContext, kernelspec_configs

from . import engine


async def collect_garbage(ctx: GarbageContext) -> list[str]:
    """Remove (or, dry, list) the orphaned containers on every engine in use."""
    found: list[str] = []
    for url in _engines_in_use():

        def orphans(client: Any, url: str = url) -> list[tuple[str, str, str]]:
            out = []
            for c in client.api.containers(
                all=True, filters={"label": f"{LABEL_INSTANCE}={ctx.instance}"}
            ):
                kid = (c.get("Labels") or {}).get(LABEL_KERNEL_ID, "")
                if kid in ctx.owned_kernel_ids:
                    continue
                if time.time() - float(c.get("Created", 0)) < ctx.grace_seconds:
                    continue
                out.append((c["Id"], (c.get("Names") or ["?"])[0].lstrip("/"), kid))
            return out

        try:
            candidates = await engine.call(url, orphans)
        except OrchestratorError as e:
            ctx.log.debug("gc: skipping Docker engine %s: %s", url, e)
            continue
        for cid, name, kid in candidates:
            found.append(f"container {name} (kernel {kid}) on {url}")
            if not ctx.dry_run:
                await engine.call(url, _remover(cid))
    return found


def _remover(container_id: str) -> Any:
    def remove(client: Any) -> None:
        client.api.remove_container(container_id, force=True, v=True)

    return remove


def _engines_in_use() -> list[str]:
    """The default engine plus every engine a docker kernelspec names."""
    urls = [engine.engine_url("")]
    for config in kernelspec_configs("docker-provisioner"):
        url = config.get("docker_host")
        if url and url not in urls:
            urls.append(url)
    return urls
