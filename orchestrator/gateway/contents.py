"""A contents manager that serves no file: a gateway serves kernels, nothing else.

Jupyter Server always builds a contents manager, and its stock one mounts ``/files/``
over ``root_dir`` (the working directory by default), whatever services are asked
for: that served the users file, the store and, run from ``/``, the whole machine.
This one mounts no handler and answers every request as a missing file, so no route
can read the gateway's disk through it, even if a handler that uses it is mounted.
"""

from __future__ import annotations

import typing as t

from jupyter_server.services.contents.manager import AsyncContentsManager
from tornado import web


class NoContentsManager(AsyncContentsManager):
    """Every path is missing; nothing is read, written, listed or served."""

    def get_extra_handlers(self) -> list[t.Any]:
        return []

    def _missing(self, path: str = "") -> web.HTTPError:
        return web.HTTPError(404, "a kernel gateway serves no files")

    async def dir_exists(self, path: str) -> bool:
        return False

    async def file_exists(self, path: str = "") -> bool:
        return False

    async def exists(self, path: str) -> bool:
        return False

    async def is_hidden(self, path: str) -> bool:
        return True

    async def get(  # type: ignore[override]
        self, path: str, content: bool = True, **kwargs: t.Any
    ) -> t.Any:
        raise self._missing(path)

    async def save(self, model: t.Any, path: str) -> t.Any:
        raise self._missing(path)

    async def delete_file(self, path: str) -> None:
        raise self._missing(path)

    async def rename_file(self, old_path: str, new_path: str) -> None:
        raise self._missing(old_path)
