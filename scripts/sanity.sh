#!/usr/bin/env bash
# ansible-test sanity on a clean copy of the collection, offline.
#
#   scripts/sanity.sh [extra ansible-test sanity arguments, e.g. --test pylint]
#
# - The copy: the files git would ship (tracked + untracked-not-ignored) at
#   .cache/sanity/ansible_collections/ds01/infra, so .venv, .cache and the like are never linted.
# - ansible-test bootstraps pip in each sanity venv from a script it downloads from
#   ci-files.testing.ansible.com, which is unreachable. A stand-in is put in its cache
#   (~/.ansible/test/cache/get_pip_<version>.py): ensurepip, then pip install from PyPI.
#   The copy gets its own (empty) git repository: ansible-test lists files with git ls-files.
# - Runs locally (no --docker) with --python 3.11 --requirements.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SANITY_ROOT="$DS01_CACHE/sanity"
COPY="$SANITY_ROOT/ansible_collections/ds01/infra"
SANITY_PYTHON="${DS01_SANITY_PYTHON:-3.11}"
LOG="$DS01_CACHE/logs/sanity.log"

# The pip version ansible-test's venvs want, read from ansible-test itself.
wanted_pip_version() {
  "$DS01_VENV/bin/python" - <<'EOF'
import re
from pathlib import Path

import ansible_test

src = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
match = re.search(r"default_packages\s*=\s*dict\(\s*pip='([0-9.]+)'", src.read_text())
if not match:
    raise SystemExit("cannot find the pip version in " + str(src))
print(match.group(1))
EOF
}

install_get_pip_standin() {
  local version cache
  version="$(wanted_pip_version)"
  cache="$HOME/.ansible/test/cache/get_pip_${version//./_}.py"
  mkdir -p "$(dirname "$cache")"
  # Replace only what we put there (or nothing): a real get-pip.py is left alone.
  if [ ! -f "$cache" ] || grep -q 'ds01 stand-in for get-pip' "$cache"; then
    cat >"$cache" <<'EOF'
"""ds01 stand-in for get-pip.py (written by scripts/sanity.sh): ci-files.testing.ansible.com is
unreachable here. ansible-test runs this as __main__ inside a fresh venv with pip's arguments."""

import subprocess
import sys

DROP = {"--no-setuptools", "--no-wheel"}
args = [a for a in sys.argv[1:] if a not in DROP]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
EOF
  fi
  info "pip $version bootstrap stand-in: $cache"
}

make_copy() {
  local count
  rm -rf "$COPY"
  mkdir -p "$COPY"
  count="$(checkout_files -- | tr -cd '\0' | wc -c)"
  (cd "$DS01_ROOT" && checkout_files -- | tar --null --files-from - -cf -) | tar -C "$COPY" -xf -
  info "copied $count files to $COPY"
  # The copy sits inside this repo's work tree, where git ignores .cache/: without a repository
  # of its own, ansible-test would ask the outer one for the file list and find nothing.
  git -C "$COPY" init -q
  # An ignore file may exist but must stay empty: problems are fixed, not ignored.
  local ignore
  for ignore in "$COPY"/tests/sanity/ignore-*.txt; do
    [ -e "$ignore" ] || continue
    [ ! -s "$ignore" ] || die "${ignore#"$COPY/"} is not empty: fix the findings instead of ignoring them"
  done
}

main() {
  local start
  start="$(now_s)"
  use_venv
  log "sanity: ansible-test sanity --python $SANITY_PYTHON --requirements"
  install_get_pip_standin
  make_copy
  cd "$COPY"
  # The full output (pip installs of every sanity venv included) goes to the log; the console
  # gets which test runs and what it found.
  mkdir -p "$(dirname "$LOG")"
  info "full output: $LOG"
  local rc=0
  ansible-test sanity --python "$SANITY_PYTHON" --requirements --color no "$@" </dev/null 2>&1 \
    | tee "$LOG" | grep --line-buffered -E '^(Running sanity test|ERROR|FATAL|WARNING: (All|Skipping|Reviewing))' \
    || rc="${PIPESTATUS[0]}"
  [ "$rc" -eq 0 ] || die "ansible-test sanity failed (exit $rc); full output in $LOG"
  info "sanity passed in $(($(now_s) - start)) s"
}

main "$@"
