"""Issue 16 (3): what the gateway changed in a create is told in the create answer's ``Warnings``, which the
real docker CLI prints as ``WARNING:`` lines; the daemon's stored settings are the evidence of what was applied.

The harness's student group: 1.5 CPUs, 2 GiB memory, 3 GiB memory+swap, 256 MiB shm, 300 pids per container.
"""

from __future__ import annotations

from gwharness import GPU_UUIDS, IMAGE, MIG_UUIDS, VICTIM

USER = VICTIM  # an ordinary user with room for containers (the attacker's limit is 3)


def test_capped_limits_are_warnings_the_cli_prints(attack_gw):
    h = attack_gw
    name = h.name("capped")
    try:
        proc = h.cli(
            USER,
            "create",
            "--name",
            name,
            "--memory",
            "64g",
            "--cpus",
            "8",
            "--shm-size",
            "1g",
            "--pids-limit",
            "100000",
            IMAGE,
            "true",
        )
        assert proc.returncode == 0, proc.stderr
        printed = [line for line in proc.stderr.splitlines() if line.startswith("WARNING:")]
        # the daemon's own warnings (e.g. about IPv4 forwarding on this host) come first, then the gateway's
        assert printed[-4:] == [
            "WARNING: CPUs 8 asked, capped to your limit 1.5 (group student)",
            "WARNING: memory 64 GiB asked, capped to your limit 2 GiB (group student)",
            "WARNING: shm 1 GiB asked, capped to your limit 256 MiB (group student)",
            "WARNING: pids 100000 asked, capped to your limit 300 (group student)",
        ], proc.stderr
        host = h.stored(name)["HostConfig"]
        assert (host["Memory"], host["NanoCpus"], host["ShmSize"], host["PidsLimit"]) == (
            2 << 30,
            1_500_000_000,
            256 << 20,
            300,
        )
    finally:
        h.remove(name)


def test_a_create_within_the_limits_has_no_warning(attack_gw):
    h = attack_gw
    name = h.name("within")
    try:
        proc = h.cli(USER, "create", "--name", name, "--memory", "1g", IMAGE, "true")
        assert proc.returncode == 0, proc.stderr
        assert "capped" not in proc.stderr
        assert h.stored(name)["HostConfig"]["Memory"] == 1 << 30
    finally:
        h.remove(name)


def test_gpus_all_from_a_user_is_the_gpus_they_may_have(attack_gw):
    """The student group may hold 1.0 GPU-equivalents, 1 slot per container: `--gpus all` gets one slot, says
    which, and stores exactly that UUID; a second `--gpus all` finds no room in the quota and stores nothing."""
    h = attack_gw
    name, again = h.name("gpuall"), h.name("gpuall2")
    try:
        proc = h.cli(USER, "create", "--name", name, "--gpus", "all", IMAGE, "true")
        assert proc.returncode == 0, proc.stderr
        info = h.stored(name)
        labels = info["Config"]["Labels"]
        granted = labels["ds01.gpu.uuids"].split(",")
        assert len(granted) == 1 and float(labels["ds01.gpu.gpueq"]) <= 1.0
        requests = info["HostConfig"]["DeviceRequests"]
        assert [(r["Count"], r["DeviceIDs"]) for r in requests] == [(0, granted)]
        printed = [line for line in proc.stderr.splitlines() if "--gpus all" in line]
        assert len(printed) == 1 and printed[0].startswith("WARNING: --gpus all: granted 1 GPU slot ("), proc.stderr
        assert labels["ds01.gpu.slots"] in printed[0]

        second = h.cli(USER, "create", "--name", again, "--gpus", "all", IMAGE, "true")
        assert second.returncode != 0 and "GPU-equivalents" in second.stderr, second.stderr
        assert h.stored(again) is None
    finally:
        h.remove(name, again)


def _granted_request(h, name):
    """The stored container's GPU DeviceRequests as (count, ids), and its granted UUIDs label."""
    info = h.stored(name)
    requests = [(r["Count"], r["DeviceIDs"]) for r in info["HostConfig"]["DeviceRequests"] or []]
    return requests, info["Config"]["Labels"]


def test_request_label_alone_gets_one_mig_slice_of_that_profile(attack_gw):
    """Without the label this user's `--gpus 1` gets whole GPU 0 (whole GPUs come first); with
    ds01.gpu.request=3g.20gb and no flag at all, the stored request is exactly one 3g.20gb instance."""
    h = attack_gw
    name = h.name("mig3g")
    try:
        proc = h.cli(USER, "create", "--name", name, "--label", "ds01.gpu.request=3g.20gb", IMAGE, "true")
        assert proc.returncode == 0, proc.stderr
        requests, labels = _granted_request(h, name)
        assert len(requests) == 1 and requests[0][0] == 0 and len(requests[0][1]) == 1, requests
        assert requests[0][1][0] in MIG_UUIDS
        assert labels["ds01.gpu.uuids"] == requests[0][1][0]
        assert labels["ds01.gpu.request"] == "3g.20gb"  # kept as the user wrote it; nothing reads it as a fact
        printed = [line for line in proc.stderr.splitlines() if "ds01.gpu.request" in line]
        assert printed == [
            f"WARNING: ds01.gpu.request=3g.20gb: granted MIG 3g.20gb (GPU 2, instance "
            f"{labels['ds01.gpu.slots'].split('.')[1]}, slot {labels['ds01.gpu.slots']})"
        ], proc.stderr
    finally:
        h.remove(name)


def test_request_label_full_with_gpus_n_gets_a_whole_gpu(attack_gw):
    h = attack_gw
    name = h.name("full")
    try:
        proc = h.cli(USER, "create", "--name", name, "--gpus", "1", "--label", "ds01.gpu.request=full", IMAGE, "true")
        assert proc.returncode == 0, proc.stderr
        requests, labels = _granted_request(h, name)
        assert len(requests) == 1 and requests[0][1][0] in GPU_UUIDS and len(requests[0][1]) == 1, requests
        assert f"WARNING: ds01.gpu.request=full: granted whole GPU {labels['ds01.gpu.slots']}" in proc.stderr
    finally:
        h.remove(name)


def test_request_label_with_a_profile_this_server_lacks_is_refused_and_stores_nothing(attack_gw):
    h = attack_gw
    name = h.name("nokind")
    proc = h.cli(USER, "create", "--name", name, "--gpus", "1", "--label", "ds01.gpu.request=1g.10gb", IMAGE, "true")
    try:
        assert proc.returncode != 0
        assert "POLICY_DENIED" in proc.stderr and "no MIG profile '1g.10gb'" in proc.stderr, proc.stderr
        assert "its MIG profiles are 3g.20gb" in proc.stderr, proc.stderr
        assert h.stored(name) is None
    finally:
        h.remove(name)


def test_every_problem_of_a_create_is_told_at_once(attack_gw):
    """One refused create names each problem (each sentence as it reads alone), and the daemon stores nothing."""
    h = attack_gw
    name = h.name("many")
    flags = ["--privileged", "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--pid", "host"]
    proc = h.cli(USER, "create", "--name", name, *flags, IMAGE, "true")
    try:
        assert proc.returncode != 0
        text = " ".join(proc.stderr.split())
        assert "POLICY_DENIED: this request has 4 problems; fix them all, then try again: 1) " in text, text
        for part in (
            "--privileged gives the container every capability",
            "--cap-add SYS_ADMIN reaches into the host kernel",
            "--pid=host (PidMode) shares the host's namespace",
            "--security-opt seccomp=unconfined weakens the container's confinement",
        ):
            assert part in text, text
        assert h.stored(name) is None
    finally:
        h.remove(name)
