#!/usr/bin/python
# Copyright (c) ds01.infra contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: user_slices
short_description: Generate the ds01 systemd slices for every known user
version_added: 0.1.0
description:
  - Writes C(ds01.slice), one C(ds01-<group>.slice) per configured group and one
    C(ds01-<group>-<user>.slice) per known user, each with CPU, memory, tasks and IO accounting on.
  - A user whose resolved limits carry an C(aggregate) block also gets
    C(ds01-<group>-<user>.slice.d/10-resource-limits.conf) with C(CPUQuota), C(MemoryMax), C(MemoryHigh)
    and C(TasksMax). A user without one gets a slice with accounting and no caps (and no drop-in).
  - The known users are the members of every group, the users named in the overrides, and O(extra_users)
    (for example every login with a home directory); a login no members file lists falls into the default
    group. Archived logins get no slice. Group, slice name and limits come from the ds01 limits resolver,
    the same code the runtime uses, never from a second parser.
  - A configuration the resolver rejects fails the module with the full list of problems before anything
    is written. So does a slice-name collision between two logins.
  - Every file it writes carries a marker comment line. Pruning removes only files carrying that marker,
    so units written by hand are never deleted.
  - The module does not reload systemd. It returns RV(daemon_reload_needed) so that the play reloads once,
    and only when a unit file changed.
author:
  - ds01.infra maintainers (@ds01-infra)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ds01.infra.module_attributes
attributes:
  diff_mode:
    support: full
    details:
      - One diff per file created, changed or removed.
options:
  config:
    description:
      - Path of C(resource-limits.yaml). Its members files, C(user-overrides.yaml) and
        C(lifecycle-exemptions.yaml) are read from the same directory.
    type: path
    default: /etc/ds01/resource-limits.yaml
  extra_users:
    description:
      - More logins that need a slice although no members file or override names them.
      - They resolve like any other login, so they land in the default group.
    type: list
    elements: str
    default: []
  unit_dir:
    description:
      - Directory the units are written to. Created (mode C(0755)) when missing.
    type: path
    default: /etc/systemd/system
  prune:
    description:
      - Remove ds01-generated slices (and their drop-in directories) of users and groups no longer known.
      - Files without the ds01 marker line are never removed.
      - The limits drop-in of a user who is still known but no longer has an C(aggregate) block is removed
        whatever this option says, since keeping it would keep enforcing stale caps.
    type: bool
    default: true
  validate:
    description:
      - Check the complete generated set with C(systemd-analyze verify) before anything is installed.
        Any complaint about a generated file fails the module; nothing is written.
      - Needs C(systemd-analyze) on the target, but not a running systemd.
    type: bool
    default: true
requirements:
  - PyYAML
  - systemd-analyze when O(validate=true)
notes:
  - Slices are named C(ds01-<group>-<sanitized login>.slice); the sanitiser removes hyphens, which systemd
    would read as hierarchy.
seealso:
  - name: systemd.slice
    description: Slice unit configuration.
    link: https://www.freedesktop.org/software/systemd/man/latest/systemd.slice.html
"""

EXAMPLES = r"""
- name: Generate the slices of every known user (and of everyone with a home directory)
  ds01.infra.user_slices:
    config: /etc/ds01/resource-limits.yaml
    extra_users: "{{ home_logins }}"
  register: slices

- name: Reload systemd when a unit changed
  ansible.builtin.systemd_service:
    daemon_reload: true
  when: slices.daemon_reload_needed

- name: Render into a sandbox without systemd-analyze
  ds01.infra.user_slices:
    config: /tmp/sandbox/etc/ds01/resource-limits.yaml
    unit_dir: /tmp/sandbox/etc/systemd/system
    validate: false
"""

RETURN = r"""
daemon_reload_needed:
  description: A unit file or drop-in was written or removed; run C(systemctl daemon-reload).
  returned: always
  type: bool
  sample: true
units:
  description: Every slice unit the configuration asks for.
  returned: always
  type: list
  elements: str
  sample: [ds01.slice, ds01-student.slice, ds01-student-alice.slice]
users:
  description: Login to the slice unit it gets.
  returned: always
  type: dict
  sample: {alice: ds01-student-alice.slice, dave: ds01-researcher-dave.slice}
created:
  description: Files written that did not exist before (would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [/etc/systemd/system/ds01-student-alice.slice]
updated:
  description: Files whose content changed.
  returned: always
  type: list
  elements: str
  sample: [/etc/systemd/system/ds01-student-alice.slice.d/10-resource-limits.conf]
removed:
  description: ds01-generated files removed (stale users and groups, stale drop-ins).
  returned: always
  type: list
  elements: str
  sample: [/etc/systemd/system/ds01-student-olduser.slice]
validated:
  description: Whether the generated set was checked with C(systemd-analyze verify).
  returned: always
  type: bool
  sample: true
problems:
  description: The resolver's problems, one per item, when the configuration was rejected.
  returned: failure
  type: list
  elements: dict
  sample: [{file: /etc/ds01/resource-limits.yaml, line: 4, key: groups.student.max_cpus, message: expected a number}]
"""

import contextlib
import glob
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native

from ansible_collections.ds01.infra.plugins.module_utils.content import install_content
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config as ds01_config
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import slices

UNIT_MODE = 0o644
DIR_MODE = 0o755


def read_text(path):
    """The file's text, or None when there is no regular file there."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def current_generated(unit_dir):
    """Relative path → text of every file in ``unit_dir`` that ds01 generated."""
    try:
        names = os.listdir(unit_dir)
    except FileNotFoundError:
        return {}
    listings = {}
    for name in names:
        path = os.path.join(unit_dir, name)
        if name.endswith(".slice" + slices.DROPIN_DIR_SUFFIX) and os.path.isdir(path) and not os.path.islink(path):
            listings[name] = os.listdir(path)
    found = {}
    for rel in slices.candidate_paths(names, listings):
        path = os.path.join(unit_dir, rel)
        if os.path.islink(path):
            continue
        text = read_text(path)
        if text is not None and slices.is_generated(text):
            found[rel] = text
    return found


def plan(desired, unit_dir, prune):
    """(create, update, remove): relative paths, from the desired set and what is on disk."""
    create, update = [], []
    for rel, text in sorted(desired.items()):
        old = read_text(os.path.join(unit_dir, rel))
        if old is None:
            create.append(rel)
        elif old != text:
            update.append(rel)
    desired_units = {rel for rel in desired if "/" not in rel}
    remove = []
    for rel in sorted(current_generated(unit_dir)):
        if rel in desired:
            continue
        owner_unit = rel.split("/", 1)[0][: -len(slices.DROPIN_DIR_SUFFIX)] if "/" in rel else None
        if prune or (owner_unit is not None and owner_unit in desired_units):
            remove.append(rel)
    return create, update, remove


def verify(module, desired):
    """Run systemd-analyze verify over the whole generated set, staged in a private directory."""
    analyze = module.get_bin_path("systemd-analyze", required=True)
    staging = tempfile.mkdtemp(prefix="ds01-slices-", dir=module.tmpdir)
    try:
        for rel, text in desired.items():
            path = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(to_bytes(text))
        units = sorted(glob.glob(os.path.join(staging, "*.slice")))
        rc, out, err = module.run_command([analyze, "verify", "--man=no", *units], environ_update={"LC_ALL": "C"})
        # verify exits 0 on a warning ("Unknown key", "Invalid memory limit … ignoring"): a complaint
        # about one of our files fails the check just the same. Lines about other units are not ours.
        ours = [line for line in (out + err).splitlines() if staging in line]
        if rc != 0 or ours:
            module.fail_json(
                msg="systemd-analyze verify rejected the generated units; nothing was written",
                rc=rc,
                stdout=out,
                stderr=err,
                problems=[line.replace(staging + "/", "") for line in ours],
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_file(module, path, text):
    """Temp file beside ``path`` → atomic_move (mode is set by the caller)."""
    install_content(module, path, text, dir_mode=DIR_MODE)


def remove_file(path):
    os.unlink(path)
    directory = os.path.dirname(path)
    if directory.endswith(slices.DROPIN_DIR_SUFFIX):
        with contextlib.suppress(OSError):  # only when empty: an admin's own drop-ins keep it
            os.rmdir(directory)


def main():
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "default": ds01_config.DEFAULT_CONFIG_PATH},
            "extra_users": {"type": "list", "elements": "str", "default": []},
            "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
            "prune": {"type": "bool", "default": True},
            "validate": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    unit_dir = module.params["unit_dir"]

    try:
        cfg = ds01_config.load_config(module.params["config"])
    except ds01_config.ConfigError as exc:
        module.fail_json(msg=exc.render(), problems=[p.as_dict() for p in exc.problems])
    try:
        desired = slices.desired_files(cfg, module.params["extra_users"])
        users = slices.user_slices(cfg, module.params["extra_users"])
    except slices.SliceError as exc:
        module.fail_json(msg="cannot generate the slices: " + str(exc), problems=exc.problems)

    create, update, remove = plan(desired, unit_dir, module.params["prune"])

    if module.params["validate"]:
        verify(module, desired)

    result = {
        "changed": bool(create or update or remove),
        "daemon_reload_needed": bool(create or update or remove),
        "units": sorted(rel for rel in desired if "/" not in rel),
        "users": {u.login: u.unit for u in users},
        "created": [os.path.join(unit_dir, rel) for rel in create],
        "updated": [os.path.join(unit_dir, rel) for rel in update],
        "removed": [os.path.join(unit_dir, rel) for rel in remove],
        "validated": module.params["validate"],
    }
    if module._diff:
        diffs = []
        for rel in create + update + remove:
            path = os.path.join(unit_dir, rel)
            diffs.append(
                {
                    "before_header": path if rel not in create else f"{path} (absent)",
                    "after_header": path if rel not in remove else f"{path} (absent)",
                    "before": read_text(path) or "",
                    "after": desired.get(rel, ""),
                }
            )
        result["diff"] = diffs

    if not module.check_mode:
        try:
            if not os.path.isdir(unit_dir):
                os.makedirs(unit_dir, DIR_MODE)
            for rel in create + update:
                write_file(module, os.path.join(unit_dir, rel), desired[rel])
            for rel in remove:
                remove_file(os.path.join(unit_dir, rel))
        except OSError as exc:
            module.fail_json(msg=f"cannot write the slice units: {to_native(exc)}", **result)

    # Mode of every generated file and drop-in directory (a real run sets it; check mode predicts it).
    for rel in sorted(desired):
        path = os.path.join(unit_dir, rel)
        if rel in create and module.check_mode:
            continue
        attrs = module.load_file_common_arguments({"path": path, "mode": "0644"})
        result["changed"] = module.set_fs_attributes_if_different(attrs, result["changed"])
        if "/" in rel:
            dir_attrs = module.load_file_common_arguments({"path": os.path.dirname(path), "mode": "0755"})
            result["changed"] = module.set_fs_attributes_if_different(dir_attrs, result["changed"])

    module.exit_json(**result)


if __name__ == "__main__":
    main()
