#!/usr/bin/env bash
# Build .venv with the pinned tools, install the ds01 core editable, and link the collection.
#
#   scripts/venv.sh
#
# - python3 -m venv .venv; pip install -r requirements-dev.txt; pip install -e . --no-deps
#   (so .venv/bin/ds01 runs the checkout's plugins/module_utils/ds01).
# - .collections/ansible_collections/ds01/infra -> ../../.. (the repo root), so that
#   ANSIBLE_COLLECTIONS_PATH=.collections (and pytest's pythonpath) find ds01.infra.
# The pip steps are skipped while requirements-dev.txt and pyproject.toml are unchanged since
# the last successful install (stamp: .venv/.ds01-requirements.sha256).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

STAMP="$DS01_VENV/.ds01-requirements.sha256"
PYTHON="${PYTHON:-python3}"

requirements_digest() {
  (cd "$DS01_ROOT" && sha256sum requirements-dev.txt pyproject.toml)
}

create_venv() {
  if [ ! -x "$DS01_VENV/bin/python" ]; then
    info "creating $DS01_VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$DS01_VENV" || die "python3 -m venv failed (is python3-venv installed? 'make system-deps')"
  fi
}

install_requirements() {
  local pip=("$DS01_VENV/bin/python" -m pip --disable-pip-version-check)
  info "pip install -r requirements-dev.txt"
  "${pip[@]}" install -q -r "$DS01_ROOT/requirements-dev.txt" </dev/null
  info "pip install -e . --no-deps"
  "${pip[@]}" install -q --no-deps -e "$DS01_ROOT" </dev/null
}

link_collection() {
  local link="$DS01_COLLECTIONS/ansible_collections/ds01/infra"
  mkdir -p "$(dirname "$link")"
  if [ "$(readlink "$link" 2>/dev/null || true)" != "../../.." ]; then
    rm -rf "$link"
    ln -s ../../.. "$link"
  fi
  [ -f "$link/galaxy.yml" ] || die "$link does not lead to the collection root"
  info "collection: $link -> $(readlink "$link")"
}

main() {
  local start digest
  start="$(now_s)"
  log "venv: $DS01_VENV"
  create_venv
  digest="$(requirements_digest)"
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$digest" ] && [ -x "$DS01_VENV/bin/ds01" ]; then
    info "requirements unchanged since the last install, skipping pip"
  else
    rm -f "$STAMP"
    install_requirements
    printf '%s\n' "$digest" >"$STAMP"
    info "installed in $(($(now_s) - start)) s"
  fi
  link_collection
  [ -x "$DS01_VENV/bin/ds01" ] || die "$DS01_VENV/bin/ds01 missing after install"
  local version
  version="$("$DS01_VENV/bin/ansible-playbook" --version)"
  info "${version%%$'\n'*}"
}

main "$@"
