#!/usr/bin/env bash
# Install the Dev Containers CLI (@devcontainers/cli from npm) the devcontainer test runs, once.
#
#   scripts/devcontainer-cli.sh        print the path of the `devcontainer` program (installing it if missing)
#
# Kept under .cache/devcontainers-cli/<version> (world-readable: the test runs it as ordinary users).
# Needs node and npm (Debian's nodejs and npm packages). DS01_DEVCONTAINER_CLI_VERSION overrides the pin.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

VERSION="${DS01_DEVCONTAINER_CLI_VERSION:-0.80.0}"

main() {
  local prefix="$DS01_CACHE/devcontainers-cli/$VERSION" program
  program="$prefix/node_modules/.bin/devcontainer"
  if [ ! -x "$program" ]; then
    command -v npm >/dev/null || die "npm not found: install Debian's nodejs and npm packages (make system-deps)"
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "@devcontainers/cli@$VERSION" >&2 ||
      die "npm install @devcontainers/cli@$VERSION failed (is the npm registry reachable?)"
    chmod -R a+rX "$DS01_CACHE/devcontainers-cli"
  fi
  [ -x "$program" ] || die "npm installed @devcontainers/cli@$VERSION but $program is missing"
  printf '%s\n' "$program"
}

main "$@"
