#!/usr/bin/env bash
# The whole test run, as CI does it (`.ci/run` -> `make test` -> this script).
#
#   scripts/test.sh [stage ...]     default: every stage, in this order (images in the background)
#
#   system-deps docker images venv lint sanity unit integration molecule
#
# Every stage runs even when an earlier one failed, unless a stage it needs failed (then it is
# reported as skipped, which also counts as a failure). At the end: one line per stage with its
# result and seconds, and the exit status is non-zero when any stage did not pass.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SCRIPTS="$DS01_ROOT/scripts"
ALL_STAGES=(system-deps docker images venv lint sanity unit integration molecule)
declare -A RESULT=() SECONDS_TAKEN=()

# needs STAGE: the stages whose failure makes STAGE pointless.
needs() {
  case "$1" in
    images) echo docker ;;
    lint | sanity | unit) echo venv ;;
    integration | molecule) echo "venv docker images" ;;
    *) echo "" ;;
  esac
}

# command STAGE: what a stage runs.
stage_command() {
  case "$1" in
    system-deps) echo "$SCRIPTS/system-deps.sh" ;;
    docker) echo "$SCRIPTS/docker.sh" ;;
    images) echo "$SCRIPTS/images.sh" ;;
    venv) echo "$SCRIPTS/venv.sh" ;;
    lint) echo "$SCRIPTS/lint.sh" ;;
    sanity) echo "$SCRIPTS/sanity.sh" ;;
    unit) echo "$SCRIPTS/pytest.sh unit" ;;
    integration) echo "$SCRIPTS/pytest.sh integration" ;;
    molecule) echo "$SCRIPTS/molecule.sh" ;;
    *) return 1 ;;
  esac
}

run_stage() {
  local stage="$1" dep start rc=0 cmd
  for dep in $(needs "$stage"); do
    if [ -n "${RESULT[$dep]:-}" ] && [ "${RESULT[$dep]}" != passed ]; then
      log "$stage: skipped, because $dep did not pass"
      RESULT[$stage]="skipped ($dep did not pass)"
      SECONDS_TAKEN[$stage]=0
      return 0
    fi
  done
  cmd="$(stage_command "$stage")"
  printf '\n'
  log "stage $stage: $cmd"
  start="$(now_s)"
  # shellcheck disable=SC2086  # cmd is "script [argument]", split on purpose
  $cmd || rc=$?
  SECONDS_TAKEN[$stage]=$(($(now_s) - start))
  if [ "$rc" -eq 0 ]; then
    RESULT[$stage]=passed
  else
    RESULT[$stage]="FAILED (exit $rc)"
  fi
  log "stage $stage: ${RESULT[$stage]} in ${SECONDS_TAKEN[$stage]} s"
}

summary() {
  local stage total=0 failed=0
  printf '\n==> timing summary\n'
  printf '    %-12s %6s  %s\n' stage seconds result
  for stage in "$@"; do
    printf '    %-12s %6s  %s\n' "$stage" "${SECONDS_TAKEN[$stage]}" "${RESULT[$stage]}"
    total=$((total + ${SECONDS_TAKEN[$stage]}))
    [ "${RESULT[$stage]}" = passed ] || failed=$((failed + 1))
  done
  printf '    %-12s %6s\n' total "$total"
  if [ "$failed" -gt 0 ]; then
    printf '==> make test: %d of %d stages did not pass\n' "$failed" "$#"
    return 1
  fi
  printf '==> make test: all %d stages passed\n' "$#"
}

# The images stage runs in the background, beside venv, lint, sanity and unit (none of them needs an image; on a
# fresh machine debootstrap spends minutes waiting on the archive and dpkg). Its output goes to a log that is printed
# when it is joined: before the first stage that needs it, or at the end.
BG_STAGE="" BG_PID="" BG_LOG="" BG_START=0

start_background() {
  local stage="$1" dep cmd rc
  for dep in $(needs "$stage"); do
    if [ -n "${RESULT[$dep]:-}" ] && [ "${RESULT[$dep]}" != passed ]; then
      run_stage "$stage" # reported as skipped, as in the foreground
      return 0
    fi
  done
  BG_LOG="$DS01_CACHE/logs/stage-$stage.log"
  mkdir -p "$(dirname "$BG_LOG")"
  printf '\n'
  log "stage $stage: $(stage_command "$stage") (in the background; output: $BG_LOG)"
  BG_START="$(now_s)"
  BG_STAGE="$stage"
  cmd="$(stage_command "$stage")"
  rm -f "$BG_LOG.end"
  {
    rc=0
    $cmd >"$BG_LOG" 2>&1 </dev/null || rc=$?
    now_s >"$BG_LOG.end"
    exit "$rc"
  } &
  BG_PID=$!
}

join_background() {
  local rc=0
  [ -n "$BG_PID" ] || return 0
  wait "$BG_PID" || rc=$?
  SECONDS_TAKEN[$BG_STAGE]=$(($(cat "$BG_LOG.end" 2>/dev/null || now_s) - BG_START))
  printf '\n'
  log "stage $BG_STAGE (background), its output:"
  cat "$BG_LOG"
  if [ "$rc" -eq 0 ]; then
    RESULT[$BG_STAGE]=passed
  else
    RESULT[$BG_STAGE]="FAILED (exit $rc)"
  fi
  log "stage $BG_STAGE: ${RESULT[$BG_STAGE]} in ${SECONDS_TAKEN[$BG_STAGE]} s (in the background)"
  BG_PID=""
}

main() {
  local stages=("$@") stage start rc=0
  [ "${#stages[@]}" -gt 0 ] || stages=("${ALL_STAGES[@]}")
  for stage in "${stages[@]}"; do
    stage_command "$stage" >/dev/null || die "unknown stage '$stage' (stages: ${ALL_STAGES[*]})"
  done
  cd "$DS01_ROOT"
  log "make test: ${stages[*]} (CI=${CI:-false}, $(nproc) cores)"
  start="$(now_s)"
  for stage in "${stages[@]}"; do
    if [ "$stage" = images ] && [ "$stage" != "${stages[-1]}" ]; then
      start_background "$stage"
      continue
    fi
    if [ -n "$BG_PID" ] && [[ " $(needs "$stage") " == *" $BG_STAGE "* ]]; then
      join_background
    fi
    run_stage "$stage"
  done
  join_background
  summary "${stages[@]}" || rc=$?
  printf '    %-12s %6s  (the stages took this long from first to last; images ran beside the others)\n' wall \
    "$(($(now_s) - start))"
  return "$rc"
}

main "$@"
