"""The role refuses an inventory config that ``ds01 config check`` rejects, and the live files stay as they were.

The demo is deployed into a sandbox root (``demo_harness``); then the same playbook runs with
``ds01_common_limits`` carrying a misspelt key. The play must fail with ds01's own sentence (file, line,
the key, the suggestion), and every live file under ``<root>/etc/ds01`` (not its ``.staging``) keeps
its bytes, mode and mtime.
"""

from __future__ import annotations

import copy
import json

import yaml
from demo_harness import Demo, failed_results, snapshot


def live_files(live):
    """The live configuration: everything under etc/ds01 except the staging directory the role checks in."""
    return {path: facts for path, facts in snapshot(live).items() if path.split("/")[0] != ".staging"}


def test_a_misspelt_limit_fails_the_play_and_leaves_etc_ds01_untouched(tmp_path):
    demo = Demo(tmp_path)
    demo.converge()
    live = demo.root / "etc" / "ds01"
    deployed = live_files(live)
    assert (
        "resource-limits.yaml" in deployed and "max_gpu_equivalents: 1.0" in (live / "resource-limits.yaml").read_text()
    )

    inventory = yaml.safe_load((demo.collection / "inventory" / "demo" / "group_vars" / "gpu_servers.yml").read_text())
    limits = copy.deepcopy(inventory["ds01_common_limits"])
    limits["defaults"]["max_gpu_equivalnts"] = 2.0
    bad = tmp_path / "bad-limits.json"
    bad.write_text(json.dumps({"ds01_common_limits": limits}))

    rc, data, stderr = demo.site("-e", f"@{bad}")
    assert rc != 0, stderr
    [(task, message)] = failed_results(data)
    assert (
        task
        == "ds01.infra.ds01_common : Refuse a configuration that ds01 rejects (the live configuration was not touched)"
    )
    assert "the configuration has 1 problem" in message
    assert "defaults.max_gpu_equivalnts: unknown key; did you mean 'max_gpu_equivalents'?" in message
    assert "/.staging/resource-limits.yaml:" in message
    assert live_files(live) == deployed
    staged = (live / ".staging" / "resource-limits.yaml").read_text()
    assert "max_gpu_equivalnts: 2.0" in staged, "the bad value was not what the check refused"
