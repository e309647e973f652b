#!/usr/bin/env bash
# Run the molecule scenarios that exist (molecule/<scenario>/molecule.yml) against the local
# Docker engine and images.
#
#   scripts/molecule.sh [scenario ...]     default: every scenario, "default" first
#
# Scenarios: default (ds01 on a systemd host), slurm (ds01_slurm with a real slurmctld, slurmd and
# slurmdbd, and the gateway in front of the host's own dockerd; image local/debian-slurm:bookworm).
#
# Needs 'make docker images venv'. Molecule keeps its ephemeral state under ~/.cache/molecule.
# Runs through this script are serialised by a lock: platform (container) names are fixed, so two
# concurrent runs of one scenario on one engine would trample each other.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

LOCK=/run/lock/ds01-molecule.lock

scenarios() {
  local dir name
  [ -f "$DS01_ROOT/molecule/default/molecule.yml" ] && echo default
  for dir in "$DS01_ROOT"/molecule/*/; do
    name="$(basename "$dir")"
    [ "$name" != default ] && [ -f "$dir/molecule.yml" ] && echo "$name"
  done
  return 0
}

main() {
  local list=() scenario start failed=()
  use_venv
  cd "$DS01_ROOT"
  if [ "$#" -gt 0 ]; then list=("$@"); else mapfile -t list < <(scenarios); fi
  log "molecule: ${list[*]:-no scenarios}"
  if [ "${#list[@]}" -eq 0 ]; then
    info "no molecule/*/molecule.yml yet: nothing to run"
    return 0
  fi
  # The runtime venv on the target is installed from wheels (the molecule host has no network).
  if ! compgen -G "$DS01_ROOT/.cache/wheels/*.whl" >/dev/null; then
    info "filling .cache/wheels with the runtime pins (scripts/wheelhouse.sh)"
    "$DS01_ROOT/scripts/wheelhouse.sh" "$DS01_ROOT/.cache/wheels"
  fi
  pick_docker_client || die "the Docker engine does not answer: run 'make docker' first"
  # molecule/default mounts the engine's socket and a docker CLI into its systemd host.
  export DS01_MOLECULE_DOCKER_CLI="${DS01_MOLECULE_DOCKER_CLI:-$(readlink -f "$DOCKER_BIN")}"
  export DS01_MOLECULE_DOCKER_SOCKET="${DS01_MOLECULE_DOCKER_SOCKET:-/var/run/docker.sock}"
  image_exists "$DS01_IMAGE_SYSTEMD" || die "$DS01_IMAGE_SYSTEMD missing: run 'make images' first"
  # molecule/slurm runs Slurm, slurmdbd, munge and MariaDB from an image that already has them.
  if [[ " ${list[*]} " == *" slurm "* ]]; then
    image_exists "$DS01_IMAGE_SLURM" || die "$DS01_IMAGE_SLURM missing: run 'make images' first"
  fi
  # One molecule run at a time on this engine: scenarios name their containers (platform names).
  mkdir -p "$(dirname "$LOCK")"
  exec 9>"$LOCK"
  if ! flock -n 9; then
    info "another 'make molecule' holds $LOCK; waiting for it"
    flock 9
  fi
  export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}" PY_COLORS="${PY_COLORS:-0}"
  for scenario in "${list[@]}"; do
    [ -f "molecule/$scenario/molecule.yml" ] || die "molecule/$scenario/molecule.yml not found"
    start="$(now_s)"
    log "molecule: test -s $scenario"
    if molecule test -s "$scenario" </dev/null; then
      info "$scenario: passed in $(($(now_s) - start)) s"
    else
      info "$scenario: FAILED after $(($(now_s) - start)) s"
      failed+=("$scenario")
    fi
  done
  [ "${#failed[@]}" -eq 0 ] || die "molecule scenarios failed: ${failed[*]}"
}

main "$@"
