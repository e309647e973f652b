"""``make demo``'s converge (``ansible-playbook -i inventory/demo playbooks/site.yml``) twice into a fresh
sandbox root: the first run changes things, the second reports ``changed=0`` and leaves every file's bytes,
mode and mtime as they were. The playbook runs from a frozen copy of the checkout (``demo_harness``), with
the runtime venv installed from a wheelhouse as ``scripts/demo.sh`` does.
"""

from __future__ import annotations

from demo_harness import Demo, changed_tasks, snapshot


def test_demo_converges_then_changes_nothing(tmp_path):
    demo = Demo(tmp_path)

    first = demo.converge()
    assert first["stats"]["localhost"]["changed"] > 0
    assert (demo.root / "etc" / "ds01" / "resource-limits.yaml").is_file()
    assert (demo.root / "opt" / "ds01" / "venv" / "bin" / "python").exists()
    deployed = snapshot(demo.root)

    second = demo.converge()
    assert second["stats"]["localhost"]["changed"] == 0, f"changed on the second run: {changed_tasks(second)}"
    assert second["stats"]["localhost"]["failures"] == 0
    assert snapshot(demo.root) == deployed
