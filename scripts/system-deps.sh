#!/usr/bin/env bash
# Install the Debian packages the tests need, only those that are missing.
#
#   scripts/system-deps.sh
#
# docker.io + iptables: a real Docker engine (started by scripts/docker.sh);
# debootstrap: the locally built base images (scripts/images.sh); sudo, udev, logrotate, dash,
# systemd, prometheus (promtool), docker-compose: tools the roles validate their files with;
# python3-venv: `make venv`; git: the sanity copy and the lint file lists; shellcheck: lint.
# golang-go: the Go encoding/json oracle the gateway's canonical-decoder fuzz test builds.
# man-db + groff-base: the generated ds01 man page is rendered with `man -l` and linted with groff.
# prometheus + prometheus-alertmanager: the monitoring stack test runs a real Prometheus and Alertmanager.
# gcc + libc6-dev: the ds01_gpu_access role compiles the CUDA notice library (and its test a stub libcuda).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

PACKAGES=(
  docker.io iptables debootstrap sudo udev logrotate docker-compose prometheus dash systemd
  python3 python3-venv git make ca-certificates shellcheck golang-go man-db groff-base prometheus-alertmanager
  gcc libc6-dev
)

# Packages dpkg does not report as installed.
missing_packages() {
  local pkg status
  for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    [ "$status" = "installed" ] || printf '%s\n' "$pkg"
  done
}

main() {
  local start missing=()
  start="$(now_s)"
  log "system-deps: ${#PACKAGES[@]} Debian packages"
  mapfile -t missing < <(missing_packages)
  if [ "${#missing[@]}" -eq 0 ]; then
    info "all present, nothing to install"
    return 0
  fi
  need_root "installing ${missing[*]}"
  command -v apt-get >/dev/null || die "apt-get not found: system-deps supports Debian only"
  info "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
  mapfile -t missing < <(missing_packages)
  [ "${#missing[@]}" -eq 0 ] || die "still missing after apt-get install: ${missing[*]}"
  info "installed in $(($(now_s) - start)) s"
}

main "$@"
