#!/usr/bin/env bash
# Deploy ds01 into a sandbox root on this machine and show what a user would see.
#
#   scripts/demo.sh
#
# ansible-playbook -i inventory/demo playbooks/site.yml with DEMO_ROOT exported (default
# .demo/root); nothing outside DEMO_ROOT is written. Then the ds01 CLI against the rendered
# config: `config show` for two users (DEMO_USERS, default "alice dave") and `gpu status`, then the
# Slurm files ds01_slurm rendered for the same GPUs (its QOS plan is printed by the playbook).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

DEMO_ROOT="${DEMO_ROOT:-$DS01_ROOT/.demo/root}"
DEMO_USERS="${DEMO_USERS:-alice dave}"

# show COMMAND...: print the command line, then run it.
show() {
  printf '\n$ %s\n' "$*"
  "$@"
}

main() {
  local config user ds01="$DS01_VENV/bin/ds01" missing=()
  use_venv
  cd "$DS01_ROOT"
  [ -d inventory/demo ] || missing+=(inventory/demo)
  [ -f playbooks/site.yml ] || missing+=(playbooks/site.yml)
  [ "${#missing[@]}" -eq 0 ] || die "the demo needs ${missing[*]}, which this checkout does not have yet"
  [ -x "$ds01" ] || die "$ds01 missing: run 'make venv' first"
  # The runtime venv on the target is installed from wheels (the molecule host has no network).
  if ! compgen -G "$DS01_ROOT/.cache/wheels/*.whl" >/dev/null; then
    info "filling .cache/wheels with the runtime pins (scripts/wheelhouse.sh)"
    "$DS01_ROOT/scripts/wheelhouse.sh" "$DS01_ROOT/.cache/wheels"
  fi
  export DEMO_ROOT
  mkdir -p "$DEMO_ROOT"
  log "demo: ansible-playbook -i inventory/demo playbooks/site.yml (DEMO_ROOT=$DEMO_ROOT)"
  ansible-playbook -i inventory/demo playbooks/site.yml </dev/null
  config="$DEMO_ROOT/etc/ds01/resource-limits.yaml"
  [ -f "$config" ] || die "the playbook ran but $config does not exist"
  log "demo: what the ds01 CLI says"
  for user in $DEMO_USERS; do
    show "$ds01" --config "$config" config show "$user"
  done
  show "$ds01" --config "$config" gpu status
  # ds01_slurm (when the inventory enables it): Slurm's configuration for the same GPUs and limits.
  if [ -f "$DEMO_ROOT/etc/slurm/gres.conf" ]; then
    log "demo: Slurm's configuration from the same facts and limits (roles/ds01_slurm)"
    for file in gres.conf slurm.conf cgroup.conf; do
      show cat "$DEMO_ROOT/etc/slurm/$file"
    done
  fi
}

main "$@"
