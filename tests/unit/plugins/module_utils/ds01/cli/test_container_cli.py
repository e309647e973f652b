"""The pure parts of ``ds01 container``: arguments → create body, the images section, the wait loop, the text."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import cli, gpu, images
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config as config_mod
from ansible_collections.ds01.infra.plugins.module_utils.ds01.cli import container as cli_container

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)

CONFIG = """
default_group: student
groups:
  student:
    members: [stu]
    idle_timeout_h: 5
    max_runtime_h: 50
container_types:
  ds01: {idle_timeout_h: 0.5, max_runtime_h: null}
images:
  allowed: [ubuntu, "local/debian-min:bookworm"]
  default: nvcr.io/nvidia/pytorch:24.05-py3
paths: {state_dir: state, log_dir: log, run_dir: run}
"""


BASE = "default_group: student\ngroups: {student: {}}\npaths: {state_dir: s, log_dir: l, run_dir: r}\n"


def _config(tmp_path, text: str = CONFIG) -> config_mod.Config:
    path = tmp_path / "resource-limits.yaml"
    path.write_text(text)
    return config_mod.load_config(str(path))


# --------------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, cli_container.GpuChoice()),
        ("1", cli_container.GpuChoice(count=1)),
        ("2", cli_container.GpuChoice(count=2)),
        ("all", cli_container.GpuChoice(count=-1)),
        ("device=2.1", cli_container.GpuChoice(device_ids=("2.1",))),
        ('"device=GPU-a,MIG-b"', cli_container.GpuChoice(device_ids=("GPU-a", "MIG-b"))),
    ],
)
def test_gpus_is_read_as_the_docker_cli_reads_it(value, expected):
    assert cli_container.parse_gpus(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "two", "device=", "count=1", ""])
def test_unreadable_gpus_is_a_usage_sentence(value):
    with pytest.raises(ValueError, match="--gpus"):
        cli_container.parse_gpus(value)


def _deploy_args(*argv: str) -> argparse.Namespace:
    parser = cli.build_parser(["container"])
    return parser.parse_args(["container", "deploy", *argv])


@pytest.mark.parametrize(
    ("argv", "command", "gpus", "wait"),
    [
        (["box"], [], None, None),
        (["box", "--gpus", "1"], [], "1", None),
        (["box", "--", "python", "train.py", "--gpus", "4"], ["python", "train.py", "--gpus", "4"], None, None),
        (["box", "--gpus", "1", "--wait", "10m", "--", "sleep", "5"], ["sleep", "5"], "1", "10m"),
        (["--wait", "1h", "box", "--gpus", "1"], [], "1", "1h"),
        (["box", "python", "-u", "x.py"], ["python", "-u", "x.py"], None, None),
    ],
)
def test_options_after_the_name_are_options_and_the_command_follows_the_double_dash(argv, command, gpus, wait):
    args = _deploy_args(*argv)
    assert cli_container.split_command(args) == command
    assert (args.name, args.gpus, args.wait) == ("box", gpus, wait)


@pytest.mark.parametrize("argv", [["box", "--bogus"], ["box", "--gpus", "1", "--mig", "1g.10gb"]])
def test_bad_options_after_the_name_are_a_usage_error(argv, capsys):
    assert cli_container.split_command(_deploy_args(*argv)) is None
    assert capsys.readouterr().err.startswith(("usage:", "ds01:"))


# --------------------------------------------------------------------------------------------
# create body


@pytest.mark.parametrize(
    ("gpus", "device", "requests"),
    [
        (cli_container.GpuChoice(), None, None),
        (cli_container.GpuChoice(count=1), None, [{"Count": 1, "DeviceIDs": None}]),
        (cli_container.GpuChoice(device_ids=("2.1",)), None, [{"Count": 0, "DeviceIDs": ["2.1"]}]),
        (cli_container.GpuChoice(candidates=("MIG-a", "MIG-b")), "MIG-b", [{"Count": 0, "DeviceIDs": ["MIG-b"]}]),
    ],
)
def test_create_body_asks_the_gateway_for_what_the_arguments_say(gpus, device, requests):
    body = cli_container.create_body("img:1", "/home/stu/workspace/box", 1001, 1002, None, "none", gpus, device)
    host = body["HostConfig"]
    got = [{"Count": r["Count"], "DeviceIDs": r["DeviceIDs"]} for r in host.get("DeviceRequests", [])] or None
    assert got == requests
    assert all(r["Capabilities"] == [["gpu"]] for r in host.get("DeviceRequests", []))
    assert host["Binds"] == ["/home/stu/workspace/box:/workspace"]
    assert host["NetworkMode"] == "none" and host["Init"] is True
    assert body["User"] == "1001:1002" and body["WorkingDir"] == "/workspace"
    assert body["Cmd"] == ["sleep", "infinity"] and "HOME=/workspace" in body["Env"]
    assert body["Labels"] == {"ds01.container_type": "ds01"}


def test_create_body_runs_the_given_command_on_the_given_network():
    body = cli_container.create_body("img", "/w", 1, 1, ["python", "train.py"], "labnet")
    assert body["Cmd"] == ["python", "train.py"] and body["HostConfig"]["NetworkMode"] == "labnet"


def test_the_gateway_types_a_deployed_container_as_ds01():
    from ansible_collections.ds01.infra.plugins.module_utils.ds01.gateway import policy

    body = cli_container.create_body("img", "/w", 1, 1)
    assert policy.container_type(body["Labels"]) == "ds01"


TOPOLOGY = """
gpus:
  - {index: 0, uuid: GPU-0, name: A100, memory_mib: 40960}
  - index: 1
    uuid: GPU-1
    name: A100
    memory_mib: 40960
    mig: true
    instances:
      - {profile: 3g.20gb, uuid: MIG-a}
      - {profile: 1g.5gb, uuid: MIG-b}
      - {profile: 3g.20gb, uuid: MIG-c}
"""


@pytest.mark.parametrize(
    ("mig", "full", "candidates", "what"),
    [
        ("3g.20gb", False, ("MIG-a", "MIG-c"), "a 3g.20gb MIG slice"),
        ("1G.5GB", False, ("MIG-b",), "a 1G.5GB MIG slice"),
        (None, True, ("GPU-0",), "a whole GPU"),
    ],
)
def test_mig_and_full_gpu_become_one_device_per_attempt(tmp_path, mig, full, candidates, what):
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    slots = gpu.read_inventory(str(tmp_path / "t.yaml")).slots()
    choice = cli_container.candidate_slots(slots, mig_profile=mig, full_gpu=full)
    assert (choice.candidates, choice.what) == (candidates, what)


def test_a_profile_the_server_lacks_is_named_with_the_ones_it_has(tmp_path):
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    slots = gpu.read_inventory(str(tmp_path / "t.yaml")).slots()
    with pytest.raises(ValueError, match=r"no 7g.40gb MIG slice \(MIG profiles here: 1g.5gb, 3g.20gb\)"):
        cli_container.candidate_slots(slots, mig_profile="7g.40gb")


# --------------------------------------------------------------------------------------------
# answers and waiting


@pytest.mark.parametrize(
    ("message", "status", "code", "exit_code"),
    [
        ("NO_GPU_AVAILABLE: All GPUs you may use are taken right now.", 403, "NO_GPU_AVAILABLE", 1),
        ("USER_AT_LIMIT: You hold 1.0 of your 1.0 GPU-equivalents.", 403, "USER_AT_LIMIT", 1),
        ('Conflict. The container name "/box" is already in use', 409, "", 1),
        ("No such image: nope:1", 404, "", 1),
        ("the Docker daemon did not answer", 503, "", 3),
        ("Connection refused", None, "", 3),
    ],
)
def test_an_answer_is_a_refusal_code_and_an_exit_code(message, status, code, exit_code):
    refused = cli_container.Refused.from_message(message, status)
    assert (refused.code, refused.exit_code, refused.message) == (code, exit_code, message)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_wait_retries_only_no_gpu_refusals_until_the_time_is_up():
    clock, said = Clock(), []
    refusal = cli_container.Refused.from_message("NO_GPU_AVAILABLE: taken.", 403)
    calls = []

    def attempt():
        calls.append(clock.now)
        return refusal

    got = cli_container.create_with_wait(attempt, 12, sleep=clock.sleep, clock=clock, say=said.append, every_s=5)
    assert got is refusal
    assert calls == [0, 5, 10, 12] and clock.slept == [5, 5, 2]
    assert len(said) == 1 and said[0].startswith("NO_GPU_AVAILABLE: taken.\nWaiting for a GPU")


def test_wait_ends_at_the_first_other_answer():
    clock = Clock()
    answers = iter([cli_container.Refused.from_message("NO_GPU_AVAILABLE: taken.", 403), "c0ffee"])
    got = cli_container.create_with_wait(lambda: next(answers), 600, sleep=clock.sleep, clock=clock)
    assert got == "c0ffee" and clock.slept == [cli_container.RETRY_EVERY_S]
    other = cli_container.Refused.from_message("USER_AT_LIMIT: no.", 403)
    assert cli_container.create_with_wait(lambda: other, 600, sleep=clock.sleep, clock=clock) is other


def test_without_wait_a_no_gpu_refusal_is_answered_at_once():
    clock = Clock()
    refusal = cli_container.Refused.from_message("NO_GPU_AVAILABLE: taken.", 403)
    assert cli_container.create_with_wait(lambda: refusal, 0, sleep=clock.sleep, clock=clock) is refusal
    assert clock.slept == []


# --------------------------------------------------------------------------------------------
# the images section


@pytest.mark.parametrize(
    ("ref", "normal"),
    [
        ("ubuntu", "ubuntu:latest"),
        ("docker.io/library/ubuntu:22.04", "ubuntu:22.04"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("nvcr.io/nvidia/pytorch@sha256:abc", "nvcr.io/nvidia/pytorch@sha256:abc"),
    ],
)
def test_image_names_are_compared_as_docker_means_them(ref, normal):
    assert images.normalize(ref) == normal


@pytest.mark.parametrize(
    ("asked", "image", "why"),
    [
        (None, "nvcr.io/nvidia/pytorch:24.05-py3", None),
        ("ubuntu:latest", "ubuntu:latest", None),
        ("docker.io/library/ubuntu", "docker.io/library/ubuntu", None),
        ("local/debian-min:bookworm", "local/debian-min:bookworm", None),
        (
            "alpine",
            None,
            "image alpine is not on this lab's list of approved images: ubuntu, local/debian-min:bookworm",
        ),
    ],
)
def test_deploy_takes_listed_images_and_the_default(tmp_path, asked, image, why):
    section = _config(tmp_path).section("images")
    got, sentence = images.choose_image(section, asked)
    assert got == image
    assert (sentence is None) == (why is None)
    if why:
        assert sentence.startswith(why) and "nvcr.io/nvidia/pytorch:24.05-py3" in sentence


def test_without_a_list_any_image_and_without_a_default_a_sentence(tmp_path):
    section = _config(tmp_path, BASE).section("images")
    assert dict(section) == {"allowed": (), "default": None, "deploy_network": "none"}
    assert images.choose_image(section, "anything:1") == ("anything:1", None)
    assert images.choose_image(section, None)[1].startswith("no default image is configured")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("images: {allowed: ubuntu}\n", "images.allowed"),
        ("images: {default: 'two words'}\n", "images.default"),
        ("images: {deploy_network: 'a b'}\n", "images.deploy_network"),
        ("images: {alowed: [ubuntu]}\n", "images.alowed"),
    ],
)
def test_config_check_reports_a_bad_images_section(tmp_path, text, key):
    with pytest.raises(config_mod.ConfigError) as caught:
        _config(tmp_path, BASE + text)
    assert [p.key for p in caught.value.problems] == [key]


# --------------------------------------------------------------------------------------------
# limits and text


def test_limits_come_from_the_governing_rule_for_type_ds01(tmp_path):
    limits = _config(tmp_path).resolve("stu")
    doc = cli_container.limits_of(limits, "ds01", "box", True, NOW)
    assert doc["idle_timeout_h"] == {"hours": 0.5, "from": "container_types.ds01", "exempt": None}
    assert doc["max_runtime_h"] == {"hours": None, "from": "container_types.ds01", "exempt": None}
    assert cli_container.limit_lines(doc, "/workspace/.keep-alive") == [
        "idle: stopped after 30 min without activity (container_types.ds01)",
        "runtime: no limit (container_types.ds01)",
        "`touch /workspace/.keep-alive` inside the container counts as activity.",
    ]
    other = cli_container.limits_of(limits, "docker", "box", True, NOW)
    assert other["idle_timeout_h"] == {"hours": 5.0, "from": "group:student", "exempt": None}


def test_a_container_without_gpu_is_told_the_limits_do_not_stop_it(tmp_path):
    doc = cli_container.limits_of(_config(tmp_path).resolve("stu"), "ds01", "box", False, NOW)
    assert cli_container.limit_lines(doc) == [
        "Idle and runtime limits stop only containers holding a GPU; this one holds none."
    ]


def test_deploy_text_says_how_to_get_in_and_what_applies(tmp_path):
    limits = _config(tmp_path).resolve("stu")
    done = cli_container.Deployed(
        name="box",
        image="img:1",
        workspace="/home/stu/workspace/box",
        state="running",
        gpu_slots=["1.0"],
        limits=cli_container.limits_of(limits, "ds01", "box", True, NOW),
    )
    text = cli_container.deploy_text(done)
    assert text.splitlines()[0] == "Container box is running (image img:1, GPU 1.0)."
    assert "  docker exec -it box bash" in text and "Attach to Running Container" in text
    assert "  idle: stopped after 30 min without activity (container_types.ds01)" in text
    assert text.splitlines()[-1] == "When you are done: ds01 container retire box  (the workspace stays)"
    ended = cli_container.deploy_text(
        cli_container.Deployed("box", "img", "/w", "exited", exit_code=2, limits={"applies": False})
    )
    assert "Its command has already ended with exit code 2: see `docker logs box`." in ended


def test_list_text_is_a_table_of_the_rows():
    row = {
        "name": "box",
        "state": "running",
        "type": "ds01",
        "image": "img:1",
        "gpu_slots": ["1.0"],
        "gpu_uuids": ["MIG-a"],
        "limits": {
            "applies": True,
            "idle_timeout_h": {"hours": 0.5, "from": "x", "exempt": None},
            "max_runtime_h": {"hours": 12.0, "from": "x", "exempt": "exempt until 2025-04-01"},
        },
    }
    idle = {**row, "name": "cpu-box", "gpu_slots": [], "gpu_uuids": [], "limits": {**row["limits"], "applies": False}}
    lines = cli_container.list_text({"containers": [row, idle]}).splitlines()
    assert lines[0].split() == ["NAME", "STATE", "TYPE", "GPU", "IDLE", "LIMIT", "RUNTIME", "LIMIT", "IMAGE"]
    assert lines[1].split() == ["box", "running", "ds01", "1.0", "30", "min", "exempt", "img:1"]
    assert lines[2].split() == ["cpu-box", "running", "ds01", "-", "-", "-", "img:1"]
    assert cli_container.list_text({"containers": []}).startswith("You have no containers.")


@pytest.mark.parametrize(
    ("labels", "workspace"),
    [
        ({}, None),
        (
            {"ds01.binds": '{"token":"abc123","sources":[{"source":"/home/stu/workspace/box","readonly":false}]}'},
            "/home/stu/workspace/box",
        ),
        ({"ds01.binds": '{"token":"abc","sources":[{"source":"/a"},{"source":"/b"}]}'}, None),
        ({"ds01.binds": "not json"}, None),
    ],
)
def test_the_workspace_is_read_from_the_gateways_bind_record(labels, workspace):
    assert cli_container.workspace_of(labels) == workspace
