"""The configuration a deploy replaced, kept beside the live one, and ``ds01 config rollback``.

Each time a deploy changes the live configuration, the ds01_common role first copies the live files into
``<config dir>/.previous/`` (``PREVIOUS_DIR``): ``resource-limits.yaml``, ``user-overrides.yaml``,
``lifecycle-exemptions.yaml``, ``gpu-topology.yaml`` and ``groups/*.members``, whichever exist. ``rollback(path)``
checks that kept set with ds01's own loader first; only a valid set is put back, file by file (each replaced
atomically), and the configuration it replaced becomes the kept one, so a second rollback undoes the first.
When the kept set is absent or invalid, nothing changes and the sentence says why.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import tempfile
from typing import Optional

from . import config, fsutil

PREVIOUS_DIR = ".previous"
SINGLE_FILES = ("resource-limits.yaml", config.OVERRIDES_FILE, config.EXEMPTIONS_FILE, "gpu-topology.yaml")


class RollbackRefused(Exception):
    """Nothing was changed; the message says why and what to do."""


def config_set(directory: str) -> dict[str, tuple[bytes, int]]:
    """``{relative name: (bytes, mode)}`` of the configuration files in ``directory``."""
    names = [name for name in SINGLE_FILES if os.path.isfile(os.path.join(directory, name))]
    members = os.path.join(directory, config.MEMBERS_DIR)
    if os.path.isdir(members):
        names += [
            os.path.join(config.MEMBERS_DIR, entry)
            for entry in sorted(os.listdir(members))
            if entry.endswith(".members") and os.path.isfile(os.path.join(members, entry))
        ]
    out = {}
    for name in names:
        path = os.path.join(directory, name)
        with open(path, "rb") as handle:
            out[name] = (handle.read(), stat.S_IMODE(os.stat(path).st_mode))
    return out


def _check(files: dict, main: str, base_dir: str) -> Optional[config.ConfigError]:
    """Load a set of files (written to a temporary directory) as ds01 would; the error, or None when valid."""
    with tempfile.TemporaryDirectory(prefix="ds01-rollback-") as tmp:
        for name, (data, _mode) in files.items():
            target = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(data)
        try:
            config.load_config(os.path.join(tmp, main), base_dir=base_dir)
        except config.ConfigError as exc:
            return exc
    return None


def _install(directory: str, files: dict, current: dict) -> None:
    for name, (data, mode) in files.items():
        fsutil.atomic_write(os.path.join(directory, name), data, mode=mode)
    for name in current:
        if name not in files:
            os.unlink(os.path.join(directory, name))


def rollback(path: str) -> dict:
    """Put the kept previous configuration of ``path`` back; ``RollbackRefused`` (nothing changed) when it cannot."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    main = os.path.basename(path)
    previous = os.path.join(directory, PREVIOUS_DIR)
    if not os.path.isfile(os.path.join(previous, main)):
        raise RollbackRefused(
            f"there is no previous configuration in {previous} (a deploy keeps one there each time it changes "
            f"{directory}); nothing was changed"
        )
    kept = config_set(previous)
    error = _check(kept, main, directory)
    if error is not None:
        raise RollbackRefused(
            f"the previous configuration in {previous} is not valid, so {directory} was left as it is:\n"
            + error.render()
        )
    if not os.access(directory, os.W_OK) or not os.access(previous, os.W_OK):
        raise RollbackRefused(f"{directory} is not writable by this user (run it as root); nothing was changed")
    current = config_set(directory)
    kept_at = dt.datetime.fromtimestamp(os.stat(os.path.join(previous, main)).st_mtime, dt.timezone.utc)
    _install(directory, kept, current)
    # the replaced configuration becomes the kept one (a second rollback undoes the first)
    staging = tempfile.mkdtemp(prefix=".previous-", dir=directory)
    try:
        _install(staging, current, {})
        os.chmod(staging, 0o755)  # noqa: S103 - as the permissions manifest has it: the config is public
        shutil.rmtree(previous)
        os.rename(staging, previous)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    loaded = config.load_config(path)
    return {
        "ok": True,
        "config": path,
        "restored": sorted(kept),
        "removed": sorted(set(current) - set(kept)),
        "previous": previous,
        "kept_at": kept_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "groups": list(loaded.groups),
        "message": (
            f"ds01: rolled {directory} back to the configuration kept at {kept_at:%Y-%m-%d %H:%M:%S} UTC "
            f"({len(kept)} files); the one it replaced is now in {previous} (`ds01 config rollback` again undoes "
            "this). The next deploy renders the inventory again: fix the inventory too."
        ),
    }
