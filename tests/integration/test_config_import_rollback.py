"""``ds01 config import`` on the upstream's own directory, deployed by the real role; ``ds01 config rollback``.

Ground truth. What the old directory means is what the upstream's own resolver (hertie-data-science-lab/ds01-infra,
``scripts/docker/get_resource_limits.py`` at 2cf1a0e) answered for each login of
``tests/fixtures/upstream/config-runtime`` (its real ``resource-limits.yaml`` plus members, overrides, exemptions
and group-overrides files written in its formats): ``upstream-answers.json``, recorded by running that code
(``tests/fixtures/upstream/SOURCE.md``). The importer carries its own model of those semantics
(``migrate.Legacy``); the first test holds that model to the recorded answers, so it is not the importer grading
itself. The second test runs the real CLI (``ds01 config import DIR``), renders its variables with the real
ds01_common role into a sandbox root (ansible-playbook, as the demo does), and asks the installed ``ds01 config
show USER --json`` for every login the old directory names plus one it does not: each must equal both the
recorded upstream answer and the model. One difference is intended and reported by the import: a user with an
override keeps their group (the old resolver called it ``override`` and gave it a parentless slice; reference §13
#5), so for those users the group is compared with the group the old code took their aggregate and policies from.

Rollback: a second deploy (the demo's own inventory) keeps the imported configuration in ``.previous``; an
unchanged deploy keeps nothing new; ``ds01 config rollback`` puts the kept set back (checked first) and a second
rollback undoes the first; a kept set that is invalid or absent changes nothing.

Refusal: the same role, given an inventory config with a misspelt key, fails the play with ds01's sentence and
leaves every live file as it was (the sandbox is the one the tests above deployed).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from demo_harness import BIN, Demo, failed_results, snapshot

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = REPO / "tests" / "fixtures" / "upstream"
OLD_DIR = UPSTREAM / "config-runtime"
ANSWERS = json.loads((UPSTREAM / "upstream-answers.json").read_text())
CORE = REPO / "plugins" / "module_utils"
PLAYBOOK = Path(__file__).resolve().parent / "config_only_playbook.yml"

sys.path.insert(0, str(CORE))
from ds01 import migrate  # noqa: E402

NOW = dt.datetime.now(dt.timezone.utc)


def size(text):
    """A Docker CLI size as the old wrapper passed it (``32g``) → bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgt]?)", str(text).lower())
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " "))


def hours(text, none_word):
    return None if text == none_word else float(text.rstrip("h"))


def upstream_view(login):
    """The recorded upstream answers for ``login``, in ds01's vocabulary."""
    answer = ANSWERS[login]
    js = json.loads(answer["--json"])
    docker = dict(arg[2:].split("=", 1) for arg in answer["--docker-args"].split())
    aggregate = json.loads(answer["--aggregate"])
    return {
        "group": answer["--group"],
        "slice": docker["cgroup-parent"],
        "limits": {
            "max_gpu_equivalents": None if js["max_gpus"] == "unlimited" else float(js["max_gpus"]),
            "max_gpu_slots_per_container": None
            if js["max_gpus_per_container"] == "unlimited"
            else int(js["max_gpus_per_container"]),
            "allow_full_gpu": answer["--allow-full-gpu"] == "true",
            "max_cpus": float(docker["cpus"]),
            "memory": size(docker["memory"]),
            "memory_swap": size(docker["memory-swap"]),
            "shm_size": size(docker["shm-size"]),
            "pids_limit": int(docker["pids-limit"]),
            "max_containers_per_user": None if js["max_containers"] == "unlimited" else int(js["max_containers"]),
            "max_runtime_h": hours(js["max_runtime"], "unlimited"),
            "idle_timeout_h": hours(js["idle_timeout"], "N/A"),
            "gpu_hold_after_stop_h": hours(js["gpu_hold"], "N/A"),
            "container_hold_after_stop_h": hours(js["container_hold"], "N/A"),
        },
        "aggregate": None
        if aggregate is None
        else {k: aggregate.get(k) for k in ("cpu_quota", "memory_max", "memory_high", "tasks_max", "gpu_limit")},
        "policies": json.loads(answer["--lifecycle-policies"]),
        "exempt": {
            kind: answer[f"--check-exemption {kind}"].startswith("exempt:")
            for kind in ("idle_timeout_h", "max_runtime_h")
        },
    }


def ds01_view(shown):
    """``ds01 config show --json`` in the same shape (aggregate values as the old file wrote them)."""
    aggregate = shown["aggregate"]
    if aggregate is not None:
        aggregate = dict(aggregate)
        if aggregate["tasks_max"] is not None:
            aggregate["tasks_max"] = int(aggregate["tasks_max"])
    exempt = {}
    for kind in ("idle_timeout_h", "max_runtime_h"):
        exempt[kind] = any(
            kind in e["exempt_from"]
            and e["container"] is None
            and (e["expires_on"] is None or dt.datetime.fromisoformat(e["expires_on"]) > NOW)
            for e in shown["exemptions"]
        )
    return {
        "group": shown["group"],
        "slice": shown["slice"],
        "limits": shown["limits"],
        "aggregate": aggregate,
        "policies": {
            k: shown["policies"][k] for k in json.loads(ANSWERS["nobody@lab.example"]["--lifecycle-policies"])
        },
        "exempt": exempt,
    }


def comparable(view, membership_group, override):
    """Drop what is intended to differ for override users (group name, slice), keep everything enforced."""
    out = dict(view)
    if override:
        assert out["group"] in ("override", membership_group)
        out["group"] = membership_group
        out.pop("slice")
    return out


def test_the_model_of_the_old_resolver_answers_as_the_upstream_code_did():
    legacy = migrate.Legacy(str(OLD_DIR))
    assert set(legacy.logins()) | {"nobody@lab.example", "san_user"} == set(ANSWERS)
    for login in ANSWERS:
        model = legacy.resolve(login, NOW)
        expected = upstream_view(login)
        got = {key: model[key] for key in ("group", "slice", "limits", "aggregate", "exempt")}
        got["policies"] = {k: model["policies"][k] for k in expected["policies"]}
        if got["aggregate"] is not None:
            got["aggregate"] = {
                k: (int(v) if k == "tasks_max" and v is not None else v) for k, v in got["aggregate"].items()
            }
            expected["aggregate"] = {
                k: (str(v) if k in ("cpu_quota", "memory_max", "memory_high") and v is not None else v)
                for k, v in expected["aggregate"].items()
            }
        assert got == expected, login


def run_ds01(root, *args, check=True):
    python = root / "opt" / "ds01" / "venv" / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-m", "ds01", "--config", str(root / "etc" / "ds01" / "resource-limits.yaml"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def deploy(demo, *extra, expect_ok=True):
    """ds01_common alone (the config it renders, checks, keeps and installs) into the demo's sandbox root; the
    ansible.posix.json document (``expect_ok=False``: ``(returncode, document, stderr)``, whatever the outcome)."""
    env = {
        **os.environ,
        "DEMO_ROOT": str(demo.root),
        "ANSIBLE_COLLECTIONS_PATH": str(demo.collections_root),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOCAL_TEMP": str(demo.tmp_path / "ansible-local"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "inventory/demo", str(PLAYBOOK), *extra],
        cwd=demo.collection,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    data = json.loads(proc.stdout)
    if not expect_ok:
        return proc.returncode, data, proc.stderr
    assert proc.returncode == 0, json.dumps(failed_results(data), indent=1) + proc.stderr[-3000:]
    return data


def live_config(root):
    live = root / "etc" / "ds01"
    return {p: f for p, f in snapshot(live).items() if not p.startswith((".staging", ".previous"))}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The import printed by the real CLI, deployed by the role into a sandbox root."""
    tmp = tmp_path_factory.mktemp("import")
    proc = subprocess.run(
        [sys.executable, "-m", "ds01", "config", "import", str(OLD_DIR)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(CORE)},
    )
    assert proc.returncode == 0, proc.stderr
    variables = yaml.safe_load(proc.stdout)
    assert set(variables) == {
        "ds01_common_limits",
        "ds01_common_group_members",
        "ds01_common_user_overrides",
        "ds01_common_lifecycle_exemptions",
    }
    vars_file = tmp / "imported.yml"
    vars_file.write_text(proc.stdout)
    demo = Demo(tmp)
    deploy(demo, "-e", f"@{vars_file}")
    return demo, vars_file, proc.stderr


def test_the_imported_config_resolves_every_user_like_the_old_directory(imported):
    demo, _vars_file, changes = imported
    # every change of meaning is said, with the old and the new meaning
    assert "ovr.res@lab.example: group: was: 'override'" in changes
    assert "now: 'researcher'" in changes
    assert "groups/researcher.members: dup.user@lab.example: was: also listed in 'student'" in changes
    assert "exemptions[3]: idle_timeout_h: was: never honoured" in changes
    assert "group-overrides.txt:9: 100001@lab.example: was: 'faculty'" in changes
    assert "verification" not in changes
    legacy = migrate.Legacy(str(OLD_DIR))
    for login in sorted(set(ANSWERS) - {"san_user"}):
        shown = json.loads(run_ds01(demo.root, "config", "show", login, "--json").stdout)
        membership, override = legacy.membership_group(login), legacy.override_key(login) is not None
        expected = comparable(upstream_view(login), membership, override)
        assert expected["group"] == membership and (ANSWERS[login]["--group"] == "override") == override
        assert comparable(ds01_view(shown), membership, override) == expected, login
        assert shown["group"] == membership, login


def test_a_deploy_keeps_the_replaced_config_and_rollback_restores_it(imported):
    demo, _vars_file, _changes = imported
    root = demo.root
    live = root / "etc" / "ds01"
    previous = live / ".previous"
    imported_config = {p: f[0] for p, f in live_config(root).items()}

    deploy(demo)  # the demo inventory's own config replaces the imported one
    demo_config = {p: f[0] for p, f in live_config(root).items()}
    assert demo_config != imported_config
    kept = {p: f[0] for p, f in snapshot(previous).items()}
    assert kept == imported_config
    before = snapshot(previous)
    deploy(demo)  # nothing changes: nothing new is kept
    assert snapshot(previous) == before

    shown = json.loads(run_ds01(root, "config", "show", "ovr.res@lab.example", "--json").stdout)
    assert shown["override"] is False
    proc = run_ds01(root, "config", "rollback")
    assert "rolled" in proc.stdout and str(previous) in proc.stdout
    assert {p: f[0] for p, f in live_config(root).items()} == imported_config
    assert {p: f[0] for p, f in snapshot(previous).items()} == demo_config
    shown = json.loads(run_ds01(root, "config", "show", "ovr.res@lab.example", "--json").stdout)
    assert shown["override"] is True and shown["limits"]["idle_timeout_h"] is None

    run_ds01(root, "config", "rollback")  # again: undoes the first
    assert {p: f[0] for p, f in live_config(root).items()} == demo_config

    # an invalid kept configuration is refused and nothing changes
    (previous / "resource-limits.yaml").write_text("defaults:\n  max_gpu_equivalnts: 2\n")
    settled = live_config(root)
    proc = run_ds01(root, "config", "rollback", check=False)
    assert proc.returncode == 1
    assert "is not valid, so" in proc.stderr and "max_gpu_equivalnts: unknown key" in proc.stderr
    assert live_config(root) == settled

    # none kept: a clear sentence, nothing changes
    shutil.rmtree(previous)
    proc = run_ds01(root, "config", "rollback", check=False)
    assert proc.returncode == 1 and "there is no previous configuration" in proc.stderr
    assert live_config(root) == settled


def test_the_role_refuses_a_misspelt_limit_and_leaves_the_live_files_untouched(imported):
    """The role refuses an inventory config that ``ds01 config check`` rejects: the play fails with ds01's own
    sentence (file, line, the key, the suggestion), and every live file under ``<root>/etc/ds01`` (not its
    ``.staging``, where the role checks) keeps its bytes, mode and mtime."""
    demo, _vars_file, _changes = imported
    live = demo.root / "etc" / "ds01"
    # live: what the tests above left (the demo's config after two rollbacks; the imported one when run alone)
    deployed = {p: f for p, f in snapshot(live).items() if p.split("/")[0] != ".staging"}
    assert "resource-limits.yaml" in deployed
    assert "max_gpu_equivalnts" not in (live / "resource-limits.yaml").read_text()

    inventory = yaml.safe_load((demo.collection / "inventory" / "demo" / "group_vars" / "gpu_servers.yml").read_text())
    limits = copy.deepcopy(inventory["ds01_common_limits"])
    limits["defaults"]["max_gpu_equivalnts"] = 2.0
    bad = demo.tmp_path / "bad-limits.json"
    bad.write_text(json.dumps({"ds01_common_limits": limits}))

    rc, data, stderr = deploy(demo, "-e", f"@{bad}", expect_ok=False)
    assert rc != 0, stderr
    [(task, message)] = failed_results(data)
    assert (
        task
        == "ds01.infra.ds01_common : Refuse a configuration that ds01 rejects (the live configuration was not touched)"
    )
    assert "the configuration has 1 problem" in message
    assert "defaults.max_gpu_equivalnts: unknown key; did you mean 'max_gpu_equivalents'?" in message
    assert "/.staging/resource-limits.yaml:" in message
    assert {p: f for p, f in snapshot(live).items() if p.split("/")[0] != ".staging"} == deployed
    staged = (live / ".staging" / "resource-limits.yaml").read_text()
    assert "max_gpu_equivalnts: 2.0" in staged, "the bad value was not what the check refused"
