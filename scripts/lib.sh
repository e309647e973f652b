# shellcheck shell=bash
# Shared helpers for the scripts behind the Makefile. Source it; it does nothing by itself.
#
#   # shellcheck source=scripts/lib.sh
#   . "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
#
# Everything a script needs to know about the checkout lives here: where the repo is, where
# the virtual environment and caches go, how to reach Docker.

# Repository root (= collection root): the parent of scripts/.
DS01_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DS01_VENV="${DS01_VENV:-$DS01_ROOT/.venv}"
DS01_CACHE="${DS01_CACHE:-$DS01_ROOT/.cache}"
DS01_COLLECTIONS="$DS01_ROOT/.collections"
export DS01_ROOT DS01_VENV DS01_CACHE DS01_COLLECTIONS

# The images the tests and molecule use (tests/conftest.py names the same ones).
DS01_IMAGE_SYSTEMD="${DS01_IMAGE_SYSTEMD:-local/debian-systemd:bookworm}"
DS01_IMAGE_EMPTY="${DS01_IMAGE_EMPTY:-local/empty:latest}"
DS01_IMAGE_MIN="${DS01_IMAGE_MIN:-local/debian-min:bookworm}"
DS01_IMAGE_SLURM="${DS01_IMAGE_SLURM:-local/debian-slurm:bookworm}"

log() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

# Seconds since the epoch, for "took N s" lines.
now_s() { date +%s; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "$1 needs root (run as root, or with sudo)"
}

# Put the venv first on PATH and point Ansible at the checkout's collection tree
# (.collections/ansible_collections/ds01/infra -> repo root).
use_venv() {
  [ -x "$DS01_VENV/bin/python" ] || die "no virtual environment at $DS01_VENV: run 'make venv' first"
  export VIRTUAL_ENV="$DS01_VENV"
  export PATH="$DS01_VENV/bin:$PATH"
  export ANSIBLE_COLLECTIONS_PATH="$DS01_COLLECTIONS"
  export PYTHONDONTWRITEBYTECODE=1
}

# A docker client that can talk to the running engine. /usr/local/bin/docker may be a newer
# client than Debian's dockerd 20.10; it normally negotiates the API version down, but when it
# does not, fall back to Debian's own client, then to pinning DOCKER_API_VERSION.
DOCKER_BIN=""
pick_docker_client() {
  local candidate
  [ -n "$DOCKER_BIN" ] && return 0
  for candidate in "$(command -v docker 2>/dev/null || true)" /usr/bin/docker; do
    if [ -z "$candidate" ] || [ ! -x "$candidate" ]; then continue; fi
    if "$candidate" version >/dev/null 2>&1; then
      DOCKER_BIN="$candidate"
      return 0
    fi
  done
  candidate="$(command -v docker 2>/dev/null || echo /usr/bin/docker)"
  if [ -x "$candidate" ] && DOCKER_API_VERSION=1.41 "$candidate" version >/dev/null 2>&1; then
    warn "$candidate could not negotiate the API version; using DOCKER_API_VERSION=1.41"
    export DOCKER_API_VERSION=1.41
    DOCKER_BIN="$candidate"
    return 0
  fi
  return 1
}

# docker, through the client pick_docker_client chose.
dk() {
  pick_docker_client || die "no docker client can reach the engine: run 'make docker' first"
  "$DOCKER_BIN" "$@"
}

image_exists() {
  dk image inspect "$1" >/dev/null 2>&1
}

# Every file of the checkout that git would ship: tracked plus untracked-but-not-ignored,
# minus tracked files deleted from the work tree. NUL-separated.
checkout_files() {
  local f
  git -C "$DS01_ROOT" ls-files -z -co --exclude-standard "$@" | while IFS= read -r -d '' f; do
    [ -e "$DS01_ROOT/$f" ] || [ -L "$DS01_ROOT/$f" ] || continue
    printf '%s\0' "$f"
  done
}
