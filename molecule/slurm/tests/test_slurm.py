"""A real Slurm (slurmctld, slurmd, slurmdbd on MariaDB, munge) configured by ds01_slurm from ds01's limits
and fake GPU topology (molecule/slurm). Evidence is root-side: the accounting database, slurmctld's view of
the jobs, and the kernel's devices cgroup of a running job."""

from __future__ import annotations

import re
import time

STUDENT = "alice"
OTHER_STUDENT = "bob"
OVERRIDDEN = "dave"
WHOLE = "a100-sxm4-40gb"


def as_user(host, user: str, command: str):
    return host.run("cd /tmp && runuser -u %s -- sh -c %s", user, command)


def gres_lines(host) -> list:
    text = host.file("/etc/slurm/gres.conf").content_string
    return [line for line in text.splitlines() if line.startswith("Name=gpu")]


def files_of(line: str) -> set:
    return set(re.search(r"(?:Multiple)?Files?=(\S+)", line).group(1).split(","))


def probe(output: str) -> tuple:
    """(job id, CUDA_VISIBLE_DEVICES, reachable device files) from gpu-probe's output."""
    first = re.search(r"job=(\d+) cvd=(\S*)", output)
    reachable = {line.split()[1] for line in output.splitlines() if line.startswith("reachable ")}
    return first.group(1), first.group(2), reachable


def wait_for(host, job: str, want: str) -> str:
    """Poll squeue until ``job`` is in state ``want``; the last ``state reason`` seen."""
    seen = ""
    for _attempt in range(60):
        seen = host.check_output("squeue -h -j %s -o '%%T %%r' || true", job)
        if seen.split()[:1] == [want]:
            return seen
        time.sleep(1)
    raise AssertionError(f"job {job} never reached {want}; last seen: {seen!r}")


def submit(host, user: str, gres: str, command: str = "sleep 600") -> str:
    out = as_user(host, user, f"sbatch --parsable -o /dev/null --gres={gres} --wrap '{command}'")
    assert out.rc == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def test_daemons_run(host):
    for unit in ("munge", "mariadb", "slurmdbd", "slurmctld", "slurmd"):
        assert host.service(unit).is_running, unit
    assert host.check_output("sinfo -h -o '%%t'").strip() == "idle"


def test_every_gres_file_is_a_device_node(host):
    lines = gres_lines(host)
    assert len(lines) == 8  # 2 whole GPUs + 6 MIG instances
    for line in lines:
        for path in files_of(line):
            assert host.run("test -c %s", path).rc == 0, f"{path} is not a character device"


def test_qos_carries_the_limits(host):
    rows = host.check_output("sacctmgr -P -n show qos format=Name,MaxTRESPU,MaxTRES,MaxJobsPU,MaxWall")
    qos = {row.split("|")[0]: row.split("|")[1:] for row in rows.splitlines()}
    # 2.0 GPU-equivalents = 14 sevenths; 2 GPUs per job; 3 containers -> 3 jobs; 24 h.
    assert qos["ds01-student"] == ["billing=14", "gres/gpu=2", "3", "1-00:00:00"]
    assert qos["ds01-researcher-dave"] == ["billing=28", "gres/gpu=3", "5", "02:00:00"]
    assocs = host.check_output("sacctmgr -P -n show assoc where cluster=ds01 format=User,Account,DefaultQOS")
    assert f"{STUDENT}|student|ds01-student" in assocs.splitlines()
    assert f"{OVERRIDDEN}|researcher|ds01-researcher-dave" in assocs.splitlines()


def granted_line(host, reachable: set, gres_type: str) -> str:
    """The one gres.conf line whose files are exactly what the job could open; it must be of ``gres_type``."""
    (line,) = [line for line in gres_lines(host) if files_of(line) == reachable]
    assert f"Type={gres_type} " in line
    return line


def test_a_job_within_quota_sees_exactly_its_gpu(host):
    out = as_user(host, STUDENT, f"srun --gres=gpu:{WHOLE}:1 sh -c 'gpu-probe; scontrol show job -d $SLURM_JOB_ID'")
    assert out.rc == 0, out.stderr
    _job, cvd, reachable = probe(out.stdout)
    assert len(cvd.split(",")) == 1
    # The kernel lets the job open one GPU's device file, of the type it asked for, and no other.
    assert len(reachable) == 1
    granted_line(host, reachable, WHOLE)
    assert f"TRES=cpu=1,node=1,billing=7,gres/gpu=1,gres/gpu:{WHOLE}=1" in out.stdout


def test_a_mig_profile_is_requested_by_name(host):
    out = as_user(host, OTHER_STUDENT, "srun --gres=gpu:1g.5gb:1 sh -c 'gpu-probe; scontrol show job -d $SLURM_JOB_ID'")
    assert out.rc == 0, out.stderr
    _job, cvd, reachable = probe(out.stdout)
    assert len(cvd.split(",")) == 1
    # The parent GPU and the instance's two capability devices, nothing of the other instances.
    assert len(reachable) == 3
    granted_line(host, reachable, "1g.5gb")
    assert "TRES=cpu=1,node=1,billing=1,gres/gpu=1,gres/gpu:1g.5gb=1" in out.stdout  # one seventh of a GPU


def test_an_untyped_gpu_request_is_refused_with_a_sentence(host):
    out = as_user(host, STUDENT, "srun --gres=gpu:1 true")
    assert out.rc != 0
    assert "name the GPU type, e.g. --gres=gpu:" in out.stderr


def test_the_quota_holds_and_the_job_waits_with_a_qos_reason(host):
    holding = submit(host, STUDENT, f"gpu:{WHOLE}:2", "gpu-probe > $HOME/probe-$SLURM_JOB_ID; sleep 600")
    try:
        wait_for(host, holding, "RUNNING")
        report = f"/home/{STUDENT}/probe-{holding}"
        for _attempt in range(30):
            if host.file(report).exists and "reachable" in host.file(report).content_string:
                break
            time.sleep(1)
        # The running job can open the files of its two GPUs and no other: the kernel refuses the rest
        # (EPERM) through the devices cgroup slurmstepd put the job's processes in.
        _job, cvd, reachable = probe(host.file(report).content_string)
        assert len(cvd.split(",")) == 2
        granted = [line for line in gres_lines(host) if files_of(line) <= reachable]
        assert len(granted) == 2 and all(f"Type={WHOLE} " in line for line in granted)
        assert reachable == set().union(*(files_of(line) for line in granted))
        pid = host.check_output("scontrol listpids %s | awk 'NR==2 {print $1}'", holding)
        devices = host.check_output("grep :devices: /proc/%s/cgroup", pid)
        assert re.search(rf"/slurm_ds01-slurm/uid_\d+/job_{holding}/step_batch", devices), devices
        waiting = submit(host, STUDENT, "gpu:1g.5gb:1")
        state = wait_for(host, waiting, "PENDING")
        for _attempt in range(30):  # the reason is set by the next scheduling pass
            if "QOSMaxBillingPerUser" in state:
                break
            time.sleep(1)
            state = host.check_output("squeue -h -j %s -o '%%T %%r'", waiting)
        assert state.split() == ["PENDING", "QOSMaxBillingPerUser"]
        # The quota is per user: another student's job on the same free GPUs runs.
        out = as_user(host, OTHER_STUDENT, "srun --gres=gpu:1g.5gb:1 true")
        assert out.rc == 0, out.stderr
    finally:
        host.run("scancel -u %s", STUDENT)
        host.run("scancel -u %s", OTHER_STUDENT)


def test_accounting_shows_gpu_usage_per_user(host):
    by_user: dict = {}
    for _attempt in range(30):  # slurmctld sends finished jobs to slurmdbd through its agent queue
        rows = host.check_output("sacct -a -X -P -n -S 2020-01-01 --format=User,AllocTRES")
        by_user = {}
        for row in rows.splitlines():
            user, tres = row.split("|")
            by_user.setdefault(user, []).append(tres)
        if STUDENT in by_user and OTHER_STUDENT in by_user:
            break
        time.sleep(1)
    assert any(f"gres/gpu:{WHOLE}=1" in tres for tres in by_user.get(STUDENT, [])), by_user
    assert any(f"gres/gpu:{WHOLE}=2" in tres and "billing=14" in tres for tres in by_user[STUDENT]), by_user
    assert any("gres/gpu:1g.5gb=1" in tres for tres in by_user.get(OTHER_STUDENT, [])), by_user
