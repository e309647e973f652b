#!/usr/bin/env bash
# Static checks of the checkout: ruff (lint + format), ansible-lint (profile production, which
# runs yamllint through its `yaml` rule with .yamllint), shellcheck of the shell scripts.
#
#   scripts/lint.sh
#
# Only files git would ship are checked (tracked + untracked-not-ignored), never .venv & co.
# Every check runs; the exit status is non-zero when any of them failed.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

FAILED=()

# run NAME COMMAND...: run one check, remember a failure, carry on.
run() {
  local name="$1" start rc=0
  shift
  start="$(now_s)"
  log "lint: $name"
  "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then
    info "$name: ok ($(($(now_s) - start)) s)"
  else
    info "$name: FAILED (exit $rc)"
    FAILED+=("$name")
  fi
}

python_files() { checkout_files -- '*.py'; }

# Shell scripts: *.sh, and executables whose first line names bash or sh.
shell_files() {
  local f first
  checkout_files -- | while IFS= read -r -d '' f; do
    case "$f" in
      *.sh) printf '%s\0' "$f" ;;
      *.j2 | *.py | *.yml | *.yaml) ;;
      *)
        if [ ! -f "$f" ] || [ ! -x "$f" ]; then continue; fi
        IFS= read -r first <"$f" || true
        case "$first" in '#!'*bash* | '#!'*/sh) printf '%s\0' "$f" ;; esac
        ;;
    esac
  done
}

ruff_check() {
  local files=()
  mapfile -d '' files < <(python_files)
  [ "${#files[@]}" -gt 0 ] || return 0
  info "${#files[@]} python files"
  ruff check --force-exclude --no-cache "${files[@]}"
}

ruff_format() {
  local files=()
  mapfile -d '' files < <(python_files)
  [ "${#files[@]}" -gt 0 ] || return 0
  ruff format --check --force-exclude --no-cache "${files[@]}"
}

run_ansible_lint() {
  ansible-lint --nocolor --profile production
}

run_shellcheck() {
  local files=()
  if ! command -v shellcheck >/dev/null; then
    warn "shellcheck not installed ('make system-deps' installs it); skipping"
    return 0
  fi
  mapfile -d '' files < <(shell_files)
  [ "${#files[@]}" -gt 0 ] || return 0
  info "${#files[@]} shell scripts"
  shellcheck -x "${files[@]}"
}

main() {
  use_venv
  cd "$DS01_ROOT"
  run "ruff check" ruff_check
  run "ruff format --check" ruff_format
  run "ansible-lint" run_ansible_lint
  run "shellcheck" run_shellcheck
  if [ "${#FAILED[@]}" -gt 0 ]; then
    printf 'lint: failed: %s\n' "${FAILED[*]}" >&2
    return 1
  fi
}

main "$@"
