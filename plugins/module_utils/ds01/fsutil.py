"""Writing state files so that a reader never sees half of one: the one atomic-replace helper.

Every state file ds01 writes (inventories, lifecycle state, grants, refusals, quota alerts,
dcgm-exporter job mapping, gateway counters) goes through ``atomic_write``: a temp file in the
same directory (its name starts with ``.``, so globbing readers such as dcgm-exporter skip it),
written, optionally fsynced, given its mode (and owner), then renamed over the target. Errors
are ``OSError`` for the caller to handle; the temp file never outlives a failure.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional, Union


def atomic_write(
    path: str,
    content: Union[str, bytes],
    mode: int = 0o644,
    uid: Optional[int] = None,
    fsync: bool = False,
    dir_mode: int = 0o755,
) -> None:
    """Replace ``path`` with ``content``; ``uid`` chowns it (root only); ``fsync`` also syncs the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if uid is not None and os.geteuid() == 0:
            os.chown(tmp, uid, -1)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


def atomic_write_json(path: str, data: Any, mode: int = 0o644, uid: Optional[int] = None, fsync: bool = False) -> None:
    """``atomic_write`` of ``data`` as stable JSON (sorted keys, one trailing newline)."""
    text = json.dumps(data, sort_keys=True, indent=1, default=str) + "\n"
    atomic_write(path, text, mode=mode, uid=uid, fsync=fsync)
