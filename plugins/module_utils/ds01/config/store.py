"""The last good config: kept on disk for every process, and in memory for long-running services.

Whenever a config loads (a CLI command, the gateway's ``ConfigStore``), the exact text of every file that was
validated is saved, if it changed, to ``<paths.state_dir>/last-good-config/bundle.json`` (``save_last_good``; one
file replaced atomically, mode 0644, or 0600 when a source file was not world-readable; only where the process may
write, so a user's command saves nothing). While the files are broken, ``load_last_good(path)`` finds that bundle
again (``last_good_candidates``): the state directory named by the broken file's own ``paths.state_dir`` (read
leniently, from the ``paths:`` block alone when the rest is not YAML), else the default ``/var/lib/ds01``; the
bundle must name the same config path and belong to root (or the caller) without group/other write access. It is
validated again like any config (relative paths still resolve against the real config directory).
``ds01 config check`` never uses it.

``ConfigStore`` keeps the last good config in memory for long-running services and reloads when a file changes.
"""

from __future__ import annotations

import _thread  # the lock without the threading module (a cold command's import cost)
import datetime as dt
import json
import os
import re
import stat
import time
from collections.abc import Mapping
from typing import Any, Optional

from .. import fsutil, logs
from .load import load_config
from .model import Config, Limits, safe_limits
from .reader import HAS_YAML, ConfigError, Problem, yaml_module
from .schema import EXEMPTIONS_FILE, MEMBERS_DIR, OVERRIDES_FILE

log = logs.get(__name__)

LAST_GOOD_SUBDIR = "last-good-config"  # under paths.state_dir
LAST_GOOD_FILE = "bundle.json"
DEFAULT_STATE_DIR = "/var/lib/ds01"


# --------------------------------------------------------------------------------------------
# The last good config, kept on disk
# --------------------------------------------------------------------------------------------

_MEMBERS_NAME_RE = re.compile(r"^" + MEMBERS_DIR + r"/[A-Za-z0-9_][A-Za-z0-9_.-]*\.members$")


def last_good_path(state_dir: str) -> str:
    return os.path.join(state_dir, LAST_GOOD_SUBDIR, LAST_GOOD_FILE)


def save_last_good(config: Config) -> bool:
    """Keep ``config``'s validated files as the last good config; True when the bundle was (re)written.

    Best effort and quiet: a process that may not write the state directory (a user's command), a config that
    came from the bundle itself, or an unchanged bundle writes nothing; a failure is logged at info level.
    """
    if config.last_good is not None or not config.texts:
        return False
    state_dir = config.paths.state_dir
    if not os.path.isdir(state_dir) or not os.access(state_dir, os.W_OK):
        return False
    files = {os.path.relpath(file, config.directory): text for file, text in config.texts.items()}
    target = last_good_path(state_dir)
    try:
        with open(target, encoding="utf-8") as handle:
            saved = json.load(handle)
        if isinstance(saved, dict) and (saved.get("config_path"), saved.get("base_dir"), saved.get("files")) == (
            config.path,
            config.base_dir,
            files,
        ):
            return False
    except (OSError, ValueError):
        pass  # none yet, or damaged: write it
    import hashlib  # deferred: only a changed bundle is written, and every ds01 command calls this

    digest = hashlib.sha256(json.dumps([config.path, config.base_dir, files], sort_keys=True).encode()).hexdigest()
    private = False
    for file in config.texts:
        try:
            private = private or not os.stat(file).st_mode & stat.S_IROTH
        except OSError:
            private = True
    bundle = {
        "schema_version": "1",
        "config_path": config.path,
        "base_dir": config.base_dir,
        "main": os.path.basename(config.path),
        "saved_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "digest": digest,
        "files": files,
    }
    try:
        fsutil.atomic_write_json(target, bundle, mode=0o600 if private else 0o644)
    except OSError as exc:
        log.info("cannot keep the last good configuration in %s: %s", target, exc)
        return False
    return True


def _paths_block(text: str) -> Any:
    """The top-level ``paths:`` block of a file whose YAML as a whole does not parse, parsed alone."""
    block: list = []
    for line in text.splitlines():
        if not block:
            if re.match(r"^paths\s*:", line):
                block.append(line)
            continue
        if line[:1] not in ("", " ", "\t", "#"):
            break
        block.append(line)
    yaml = yaml_module()
    try:
        return yaml.safe_load("\n".join(block)) if block else None
    except yaml.YAMLError:
        return None


def _lenient_state_dir(path: str) -> Optional[str]:
    """``paths.state_dir`` of a config file that may be broken, when it can still be read."""
    if not HAS_YAML:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return None
    yaml = yaml_module()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = _paths_block(text)
    paths = data.get("paths") if isinstance(data, dict) else None
    state_dir = paths.get("state_dir") if isinstance(paths, dict) else None
    if not isinstance(state_dir, str) or not state_dir:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), state_dir))


def last_good_candidates(path: str) -> list[str]:
    """Where the last good config of ``path`` may be: its own ``paths.state_dir``, then the default state dir."""
    found: list = []
    for state_dir in (_lenient_state_dir(path), DEFAULT_STATE_DIR):
        if state_dir and state_dir not in found:
            found.append(state_dir)
    return found


def _trusted(bundle_path: str) -> bool:
    """The bundle and its directory belong to root (or the caller) and no group or other may write them."""
    for name in (os.path.dirname(bundle_path), bundle_path):
        st = os.stat(name)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def _load_bundle(bundle_path: str, bundle: Mapping[str, Any]) -> Config:
    files, main, base_dir = bundle.get("files"), bundle.get("main"), bundle.get("base_dir")
    if not (isinstance(files, dict) and isinstance(main, str) and main in files and isinstance(base_dir, str)):
        raise ConfigError([Problem(bundle_path, "", "is not a ds01 last-good bundle")])
    import tempfile  # deferred: only a broken config falls back to the bundle

    with tempfile.TemporaryDirectory(prefix="ds01-last-good-") as tmp:
        for name, text in files.items():
            allowed = name in (main, OVERRIDES_FILE, EXEMPTIONS_FILE) or _MEMBERS_NAME_RE.match(name)
            if not allowed or "/" in main or not isinstance(text, str):
                raise ConfigError([Problem(bundle_path, "", f"holds an unexpected file {name!r}")])
            target = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as handle:
                handle.write(text)
        return load_config(os.path.join(tmp, main), base_dir=base_dir)


def load_last_good(path: str) -> Optional[Config]:
    """The last good config saved for ``path``, validated again; None when there is none to use."""
    want = os.path.abspath(path)
    for state_dir in last_good_candidates(want):
        bundle_path = last_good_path(state_dir)
        try:
            if not _trusted(bundle_path):
                log.warning("ignoring %s: it must belong to root and be writable by no one else", bundle_path)
                continue
            with open(bundle_path, encoding="utf-8") as handle:
                bundle = json.load(handle)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.warning("the last good configuration %s cannot be read: %s", bundle_path, exc)
            continue
        if not isinstance(bundle, dict) or bundle.get("config_path") != want:
            continue
        try:
            config = _load_bundle(bundle_path, bundle)
        except (ConfigError, OSError) as exc:
            why = exc.problems[0] if isinstance(exc, ConfigError) and exc.problems else exc
            log.warning("the last good configuration %s cannot be used: %s", bundle_path, why)
            continue
        config.path, config.directory, config.files = bundle_path, os.path.dirname(want), [bundle_path]
        config.last_good = {"path": bundle_path, "saved_at": bundle.get("saved_at"), "config_path": want}
        return config
    return None


def fallback_warning(path: str, error: ConfigError, config: Config) -> str:
    """One line: which file is broken and how, and which last good config is used instead."""
    first = str(error.problems[0]) if error.problems else "it cannot be used"
    more = len(error.problems) - 1
    extra = f" (and {more} more problem{'s' if more != 1 else ''})" if more > 0 else ""
    saved = (config.last_good or {}).get("saved_at") or "earlier"
    line = (
        f"the configuration {os.path.abspath(path)} is invalid: {first}{extra}; using the last good configuration, "
        f"saved {saved} in {config.path}. Fix the file, then run `ds01 config check`."
    )
    return " ".join(line.split())


# --------------------------------------------------------------------------------------------
# Last good config for long-running services
# --------------------------------------------------------------------------------------------


class ConfigStore:
    """Reloads the config when any of its files change; keeps the last good one on errors.

    ``get()`` returns the current Config or None when none ever loaded (callers then use
    ``safe_limits``). ``resolve(login)`` does that for them. A broken file is logged once per
    change, never raised: a fault in the config must not block work it does not concern.
    """

    def __init__(self, path: str, min_interval_s: float = 2.0) -> None:
        self.path = path
        self.min_interval_s = min_interval_s
        self._lock = _thread.allocate_lock()
        self._config: Optional[Config] = None
        self._stamp: Optional[tuple] = None
        self._checked_at = -1e18
        self.last_error: Optional[ConfigError] = None

    def _fingerprint(self) -> tuple:
        directory = os.path.dirname(os.path.abspath(self.path))
        files = [self.path, os.path.join(directory, OVERRIDES_FILE), os.path.join(directory, EXEMPTIONS_FILE)]
        members = os.path.join(directory, MEMBERS_DIR)
        try:
            files += [os.path.join(members, f) for f in sorted(os.listdir(members))]
        except OSError:
            pass
        stamp = []
        for name in files:
            try:
                st = os.stat(name)
                stamp.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamp.append((name, None))
        return tuple(stamp)

    def get(self, now: Optional[float] = None) -> Optional[Config]:
        now = time.monotonic() if now is None else now
        with self._lock:
            if now - self._checked_at < self.min_interval_s and self._config is not None:
                return self._config
            self._checked_at = now
            stamp = self._fingerprint()
            if stamp == self._stamp:
                return self._config
            self._stamp = stamp
            try:
                self._config = load_config(self.path)
                self.last_error = None
            except ConfigError as exc:
                self.last_error = exc
                if self._config is None:  # none in this process yet (e.g. a restart): the one kept on disk
                    self._config = load_last_good(self.path)
                if self._config is not None and self._config.last_good is not None:
                    log.error("%s", fallback_warning(self.path, exc, self._config))
                else:
                    log.error("keeping the last good configuration: %s", exc.render())
            else:
                save_last_good(self._config)
            return self._config

    def resolve(self, login: str) -> Limits:
        config = self.get()
        if config is None:
            return safe_limits(login)
        return config.resolve(login)
