"""The profile.d scripts in real login shells of real Unix users (bash -l and dash -l).

The CUDA notice is compiled from the role's source with the role's compiler flags, and judged with a stub CUDA
driver (``libcuda.so.1`` whose ``cuInit`` answers "no device") loaded by a small program, as PyTorch loads the
real one (``dlopen``).

The scripts are rendered into a world-readable temp directory and sourced from each user's
``~/.bash_profile`` / ``~/.profile`` exactly the way ``/etc/profile`` sources ``/etc/profile.d/*.sh``
(``for i in DIR/*.sh; do [ -r "$i" ] && . "$i"; done``). The users are created with ``useradd`` and
removed afterwards; the shells run as them (``runuser``), with an empty environment.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import profile

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates Unix users: needs root"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("useradd", "userdel", "runuser")), reason="needs useradd/runuser"
    ),
]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTICE_SOURCE = os.path.join(REPO, "roles", "ds01_gpu_access", "files", "ds01-cuda-notice.c")
NOTICE_FLAGS = ["-shared", "-fPIC", "-O2", "-Wall", "-Werror"]  # as roles/ds01_gpu_access/tasks/main.yml
STUB_CUDA = "int cuInit(unsigned int flags) { (void)flags; return 100; /* CUDA_ERROR_NO_DEVICE */ }\n"
CUDA_PROGRAM = r"""#include <dlfcn.h>
#include <stdio.h>
int main(void) {
  void *h = dlopen("libcuda.so.1", RTLD_NOW);
  if (!h) { printf("no-libcuda\n"); return 2; }
  int (*init)(unsigned int) = (int (*)(unsigned int))dlsym(h, "cuInit");
  printf("cuInit=%d\n", init(0));
  return 7;
}
"""
PREFIX = "ds01t"
USERS = {
    "exempt": f"{PREFIX}_exempt",
    "plain": f"{PREFIX}_plain",
    "granted": f"{PREFIX}_granted",
    "expired": f"{PREFIX}_expired",
    "permanent": f"{PREFIX}_perm",
    "malformed": f"{PREFIX}_bad",
}
SHELLS = [s for s in ("bash", "dash") if shutil.which(s)]
SOURCE_LOOP = 'for i in {dir}/*.sh; do if [ -r "$i" ]; then . "$i"; fi; done; unset i\n'


@pytest.fixture(scope="module")
def world():
    """Rendered scripts, exempt file, grants, homes and users; removed afterwards."""
    top = tempfile.mkdtemp(prefix="ds01-shells-")
    os.chmod(top, 0o755)
    profile_dir = os.path.join(top, "profile.d")
    grant_dir = os.path.join(top, "grants")
    homes = os.path.join(top, "home")
    bin_dir = os.path.join(top, "bin")
    for d in (profile_dir, grant_dir, homes, bin_dir):
        os.mkdir(d)
    os.chmod(grant_dir, 0o711)  # users open their own file by name, cannot list
    for d in (profile_dir, homes, bin_dir):
        os.chmod(d, 0o755)
    exempt_file = os.path.join(top, "gpu-exempt-users")
    ds01_bin = os.path.join(bin_dir, "ds01")
    notice_lib = os.path.join(bin_dir, "libds01-cuda-notice.so")
    _compile(["cc", *NOTICE_FLAGS, "-o", notice_lib, NOTICE_SOURCE])
    with open(os.path.join(top, "stub-cuda.c"), "w") as handle:
        handle.write(STUB_CUDA)
    with open(os.path.join(top, "use-cuda.c"), "w") as handle:
        handle.write(CUDA_PROGRAM)
    _compile(["cc", "-shared", "-fPIC", "-o", os.path.join(bin_dir, "libcuda.so.1"), os.path.join(top, "stub-cuda.c")])
    _compile(["cc", "-o", os.path.join(bin_dir, "use-cuda"), os.path.join(top, "use-cuda.c"), "-ldl"])
    for name in ("libds01-cuda-notice.so", "libcuda.so.1", "use-cuda"):
        os.chmod(os.path.join(bin_dir, name), 0o755)

    scripts = profile.render_scripts(exempt_file, grant_dir, ds01_bin, greeting=True, cuda_notice=notice_lib)
    for name, text in scripts.items():
        path = os.path.join(profile_dir, name)
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o644)
    with open(exempt_file, "w") as handle:
        handle.write(profile.render_exempt_users([USERS["exempt"], "someone_else"]))
    os.chmod(exempt_file, 0o644)

    now = dt.datetime.now(dt.timezone.utc)
    grants = {
        "granted": profile.render_grant(USERS["granted"], "root", now, now + dt.timedelta(hours=2)),
        "expired": profile.render_grant(
            USERS["expired"], "root", now - dt.timedelta(hours=3), now - dt.timedelta(hours=1)
        ),
        "permanent": profile.render_grant(USERS["permanent"], "root", now, None),
        "malformed": '{"user": "x", "type": "temporary", "expires_at": "2099-01-01T00:00:00Z"}\n',
    }
    for key, text in grants.items():
        path = os.path.join(grant_dir, USERS[key] + ".json")
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o644)

    created = []
    try:
        for login in USERS.values():
            subprocess.run(["userdel", "-f", login], capture_output=True, check=False)
            home = os.path.join(homes, login)
            subprocess.run(["useradd", "-M", "-N", "-d", home, "-s", "/bin/sh", login], check=True, capture_output=True)
            created.append(login)
            os.mkdir(home)
            for rc in (".bash_profile", ".profile"):
                with open(os.path.join(home, rc), "w") as handle:
                    handle.write(SOURCE_LOOP.format(dir=profile_dir))
            shutil.chown(home, login)
            os.chmod(home, 0o755)
        yield {"top": top, "profile_dir": profile_dir, "ds01_bin": ds01_bin, "grant_dir": grant_dir, "bin_dir": bin_dir}
    finally:
        for login in created:
            subprocess.run(["userdel", "-f", login], capture_output=True, check=False)
        shutil.rmtree(top, ignore_errors=True)


def _compile(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed: {proc.stderr}"


def login_shell(world, login, shell, command, interactive=False):
    flags = ["-l", "-i", "-c"] if interactive else ["-l", "-c"]
    home = os.path.join(world["top"], "home", login)
    env = ["env", "-i", f"HOME={home}", f"USER={login}", f"LOGNAME={login}", "PATH=/usr/bin:/bin", "TERM=dumb"]
    return subprocess.run(
        ["runuser", "-u", login, "--", *env, shutil.which(shell), *flags, command],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
        cwd="/",
    )


CUDA = 'echo "[${CUDA_VISIBLE_DEVICES-unset}]"'


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("exempt", "[unset]"),  # listed in the exempt-users file
        ("plain", "[]"),  # neither exempt nor granted: GPUs hidden
        ("granted", "[unset]"),  # grant expires in two hours
        ("expired", "[]"),  # grant expired an hour ago
        ("permanent", "[unset]"),
        ("malformed", "[]"),  # no expires_epoch: fails closed
    ],
)
def test_deterrent(world, shell, who, expected):
    proc = login_shell(world, USERS[who], shell, CUDA)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == expected
    assert "ds01" not in proc.stderr  # no script noise at login


@pytest.mark.parametrize("shell", SHELLS)
def test_root_is_never_hidden(world, shell):
    home = tempfile.mkdtemp()
    try:
        with open(os.path.join(home, ".profile"), "w") as handle:
            handle.write(SOURCE_LOOP.format(dir=world["profile_dir"]))
        shutil.copy(os.path.join(home, ".profile"), os.path.join(home, ".bash_profile"))
        proc = subprocess.run(
            ["env", "-i", f"HOME={home}", "PATH=/usr/bin:/bin", shutil.which(shell), "-l", "-c", CUDA],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        assert proc.stdout.strip().splitlines()[-1] == "[unset]"
    finally:
        shutil.rmtree(home)


@pytest.mark.parametrize("shell", SHELLS)
def test_path_and_no_leftover_variables(world, shell):
    proc = login_shell(world, USERS["plain"], shell, 'echo "$PATH"; set | grep -c "^__ds01_" || true')
    lines = proc.stdout.strip().splitlines()
    bin_dir = os.path.dirname(world["ds01_bin"])
    assert bin_dir in lines[-2].split(":")
    assert lines[-1] == "0"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("who", "shown"),
    [
        ("plain", True),
        ("expired", True),
        ("malformed", True),
        ("exempt", False),
        ("granted", False),
        ("permanent", False),
    ],
)
def test_banner_in_interactive_shells_of_hidden_users(world, shell, who, shown):
    interactive = login_shell(world, USERS[who], shell, "echo logged-in", interactive=True)
    assert interactive.returncode == 0 and interactive.stdout.strip().splitlines()[-1] == "logged-in"
    banner = [line for line in interactive.stderr.splitlines() if line in profile.BANNER]
    assert banner == (list(profile.BANNER) if shown else [])
    how = "docker run --gpus 1" in interactive.stderr and "ds01 container deploy NAME --gpus 1" in interactive.stderr
    assert how == shown
    quiet = login_shell(world, USERS[who], shell, "echo logged-in")
    assert "GPUs on this server" not in quiet.stdout + quiet.stderr  # scripts and ssh commands stay clean


NOTICE_LINE = "ds01: this program uses CUDA, but on this server GPUs are for containers"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("who", "told"),
    [
        ("plain", True),
        ("expired", True),
        ("malformed", True),
        ("exempt", False),
        ("granted", False),
        ("permanent", False),
    ],
)
def test_cuda_notice_tells_hidden_users_and_never_changes_the_program(world, shell, who, told):
    """A CUDA program started from a login shell: the notice on stderr exactly when the GPUs are hidden; the
    program's own output and exit status are the same either way (it interposes nothing)."""
    bin_dir = world["bin_dir"]
    run = f"LD_LIBRARY_PATH={bin_dir} {bin_dir}/use-cuda; echo status=$?"
    proc = login_shell(world, USERS[who], shell, run)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-2:] == ["cuInit=100", "status=7"]
    notices = [line for line in proc.stderr.splitlines() if line.startswith(NOTICE_LINE)]
    assert len(notices) == (1 if told else 0), proc.stderr
    if told:
        assert "ds01 container deploy NAME --gpus 1" in proc.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_cuda_notice_is_silent_for_programs_without_cuda_and_when_asked(world, shell):
    """Programs that never load the CUDA driver say nothing (a Python interpreter, coreutils); the user can
    silence it with DS01_CUDA_NOTICE=0; the library sits in LD_AUDIT once, however often the profile runs."""
    login = USERS["plain"]
    plain = login_shell(world, login, shell, 'echo "$LD_AUDIT"; ls / >/dev/null; python3 -c "print(6*7)"')
    assert plain.returncode == 0 and plain.stdout.strip().splitlines()[-1] == "42"
    assert plain.stdout.strip().splitlines()[-2] == os.path.join(world["bin_dir"], "libds01-cuda-notice.so")
    assert "ds01:" not in plain.stderr
    bin_dir = world["bin_dir"]
    quiet = login_shell(world, login, shell, f"DS01_CUDA_NOTICE=0 LD_LIBRARY_PATH={bin_dir} {bin_dir}/use-cuda")
    assert quiet.stdout.strip().splitlines()[-1] == "cuInit=100" and NOTICE_LINE not in quiet.stderr
    twice = login_shell(world, login, shell, f'. {world["profile_dir"]}/ds01-gpu-deterrent.sh; echo "$LD_AUDIT"')
    assert twice.stdout.strip().splitlines()[-1].count("libds01-cuda-notice.so") == 1
