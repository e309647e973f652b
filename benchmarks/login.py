"""The login greeting's cost in a real ``bash -l -i`` login of an ordinary user, three ways side by side:

- ``none``: the profile.d scripts without a greeting (what a login costs anyway);
- ``old``: the greeting as it was, ``timeout -k 1 1 ds01 limits --brief`` (Python at every login; the detector's
  inventory is fresh, so it reads no Docker);
- ``new``: the greeting the exporter pre-rendered (``greetings``), printed with ``find`` + ``awk``.

    .venv/bin/python benchmarks/login.py [--logins 40]

Run as root: it creates the user ``benchgrt`` (removed at the end). Each login is
``runuser -u benchgrt -- env -i HOME=… bash -l -i -c true``, timed from outside; the three kinds are interleaved
so that machine noise falls on all of them alike. ``ds01`` runs as Debian's ``/usr/bin/python3 -m ds01`` over a
copy of the core (the user cannot execute the checkout's venv). Prints p50/p95 per kind and the ratios
old/new and (new - none)/(old - none): what the greeting itself costs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".collections"))

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config as config_mod  # noqa: E402
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import greetings, profile  # noqa: E402
from ansible_collections.ds01.infra.plugins.module_utils.ds01 import observe as ob  # noqa: E402

CORE = os.path.join(HERE, "..", "plugins", "module_utils", "ds01")
USER = "benchgrt"
LIMITS = """
default_group: student
groups:
  student:
    members: [benchgrt]
    max_gpu_equivalents: 1
paths: {state_dir: state, log_dir: log, run_dir: run}
"""
OLD_GREETING = """case $- in
  *i*)
    if [ -x {b} ] && command -v timeout >/dev/null 2>&1; then
      timeout -k 1 1 {b} limits --brief </dev/null 2>/dev/null || :
    fi
    ;;
esac
"""
SOURCE_LOOP = 'for i in {dir}/*.sh; do if [ -r "$i" ]; then . "$i"; fi; done; unset i\n'


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] * 1000


def setup(root):
    for sub in ("state", "log", "run"):
        os.makedirs(os.path.join(root, sub))
    cfg = os.path.join(root, "resource-limits.yaml")
    with open(cfg, "w") as handle:
        handle.write(LIMITS)
    shutil.copytree(CORE, os.path.join(root, "pkg", "ds01"), ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = os.path.join(root, "bin")
    os.makedirs(bin_dir)
    ds01 = os.path.join(bin_dir, "ds01")
    with open(ds01, "w") as handle:
        handle.write(f'#!/bin/sh\nPYTHONPATH={root}/pkg exec /usr/bin/python3 -m ds01 --config {cfg} "$@"\n')
    os.chmod(ds01, 0o755)
    with open(os.path.join(root, "state", "workloads.json"), "w") as handle:  # the detector's, fresh
        json.dump({"schema_version": "1", "updated_at_epoch": time.time() + 3600, "containers": []}, handle)
    scripts = profile.render_scripts(
        os.path.join(root, "exempt"),
        os.path.join(root, "grants"),
        ds01,
        greeting_dir=os.path.join(root, "state", "greetings"),
    )
    kinds = {}
    for kind in ("none", "old", "new"):
        d = os.path.join(root, f"profile-{kind}")
        os.makedirs(d)
        chosen = dict(scripts)
        if kind == "none":
            chosen.pop(profile.GREETING_SCRIPT)
        elif kind == "old":
            chosen[profile.GREETING_SCRIPT] = OLD_GREETING.format(b=ds01)
        for name, text in chosen.items():
            with open(os.path.join(d, name), "w") as handle:
                handle.write(text)
        kinds[kind] = d
    config = config_mod.load_config(cfg)
    snap = ob.build_snapshot(config, None, persist=False)
    greetings.write_all(config, snap, dt.datetime.now(dt.timezone.utc))
    return kinds


def login(home, profile_dir):
    with open(os.path.join(home, ".bash_profile"), "w") as handle:
        handle.write(SOURCE_LOOP.format(dir=profile_dir))
    env = ["env", "-i", f"HOME={home}", f"USER={USER}", f"LOGNAME={USER}", "PATH=/usr/bin:/bin", "TERM=dumb"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["runuser", "-u", USER, "--", *env, "/bin/bash", "-l", "-i", "-c", "true"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        cwd="/",
    )
    return time.perf_counter() - t0, proc.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--logins", type=int, default=40)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("Run this benchmark as root: it creates the user benchgrt and logs in as them.")
    subprocess.run(["userdel", "-r", USER], capture_output=True, check=False)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True, capture_output=True)
    root = tempfile.mkdtemp(prefix="ds01-bench-login-")
    os.chmod(root, 0o755)
    try:
        kinds = setup(root)
        home = pwd.getpwnam(USER).pw_dir
        times = {k: [] for k in kinds}
        for kind in kinds:  # warm-up (a first cold Python start can pass the old greeting's 1 s timeout)
            login(home, kinds[kind])
        printed = {}
        for _round in range(args.logins):
            for kind in kinds:
                elapsed, printed[kind] = login(home, kinds[kind])
                times[kind].append(elapsed)
        for kind in kinds:
            print(f"{kind:>4} prints: {printed[kind].strip()!r}")
        p50 = {k: pct(v, 0.5) for k, v in times.items()}
        for kind, values in times.items():
            print(f"{kind:>4}: p50 {p50[kind]:7.1f} ms  p95 {pct(values, 0.95):7.1f} ms  ({len(values)} logins)")
        print(f"old/new login p50 ratio: {p50['old'] / p50['new']:.1f}x")
        own_old, own_new = p50["old"] - p50["none"], p50["new"] - p50["none"]
        print(f"greeting's own cost p50: old {own_old:.1f} ms, new {own_new:.1f} ms")
    finally:
        subprocess.run(["userdel", "-r", USER], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
