"""The limits resolver: the only code in ds01 that reads resource-limits.yaml and its companions.

Files (all in one directory, found as documented in ``find_config_path``):

- ``resource-limits.yaml``: ``defaults``, ``default_group``, ``groups``, ``policies``,
  ``container_types``, ``aggregate`` blocks, ``bare_metal_access``, ``paths`` …
- ``groups/<group>.members``: one login per line, ``#`` comments (``archived.members`` lists
  logins to leave out of slice generation);
- ``user-overrides.yaml``: ``login: {keys…}`` layered **on top of the user's group**;
- ``lifecycle-exemptions.yaml``: ``exemptions: [...]`` with an expiry.

``load_config(path)`` validates everything at once and raises ``ConfigError`` listing every
problem (file, line, key path, bad value, what was expected); it never guesses. A valid config
answers ``resolve(login) -> Limits``, a frozen record that says where each value came from.
``ConfigStore`` keeps the last good config for long-running services, and the last good config
also outlives the process (``save_last_good`` / ``load_last_good``, see ``store``).

The package, in the order its modules depend on each other (each imports only those above it):

- ``units``: sizes, durations and the value kinds (``Kind`` and its checks);
- ``features``: the sections that belong to one feature (``gateway``, ``images``), declared as data;
- ``schema``: every key of every block and section, with its kind, default and old names;
- ``model``: the records (``Limits``, ``Policies``, …), ``Config`` and its ``resolve``, ``RULE``;
- ``reader``: YAML with line numbers, ``Problem`` and ``ConfigError``;
- ``load``: ``find_config_path`` and ``load_config``;
- ``store``: the last good config on disk, and ``ConfigStore``.

Callers use this package's names (``config.load_config``, ``config.Limits``); the modules are its layout.
"""

from __future__ import annotations

from .load import CONFIG_ENV, DEFAULT_CONFIG_PATH, find_config_path, load_config
from .model import RULE, Aggregate, Config, ContainerTypePolicy, Exemption, Limits, Policies, safe_limits
from .reader import HAS_YAML, ConfigError, Problem
from .schema import (
    AGGREGATE_KEYS,
    ARCHIVED_GROUP,
    CONTAINER_TYPE_ALIASES,
    CONTAINER_TYPE_IGNORED,
    CONTAINER_TYPE_KEYS,
    CONTAINER_TYPES,
    EXEMPTABLE,
    EXEMPTION_KEYS,
    EXEMPTIONS_FILE,
    GROUP_EXTRA,
    GROUP_NAME_RE,
    LIMIT_ALIASES,
    LIMIT_IGNORED,
    LIMIT_KEYS,
    MEMBERS_DIR,
    OVERRIDE_EXTRA,
    OVERRIDES_FILE,
    POLICY_ALIASES,
    POLICY_IGNORED,
    POLICY_KEYS,
    SECTION_IGNORED,
    SECTIONS,
    TOP_LEVEL,
    TYPE_KEYS,
    TYPE_LIMIT_KEYS,
    section_defaults,
)
from .store import (
    DEFAULT_STATE_DIR,
    LAST_GOOD_FILE,
    LAST_GOOD_SUBDIR,
    ConfigStore,
    fallback_warning,
    last_good_candidates,
    last_good_path,
    load_last_good,
    save_last_good,
)
from .units import Kind, format_size, parse_duration_text, parse_size

__all__ = [
    "AGGREGATE_KEYS",
    "ARCHIVED_GROUP",
    "CONFIG_ENV",
    "CONTAINER_TYPES",
    "CONTAINER_TYPE_ALIASES",
    "CONTAINER_TYPE_IGNORED",
    "CONTAINER_TYPE_KEYS",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STATE_DIR",
    "EXEMPTABLE",
    "EXEMPTIONS_FILE",
    "EXEMPTION_KEYS",
    "GROUP_EXTRA",
    "GROUP_NAME_RE",
    "HAS_YAML",
    "LAST_GOOD_FILE",
    "LAST_GOOD_SUBDIR",
    "LIMIT_ALIASES",
    "LIMIT_IGNORED",
    "LIMIT_KEYS",
    "MEMBERS_DIR",
    "OVERRIDES_FILE",
    "OVERRIDE_EXTRA",
    "POLICY_ALIASES",
    "POLICY_IGNORED",
    "POLICY_KEYS",
    "RULE",
    "SECTIONS",
    "SECTION_IGNORED",
    "TOP_LEVEL",
    "TYPE_KEYS",
    "TYPE_LIMIT_KEYS",
    "Aggregate",
    "Config",
    "ConfigError",
    "ConfigStore",
    "ContainerTypePolicy",
    "Exemption",
    "Kind",
    "Limits",
    "Policies",
    "Problem",
    "fallback_warning",
    "find_config_path",
    "format_size",
    "last_good_candidates",
    "last_good_path",
    "load_config",
    "load_last_good",
    "parse_duration_text",
    "parse_size",
    "safe_limits",
    "save_last_good",
    "section_defaults",
]
