"""Slurm's view of ds01 (module_utils/ds01/slurm.py): gres.conf lines and billing weights from the GPU
inventory, QOS and associations from the limits, and the sacctmgr plan against what the database holds."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config, gpu, slurm

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "fixtures")
LAB = os.path.join(FIXTURES, "lab", "resource-limits.yaml")
DEMO_TOPOLOGY = os.path.join(FIXTURES, "topology", "demo.yaml")
EMPTY = slurm.Current(frozenset(), {}, {}, {}, {})


@pytest.fixture(scope="module")
def lab():
    return config.load_config(LAB)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA A100-SXM4-40GB", "a100-sxm4-40gb"),
        ("NVIDIA H100 80GB HBM3", "h100_80gb_hbm3"),
        ("Tesla V100-PCIE-16GB", "tesla_v100-pcie-16gb"),
    ],
)
def test_gpu_type_from_the_model_name(name, expected):
    assert slurm.gpu_type(name) == expected


def test_a_name_without_letters_is_an_error_with_a_sentence():
    with pytest.raises(slurm.SlurmPlanError, match="name the GPU in the topology"):
        slurm.gpu_type("NVIDIA ::")


@pytest.mark.parametrize(
    ("gpu_index", "gi", "ci", "minor"),
    [(0, 0, None, 3), (0, 0, 0, 4), (0, 0, 7, 11), (0, 1, None, 12), (1, 0, None, 138), (1, 2, 0, 157)],
)
def test_mig_capability_minors_follow_the_drivers_layout(gpu_index, gi, ci, minor):
    assert slurm.mig_cap_minor(gpu_index, gi, ci) == minor


def test_the_drivers_mig_minors_file_wins(tmp_path):
    minors = slurm.read_mig_minors("config 1\nmonitor 2\ngpu1/gi5/access 500\ngpu1/gi5/ci0/access 501\n")
    assert minors == {(1, 5, None): 500, (1, 5, 0): 501}
    topology = tmp_path / "t.yaml"
    topology.write_text(
        "gpus:\n  - {index: 1, uuid: GPU-1, name: NVIDIA A100-SXM4-40GB, mig: true, instances: "
        "[{profile: 1g.5gb, uuid: MIG-1, gpu_instance_id: 5, compute_instance_id: 0}]}\n"
    )
    (entry,) = slurm.gres_entries(gpu.read_inventory(str(topology)).slots(), minors)
    assert entry.files == ("/dev/nvidia1", "/dev/nvidia-caps/nvidia-cap500", "/dev/nvidia-caps/nvidia-cap501")


def test_gres_of_the_demo_topology():
    entries = slurm.gres_entries(gpu.read_inventory(DEMO_TOPOLOGY).slots())
    inventory = gpu.read_inventory(DEMO_TOPOLOGY)
    allocatable = [s for s in inventory.slots() if not s.mig_parent]
    assert [e.slot for e in entries] == [s.slot_id for s in allocatable]
    for entry, slot in zip(entries, allocatable):
        # the one weight, in sevenths
        assert entry.weight == round(gpu.gpueq(slot) * 7)
        if slot.kind == gpu.KIND_MIG:
            assert entry.gres_type == slot.profile
            assert entry.line().startswith(f"Name=gpu Type={slot.profile} MultipleFiles=/dev/nvidia{slot.gpu_index},")
            assert len(entry.files) == 3
        else:
            assert entry.line() == f"Name=gpu Type={slurm.gpu_type(slot.name)} File=/dev/nvidia{slot.gpu_index}"
    weights = slurm.gres_types(entries)
    assert slurm.billing_weights(entries) == ",".join(f"GRES/gpu:{t}={w}" for t, w in weights.items())
    assert slurm.accounting_tres(entries) == "gres/gpu," + ",".join(f"gres/gpu:{t}" for t in weights)
    counts = {t: sum(1 for e in entries if e.gres_type == t) for t in weights}
    assert slurm.node_gres(entries) == ",".join(f"gpu:{t}:{n}" for t, n in counts.items())


def test_one_type_with_two_weights_is_an_error():
    entries = [
        slurm.GresEntry("0", "x", ("/dev/nvidia0",), 7, "GPU-0"),
        slurm.GresEntry("1.0", "x", ("/dev/nvidia1",), 1, "MIG-1"),
    ]
    with pytest.raises(slurm.SlurmPlanError, match="distinct names"):
        slurm.billing_weights(entries)


def test_qos_limits_follow_the_resolver(lab):
    for login in lab.known_users():
        limits = lab.resolve(login)
        per_user, per_job, jobs, wall = slurm.qos_limits(limits)
        quota = limits.gpu_quota
        assert per_user == ({} if quota is None else {"billing": int(quota * 7 + 1e-9)})
        slots = limits.max_gpu_slots_per_container
        assert per_job == ({} if slots is None else {"gres/gpu": slots})
        assert jobs == limits.max_containers_per_user
        assert wall == (None if limits.max_runtime_h is None else round(limits.max_runtime_h * 60))


def test_each_user_gets_the_group_qos_unless_an_override_changes_it(lab):
    accounts = slurm.desired_accounts(lab, "ds01", extra_users=["zed"])
    for login, assoc in accounts.users.items():
        limits = lab.resolve(login)
        assert assoc.account == limits.group
        group_qos = accounts.qos.get(f"ds01-{limits.group}")
        wanted = slurm.qos_limits(limits)
        if assoc.qos == f"ds01-{limits.group}":
            assert group_qos.limits() == wanted
        else:
            assert limits.is_override and assoc.qos == f"ds01-{limits.group}-{login}"
            assert accounts.qos[assoc.qos].limits() == wanted
            assert group_qos is None or group_qos.limits() != wanted
    assert accounts.users["zed"].account == lab.group_of("zed")[0]
    assert set(accounts.accounts) == {a.account for a in accounts.users.values()}


def sacctmgr_text(accounts: slurm.Accounts) -> slurm.Current:
    """What ``sacctmgr show`` prints once ``accounts`` is applied, read back through the parsers."""
    qos = "\n".join(
        "|".join(
            [
                q.name,
                q.description,
                slurm.format_tres(q.max_tres_per_user),
                slurm.format_tres(q.max_tres_per_job),
                "" if q.max_jobs_per_user is None else str(q.max_jobs_per_user),
                slurm.format_minutes(q.max_wall_min) or "",
            ]
        )
        for q in accounts.qos.values()
    )
    account_rows = "\n".join(f"{a}|ds01 group {a}|ds01" for a in accounts.accounts)
    assoc_rows = [f"{accounts.cluster}|{a}|||" for a in accounts.accounts]
    assoc_rows += [f"{accounts.cluster}|{a.account}|{u}|{a.qos}|{a.qos}" for u, a in accounts.users.items()]
    users = "\n".join(f"{u}|{a.account}" for u, a in accounts.users.items())
    return slurm.Current(
        clusters=frozenset([accounts.cluster]),
        qos=slurm.parse_qos("normal|Normal QOS default||||\n" + qos),
        accounts=slurm.parse_accounts("root|default root account|root\n" + account_rows),
        associations=slurm.parse_associations("\n".join(assoc_rows), accounts.cluster),
        users=slurm.parse_users("root|root\n" + users),
    )


def test_a_first_run_adds_everything_and_a_second_run_nothing(lab):
    accounts = slurm.desired_accounts(lab, "ds01")
    steps = slurm.plan(accounts, EMPTY)
    assert steps[0] == ["add", "cluster", "ds01"]
    assert sum(1 for s in steps if s[:2] == ["add", "user"]) == len(accounts.users)
    assert sum(1 for s in steps if s[:2] == ["add", "qos"]) == len(accounts.qos)
    assert slurm.plan(accounts, sacctmgr_text(accounts)) == []


def test_changed_limits_are_set_and_dropped_ones_cleared(lab):
    accounts = slurm.desired_accounts(lab, "ds01")
    current = sacctmgr_text(accounts)
    old = current.qos["ds01-student"]
    current.qos["ds01-student"] = slurm.Qos(
        old.name, old.description, {"billing": 99, "cpu": 4}, old.max_tres_per_job, 9, None
    )
    steps = slurm.plan(accounts, current)
    wanted = accounts.qos["ds01-student"]
    assert steps == [
        [
            "modify", "qos", "where", "name=ds01-student", "set",
            f"MaxTRESPerUser={slurm.format_tres({'cpu': -1, **wanted.max_tres_per_user})}",
            f"MaxJobsPerUser={wanted.max_jobs_per_user}",
            f"MaxWall={wanted.max_wall_min}",
        ]
    ]  # fmt: skip


def test_a_user_who_moved_group_is_moved_and_strangers_pruned(lab):
    accounts = slurm.desired_accounts(lab, "ds01")
    current = sacctmgr_text(accounts)
    login = next(u for u, a in accounts.users.items() if a.account != "admin")
    assoc = accounts.users[login]
    associations = dict(current.associations)
    del associations[(assoc.account, login)]
    associations[("admin", login)] = (frozenset(["ds01-admin"]), "ds01-admin")
    associations[("admin", "olduser")] = (frozenset(["ds01-admin"]), "ds01-admin")
    associations[("physics", "phil")] = (frozenset(["normal"]), "normal")  # not ds01's account
    users = {**current.users, login: "admin", "olduser": "admin"}
    moved = slurm.Current(current.clusters, current.qos, current.accounts, associations, users)
    steps = slurm.plan(accounts, moved)
    assert ["add", "user", login, f"account={assoc.account}", "cluster=ds01", f"qos={assoc.qos}",
            f"defaultqos={assoc.qos}"] in steps  # fmt: skip
    assert ["modify", "user", "where", f"name={login}", "set", f"defaultaccount={assoc.account}"] in steps
    assert ["delete", "user", login, "account=admin", "cluster=ds01"] in steps
    assert ["delete", "user", "olduser", "account=admin", "cluster=ds01"] in steps
    assert not any("phil" in step for step in steps)
    assert not any("olduser" in step for step in slurm.plan(accounts, moved, prune=False))


def test_an_account_of_someone_else_is_not_taken_over(lab):
    accounts = slurm.desired_accounts(lab, "ds01")
    current = slurm.Current(frozenset(["ds01"]), {}, {"student": "physics"}, {}, {})
    with pytest.raises(slurm.SlurmPlanError, match="will not take over"):
        slurm.plan(accounts, current)


def test_stale_ds01_qos_is_pruned_and_others_are_left(lab):
    accounts = slurm.desired_accounts(lab, "ds01")
    current = sacctmgr_text(accounts)
    extra = slurm.parse_qos("ds01-gone|ds01 group gone||||\nhigh|someone's||||")
    current = slurm.Current(current.clusters, {**current.qos, **extra}, current.accounts, current.associations,
                            current.users)  # fmt: skip
    assert slurm.plan(accounts, current) == [["delete", "qos", "ds01-gone"]]


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("", None), ("UNLIMITED", None), ("1-00:00:00", 1440), ("02:00:00", 120), ("30:00", 30), ("00:01:30", 2)],
)
def test_wall_times_as_sacctmgr_prints_them(text, minutes):
    assert slurm.parse_minutes(text) == minutes


def test_the_diff_text_names_every_fact(lab):
    accounts = slurm.desired_accounts(lab, "ds01")
    text = slurm.render_state(accounts)
    assert text.splitlines()[0] == "cluster ds01"
    assert sum(1 for line in text.splitlines() if line.startswith("user ")) == len(accounts.users)
    before = slurm.render_state(slurm.current_as_accounts(EMPTY, "ds01"))
    assert before == "cluster (none)\n"
    assert slurm.render_state(slurm.current_as_accounts(sacctmgr_text(accounts), "ds01")) == text
