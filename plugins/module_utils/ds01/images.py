"""The ``images`` section of resource-limits.yaml: the lab-approved images of ``ds01 container deploy``.

Its keys, checks and defaults are declared as data in the config package (``config/features.py``,
``IMAGES_KEYS``), so ``ds01 config check`` knows them; this module says what the values mean.

```yaml
images:
  allowed:                         # images `ds01 container deploy` may use; empty: any image on the server
    - local/debian-min:bookworm
    - nvcr.io/nvidia/pytorch:24.05-py3
  default: local/debian-min:bookworm   # used when deploy gets no --image (always allowed, listed or not)
  deploy_network: none             # the network deploy attaches containers to (default none: no network)
```

The list binds the ``ds01 container`` helper only: the gateway lets a user run any image on the server
with their own ``docker run`` (README, "What users can do through the gateway"), under the same limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from . import config as config_mod

SECTION = "images"


def defaults() -> dict:
    """The section's values when no config ever loaded."""
    return config_mod.section_defaults(SECTION)


def normalize(ref: str) -> str:
    """The name Docker means by ``ref``: ``ubuntu`` → ``ubuntu:latest``, ``docker.io/library/x:1`` → ``x:1``."""
    ref = ref.strip()
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    last = ref.rsplit("/", 1)[-1]
    if "@" not in last and ":" not in last:
        ref += ":latest"
    return ref


def allowed_images(section: Mapping[str, Any]) -> tuple:
    """The configured list plus the default (empty: any image)."""
    listed = tuple(section.get("allowed") or ())
    default = section.get("default")
    if listed and default and normalize(default) not in {normalize(i) for i in listed}:
        listed = (*listed, default)
    return listed


def choose_image(section: Mapping[str, Any], asked: Optional[str]) -> tuple:
    """``(image, None)`` for the image deploy uses, or ``(None, sentence)`` saying why it may not."""
    image = asked or section.get("default")
    allowed = allowed_images(section)
    if not image:
        hint = f" (one of: {', '.join(allowed)})" if allowed else ""
        return None, f"no default image is configured (images.default); name one with --image IMAGE{hint}."
    if allowed and normalize(image) not in {normalize(i) for i in allowed}:
        return None, (
            f"image {image} is not on this lab's list of approved images: {', '.join(allowed)}. "
            "Pick one of those with --image, or ask the admins to add yours (images.allowed)."
        )
    return image, None
