"""The gateway's decisions, table-driven: routes, ownership, create checks and rewrites, GPU asks."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import admission, policy

HOME = "/home/alice"
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
LINKS = {"/home/alice/etc-link": "/etc", "/dev/char/195:0": "/dev/nvidia0"}


def ctx(**extra):
    values = dict(  # noqa: C408 - keyword form mirrors CreateContext(...)
        login="alice",
        home=HOME,
        slice_name="ds01-student-alice.slice",
        group="student",
        max_cpus=2.0,
        memory=4 << 30,
        memory_swap=6 << 30,
        shm_size=1 << 30,
        pids_limit=512,
        allowed_capabilities=("CHOWN", "KILL", "SYS_CHROOT"),
        allowed_devices=("/dev/fuse",),
        bind_prefixes=("{home}",),
        readonly_bind_prefixes=("/srv/datasets",),
        socket_paths=("/var/run/docker.sock", "/run/ds01/dockerd.sock"),
        container_owners={"mine": {"ds01.user": "alice"}, "bobs": {"ds01.user": "bob"}, "gone": None},
        volume_owners={"bobvol": {"ds01.user": "bob"}, "myvol": {"ds01.user": "alice"}, "shared": {}},
        realpath=lambda p: LINKS.get(p, p),
        now=NOW,
        host_cpus=64,
    )
    values.update(extra)
    return policy.CreateContext(**values)


def create(host=None, **top):
    body = {"Image": "local/debian-min:bookworm", "HostConfig": host or {}}
    body.update(top)
    return body


# ---------------------------------------------------------------------------------------------
# routes


@pytest.mark.parametrize(
    ("method", "target", "kind", "ref", "action"),
    [
        ("GET", "/_ping", "open", None, ""),
        ("HEAD", "/v1.41/_ping", "open", None, ""),
        ("GET", "/v1.41/containers/json?all=1", "containers.list", None, ""),
        ("POST", "/v1.41/containers/create?name=x", "containers.create", None, ""),
        ("GET", "/v1.41/containers/web/json", "container", "web", "json"),
        ("GET", "/containers/web/logs?follow=1", "container", "web", "logs"),
        ("POST", "/v1.24/containers/abc123/attach?stream=1", "container", "abc123", "attach"),
        ("POST", "/containers/web/exec", "container", "web", "exec"),
        ("DELETE", "/v1.41/containers/web?force=1", "container", "web", ""),
        ("PUT", "/containers/web/archive?path=/x", "container", "web", "archive"),
        ("HEAD", "/containers/web/archive?path=/x", "container", "web", "archive"),
        ("GET", "/containers/my%2Fname/json", "container", "my/name", "json"),
        ("POST", "/exec/e1/start", "exec", "e1", "start"),
        ("GET", "/exec/e1/json", "exec", "e1", "json"),
        ("GET", "/events?since=1", "events", None, ""),
        ("POST", "/v1.41/commit?container=web&repo=x", "commit", "web", "commit"),
        ("POST", "/build?t=x", "build", None, ""),
        ("POST", "/containers/prune", "admin", None, ""),
        ("POST", "/v1.41/images/prune", "admin", None, ""),
        ("POST", "/volumes/prune", "admin", None, ""),
        ("GET", "/plugins", "admin", None, ""),
        ("POST", "/swarm/init", "admin", None, ""),
        ("GET", "/v1.41/services", "admin", None, ""),
        ("GET", "/secrets", "admin", None, ""),
        ("GET", "/configs", "admin", None, ""),
        ("GET", "/nodes", "admin", None, ""),
        ("GET", "/tasks", "admin", None, ""),
        ("POST", "/images/create?fromImage=x", "images.create", None, ""),
        ("DELETE", "/volumes/v1", "volume", "v1", "remove"),
        ("POST", "/volumes/create", "volumes.create", None, ""),
        ("POST", "/networks/n1/connect", "networks.connect", "n1", "connect"),
        ("GET", "/system/df", "system.df", None, ""),
        ("POST", "/containers/web/checkpoints", "unknown", None, ""),
        ("GET", "/containers/../info", "unknown", None, ""),
        ("POST", "/info", "unknown", None, ""),
        ("GET", "/no/such/thing", "unknown", None, ""),
    ],
)
def test_classify(method, target, kind, ref, action):
    route = policy.classify(method, target)
    assert (route.kind, route.ref, route.action) == (kind, ref, action)


def test_version_prefix_survives_rewrite():
    route = policy.classify("GET", "/v1.41/containers/web/logs?follow=1&tail=10")
    target = policy.rebuild_target(route, path=policy.container_path(route, "f" * 64))
    assert target == f"/v1.41/containers/{'f' * 64}/logs?follow=1&tail=10"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (None, {"label": {"ds01.user=alice": True}}),
        ('{"status":["running"]}', {"status": {"running": True}, "label": {"ds01.user=alice": True}}),
        ('{"label":{"ds01.user=bob":true}}', {"label": {"ds01.user=bob": True, "ds01.user=alice": True}}),
        ('{"label":["a=b"]}', {"label": {"a=b": True, "ds01.user=alice": True}}),
    ],
)
def test_owner_filter_is_added_to_any_filter_form(filters, expected):
    assert json.loads(policy.add_label_filter(filters, "ds01.user=alice")) == expected


@pytest.mark.parametrize("filters", ["[1]", "not json", '{"label": 3}'])
def test_unparseable_filters_are_refused(filters):
    with pytest.raises(ValueError):
        policy.add_label_filter(filters, "ds01.user=alice")


# ---------------------------------------------------------------------------------------------
# ownership


@pytest.mark.parametrize(
    ("labels", "code", "phrase"),
    [
        ({"ds01.user": "alice"}, None, None),
        ({"ds01.user": "bob"}, "NOT_OWNER", "belongs to bob"),
        ({"ds01.user": "alice", "ds01.protected": "true"}, "NOT_OWNER", "protected infrastructure"),
        ({}, "NOT_OWNER", "no owner"),
        (None, "NOT_OWNER", "no owner"),
        # containers of the old system belong to their owners (identity.container_owner)
        ({"aime.mlc.USER": "alice"}, None, None),
        ({"aime.mlc.USER": "bob"}, "NOT_OWNER", "belongs to bob"),
    ],
)
def test_ownership(labels, code, phrase):
    refusal = policy.ownership("alice", "/web", labels, "stop")
    if code is None:
        assert refusal is None
    else:
        assert refusal.code == code and phrase in refusal.sentence and "'web'" in refusal.sentence


# ---------------------------------------------------------------------------------------------
# create: refusals (each names the setting)

ESCAPES = [
    ("privileged", create({"Privileged": True}), "--privileged"),
    ("cap SYS_ADMIN", create({"CapAdd": ["SYS_ADMIN"]}), "SYS_ADMIN"),
    ("cap_ prefix", create({"CapAdd": ["cap_sys_ptrace"]}), "SYS_PTRACE"),
    ("cap ALL", create({"CapAdd": ["ALL"]}), "ALL"),
    ("Capabilities field", create({"Capabilities": ["CAP_NET_ADMIN"]}), "NET_ADMIN"),
    ("pid host", create({"PidMode": "host"}), "--pid=host"),
    ("ipc host", create({"IpcMode": "host"}), "--ipc=host"),
    ("uts host", create({"UTSMode": "host"}), "--uts=host"),
    ("userns host", create({"UsernsMode": "host"}), "--userns=host"),
    ("network host", create({"NetworkMode": "host"}), "--network host"),
    ("pid of another's container", create({"PidMode": "container:bobs"}), "belongs to bob"),
    ("network of another's container", create({"NetworkMode": "container:bobs"}), "belongs to bob"),
    ("volumes-from another's", create({"VolumesFrom": ["bobs:ro"]}), "belongs to bob"),
    ("root bind", create({"Binds": ["/:/host"]}), "outside the directories"),
    ("etc bind", create({"Binds": ["/etc:/etc:ro"]}), "outside the directories"),
    ("dotdot bind", create({"Binds": ["/home/alice/../bob:/b"]}), "/home/bob"),
    ("prefix lookalike", create({"Binds": ["/home/alice2:/b"]}), "outside the directories"),
    ("symlink out of home", create({"Binds": ["/home/alice/etc-link:/e"]}), "resolves to /etc"),
    ("docker socket", create({"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]}), "Docker socket"),
    ("daemon socket dir", create({"Binds": ["/run/ds01:/r"]}), "outside the directories"),
    ("mount bind root", create({"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}), "outside"),
    ("shared data rw", create({"Binds": ["/srv/datasets/imagenet:/data"]}), "read-only"),
    (
        "mount shared rw",
        create({"Mounts": [{"Type": "bind", "Source": "/srv/datasets", "Target": "/d", "ReadOnly": False}]}),
        "read-only",
    ),
    (
        "local volume o=bind",
        create(
            {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Target": "/h",
                        "VolumeOptions": {
                            "DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}
                        },
                    }
                ]
            }
        ),
        "driver options",
    ),
    (
        "local volume device",
        create(
            {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": "disk",
                        "Target": "/h",
                        "VolumeOptions": {"DriverConfig": {"Options": {"type": "ext4", "device": "/dev/sda1"}}},
                    }
                ]
            }
        ),
        "/dev/sda1",
    ),
    ("another's volume", create({"Binds": ["bobvol:/data"]}), "volume 'bobvol' belongs to bob"),
    ("volume driver", create({"VolumeDriver": "sshfs"}), "sshfs"),
    ("npipe mount", create({"Mounts": [{"Type": "npipe", "Source": "x", "Target": "/x"}]}), "npipe"),
    ("seccomp unconfined", create({"SecurityOpt": ["seccomp=unconfined"]}), "seccomp"),
    ("seccomp colon", create({"SecurityOpt": ["seccomp:unconfined"]}), "seccomp"),
    ("apparmor unconfined", create({"SecurityOpt": ["apparmor=unconfined"]}), "apparmor"),
    ("custom seccomp profile", create({"SecurityOpt": ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']}), "seccomp"),
    ("label disable", create({"SecurityOpt": ["label=disable"]}), "label"),
    ("systempaths", create({"MaskedPaths": [], "ReadonlyPaths": []}), "systempaths"),
    (
        "nvidia device",
        create({"Devices": [{"PathOnHost": "/dev/nvidia0", "PathInContainer": "/dev/nvidia0"}]}),
        "--gpus",
    ),
    ("nvidia via symlink", create({"Devices": [{"PathOnHost": "/dev/char/195:0"}]}), "--gpus"),
    ("other device", create({"Devices": [{"PathOnHost": "/dev/sda"}]}), "/dev/sda"),
    ("device cgroup rule", create({"DeviceCgroupRules": ["c 195:* rwm"]}), "--device-cgroup-rule"),
    ("foreign cgroup parent", create({"CgroupParent": "ds01-student-bob.slice"}), "ds01-student-bob.slice"),
    ("root cgroup parent", create({"CgroupParent": "/"}), "not your slice"),
    ("runtime", create({"Runtime": "runsc-debug"}), "runsc-debug"),
    ("oom kill disable", create({"OomKillDisable": True}), "--oom-kill-disable"),
    ("oom score", create({"OomScoreAdj": -1000}), "--oom-score-adj"),
    ("nvidia volume trick", create({"Binds": ["/home/alice/x:/var/run/nvidia-container-devices/all"]}), "--gpus"),
    ("host kernel sysctl", create({"Sysctls": {"kernel.domainname": "x"}}), "--sysctl kernel.domainname"),
    ("vm sysctl", create({"Sysctls": {"vm.overcommit_memory": "1"}}), "whole server"),
    (
        "net sysctl on the host network",
        create({"NetworkMode": "host", "Sysctls": {"net.ipv4.ip_forward": "1"}}),
        "--sysctl net.ipv4.ip_forward",
    ),
]


@pytest.mark.parametrize(("name", "body", "phrase"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escape_settings_are_refused_with_a_sentence(name, body, phrase):
    refusal = policy.check_create(body, ctx())
    assert refusal is not None, name
    assert refusal.code in ("POLICY_DENIED", "NOT_OWNER")
    assert phrase in refusal.sentence
    assert refusal.message.startswith(refusal.code + ": ")


LEGITIMATE = [
    ("plain", create()),
    ("home bind", create({"Binds": ["/home/alice/project:/workspace:rw"]})),
    ("home itself", create({"Binds": ["/home/alice:/home/alice"]})),
    ("named volume", create({"Binds": ["myvol:/data", "shared:/s", "newvol:/n"]})),
    ("shared data ro", create({"Binds": ["/srv/datasets/imagenet:/data:ro"]})),
    ("mount ro", create({"Mounts": [{"Type": "bind", "Source": "/srv/datasets", "Target": "/d", "ReadOnly": True}]})),
    # tmpfs as a mount is fine; a volume with driver options (even type=tmpfs) is for admins
    ("tmpfs", create({"Mounts": [{"Type": "tmpfs", "Target": "/scratch"}], "Tmpfs": {"/t": ""}})),
    ("allowed caps", create({"CapAdd": ["CAP_CHOWN", "kill"], "CapDrop": ["ALL"]})),
    ("own pid ns", create({"PidMode": "container:mine", "NetworkMode": "none"})),
    ("volumes-from mine", create({"VolumesFrom": ["mine:ro"]})),
    ("allowed device", create({"Devices": [{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse"}]})),
    ("no-new-privileges", create({"SecurityOpt": ["no-new-privileges:true"]})),
    ("own slice", create({"CgroupParent": "ds01-student-alice.slice"})),
    ("own slice cgroupfs", create({"CgroupParent": "/ds01.slice/ds01-student.slice/ds01-student-alice.slice"})),
    ("gpus", create({"DeviceRequests": [{"Count": 1, "Capabilities": [["gpu"]]}]})),
    ("nvidia runtime", create({"Runtime": "nvidia"})),
    (
        "namespaced sysctls",
        create({"Sysctls": {"net.ipv4.tcp_keepalive_time": "60", "kernel.shmmax": "1", "fs.mqueue.msg_max": "20"}}),
    ),
]


@pytest.mark.parametrize(("name", "body"), LEGITIMATE, ids=[e[0] for e in LEGITIMATE])
def test_legitimate_work_passes(name, body):
    assert policy.check_create(body, ctx()) is None


def test_host_network_can_be_allowed_by_config():
    assert policy.check_create(create({"NetworkMode": "host"}), ctx(allow_host_network=True)) is None


# ---------------------------------------------------------------------------------------------
# create: rewrite


def test_rewrite_stamps_owner_slice_and_type_over_spoofed_labels():
    body = create(
        Labels={
            "ds01.user": "bob",
            "ds01.protected": "true",
            "ds01.gpu.uuids": "GPU-x",
            "ds01.lifecycle.exempt": "true",
            "ds01.monitoring": "true",
            "aime.mlc.USER": "bob",
            "ds01.name": "n",
            "app": "1",
        }
    )
    out = policy.rewrite_create(copy.deepcopy(body), ctx())
    assert out["Labels"] == {
        "ds01.user": "alice",
        "ds01.managed": "true",
        "ds01.container_type": "docker",
        "ds01.created_at": "2026-11-22T12:00:00Z",
        "ds01.name": "n",
        "app": "1",
    }
    assert out["HostConfig"]["CgroupParent"] == "ds01-student-alice.slice"


@pytest.mark.parametrize(
    ("labels", "kind"),
    [
        ({"devcontainer.local_folder": "/home/alice/p"}, "devcontainer"),
        ({"com.docker.compose.project": "p"}, "compose"),
        ({"ds01.container_type": "ds01"}, "ds01"),
        ({"ds01.container_type": "devcontainer"}, "docker"),
        ({}, "docker"),
    ],
)
def test_container_type_from_request_labels(labels, kind):
    assert policy.rewrite_create(create(Labels=dict(labels)), ctx())["Labels"]["ds01.container_type"] == kind


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        (
            {},
            {"NanoCpus": 2_000_000_000, "Memory": 4 << 30, "MemorySwap": 6 << 30, "ShmSize": 1 << 30, "PidsLimit": 512},
        ),
        (
            {
                "NanoCpus": 1_000_000_000,
                "Memory": 1 << 30,
                "MemorySwap": 2 << 30,
                "ShmSize": 64 << 20,
                "PidsLimit": 100,
            },
            {
                "NanoCpus": 1_000_000_000,
                "Memory": 1 << 30,
                "MemorySwap": 2 << 30,
                "ShmSize": 64 << 20,
                "PidsLimit": 100,
            },
        ),
        (
            {"NanoCpus": 64_000_000_000, "Memory": 64 << 30, "MemorySwap": -1, "ShmSize": 32 << 30, "PidsLimit": -1},
            {"NanoCpus": 2_000_000_000, "Memory": 4 << 30, "MemorySwap": 6 << 30, "ShmSize": 1 << 30, "PidsLimit": 512},
        ),
    ],
)
def test_per_container_limits_where_asked_for_more_or_nothing(asked, expected):
    host = policy.rewrite_create(create(dict(asked)), ctx())["HostConfig"]
    assert {k: host[k] for k in expected} == expected


def test_cpu_quota_form_is_capped_without_mixing_nanocpus():
    host = policy.rewrite_create(create({"CpuPeriod": 100000, "CpuQuota": 800000}), ctx())["HostConfig"]
    assert host["CpuQuota"] == 200000
    assert "NanoCpus" not in host


def test_cpu_limit_above_the_host_is_capped_at_the_host():
    host = policy.rewrite_create(create(), ctx(max_cpus=32.0, host_cpus=2))["HostConfig"]
    assert host["NanoCpus"] == 2_000_000_000


def capped(host, **extra):
    warnings = []
    body = policy.rewrite_create(create(dict(host)), ctx(**extra), warnings)
    return body["HostConfig"], warnings


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ({}, []),  # nothing asked: the limits are filled in, nothing was taken away
        ({"Memory": 1 << 30, "NanoCpus": 1_000_000_000, "PidsLimit": 100, "ShmSize": 64 << 20}, []),
        ({"Memory": 64 << 30}, ["memory 64 GiB asked, capped to your limit 4 GiB (group student)"]),
        (
            {"NanoCpus": 8_000_000_000, "ShmSize": 1536 << 20, "PidsLimit": 100000},
            [
                "CPUs 8 asked, capped to your limit 2 (group student)",
                "shm 1.5 GiB asked, capped to your limit 1 GiB (group student)",
                "pids 100000 asked, capped to your limit 512 (group student)",
            ],
        ),
        (
            {"MemorySwap": -1, "PidsLimit": -1},
            [
                "memory+swap unlimited asked, capped to your limit 6 GiB (group student)",
                "pids unlimited asked, capped to your limit 512 (group student)",
            ],
        ),
        ({"CpuPeriod": 100000, "CpuQuota": 400000}, ["CPUs 4 asked, capped to your limit 2 (group student)"]),
    ],
)
def test_each_capped_limit_is_one_warning(asked, expected):
    host, warnings = capped(asked)
    assert warnings == expected
    assert host["Memory"] <= 4 << 30 and host["PidsLimit"] <= 512


def test_a_cpu_cap_from_the_host_says_so():
    host, warnings = capped({"NanoCpus": 16_000_000_000}, max_cpus=32.0, host_cpus=2)
    assert host["NanoCpus"] == 2_000_000_000
    assert warnings == ["CPUs 16 asked, capped to 2, this host's CPU count"]


def test_warnings_follow_the_daemons_own():
    answer = policy.add_warnings({"Id": "abc", "Warnings": ["the daemon's"]}, ["memory capped"])
    assert answer == {"Id": "abc", "Warnings": ["the daemon's", "memory capped"]}
    assert policy.add_warnings({"Id": "abc", "Warnings": None}, ["x"])["Warnings"] == ["x"]
    assert policy.add_warnings({"Id": "abc"}, []) == {"Id": "abc"}


def test_unlimited_limits_leave_the_request_alone():
    loose = ctx(max_cpus=None, memory=None, memory_swap=None, shm_size=None, pids_limit=None)
    host = policy.rewrite_create(create({"Memory": 0}), loose)["HostConfig"]
    assert host == {
        "Memory": 0,
        "CgroupParent": "ds01-student-alice.slice",
        # hardening is not a limit: it is stamped whatever the limits say
        "SecurityOpt": ["no-new-privileges"],
        "CapDrop": ["MKNOD", "SETUID", "SETGID"],
        # a container's log files are bounded on the host (100m x 5)
        "LogConfig": {"Type": "", "Config": {"max-size": "100m", "max-file": "5"}},
    }


# ---------------------------------------------------------------------------------------------
# GPU asks


@pytest.mark.parametrize(
    ("body", "image_env", "expected"),
    [
        (create(), None, None),
        (create(), ["PATH=/bin"], None),
        (
            create({"DeviceRequests": [{"Driver": "", "Count": 1, "Capabilities": [["gpu"]]}]}),
            None,
            (1, (), "device_requests"),
        ),
        (create({"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}]}), None, (-1, (), "device_requests")),
        (
            create({"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["0", "2"]}]}),
            None,
            (2, ("0", "2"), "device_requests"),
        ),
        (create(Env=["NVIDIA_VISIBLE_DEVICES=all"]), None, (-1, (), "env")),
        (create(Env=["NVIDIA_VISIBLE_DEVICES=0,1"]), None, (2, ("0", "1"), "env")),
        (create(Env=["NVIDIA_VISIBLE_DEVICES=void"]), ["NVIDIA_VISIBLE_DEVICES=all"], None),
        (create(Env=["NVIDIA_VISIBLE_DEVICES=none"]), None, None),
        (create(), ["NVIDIA_VISIBLE_DEVICES=all"], (-1, (), "image_env")),
        # the nvidia runtime exposes nothing without NVIDIA_VISIBLE_DEVICES (docker.gpu_reach)
        (create({"Runtime": "nvidia"}), None, None),
        # any capability set the NVIDIA driver serves is a GPU request, "gpu" or not
        (
            create({"DeviceRequests": [{"Count": 1, "Capabilities": [["nvidia", "compute"]]}]}),
            None,
            (1, (), "device_requests"),
        ),
        (create({"Devices": [{"PathOnHost": "nvidia.com/gpu=all"}]}), None, (-1, (), "cdi")),
        (create({"Runtime": "nvidia"}), ["NVIDIA_VISIBLE_DEVICES=all"], (-1, (), "runtime")),
        (
            create({"DeviceRequests": [{"Count": 1, "Capabilities": [["gpu"]]}]}),
            ["NVIDIA_VISIBLE_DEVICES=all"],
            (1, (), "device_requests"),
        ),
    ],
)
def test_gpu_ask_in_every_form(body, image_env, expected):
    ask = policy.gpu_ask(body, image_env)
    assert (None if ask is None else (ask.count, ask.device_ids, ask.source)) == expected


def test_grant_replaces_every_gpu_form_with_the_granted_devices():
    body = create(
        {"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}], "Runtime": "nvidia"},
        Env=["A=1", "NVIDIA_VISIBLE_DEVICES=all"],
    )
    out = policy.apply_gpu_grant(body, ["MIG-aaaa"], {"ds01.gpu.uuids": "MIG-aaaa", "ds01.gpu.slots": "1.0"})
    assert out["HostConfig"]["DeviceRequests"] == [
        {"Driver": "", "Count": 0, "DeviceIDs": ["MIG-aaaa"], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert out["HostConfig"]["Runtime"] == ""
    assert out["Env"] == ["A=1", "NVIDIA_VISIBLE_DEVICES=MIG-aaaa"]
    assert out["Labels"]["ds01.gpu.slots"] == "1.0"


def test_no_gpu_container_gets_void_over_its_image_default():
    assert policy.strip_gpu(create(Env=["X=1"]))["Env"] == ["X=1", "NVIDIA_VISIBLE_DEVICES=void"]


# ---------------------------------------------------------------------------------------------
# other bodies


def test_exec_privileged_is_refused():
    assert policy.check_exec_create({"Cmd": ["id"], "Privileged": True}).code == "POLICY_DENIED"
    assert policy.check_exec_create({"Cmd": ["id"], "User": "root"}) is None


def test_update_is_clamped_and_cannot_add_devices():
    refusal, body = policy.check_update({"Memory": 64 << 30, "PidsLimit": -1, "NanoCpus": 8_000_000_000}, ctx())
    assert refusal is None
    assert body == {"Memory": 4 << 30, "PidsLimit": 512, "NanoCpus": 2_000_000_000}
    refusal, _rest = policy.check_update({"Devices": [{"PathOnHost": "/dev/nvidia0"}]}, ctx())
    assert refusal.code == "POLICY_DENIED"


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        ({"Name": "v"}, False),
        ({"Name": "v", "DriverOpts": {"type": "none", "o": "bind", "device": "/etc"}}, True),
        # a bind volume mounts its device at start, after any check: refused even under the home
        ({"Name": "v", "DriverOpts": {"type": "none", "o": "bind", "device": "/home/alice/data"}}, True),
        ({"Name": "v", "DriverOpts": {"type": "tmpfs", "device": "tmpfs", "o": "size=100m"}}, True),
        ({"Name": "v", "Driver": "nfs-plugin"}, True),
    ],
)
def test_volume_create(body, refused):
    refusal, out = policy.check_volume_create(dict(body), ctx())
    assert (refusal is not None) == refused
    if not refused:
        assert out["Labels"]["ds01.user"] == "alice"


def test_build_host_network_and_foreign_cgroup_parent_are_refused():
    assert policy.check_build(policy.classify("POST", "/build?networkmode=host"), ctx())[0] is not None
    assert policy.check_build(policy.classify("POST", "/build?cgroupparent=/"), ctx())[0] is not None
    refusal, query = policy.check_build(policy.classify("POST", "/build?t=x&networkmode=none"), ctx())
    assert refusal is None and ("cgroupparent", "ds01-student-alice.slice") in query


def test_system_df_shows_only_own_containers_and_volumes_and_no_build_cache():
    body = {
        "Containers": [{"Id": "a", "Labels": {"ds01.user": "alice"}}, {"Id": "b", "Labels": {"ds01.user": "bob"}}],
        "Volumes": [
            {"Name": "va", "Labels": {"ds01.user": "alice"}},
            {"Name": "vb", "Labels": {"ds01.user": "bob", "secret": "x"}},
            {"Name": "anon", "Labels": None},
        ],
        "BuildCache": [{"ID": "c1", "Description": "mount / from exec /bin/sh -c make secret"}],
        "Images": [{"Id": "sha256:i"}],
        "LayersSize": 7,
    }
    seen = policy.filter_system_df(body, "alice")
    assert [c["Id"] for c in seen["Containers"]] == ["a"]
    assert [v["Name"] for v in seen["Volumes"]] == ["va"]
    assert seen["BuildCache"] == [] and seen["Images"] == [{"Id": "sha256:i"}] and seen["LayersSize"] == 7


@pytest.mark.parametrize(
    ("source", "where"), [("env", "environment"), ("image_env", "image"), ("runtime", "environment")]
)
def test_an_nvidia_all_env_is_not_read_as_gpus_all(source, where):
    """Only `--gpus all` (a DeviceRequest) is "the GPUs I may have"; an image's or -e NVIDIA_VISIBLE_DEVICES=all
    is refused before the allocator is asked."""
    reservation = admission.Admission(store=None).reservation("alice", policy.GpuAsk(-1, (), source), None, {})
    with pytest.raises(admission.AdmissionRefused) as refused:
        reservation.enter()
    assert refused.value.code == "POLICY_DENIED"
    assert "NVIDIA_VISIBLE_DEVICES=all" in refused.value.sentence and where in refused.value.sentence
    assert "--gpus all" in refused.value.sentence


# ---------------------------------------------------------------------------------------------
# the request label ds01.gpu.request=full|<MIG profile>


def labelled(value, host=None, **top):
    return create(host, Labels={"ds01.gpu.request": value, "app": "x"}, **top)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # alone: one slot of that kind
        (labelled("full"), (1, (), "label", "full")),
        (labelled(" 3G.20GB "), (1, (), "label", "3g.20gb")),
        # with --gpus N, --gpus all, device ids: the kind goes along
        (
            labelled("3g.20gb", {"DeviceRequests": [{"Count": 2, "Capabilities": [["gpu"]]}]}),
            (2, (), "device_requests", "3g.20gb"),
        ),
        (
            labelled("full", {"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}]}),
            (-1, (), "device_requests", "full"),
        ),
        (
            labelled("full", {"DeviceRequests": [{"DeviceIDs": ["0"], "Capabilities": [["gpu"]]}]}),
            (1, ("0",), "device_requests", "full"),
        ),
        # an empty value is no label; an image's label is not a request
        (labelled(""), None),
        (create(), None),
    ],
)
def test_request_label_is_a_gpu_ask_of_its_kind(body, expected):
    ask = policy.gpu_ask(body, None)
    assert (None if ask is None else (ask.count, ask.device_ids, ask.source, ask.kind)) == expected


@pytest.mark.parametrize(
    ("ask", "fields"),
    [
        (policy.GpuAsk(1, (), "label", "full"), {"full_gpu": True, "label": "ds01.gpu.request=full"}),
        (
            policy.GpuAsk(-1, (), "device_requests", "3g.20gb"),
            {"mig_profile": "3g.20gb", "only_profile": True, "label": "ds01.gpu.request=3g.20gb"},
        ),
        (policy.GpuAsk(1, (), "device_requests"), {}),
    ],
)
def test_request_label_becomes_the_allocators_request_fields(ask, fields):
    assert admission.request_kind(ask) == fields


def test_request_label_is_the_users_not_the_servers():
    from ansible_collections.ds01.infra.plugins.module_utils.ds01 import identity

    assert not identity.server_label("ds01.gpu.request")
    assert not identity.reserved_label("ds01.gpu.request")
    # every other ds01.gpu.* label stays the server's
    for key in ("ds01.gpu.slots", "ds01.gpu.uuids", "ds01.gpu.gpueq", "ds01.gpu.intent", "ds01.gpu.requests"):
        assert identity.server_label(key)
    # the user's label passes to the container as written; the gateway's own GPU labels do not
    body = policy.rewrite_create(
        create(Labels={"ds01.gpu.request": "full", "ds01.gpu.slots": "0", "ds01.gpu.uuids": "GPU-x"}), ctx(), []
    )
    assert body["Labels"]["ds01.gpu.request"] == "full"
    assert "ds01.gpu.slots" not in body["Labels"] and "ds01.gpu.uuids" not in body["Labels"]


@pytest.mark.parametrize("value", ["$(id)", "full gpu", "x" * 40, "3g.20gb;rm"])
def test_request_label_value_that_is_no_kind_is_refused(value):
    refusal = policy.check_create(labelled(value), ctx())
    assert refusal is not None and refusal.code == policy.POLICY_DENIED
    assert "ds01.gpu.request=" in refusal.sentence and "neither `full`" in refusal.sentence
    assert "`ds01 gpu status`" in refusal.sentence


@pytest.mark.parametrize("value", ["full", "3g.20gb", "1g.5gb+me", "7g.80gb"])
def test_request_label_value_of_kind_shape_passes_the_policy(value):
    assert policy.check_create(labelled(value), ctx()) is None


# ---------------------------------------------------------------------------------------------
# every problem of one create at once


def test_every_independent_problem_is_in_one_refusal():
    host = {
        "Privileged": True,
        "CapAdd": ["SYS_ADMIN", "SYS_PTRACE"],
        "NetworkMode": "host",
        "SecurityOpt": ["seccomp=unconfined", "apparmor=unconfined"],
        "Devices": [{"PathOnHost": "/dev/sda"}],
        "Binds": ["/etc:/x"],
        "PidMode": "host",
    }
    alone = [policy.check_create(create({k: v}), ctx()) for k, v in host.items()]
    alone += [policy.check_create(create({"CapAdd": [c]}), ctx()) for c in host["CapAdd"]]
    alone += [policy.check_create(create({"SecurityOpt": [o]}), ctx()) for o in host["SecurityOpt"]]
    sentences = {r.sentence for r in alone if r is not None and " problems; " not in r.sentence}
    assert len(sentences) == 9
    refusal = policy.check_create(create(host), ctx())
    assert refusal.code == policy.POLICY_DENIED and refusal.status == 403
    assert refusal.sentence.startswith("this request has 9 problems; fix them all, then try again: 1) ")
    for sentence in sentences:
        assert sentence in refusal.sentence
    for n in range(1, 10):
        assert f"{n}) " in refusal.sentence
    assert "10) " not in refusal.sentence


def test_one_problem_keeps_its_own_sentence():
    alone = policy.check_create(create({"Privileged": True}), ctx())
    assert alone.sentence.startswith("--privileged gives the container")


@pytest.mark.parametrize(
    ("refusals", "code", "status"),
    [
        ([policy.Refusal("NOT_OWNER", "a.", 404), policy.Refusal("NOT_OWNER", "b.", 404)], "NOT_OWNER", 404),
        ([policy.Refusal("NOT_OWNER", "a.", 404), policy.denied("b.")], policy.POLICY_DENIED, 403),
        (
            [policy.denied("a."), policy.Refusal(policy.POLICY_DENIED, "bad shape", status=400)],
            policy.POLICY_DENIED,
            400,
        ),
    ],
)
def test_combined_code_and_status(refusals, code, status):
    refusal = policy.combined(refusals)
    assert (refusal.code, refusal.status) == (code, status)
    if status == 400:  # a malformed body is answered alone
        assert refusal.sentence == "bad shape"


def test_a_malformed_mount_is_answered_alone():
    refusal = policy.check_create(create({"Privileged": True, "Mounts": ["nope"]}), ctx())
    assert (refusal.status, refusal.sentence) == (400, "a Mounts entry is not a JSON object")


def test_a_volume_name_is_checked_only_after_its_driver():
    body = create(
        {
            "Mounts": [
                {
                    "Type": "volume",
                    "Source": "bobvol",
                    "Target": "/d",
                    "VolumeOptions": {"DriverConfig": {"Name": "evil"}},
                }
            ]
        }
    )
    refusal = policy.check_create(body, ctx())
    assert " problems; " not in refusal.sentence


@pytest.mark.parametrize(
    ("method", "target", "kind", "ref", "action"),
    [
        ("GET", "/v1.41/volumes", "volumes.list", None, None),
        ("GET", "/volumes/data", "volume", "data", "inspect"),
        ("DELETE", "/volumes/data", "volume", "data", "remove"),
        ("GET", "/v1.41/networks?filters=%7B%7D", "networks.list", None, None),
        ("GET", "/networks/lab", "network", "lab", "inspect"),
        ("DELETE", "/networks/lab", "network", "lab", "remove"),
    ],
)
def test_volume_and_network_reads_are_routed_to_their_owner_checks(method, target, kind, ref, action):
    route = policy.classify(method, target)
    assert (route.kind, route.ref or None, route.action or None) == (kind, ref, action)


def test_volume_and_network_lists_keep_the_callers_own_and_no_one_elses_containers():
    volumes = {
        "Volumes": [
            {"Name": "a", "Labels": {"ds01.user": "ann"}},
            {"Name": "b", "Labels": {"ds01.user": "bo"}},
            {"Name": "anon", "Labels": None},
        ],
        "Warnings": None,
    }
    assert [v["Name"] for v in policy.filter_volumes(volumes, "ann")["Volumes"]] == ["a"]
    networks = [
        {"Name": "none", "Labels": {}, "Containers": {"c1": {"Name": "bos-box"}}},
        {"Name": "ann-net", "Labels": {"ds01.user": "ann"}, "Containers": {"c2": {"Name": "ann-box"}}},
        {"Name": "bo-net", "Labels": {"ds01.user": "bo"}, "Containers": {}},
    ]
    seen = policy.filter_networks(networks, "ann")
    assert [(n["Name"], n["Containers"]) for n in seen] == [("none", {}), ("ann-net", {"c2": {"Name": "ann-box"}})]
    assert policy.volume_inspect_refusal("ann", "b", {"ds01.user": "bo"}).code == "NOT_OWNER"
    assert policy.volume_inspect_refusal("ann", "anon", {}) is None


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("afd7a7cbf3b0", True),
        ("/afd7a7cbf3b0", True),
        ("0" * 64, True),
        ("afd7a7cbf3b", True),  # shorter than the short id docker prints: still a prefix people type
        ("57ec", True),  # round 13: the prefix a renamed container raced into
        ("a", True),
        ("afd7a7cbf3bg", False),
        ("AFD7A7CBF3B0", False),  # ids are lowercase
        ("deface-2", False),
        ("my-net", False),
        ("", False),
    ],
)
def test_id_like_names_are_refused_for_containers_and_networks(name, refused):
    """Rounds 12 and 13: the daemon finds an exact name before an id prefix, so a network or container named like
    another user's id prefix took that prefix away from its owner (and, renamed during a create, raced the
    gateway's check of a --volumes-from)."""
    assert (policy.id_like_name("network", name) is not None) is refused
    refusal, _body = policy.check_network_create({"Name": name}, ctx())
    assert (refusal is not None and "hex digits" in refusal.message) is refused


def test_container_references_are_pinned_to_the_ids_that_were_checked():
    """Round 13 (F1): a --volumes-from NAME checked as the caller's own could be renamed away before the daemon
    read it, which then took NAME as a prefix of another user's id. The daemon gets the full ids."""
    body = {
        "HostConfig": {
            "VolumesFrom": ["57ec:ro", "mine"],
            "NetworkMode": "container:57ec",
            "PidMode": "container:mine",
            "IpcMode": "private",
        }
    }
    pinned = {"57ec": "a" * 64, "mine": "b" * 64}
    host = policy.pin_container_refs(body, pinned)["HostConfig"]
    assert host["VolumesFrom"] == ["a" * 64 + ":ro", "b" * 64]
    assert (host["NetworkMode"], host["PidMode"], host["IpcMode"]) == (
        "container:" + "a" * 64,
        "container:" + "b" * 64,
        "private",
    )


def test_a_referenced_container_that_is_not_there_for_the_caller_is_not_found():
    """Round 13 (F3): container:<prefix> and --volumes-from <prefix> of another user's container said whose it was;
    a missing one said it had no owner. Both are NOT_FOUND, naming only the reference."""
    body = create({"VolumesFrom": ["57ec"], "PidMode": "container:57ec"})
    refusal = policy.check_create(body, ctx(container_owners={"57ec": None}))
    assert refusal is not None and refusal.code == "NOT_FOUND" and "No such container: 57ec" in refusal.sentence
    assert "belongs" not in refusal.message and "owner" not in refusal.message
