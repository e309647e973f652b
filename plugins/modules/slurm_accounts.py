#!/usr/bin/python
# Copyright (c) ds01.infra contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: slurm_accounts
short_description: Slurm QOS, accounts and associations from the ds01 limits
version_added: 0.1.0
description:
  - Reads C(resource-limits.yaml) (with its members files and overrides) through the ds01 limits resolver and makes
    Slurm's accounting database hold the same policy, through C(sacctmgr).
  - One account per ds01 group (organization C(ds01)), one QOS per group (C(ds01-<group>)), and a QOS of their own
    (C(ds01-<group>-<login>)) for users whose overrides change a limit Slurm enforces. Every known login gets an
    association under its group's account with that QOS as its only and default QOS.
  - "The GPU quota becomes C(MaxTRESPerUser=billing=<gpueq x 7>): with the partition's C(TRESBillingWeights) that
    the C(ds01_slurm) role renders (a whole GPU 7, a MIG instance its compute slices) a user's running jobs may hold
    at most their quota in GPU-equivalents, counted as ds01 counts them. C(max_gpu_slots_per_container) becomes
    C(MaxTRESPerJob=gres/gpu), C(max_containers_per_user) C(MaxJobsPerUser), C(max_runtime_h) C(MaxWall)."
  - Reads the database with C(sacctmgr show ... -P -n) and runs only the commands that change something, so a
    second run changes nothing. A configuration the resolver rejects fails the module before anything runs.
  - Only QOS named C(ds01-*) and accounts with organization C(ds01) are ever changed or pruned; an existing
    account of the same name with another organization fails the module.
author:
  - ds01.infra maintainers (@ds01-infra)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ds01.infra.module_attributes
attributes:
  diff_mode:
    support: full
    details:
      - The managed accounting state before and after, one line per QOS, account and user.
options:
  config:
    description:
      - Path of C(resource-limits.yaml). Its members files and C(user-overrides.yaml) are read from the same
        directory.
    type: path
    default: /etc/ds01/resource-limits.yaml
  cluster:
    description: The Slurm C(ClusterName) the associations belong to (added to the database when missing).
    type: str
    required: true
  extra_users:
    description:
      - More logins that get an association although no members file or override names them (they resolve into
        the default group, as ds01 resolves them).
    type: list
    elements: str
    default: []
  prune:
    description:
      - Remove the associations, ds01 accounts and C(ds01-*) QOS the configuration no longer asks for.
    type: bool
    default: true
  offline:
    description:
      - Plan against an empty database and run nothing, not even C(sacctmgr show) (a sandbox without Slurm).
        RV(commands) then lists everything a first run would do; the module reports no change.
    type: bool
    default: false
requirements:
  - PyYAML (the limits resolver)
  - sacctmgr and a running slurmdbd, unless O(offline=true)
seealso:
  - name: sacctmgr
    description: Slurm's accounting manager.
    link: https://slurm.schedmd.com/sacctmgr.html
  - name: Resource limits
    description: How Slurm applies QOS and association limits.
    link: https://slurm.schedmd.com/resource_limits.html
"""

EXAMPLES = r"""
- name: Apply the ds01 limits to Slurm's accounting
  ds01.infra.slurm_accounts:
    cluster: ds01

- name: Show what a first run would do, without Slurm
  ds01.infra.slurm_accounts:
    config: /tmp/sandbox/etc/ds01/resource-limits.yaml
    cluster: ds01
    offline: true
  register: plan
"""

RETURN = r"""
commands:
  description: The sacctmgr commands run (would be run, in check mode or offline), in order.
  returned: always
  type: list
  elements: str
  sample: ["sacctmgr -i add qos ds01-student", "sacctmgr -i modify qos where name=ds01-student set MaxWall=1440"]
desired:
  description: The QOS, accounts and associations the configuration asks for.
  returned: always
  type: dict
  sample:
    cluster: ds01
    qos:
      ds01-student: {MaxTRESPerUser: billing=14, MaxTRESPerJob: gres/gpu=2, MaxJobsPerUser: 3, MaxWall: "1-00:00:00"}
    accounts: [student]
    users: {alice: {account: student, qos: ds01-student}}
problems:
  description: The resolver's problems, one per item, when the configuration was rejected.
  returned: failure
  type: list
  elements: dict
"""

import shlex

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config as ds01_config
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import slurm

ENV = {"LC_ALL": "C"}


def show(module, sacctmgr, what, fields, where=()):
    """``sacctmgr -P -n show WHAT [where ...] format=FIELDS``; fails the module on an error."""
    argv = [sacctmgr, "-P", "-n", "show", what, *where, f"format={fields}"]
    rc, out, err = module.run_command(argv, environ_update=ENV)
    if rc != 0:
        module.fail_json(
            msg=f"'{shlex.join(argv)}' failed (is slurmdbd running and this host allowed to reach it?)",
            rc=rc,
            stdout=out,
            stderr=err,
        )
    return out


def read_current(module, sacctmgr, cluster):
    clusters = show(module, sacctmgr, "cluster", "Cluster")
    return slurm.Current(
        clusters=frozenset(line.strip() for line in clusters.splitlines() if line.strip()),
        qos=slurm.parse_qos(show(module, sacctmgr, "qos", slurm.QOS_FORMAT)),
        accounts=slurm.parse_accounts(show(module, sacctmgr, "account", slurm.ACCOUNT_FORMAT)),
        associations=slurm.parse_associations(
            show(module, sacctmgr, "assoc", slurm.ASSOC_FORMAT, where=("where", f"cluster={cluster}")), cluster
        ),
        users=slurm.parse_users(show(module, sacctmgr, "user", slurm.USER_FORMAT)),
    )


def main():
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "default": ds01_config.DEFAULT_CONFIG_PATH},
            "cluster": {"type": "str", "required": True},
            "extra_users": {"type": "list", "elements": "str", "default": []},
            "prune": {"type": "bool", "default": True},
            "offline": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    cluster = module.params["cluster"]
    try:
        cfg = ds01_config.load_config(module.params["config"])
    except ds01_config.ConfigError as exc:
        module.fail_json(msg=exc.render(), problems=[p.as_dict() for p in exc.problems])
    desired = slurm.desired_accounts(cfg, cluster, module.params["extra_users"])
    if module.params["offline"]:
        sacctmgr = "sacctmgr"
        current = slurm.Current(frozenset(), {}, {}, {}, {})
    else:
        sacctmgr = module.get_bin_path("sacctmgr", required=True)
        current = read_current(module, sacctmgr, cluster)
    try:
        steps = slurm.plan(desired, current, prune=module.params["prune"])
    except slurm.SlurmPlanError as exc:
        module.fail_json(msg=to_native(exc))
    commands = [shlex.join(["sacctmgr", "-i", *step]) for step in steps]
    result = {"changed": bool(steps) and not module.params["offline"], "commands": commands}
    result["desired"] = desired.as_dict()
    if module._diff:
        result["diff"] = {
            "before_header": f"slurm accounting ({cluster})",
            "after_header": f"slurm accounting ({cluster})",
            "before": slurm.render_state(slurm.current_as_accounts(current, cluster)),
            "after": slurm.render_state(desired),
        }
    if module.check_mode or module.params["offline"]:
        module.exit_json(**result)
    done = []
    for step, command in zip(steps, commands):
        rc, out, err = module.run_command([sacctmgr, "-i", *step], environ_update=ENV)
        if rc != 0:
            module.fail_json(
                msg=f"'{command}' failed; the commands before it were applied", rc=rc, stdout=out, stderr=err, done=done
            )
        done.append(command)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
