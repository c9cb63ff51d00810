"""Headless Debian Chromium and playwright-core, for the browser end-to-end tests.

Chromium is Debian's package; playwright-core comes from the npm registry, pinned by
``tests/browser/package-lock.json``, installed once into the cache directory
(``$KERNEL_ORCHESTRATOR_CACHE``, default /var/cache/kernel-orchestrator) and never
downloads a browser of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from . import debian

HERE = Path(__file__).resolve().parent / "browser"
CHROMIUM = "/usr/bin/chromium"


def cache_dir() -> Path:
    root = Path(os.environ.get("KERNEL_ORCHESTRATOR_CACHE", "/var/cache/kernel-orchestrator"))
    return root / "browser"


def ensure_browser() -> Path:
    """Chromium, Node.js and playwright-core in place; the node_modules folder."""
    debian.ensure({CHROMIUM: "chromium", "node": "nodejs", "npm": "npm"})
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    lock = (HERE / "package-lock.json").read_bytes()
    stamp = target / ".installed"
    want = hashlib.sha256(lock).hexdigest()
    if not stamp.exists() or stamp.read_text() != want or not (target / "node_modules").exists():
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, target / name)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=target,
            env={**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"},
            check=True,
            capture_output=True,
            timeout=600,
        )
        stamp.write_text(want)
    return target / "node_modules"


def script(name: str) -> Path:
    return HERE / name


async def run_lab_script(
    node_modules: Path, screenshot: Path, name: str = "lab.cjs", **settings: str
) -> asyncio.subprocess.Process:
    """``lab.cjs`` (or another script ``name``) in headless Chromium, with its
    ``settings`` (LAB_URL and LAB_TOKEN, or HUB_URL, HUB_USER and HUB_PASSWORD; see the
    script), for the Docker kernelspec; its stdout piped (its steps), its stdin too (the
    test says CONTINUE there)."""
    screenshot.unlink(missing_ok=True)
    return await asyncio.create_subprocess_exec(
        "node",
        str(script(name)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "NODE_PATH": str(node_modules),
            "KERNEL_DISPLAY_NAME": "Python 3 (Docker)",
            "SCREENSHOT": str(screenshot),
            **settings,
        },
    )
