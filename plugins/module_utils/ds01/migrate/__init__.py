"""Adopt an earlier ds01-infra installation: its config directory → the roles' inventory variables.

``ds01 config import DIR`` reads the directory the earlier system (hertie-data-science-lab/ds01-infra, the code
at 2cf1a0e) kept beside its ``resource-limits.yaml``: ``groups/*.members``, ``user-overrides.yaml``,
``lifecycle-exemptions.yaml`` and ``group-overrides.txt``, and prints ``ds01_common_limits``,
``ds01_common_group_members``, ``ds01_common_user_overrides`` and ``ds01_common_lifecycle_exemptions``.

Two parts, kept apart on purpose:

- ``Legacy`` is a model of how the old system resolved a user (its ``get_resource_limits.py``): a user in
  ``user-overrides.yaml`` got the defaults plus the override (the group's values dropped) while their aggregate and
  idle policies still came from their group unless the override set its own; the first group in the file's order
  whose members (file and inline, or the sanitised login) include the login wins; a key missing everywhere
  fell back to the old code's own constants (16 CPUs, no idle timeout, no runtime cap, no full GPU …); an
  exemption whose ``expires_on`` has no time zone made the old check give up (no exemption for that user and
  enforcement from there on). It reads the raw YAML and shares nothing with ds01's resolver.
- ``import_directory`` writes variables from which ds01's resolver (overrides layered on the group, exact keys,
  builtin defaults) gives every user the values ``Legacy`` gives: it writes each value explicitly wherever the
  two rules would differ, and reports every key whose meaning changes as a ``Change`` (old meaning, new meaning).
  It then loads what it wrote with ds01's own loader and compares every user once more; a user it could not
  reproduce is reported, never silently accepted.

Nothing here writes to the host: the result goes to stdout, the changes to stderr (or both in one JSON document).

The package: ``legacy`` (the old resolver's model, what it read, ``MigrationError``) and ``importer`` (the import,
its ``Change`` reports and the verification).
"""

from __future__ import annotations

from .importer import (
    Change,
    differences,
    import_directory,
    project,
    render_directory,
    to_yaml,
    verify,
)
from .legacy import (
    GROUP_OVERRIDES_FILE,
    LEGACY_DROPPED_LIMITS,
    LEGACY_DURATIONS,
    LEGACY_EXEMPTABLE,
    LEGACY_GLOBAL_POLICIES,
    LEGACY_GPUEQ_KEYS,
    LEGACY_SIZE_FALLBACK,
    LEGACY_SLOTS_KEYS,
    LEGACY_TYPE_KEYS,
    LEGACY_USER_POLICIES,
    LIMITS_FILE,
    UPSTREAM,
    Legacy,
    MigrationError,
    docker_bytes,
    legacy_sanitize,
)

__all__ = [
    "GROUP_OVERRIDES_FILE",
    "LEGACY_DROPPED_LIMITS",
    "LEGACY_DURATIONS",
    "LEGACY_EXEMPTABLE",
    "LEGACY_GLOBAL_POLICIES",
    "LEGACY_GPUEQ_KEYS",
    "LEGACY_SIZE_FALLBACK",
    "LEGACY_SLOTS_KEYS",
    "LEGACY_TYPE_KEYS",
    "LEGACY_USER_POLICIES",
    "LIMITS_FILE",
    "UPSTREAM",
    "Change",
    "Legacy",
    "MigrationError",
    "differences",
    "docker_bytes",
    "import_directory",
    "legacy_sanitize",
    "project",
    "render_directory",
    "to_yaml",
    "verify",
]
