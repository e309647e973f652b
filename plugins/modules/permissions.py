#!/usr/bin/python
# Copyright (c) ds01.infra contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: permissions
short_description: Apply a permissions manifest (owner, group, modes) to paths and trees
version_added: 0.1.0
description:
  - Applies an ordered list of rules. Each rule names a path or a glob, and an owner, a group, a mode for
    directories and a mode for files, optionally recursively.
  - The desired state of every path is computed from all rules first, a later rule overriding what an earlier
    one set for the same path, and only then compared with the disk and applied. So a broad rule followed by a
    narrower one (a tree C(0755), one directory in it C(0700)) converges in one run and stays unchanged after.
  - Symbolic links are never followed and never changed. A symlink named by a rule, matched by a glob or met
    inside a tree is reported in RV(symlinks) and left alone.
  - Every path is taken under O(root), so a manifest written for C(/) applies unchanged to a sandbox.
  - The ds01 default manifest ships with the C(ds01_common) role as
    C(roles/ds01_common/vars/permissions_manifest.yml) (variable C(__ds01_common_permissions_manifest)).
author:
  - ds01.infra maintainers (@ds01-infra)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ds01.infra.module_attributes
attributes:
  diff_mode:
    support: full
    details:
      - One line per changed path, C(<kind> <mode> <owner>:<group> <path>), before and after.
options:
  root:
    description: Prefix of every rule's path.
    type: path
    default: /
  rules:
    description: The manifest, applied in order.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description:
          - Absolute path (under O(root)), or a glob (C(*), C(?), C([...])). A glob matches existing paths only.
        type: str
        required: true
      state:
        description:
          - What the path must be. A missing path is created as this, when O(rules[].create=true).
          - Ignored for a glob, where each match is handled by its own type.
        type: str
        choices: [directory, file]
        default: directory
      create:
        description: Create the path (and missing parents, mode C(0755)) when it does not exist. Not for globs.
        type: bool
        default: true
      owner:
        description: Owner name or uid. Not set, the owner is left alone.
        type: str
      group:
        description: Group name or gid. Not set, the group is left alone.
        type: str
      dir_mode:
        description:
          - Mode of the directory and, with O(rules[].recurse=true), of every directory under it.
          - Octal (V(0755)) or symbolic (V(u=rwx,go=rx), V(go-w), V(a+X)). Not set, left alone.
        type: str
      file_mode:
        description:
          - Mode of the file (O(rules[].state=file)) and, with O(rules[].recurse=true), of every non-directory
            under the directory. Octal or symbolic; V(u=rwX,go=rX) keeps executables executable.
        type: str
      recurse:
        description: Apply the rule to everything under the directory too (never through a symlink).
        type: bool
        default: false
notes:
  - A socket met inside a tree is left alone and reported in RV(sockets). Its owner and mode belong to the
    daemon listening on it (dockerd sets its socket's group and mode each time it starts, so a change would be
    undone and the next run would change it again). FIFOs and device nodes inside a tree are treated as files.
  - A symbolic mode without a C(who) part (V(+x)) applies to all of user, group and other, whatever the umask.
"""

EXAMPLES = r"""
- name: Apply the ds01 permissions manifest
  ds01.infra.permissions:
    rules: "{{ __ds01_common_permissions_manifest }}"

- name: Config world-readable, the state directory closed to writes by users, in a sandbox
  ds01.infra.permissions:
    root: /tmp/sandbox
    rules:
      - {path: /etc/ds01, owner: root, group: root, dir_mode: "0755", file_mode: "0644", recurse: true}
      - {path: /var/lib/ds01, owner: root, group: root, dir_mode: "go-w", file_mode: "go-w", recurse: true}
      - {path: /var/log/ds01/events.jsonl, state: file, owner: root, group: ds01-admin, file_mode: "0640"}
"""

RETURN = r"""
changed_count:
  description: How many paths changed (would change, in check mode).
  returned: always
  type: int
  sample: 3
changed_paths:
  description: The first 50 changed paths.
  returned: always
  type: list
  elements: str
  sample: [/etc/ds01/resource-limits.yaml]
symlinks:
  description: Symbolic links met and left alone (the first 50).
  returned: always
  type: list
  elements: str
  sample: [/opt/ds01/venv/bin/python]
sockets:
  description: Sockets met inside a tree and left alone (the first 50).
  returned: always
  type: list
  elements: str
  sample: [/run/ds01/dockerd.sock]
unmatched:
  description: Rules whose glob matched nothing, or whose missing path was not created (O(rules[].create=false)).
  returned: always
  type: list
  elements: str
  sample: [/etc/ds01/groups/*.members]
"""

import glob
import grp
import os
import pwd
import re
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

LIST_LIMIT = 50
DIFF_LIMIT = 500
NEW_DIR_MODE = 0o755
NEW_FILE_MODE = 0o644
_OCTAL_RE = re.compile(r"^0?[0-7]{3,4}$")
_CLAUSE_RE = re.compile(r"^([ugoa]*)((?:[-+=][rwxXst]*)+)$")
_OP_RE = re.compile(r"([-+=])([rwxXst]*)")
_WHO_BITS = {"u": 0o700, "g": 0o070, "o": 0o007}
_PERM_BITS = {"r": 0o444, "w": 0o222, "x": 0o111}


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------


def valid_mode(spec):
    return bool(_OCTAL_RE.match(spec)) or all(_CLAUSE_RE.match(c) for c in spec.split(","))


def apply_mode(current, spec, is_dir):
    """The permission bits ``spec`` (octal, or chmod-style symbolic) gives a path whose bits are ``current``."""
    if _OCTAL_RE.match(spec):
        return int(spec, 8)
    mode = current & 0o7777
    for clause in spec.split(","):
        match = _CLAUSE_RE.match(clause)
        if not match:
            raise ValueError(f"invalid mode {spec!r}")
        who = match.group(1).replace("a", "ugo") or "ugo"
        who_mask = 0
        for w in who:
            who_mask |= _WHO_BITS[w]
        special_mask = (0o4000 if "u" in who else 0) | (0o2000 if "g" in who else 0) | (0o1000 if "o" in who else 0)
        start = mode
        for op, perms in _OP_RE.findall(match.group(2)):
            bits = 0
            for ch in perms:
                if ch in _PERM_BITS:
                    bits |= _PERM_BITS[ch] & who_mask
                elif ch == "X" and (is_dir or start & 0o111):
                    bits |= 0o111 & who_mask
                elif ch == "s":
                    bits |= special_mask & 0o6000
                elif ch == "t":
                    bits |= special_mask & 0o1000
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~(who_mask | special_mask)) | bits
    return mode


def describe(entry, before):
    """One diff line: ``dir 0755 root:root /etc/ds01``."""
    if before and not entry["exists"]:
        return None
    kind = "dir " if entry["is_dir"] else "file"
    if before:
        mode, uid, gid = entry["cur_mode"], entry["cur_uid"], entry["cur_gid"]
    else:
        mode, uid, gid = entry["mode"], entry["uid"], entry["gid"]
    return "{} {:04o} {}:{} {}".format(kind, mode, user_name(uid), group_name(gid), entry["path"])


def user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def needs_change(entry):
    return (
        not entry["exists"]
        or entry["mode"] != entry["cur_mode"]
        or entry["uid"] != entry["cur_uid"]
        or entry["gid"] != entry["cur_gid"]
    )


# ---------------------------------------------------------------------------------------------
# Desired state
# ---------------------------------------------------------------------------------------------


class Manifest:
    """Walks the rules and records, per path, the state the rules ask for."""

    def __init__(self, root, resolve_uid, resolve_gid):
        self.root = root
        self.resolve_uid = resolve_uid
        self.resolve_gid = resolve_gid
        self.entries = {}  # path -> entry dict, in first-visit order
        self.symlinks = []
        self.sockets = []
        self.unmatched = []

    def under(self, path):
        return (
            os.path.normpath(os.path.join(self.root, path.lstrip("/"))) if self.root != "/" else os.path.normpath(path)
        )

    def apply(self, rule):
        path = self.under(rule["path"])
        if glob.has_magic(rule["path"]):
            matches = sorted(glob.glob(path))
            if not matches:
                self.unmatched.append(rule["path"])
            for match in matches:
                self.visit(match, rule, expect=None)
            return
        self.visit(path, rule, expect=rule["state"])

    def visit(self, path, rule, expect):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if expect is None or not rule["create"]:
                self.unmatched.append(path)
                return
            self.update(path, rule, None, expect == "directory")
            return
        if stat.S_ISLNK(st.st_mode):
            self.symlinks.append(path)
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if expect is not None and is_dir != (expect == "directory"):
            raise ValueError(f"{path} exists but is not a {expect}")
        self.update(path, rule, st, is_dir)
        if is_dir and rule["recurse"]:
            for top, dirnames, filenames in os.walk(path, followlinks=False):
                for name in sorted(dirnames) + sorted(filenames):
                    child = os.path.join(top, name)
                    cst = os.lstat(child)
                    if stat.S_ISLNK(cst.st_mode):
                        self.symlinks.append(child)
                        continue
                    if stat.S_ISSOCK(cst.st_mode):  # the listening daemon's to set (see notes)
                        self.sockets.append(child)
                        continue
                    self.update(child, rule, cst, stat.S_ISDIR(cst.st_mode))
                dirnames.sort()

    def update(self, path, rule, st, is_dir):
        entry = self.entries.get(path)
        if entry is None:
            exists = st is not None
            cur_mode = stat.S_IMODE(st.st_mode) if exists else None
            entry = {
                "path": path,
                "is_dir": is_dir,
                "exists": exists,
                "cur_mode": cur_mode,
                "cur_uid": st.st_uid if exists else None,
                "cur_gid": st.st_gid if exists else None,
                "mode": cur_mode if exists else (NEW_DIR_MODE if is_dir else NEW_FILE_MODE),
                "uid": st.st_uid if exists else os.geteuid(),
                "gid": st.st_gid if exists else os.getegid(),
            }
            self.entries[path] = entry
        spec = rule["dir_mode"] if is_dir else rule["file_mode"]
        if spec:
            entry["mode"] = apply_mode(entry["mode"], spec, is_dir)
        if rule["owner"] is not None:
            entry["uid"] = self.resolve_uid(rule["owner"])
        if rule["group"] is not None:
            entry["gid"] = self.resolve_gid(rule["group"])


def resolve_uid(name):
    if name.isdigit():
        return int(name)
    return pwd.getpwnam(name).pw_uid


def resolve_gid(name):
    if name.isdigit():
        return int(name)
    return grp.getgrnam(name).gr_gid


# ---------------------------------------------------------------------------------------------
# Acting
# ---------------------------------------------------------------------------------------------


def enforce(entry):
    path = entry["path"]
    if not entry["exists"]:
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, NEW_DIR_MODE)
        if entry["is_dir"]:
            os.mkdir(path, 0o700)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):  # replaced by a link since we looked: leave it
        raise OSError(f"{path} became a symbolic link while the manifest was applied")
    if (st.st_uid, st.st_gid) != (entry["uid"], entry["gid"]):
        os.lchown(path, entry["uid"], entry["gid"])  # before chmod: chown clears set-id bits
    if stat.S_IMODE(os.lstat(path).st_mode) != entry["mode"]:
        os.chmod(path, entry["mode"])


def main():
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "default": "/"},
            "rules": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "path": {"type": "str", "required": True},
                    "state": {"type": "str", "choices": ["directory", "file"], "default": "directory"},
                    "create": {"type": "bool", "default": True},
                    "owner": {"type": "str"},
                    "group": {"type": "str"},
                    "dir_mode": {"type": "str"},
                    "file_mode": {"type": "str"},
                    "recurse": {"type": "bool", "default": False},
                },
            },
        },
        supports_check_mode=True,
    )
    root = os.path.normpath(module.params["root"])
    rules = module.params["rules"]

    for rule in rules:
        if not rule["path"].startswith("/"):
            module.fail_json(msg="rule path {!r} is not absolute".format(rule["path"]))
        for key in ("dir_mode", "file_mode"):
            if rule[key] is not None and not valid_mode(rule[key]):
                module.fail_json(
                    msg="rule {}: {} {!r} is neither octal nor symbolic".format(rule["path"], key, rule[key])
                )

    def uid_of(name):
        try:
            return resolve_uid(name)
        except KeyError:
            module.fail_json(msg=f"no such user: {name}")

    def gid_of(name):
        try:
            return resolve_gid(name)
        except KeyError:
            module.fail_json(msg=f"no such group: {name}")

    manifest = Manifest(root, uid_of, gid_of)
    try:
        for rule in rules:
            manifest.apply(rule)
    except (ValueError, OSError) as exc:
        module.fail_json(msg=to_native(exc))

    changes = [e for e in manifest.entries.values() if needs_change(e)]
    result = {
        "changed": bool(changes),
        "changed_count": len(changes),
        "changed_paths": [e["path"] for e in changes[:LIST_LIMIT]],
        "symlinks": list(dict.fromkeys(manifest.symlinks))[:LIST_LIMIT],
        "sockets": list(dict.fromkeys(manifest.sockets))[:LIST_LIMIT],
        "unmatched": list(dict.fromkeys(manifest.unmatched)),
    }
    if module._diff:
        before = [line for line in (describe(e, True) for e in changes[:DIFF_LIMIT]) if line]
        after = [describe(e, False) for e in changes[:DIFF_LIMIT]]
        if len(changes) > DIFF_LIMIT:
            more = f"... and {len(changes) - DIFF_LIMIT} more"
            before.append(more)
            after.append(more)
        result["diff"] = {
            "before_header": f"permissions under {root} (before)",
            "after_header": f"permissions under {root} (after)",
            "before": "".join(line + "\n" for line in before),
            "after": "".join(line + "\n" for line in after),
        }

    if not module.check_mode:
        for entry in changes:
            try:
                enforce(entry)
            except OSError as exc:
                module.fail_json(msg="cannot set {}: {}".format(entry["path"], to_native(exc)), **result)

    module.exit_json(**result)


if __name__ == "__main__":
    main()
