"""Issue 16 (3): what the gateway changed in a create is told in the create answer's ``Warnings``, which the
real docker CLI prints as ``WARNING:`` lines; the daemon's stored settings are the evidence of what was applied.

The harness's student group: 1.5 CPUs, 2 GiB memory, 3 GiB memory+swap, 256 MiB shm, 300 pids per container.
"""

from __future__ import annotations

from gwharness import IMAGE, VICTIM

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
