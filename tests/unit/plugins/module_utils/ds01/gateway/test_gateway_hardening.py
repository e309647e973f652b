"""The gateway's second-round rules as pure functions, table-driven (policy/, objects/)."""

from __future__ import annotations

import json

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import record
from ansible_collections.ds01.infra.plugins.module_utils.ds01.config import safe_limits
from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import objects, policy


def ctx(**kw):
    base = {
        "login": "alice",
        "home": "/home/alice",
        "slice_name": "ds01-student-alice.slice",
        "group": "student",
        "uid": 1000,
        "gid": 1000,
        "groups": (1000, 2000),
        "max_cpus": 2.0,
        "memory": 2 << 30,
    }
    base.update(kw)
    return policy.CreateContext(**base)


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ("", False),
        ("1000", False),
        ("1000:1000", False),
        ("1000:2000", False),
        ("1000:0", True),
        ("0", True),
        ("root", True),
        ("1001", True),
        ("alice", True),
        ("1000:disk", True),
    ],
)
def test_containers_run_as_the_caller(value, refused):
    assert (policy.check_user(value, ctx()) is not None) == refused


@pytest.mark.parametrize(("value", "stamped"), [("", "1000:1000"), ("1000", "1000:1000"), ("1000:2000", "1000:2000")])
def test_the_group_is_always_explicit(value, stamped):
    body = {"User": value, "HostConfig": {}}
    policy.harden(body, body["HostConfig"], ctx())
    assert body["User"] == stamped


@pytest.mark.parametrize(("groups", "refused"), [(["2000"], False), (["0"], True), (["disk"], True), (["6"], True)])
def test_group_add_only_own_groups(groups, refused):
    body = {"Image": "x", "HostConfig": {"GroupAdd": groups}}
    assert (policy.check_create(body, ctx()) is not None) == refused


def test_a_negative_cpu_quota_falls_back_to_the_nano_cpu_cap():
    host = policy.apply_limits({"CpuQuota": -1, "CpuPeriod": 100000}, ctx(host_cpus=8))
    assert "CpuQuota" not in host and "CpuPeriod" not in host
    assert host["NanoCpus"] == 2_000_000_000


def test_image_labels_the_gateway_owns_are_blanked_unless_stamped():
    body = {"Labels": {"ds01.user": "alice", "ds01.gpu.uuids": "MIG-1"}}
    image = {"ds01.gpu.uuids": "GPU-0,GPU-1", "ds01.lifecycle.exempt": "true", "maintainer": "x", "ds01.binds": "{}"}
    out = policy.neutralise_image_labels(body, image)["Labels"]
    assert out == {"ds01.user": "alice", "ds01.gpu.uuids": "MIG-1", "ds01.lifecycle.exempt": "", "ds01.binds": ""}


@pytest.mark.parametrize(
    ("ipam", "refused"),
    [
        (None, False),
        ({"Driver": "default"}, False),
        ({"Config": [{"Subnet": "192.0.2.0/30"}]}, True),
        ({"Driver": "other"}, True),
        ({"Options": {"a": "b"}}, True),
    ],
)
def test_user_networks_get_no_chosen_subnet(ipam, refused):
    body = {"Name": "n", "Driver": "bridge", **({"IPAM": ipam} if ipam is not None else {})}
    refusal, _body = policy.check_network_create(body, ctx())
    assert (refusal is not None) == refused


def test_classic_build_limits_are_the_callers():
    limits = record.replace(safe_limits("alice"), memory=2 << 30, memory_swap=None, shm_size=None, max_cpus=2.0)
    values = dict(policy.build_limits((("t", "x"), ("memory", str(8 << 30)), ("cpuquota", "-1")), limits))
    assert values["t"] == "x"
    assert int(values["memory"]) == 2 << 30
    assert values["cpuperiod"] == "100000" and 0 < int(values["cpuquota"]) <= 200000
    smaller = dict(policy.build_limits((("memory", str(1 << 30)),), limits))
    assert int(smaller["memory"]) == 1 << 30  # a smaller request stays


@pytest.mark.parametrize(
    ("domain", "addresses", "refused"),
    [
        ("docker.io", ["3.3.3.3"], False),
        ("127.0.0.1:5000", ["127.0.0.1"], True),
        ("localhost:5000", ["::1"], True),
        ("reg.example", ["10.1.2.3"], True),
        ("[::1]:80", ["::1"], True),
        ("reg.example", [], False),
    ],
)
def test_registries_on_the_host_or_a_private_network_are_refused(domain, addresses, refused):
    assert (objects.registry_verdict(domain, addresses, "docker pull") is not None) == refused


@pytest.mark.parametrize(
    ("reference", "domain"),
    [("x", "docker.io"), ("a/b:1", "docker.io"), ("127.0.0.1:5000/x", "127.0.0.1:5000"), ("localhost/x", "localhost")],
)
def test_the_registry_of_a_reference(reference, domain):
    assert objects.registry_of(reference) == domain


@pytest.mark.parametrize("target", ["/v1.23/containers/x/start", "/v1/containers/json", "/v1.12/info"])
def test_api_versions_below_1_24_are_refused(target):
    assert policy.api_version_refusal(policy.classify("POST", target)) is not None


@pytest.mark.parametrize("target", ["/v1.24/containers/json", "/v1.41/info", "/containers/json"])
def test_api_versions_from_1_24_pass(target):
    assert policy.api_version_refusal(policy.classify("GET", target)) is None


@pytest.mark.parametrize("tag", ["latest\n", "a b", "-x"])
def test_tags_are_matched_whole(tag):
    verdict, _refs = objects.check_retag((("repo", "alice/x"), ("tag", tag)), "docker tag")
    assert verdict is not None


@pytest.mark.parametrize(
    ("raw", "refused"), [(b"", False), (b"{}", False), (b"null", False), (b'{"HostConfig":{"Privileged":true}}', True)]
)
def test_start_bodies(raw, refused):
    assert (policy.check_start_body(raw) is not None) == refused


def test_classic_builds_share_no_cache_and_carry_their_maker():
    values = dict(policy.build_limits((("t", "alice/x:1"), ("labels", '{"a": "b"}')), safe_limits("alice"), "alice"))
    assert values["nocache"] == "1"
    assert json.loads(values["labels"]) == {"a": "b", "ds01.image.maker": "alice"}


@pytest.mark.parametrize(
    ("login", "maker", "refused"), [("bob", "alice", True), ("bob", "", True), ("alice", "alice", False)]
)
def test_an_untagged_image_is_removed_by_id_only_by_its_maker(login, maker, refused):
    verdict, _tags = objects.delete_verdict(login, "sha256:" + "ab" * 32, "sha256:" + "ab" * 32, [], {}, maker)
    assert (verdict is not None) == refused


@pytest.mark.parametrize(
    ("own", "image", "refused"),
    [
        ({"Test": ["CMD", "true"], "Interval": 10_000_000}, None, "--health-interval of 0.01s"),
        (None, {"Test": ["CMD", "true"], "Interval": 1_000_000_000}, "the image's HEALTHCHECK --interval of 1s"),
        # the daemon fills an unset interval from the image: a new test does not escape the image's interval
        ({"Test": ["CMD", "false"]}, {"Test": ["CMD", "true"], "Interval": 2_000_000_000}, "HEALTHCHECK --interval"),
        ({"Test": ["CMD", "true"], "StartInterval": 1_000_000}, None, "--health-start-interval"),
        ({"Test": ["NONE"]}, {"Test": ["CMD", "true"], "Interval": 1_000_000}, None),  # --no-healthcheck
        ({"Interval": 30_000_000_000}, {"Test": ["CMD", "true"], "Interval": 1_000_000}, None),
        (None, {"Test": ["CMD", "true"]}, None),  # the default interval (30 s)
        (None, None, None),
    ],
)
def test_health_checks_more_often_than_every_five_seconds_are_refused(own, image, refused):
    body = {} if own is None else {"Healthcheck": own}
    verdict = policy.healthcheck_refusal(body, None if image is None else {"Healthcheck": image})
    if refused is None:
        assert verdict is None
    else:
        assert verdict is not None and refused in verdict.message and "5s or more" in verdict.message


def test_a_commit_blanks_every_server_and_owner_label_and_names_its_maker():
    container = {
        "ds01.user": "bob",
        "ds01.gpu.uuids": "GPU-1",
        "com.docker.compose.project.working_dir": "/home/bob/p",
        "ds01.recipe": "abc",
        "team": "x",
    }
    out = policy.commit_labels({"Labels": {"ds01.user": "alice", "mine": "1"}}, container, "alice")
    assert out["Labels"] == {
        "mine": "1",
        "ds01.user": "",
        "ds01.gpu.uuids": "",
        "com.docker.compose.project.working_dir": "",
        "ds01.image.maker": "alice",
    }
