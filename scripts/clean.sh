#!/usr/bin/env bash
# Remove what the Makefile generated in the checkout.
#
#   scripts/clean.sh          .collections, .demo, tests/output, .cache (except the image rootfs
#                             and the wheelhouse), caches and build leftovers
#   scripts/clean.sh --all    also .venv, all of .cache, ds01.egg-info and the local/* images
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

main() {
  local all=0 image
  case "${1:-}" in
    --all) all=1 ;;
    "") ;;
    *) die "usage: $0 [--all]" ;;
  esac
  cd "$DS01_ROOT"
  log "clean"
  rm -rf .collections .demo tests/output build dist .pytest_cache .ruff_cache
  find . -path ./.venv -prune -o -path ./.git -prune -o -type d -name __pycache__ -exec rm -rf {} +
  if [ "$all" -eq 1 ]; then
    rm -rf .venv .cache ds01.egg-info
    if pick_docker_client; then
      for image in "$DS01_IMAGE_MIN" "$DS01_IMAGE_EMPTY" "$DS01_IMAGE_SYSTEMD"; do
        if dk image rm "$image" >/dev/null 2>&1; then info "removed image $image"; fi
      done
    fi
  elif [ -d .cache ]; then
    find .cache -mindepth 1 -maxdepth 1 ! -name images ! -name wheels -exec rm -rf {} +
  fi
}

main "$@"
