"""Image references: checked for syntax, then against the operator's allow-list.

Docker and Kubernetes name images the same way (``[registry[:port]/]path[:tag][@digest]``),
so a reference a client picks is refused with the same message on both, before any
engine or API server sees it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from orchestrator.errors import OrchestratorError

_IMAGE_REF = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)


class ImageError(OrchestratorError):
    """An image reference is malformed or not allowed."""


def check_image(image: str, allowed: Iterable[str]) -> str:
    """``image`` if it is a valid reference matching one of the ``allowed`` patterns."""
    if not _IMAGE_REF.fullmatch(image or ""):
        raise ImageError(f"image {image!r} is not a valid image reference")
    patterns = list(allowed)
    if not any(fnmatch.fnmatchcase(image, pattern) for pattern in patterns):
        raise ImageError(f"image {image!r} is not allowed (allowed: {', '.join(patterns)})")
    return image
