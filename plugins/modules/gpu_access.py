#!/usr/bin/python
# Copyright (c) ds01.infra contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_access
short_description: Host GPU device policy for ds01 (udev, modprobe, video group, exempt users)
version_added: 0.1.0
description:
  - Writes the udev rule that gives C(/dev/nvidia*) its mode, and the C(modprobe.d) options
    (C(options nvidia NVreg_DeviceFileUID=0 NVreg_DeviceFileGID=0 NVreg_DeviceFileMode=...)) that make the
    driver create the nodes with the same mode. The default C(0666) is the one that works - every user's
    C(nvidia-smi) and the allocator must see the GPUs. Restricting the nodes to C(video) broke allocation
    upstream, so access is controlled at the container boundary instead.
  - Runs C(udevadm control --reload) and C(udevadm trigger) for the nvidia nodes only when one of the two
    files changed, only when O(root=/) and only when C(udevadm) is installed. On the real root it also sets
    the mode of nvidia device nodes that already exist, since the modprobe option applies at the next driver load.
  - Reconciles the members of the O(video_group) group with O(video_members). With O(exclusive=true)
    members not listed are removed. On the real root this uses C(gpasswd); under a sandbox O(root) it
    rewrites C(<root>/etc/group) (and C(<root>/etc/gshadow) when present) in place, atomically, changing
    only the members field of that one group.
  - Writes O(exempt_users) to O(exempt_users_file), one login per line under a comment header, so that the
    login scripts of M(ds01.infra.profile_d) can read it without parsing YAML.
author:
  - ds01.infra maintainers (@ds01-infra)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ds01.infra.module_attributes
attributes:
  diff_mode:
    support: full
    details:
      - Text diffs for the three files, a before/after member list for the group.
options:
  root:
    description:
      - Prefix of every path the module reads and writes. V(/) is the host; anything else is a sandbox, where
        no command is run (no C(udevadm), no C(gpasswd)) and the group files under it are edited directly.
    type: path
    default: /
  device_mode:
    description: Mode of the C(/dev/nvidia*) nodes, as an octal string.
    type: str
    default: "0666"
  udev_rules_file:
    description: The udev rule file (under O(root)).
    type: path
    default: /etc/udev/rules.d/99-ds01-nvidia.rules
  modprobe_file:
    description: The C(modprobe.d) options file (under O(root)).
    type: path
    default: /etc/modprobe.d/ds01-nvidia.conf
  video_group:
    description: The group whose members are reconciled.
    type: str
    default: video
  video_members:
    description:
      - Logins that must be members of O(video_group). Not set, the group is left alone.
      - Every login must exist (in C(<root>/etc/passwd) under a sandbox root, when that file exists).
    type: list
    elements: str
  exclusive:
    description: Remove members of O(video_group) that O(video_members) does not list.
    type: bool
    default: false
  exempt_users:
    description:
      - Logins whose login shells keep the GPUs visible (C(bare_metal_access.exempt_users)).
        Not set, O(exempt_users_file) is left alone.
    type: list
    elements: str
  exempt_users_file:
    description: The flat exempt-users file (under O(root)); its directory is created when missing.
    type: path
    default: /etc/ds01/gpu-exempt-users
  reload:
    description: Reload and trigger udev when the udev rule or the modprobe options changed (O(root=/) only).
    type: bool
    default: true
requirements:
  - gpasswd (shadow utilities) when O(video_members) is set and O(root=/)
seealso:
  - module: ds01.infra.profile_d
"""

EXAMPLES = r"""
- name: GPU device policy, video group and exempt users
  ds01.infra.gpu_access:
    device_mode: "0666"
    video_members: [alice, bob]
    exclusive: true
    exempt_users: [datasciencelab]

- name: The same in a sandbox root (no udevadm, /etc/group under the root edited directly)
  ds01.infra.gpu_access:
    root: /tmp/sandbox
    video_members: [alice]
    exempt_users: [datasciencelab]
"""

RETURN = r"""
files_changed:
  description: The files written (or that would be).
  returned: always
  type: list
  elements: str
  sample: [/etc/udev/rules.d/99-ds01-nvidia.rules]
video_members:
  description: Members of the group after the run (would be, in check mode); omitted when not managed.
  returned: when O(video_members) is set
  type: list
  elements: str
  sample: [alice, bob]
members_added:
  description: Logins added to the group.
  returned: always
  type: list
  elements: str
  sample: [bob]
members_removed:
  description: Logins removed from the group.
  returned: always
  type: list
  elements: str
  sample: [mallory]
devices_changed:
  description: Existing device nodes whose mode was set.
  returned: always
  type: list
  elements: str
  sample: [/dev/nvidia0]
udev_reloaded:
  description: Whether C(udevadm control --reload) and C(udevadm trigger) ran.
  returned: always
  type: bool
  sample: false
"""

import glob
import os
import pwd
import re
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.ds01.infra.plugins.module_utils.content import install_content
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import profile

MARKER = "# Generated by ds01 (ds01.infra.gpu_access). Local changes are overwritten; do not edit."
NVIDIA_NODES = ("nvidia[0-9]*", "nvidiactl", "nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools")
_MODE_RE = re.compile(r"^0?[0-7]{3}$")


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------


def render_udev_rule(mode):
    return (
        f"{MARKER}\n"
        "# Mode of the NVIDIA device nodes. Every user's nvidia-smi (and the ds01 allocator) must see the\n"
        "# GPUs; access to GPU compute is controlled at the container boundary, not here.\n"
        f'KERNEL=="{"|".join(NVIDIA_NODES)}", MODE="{mode:04o}"\n'
    )


def render_modprobe(mode):
    return (
        f"{MARKER}\n"
        "# The driver creates /dev/nvidia* itself (nvidia-modprobe); these make it use the udev rule's mode.\n"
        f"# NVreg_DeviceFileMode is decimal: {mode} = {mode:04o}.\n"
        f"options nvidia NVreg_DeviceFileUID=0 NVreg_DeviceFileGID=0 NVreg_DeviceFileMode={mode}\n"
    )


def parse_group_members(text, group):
    """Members of ``group`` in /etc/group (or gshadow) text; None when the group is absent."""
    for line in text.splitlines():
        fields = line.split(":")
        if fields[0] == group and len(fields) >= 4:
            return [m for m in fields[3].split(",") if m]
    return None


def replace_group_members(text, group, members):
    """``text`` with only the members field of ``group`` replaced; every other byte kept."""
    out = []
    done = False
    for line in text.splitlines(True):
        body = line.rstrip("\n")
        fields = body.split(":")
        if not done and fields[0] == group and len(fields) >= 4:
            fields[3] = ",".join(members)
            out.append(":".join(fields) + line[len(body) :])
            done = True
        else:
            out.append(line)
    if not done:
        raise KeyError(group)
    return "".join(out)


def reconcile(current, wanted, exclusive):
    """(new member list, added, removed): current order kept, new members appended in the order given."""
    wanted_unique = list(dict.fromkeys(wanted))
    kept = [m for m in current if m in wanted_unique or not exclusive]
    added = [m for m in wanted_unique if m not in current]
    removed = [m for m in current if m not in kept]
    return kept + added, added, removed


# ---------------------------------------------------------------------------------------------
# Edges
# ---------------------------------------------------------------------------------------------


def under(root, path):
    return os.path.join(root, path.lstrip("/")) if root != "/" else path


def read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None


def write_atomic(module, path, text):
    install_content(module, path, text)


def missing_logins(root, logins):
    if root == "/":
        missing = []
        for login in logins:
            try:
                pwd.getpwnam(login)
            except KeyError:
                missing.append(login)
        return missing
    passwd = read_text(under(root, "/etc/passwd"))
    if passwd is None:
        return []  # a bare sandbox has no account database to check against
    known = {line.split(":", 1)[0] for line in passwd.splitlines() if line}
    return [login for login in logins if login not in known]


def live_device_changes(mode):
    """Existing character-device nvidia nodes whose permission bits differ from ``mode``."""
    paths = set()
    for pattern in NVIDIA_NODES:
        paths.update(glob.glob(os.path.join("/dev", pattern)))
    out = []
    for path in sorted(paths):
        st = os.lstat(path)
        if stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            out.append(path)
    return out


def main():
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "default": "/"},
            "device_mode": {"type": "str", "default": "0666"},
            "udev_rules_file": {"type": "path", "default": "/etc/udev/rules.d/99-ds01-nvidia.rules"},
            "modprobe_file": {"type": "path", "default": "/etc/modprobe.d/ds01-nvidia.conf"},
            "video_group": {"type": "str", "default": "video"},
            "video_members": {"type": "list", "elements": "str"},
            "exclusive": {"type": "bool", "default": False},
            "exempt_users": {"type": "list", "elements": "str"},
            "exempt_users_file": {"type": "path", "default": "/etc/ds01/gpu-exempt-users"},
            "reload": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    root = os.path.normpath(p["root"])
    real_root = root == "/"
    if not _MODE_RE.match(p["device_mode"]):
        module.fail_json(msg="device_mode must be an octal mode such as '0666', got {!r}".format(p["device_mode"]))
    mode = int(p["device_mode"], 8)

    # --- desired files ---------------------------------------------------------------------
    files = [
        (under(root, p["udev_rules_file"]), render_udev_rule(mode), "device"),
        (under(root, p["modprobe_file"]), render_modprobe(mode), "device"),
    ]
    if p["exempt_users"] is not None:
        try:
            files.append(
                (under(root, p["exempt_users_file"]), profile.render_exempt_users(p["exempt_users"]), "exempt")
            )
        except ValueError as exc:
            module.fail_json(msg=to_native(exc))
    changed_files = []
    diffs = []
    for path, text, kind in files:
        old = read_text(path)
        if old != text:
            changed_files.append((path, text, kind))
            diffs.append(
                {
                    "before_header": path + (" (absent)" if old is None else ""),
                    "after_header": path,
                    "before": old or "",
                    "after": text,
                }
            )

    # --- desired group ---------------------------------------------------------------------
    group_path = under(root, "/etc/group")
    gshadow_path = under(root, "/etc/gshadow")
    members_added, members_removed, new_members = [], [], None
    if p["video_members"] is not None:
        missing = missing_logins(root, p["video_members"])
        if missing:
            module.fail_json(msg="these logins do not exist: {}".format(", ".join(missing)))
        group_text = read_text(group_path)
        current = parse_group_members(group_text or "", p["video_group"])
        if current is None:
            module.fail_json(msg="group {} does not exist in {}".format(p["video_group"], group_path))
        new_members, members_added, members_removed = reconcile(current, p["video_members"], p["exclusive"])
        if members_added or members_removed:
            diffs.append(
                {
                    "before_header": "{} members".format(p["video_group"]),
                    "after_header": "{} members".format(p["video_group"]),
                    "before": {p["video_group"]: current},
                    "after": {p["video_group"]: new_members},
                }
            )

    devices = live_device_changes(mode) if real_root else []
    device_file_changed = any(kind == "device" for _path, _text, kind in changed_files)

    result = {
        "changed": bool(changed_files or members_added or members_removed or devices),
        "files_changed": [path for path, _text, _kind in changed_files],
        "members_added": members_added,
        "members_removed": members_removed,
        "devices_changed": devices,
        "udev_reloaded": False,
    }
    if new_members is not None:
        result["video_members"] = new_members
    if module._diff:
        result["diff"] = diffs

    # --- act (check mode stops at the mode check, which only predicts) -------------------------
    if not module.check_mode:
        try:
            for path, text, _kind in changed_files:
                write_atomic(module, path, text)
            for path in devices:
                os.chmod(path, mode)
        except OSError as exc:
            module.fail_json(msg=f"cannot write the GPU access policy: {to_native(exc)}", **result)
    for path, _text, _kind in files:
        if os.path.exists(path):
            attrs = module.load_file_common_arguments({"path": path, "mode": "0644"})
            result["changed"] = module.set_fs_attributes_if_different(attrs, result["changed"])
    if module.check_mode:
        module.exit_json(**result)

    if members_added or members_removed:
        group = p["video_group"]
        if real_root:
            gpasswd = module.get_bin_path("gpasswd", required=True)
            if p["exclusive"]:
                commands = [[gpasswd, "-M", ",".join(new_members), group]]
            else:
                commands = [[gpasswd, "-a", login, group] for login in members_added]
            for argv in commands:
                rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C"})
                if rc != 0:
                    module.fail_json(msg="{} failed".format(" ".join(argv)), rc=rc, stdout=out, stderr=err, **result)
        else:
            try:
                write_atomic(module, group_path, replace_group_members(read_text(group_path), group, new_members))
                gshadow = read_text(gshadow_path)
                if gshadow is not None and parse_group_members(gshadow, group) is not None:
                    write_atomic(module, gshadow_path, replace_group_members(gshadow, group, new_members))
            except OSError as exc:
                module.fail_json(msg=f"cannot update {group_path}: {to_native(exc)}", **result)

    if device_file_changed and real_root and p["reload"]:
        udevadm = module.get_bin_path("udevadm")
        if udevadm:
            for argv in (
                [udevadm, "control", "--reload"],
                [udevadm, "trigger", "--action=change", "--sysname-match=nvidia*"],
            ):
                rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C"})
                if rc != 0:
                    module.fail_json(msg="{} failed".format(" ".join(argv)), rc=rc, stdout=out, stderr=err, **result)
            result["udev_reloaded"] = True

    module.exit_json(**result)


if __name__ == "__main__":
    main()
