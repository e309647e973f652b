"""What a deploy costs: the first converge of a fresh host vs an idempotent second converge.

Method: ``molecule create`` + ``prepare`` of the ``default`` scenario (the systemd container from
``local/debian-systemd:bookworm`` on the local Docker engine), then ``molecule converge`` twice,
each timed with a monotonic clock around the whole command (Ansible start-up, fact gathering and
every task included). The first converge builds the venv from the wheelhouse, copies the runtime
core, renders and checks the config and generates the slices; the second finds everything in
place and changes nothing. The scenario is destroyed at the end, also on failure.

Run: ``.venv/bin/python benchmarks/deploy.py`` from the repository root (Docker running, the
image built by ``make images``, ``.cache/wheels`` filled by ``scripts/wheelhouse.sh``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def molecule(*args: str, env: dict) -> float:
    """Run one molecule command; return its wall time in seconds (exit on failure)."""
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "molecule"), *args, "-s", "default"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.stdout.write(result.stdout[-6000:])
        raise SystemExit(f"molecule {' '.join(args)} failed (exit {result.returncode})")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".collections"))
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    try:
        molecule("destroy", env=env)
        molecule("create", env=env)
        molecule("prepare", env=env)
        first = molecule("converge", env=env)
        second = molecule("converge", env=env)
    finally:
        molecule("destroy", env=env)
    print(f"first converge (fresh host):      {first:7.1f} s")
    print(f"second converge (idempotent run): {second:7.1f} s")
    print(f"ratio first/second:               {first / second:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
