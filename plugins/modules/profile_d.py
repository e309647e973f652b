#!/usr/bin/python
# Copyright (c) ds01.infra contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: profile_d
short_description: Install the ds01 login scripts in /etc/profile.d
version_added: 0.1.0
description:
  - Renders and installs three POSIX shell scripts, mode C(0644), sourced by every login shell.
  - C(ds01-path.sh) puts the directory of O(ds01_bin) (C(/usr/local/bin)) on C(PATH) when it is missing.
  - C(ds01-gpu-deterrent.sh) exports C(CUDA_VISIBLE_DEVICES="") in login shells of users who are not root,
    not listed in O(exempt_users_file) and hold no unexpired grant in O(grant_dir).
    It is a deterrent that makes GPU use on the host a deliberate act, not a security boundary.
    It fails closed, so a malformed or expired grant hides the GPUs.
    With O(banner=true), interactive shells of those users also print two lines (to stderr) saying that GPUs are for
    containers and how to get one.
  - C(ds01-greeting.sh) (when O(greeting=true)) prints, in interactive shells only, the line the ds01 exporter
    pre-renders for each user every minute in C(<greeting_dir>/<login>) (group, quota, usage, and how many new
    notices wait in C(ds01 limits)), with C(find) and C(awk) only, so no Python runs at login.
    It stays silent when that file is missing or older than 15 minutes (the exporter is down).
  - Each script is validated with C(bash -n) and C(sh -n) (dash where installed) before it replaces the
    installed one.
  - "Grant file format, written by the C(ds01) command: C(<grant_dir>/<login>.json), a JSON object with
    C(user), C(type) (V(permanent) or V(temporary)), C(granted_by), C(granted_at), C(expires_at) (ISO 8601 UTC,
    null when permanent) and C(expires_epoch) (integer Unix time, null when permanent). The script compares
    C(expires_epoch) with C(date +%s); the file must be readable by its user (C(0644) in a C(0711) directory)."
  - "Exempt-users file format: one login per line, C(#) comment lines (M(ds01.infra.gpu_access) writes it)."
author:
  - ds01.infra maintainers (@ds01-infra)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ds01.infra.module_attributes
options:
  dest_dir:
    description: Directory the scripts are installed in.
    type: path
    default: /etc/profile.d
  exempt_users_file:
    description: The flat file of exempt logins the deterrent reads at login (a path on the host).
    type: path
    default: /etc/ds01/gpu-exempt-users
  grant_dir:
    description: Directory of the grant files C(<login>.json) the deterrent reads at login.
    type: path
    default: /var/lib/ds01/bare-metal-grants
  greeting:
    description: Install the login greeting. V(false) removes a greeting ds01 installed earlier.
    type: bool
    default: true
  greeting_dir:
    description:
      - Directory of the pre-rendered greetings C(<login>) that the greeting prints (the exporter writes them in
        C(<state_dir>/greetings)).
    type: path
    default: /var/lib/ds01/greetings
  banner:
    description:
      - Print the two-line "GPUs are for containers" banner in interactive shells of users whose GPUs are hidden
        (not exempt, no unexpired grant).
    type: bool
    default: true
  cuda_notice:
    description:
      - The CUDA notice library, an rtld audit module that the deterrent adds to C(LD_AUDIT) of logins whose GPUs
        are hidden. A program that loads the CUDA driver then tells the user why it finds no GPU and what to run
        instead. Added only while the file is readable at login. Omit it for no notice.
      - Absolute, made of letters, digits and C(_ . / + -).
    type: path
  ds01_bin:
    description:
      - The C(ds01) command; its directory is the one C(ds01-path.sh) puts on C(PATH).
    type: path
    default: /usr/local/bin/ds01
  state:
    description:
      - V(present) installs the scripts; V(absent) removes every script ds01 installed (files that do not
        carry the ds01 marker line are left alone).
    type: str
    choices: [present, absent]
    default: present
requirements:
  - bash
notes:
  - The scripts are sourced by login shells only, as C(/etc/profile) does; a non-login shell such as
    C(ssh host command) is not affected.
seealso:
  - module: ds01.infra.gpu_access
"""

EXAMPLES = r"""
- name: Install the ds01 login scripts
  ds01.infra.profile_d:

- name: Install into a sandbox, without the greeting
  ds01.infra.profile_d:
    dest_dir: /tmp/sandbox/etc/profile.d
    exempt_users_file: /tmp/sandbox/etc/ds01/gpu-exempt-users
    grant_dir: /tmp/sandbox/var/lib/ds01/bare-metal-grants
    greeting: false

- name: Remove the ds01 login scripts
  ds01.infra.profile_d:
    state: absent
"""

RETURN = r"""
scripts:
  description: The scripts installed (or that would be), as paths.
  returned: always
  type: list
  elements: str
  sample: [/etc/profile.d/ds01-gpu-deterrent.sh, /etc/profile.d/ds01-greeting.sh, /etc/profile.d/ds01-path.sh]
created:
  description: Scripts written that did not exist.
  returned: always
  type: list
  elements: str
  sample: [/etc/profile.d/ds01-path.sh]
updated:
  description: Scripts whose content changed.
  returned: always
  type: list
  elements: str
  sample: [/etc/profile.d/ds01-gpu-deterrent.sh]
removed:
  description: ds01 scripts removed.
  returned: always
  type: list
  elements: str
  sample: [/etc/profile.d/ds01-greeting.sh]
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.ds01.infra.plugins.module_utils.content import install_content
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import profile


def read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def shells(module):
    """Every shell that must accept the scripts: bash, and sh (dash where installed)."""
    found = [module.get_bin_path("bash", required=True)]
    posix = module.get_bin_path("dash") or module.get_bin_path("sh")
    if posix:
        found.append(posix)
    return found


def install(module, path, text, validators):
    """``<shell> -n`` for each shell on a temp copy, then atomic_move (check mode: validate only)."""

    def validate(tmp):
        for shell in validators:
            rc, out, err = module.run_command([shell, "-n", tmp], environ_update={"LC_ALL": "C"})
            if rc != 0:
                module.fail_json(
                    msg=f"{shell} -n rejected the rendered {path}; nothing was installed",
                    rc=rc,
                    stdout=out,
                    stderr=err,
                )

    install_content(module, path, text, validate=validate)


def main():
    module = AnsibleModule(
        argument_spec={
            "dest_dir": {"type": "path", "default": "/etc/profile.d"},
            "exempt_users_file": {"type": "path", "default": "/etc/ds01/gpu-exempt-users"},
            "grant_dir": {"type": "path", "default": "/var/lib/ds01/bare-metal-grants"},
            "greeting": {"type": "bool", "default": True},
            "greeting_dir": {"type": "path", "default": "/var/lib/ds01/greetings"},
            "banner": {"type": "bool", "default": True},
            "ds01_bin": {"type": "path", "default": "/usr/local/bin/ds01"},
            "cuda_notice": {"type": "path"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )
    p = module.params
    dest_dir = p["dest_dir"]

    desired = {}
    if p["state"] == "present":
        try:
            desired = profile.render_scripts(
                p["exempt_users_file"],
                p["grant_dir"],
                p["ds01_bin"],
                p["greeting"],
                p["greeting_dir"],
                p["banner"],
                p["cuda_notice"],
            )
        except ValueError as exc:
            module.fail_json(msg=f"{to_native(exc)}; nothing was installed")

    create, update, remove = [], [], []
    before = {}
    for name in profile.ALL_SCRIPTS:
        path = os.path.join(dest_dir, name)
        old = read_text(path)
        before[name] = old
        if name in desired:
            if old is None:
                create.append(name)
            elif old != desired[name]:
                update.append(name)
        elif old is not None and profile.is_generated(old):
            remove.append(name)

    result = {
        "changed": bool(create or update or remove),
        "scripts": sorted(os.path.join(dest_dir, n) for n in desired),
        "created": [os.path.join(dest_dir, n) for n in create],
        "updated": [os.path.join(dest_dir, n) for n in update],
        "removed": [os.path.join(dest_dir, n) for n in remove],
    }
    if module._diff:
        result["diff"] = [
            {
                "before_header": os.path.join(dest_dir, n) + (" (absent)" if n in create else ""),
                "after_header": os.path.join(dest_dir, n) + (" (absent)" if n in remove else ""),
                "before": before[n] or "",
                "after": desired.get(n, ""),
            }
            for n in sorted(create + update + remove)
        ]

    if (create or update) and not os.path.isdir(dest_dir):
        module.fail_json(msg=f"{dest_dir} does not exist", **result)

    validators = shells(module) if (create or update) else []
    try:
        for name in sorted(create + update):
            install(module, os.path.join(dest_dir, name), desired[name], validators)
        if not module.check_mode:
            for name in remove:
                os.unlink(os.path.join(dest_dir, name))
    except OSError as exc:
        module.fail_json(msg=f"cannot install the login scripts: {to_native(exc)}", **result)

    for name in sorted(desired):
        if name in create and module.check_mode:
            continue
        attrs = module.load_file_common_arguments({"path": os.path.join(dest_dir, name), "mode": "0644"})
        result["changed"] = module.set_fs_attributes_if_different(attrs, result["changed"])

    module.exit_json(**result)


if __name__ == "__main__":
    main()
