"""ds01.infra.slurm_gres and ds01.infra.slurm_accounts through the AnsibleModule harness (the real sacctmgr
is exercised in molecule/slurm)."""

from __future__ import annotations

import os
import shutil

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config, slurm
from ansible_collections.ds01.infra.plugins.modules import slurm_accounts, slurm_gres

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures")
LAB = os.path.join(FIXTURES, "lab", "resource-limits.yaml")
DEMO_TOPOLOGY = os.path.join(FIXTURES, "topology", "demo.yaml")


def test_gres_facts_of_a_topology(run_module, tmp_path):
    result = run_module(slurm_gres, {"topology": DEMO_TOPOLOGY, "mig_minors": str(tmp_path / "absent")}, check=True)
    assert result["changed"] is False
    facts = result["ansible_facts"]["ds01_slurm_gres"]
    assert len(facts["lines"]) == len(facts["entries"])
    assert all(line.startswith("Name=gpu Type=") for line in facts["lines"])
    assert facts["billing_weights"] == ",".join(f"GRES/gpu:{t}={w}" for t, w in facts["types"].items())


def test_gres_facts_follow_the_configs_backend(run_module, tmp_path):
    shutil.copy(DEMO_TOPOLOGY, tmp_path / "topology.yaml")
    (tmp_path / "resource-limits.yaml").write_text(
        "default_group: student\ngroups: {student: {}}\ngpu_allocation: {backend: fake, topology: topology.yaml}\n"
    )
    by_config = run_module(slurm_gres, {"config": str(tmp_path / "resource-limits.yaml")}, check=True)
    by_topology = run_module(slurm_gres, {"topology": DEMO_TOPOLOGY}, check=True)
    assert by_config["ansible_facts"] == by_topology["ansible_facts"]


def test_gres_of_a_broken_topology_fails_with_a_sentence(run_module, tmp_path):
    (tmp_path / "t.yaml").write_text("gpus: 3\n")
    result = run_module(slurm_gres, {"topology": str(tmp_path / "t.yaml")}, fails=True)
    assert "must be a mapping with a list 'gpus'" in result["msg"]


def test_accounts_offline_plan_a_first_run_and_change_nothing(run_module):
    result = run_module(slurm_accounts, {"config": LAB, "cluster": "lab", "offline": True}, diff=True)
    assert result["changed"] is False
    desired = slurm.desired_accounts(config.load_config(LAB), "lab")
    assert result["desired"] == desired.as_dict()
    assert result["commands"][0] == "sacctmgr -i add cluster lab"
    assert len(result["commands"]) == len(slurm.plan(desired, slurm.Current(frozenset(), {}, {}, {}, {})))
    assert result["diff"]["after"] == slurm.render_state(desired)


def test_accounts_refuse_a_broken_config_before_reading_slurm(run_module, tmp_path):
    (tmp_path / "resource-limits.yaml").write_text("default_group: nosuch\ngroups: {student: {max_cpus: lots}}\n")
    result = run_module(
        slurm_accounts, {"config": str(tmp_path / "resource-limits.yaml"), "cluster": "lab"}, fails=True
    )
    assert result["problems"]
    assert "commands" not in result
