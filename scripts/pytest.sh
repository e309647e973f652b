#!/usr/bin/env bash
# Run one pytest suite of the checkout.
#
#   scripts/pytest.sh unit|integration [extra pytest arguments]
#
# tests/unit: pure logic and modules through the AnsibleModule harness.
# tests/integration: a real Docker engine and real tools (needs 'make docker images').
# "No tests collected" (pytest exit 5) is a failure: an empty suite proves nothing.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

main() {
  local suite="${1:-}" start rc=0 log summary
  case "$suite" in
    unit | integration) shift ;;
    *) die "usage: $0 unit|integration [pytest arguments]" ;;
  esac
  use_venv
  cd "$DS01_ROOT"
  [ -d "tests/$suite" ] || die "tests/$suite does not exist"
  log "$suite: pytest tests/$suite"
  start="$(now_s)"
  log="$DS01_CACHE/logs/pytest-$suite.log"
  mkdir -p "$(dirname "$log")"
  local workers=()
  # The unit suite is pure and runs on every core (pytest-xdist); the integration suite shares one Docker engine,
  # Unix users and sockets between its tests, so it runs one test at a time.
  [ "$suite" = unit ] && workers=(-n "$(nproc)")
  DS01_FORBID_SKIPS=1 python -m pytest -p no:cacheprovider "${workers[@]}" "tests/$suite" "$@" </dev/null 2>&1 |
    tee "$log" || rc="${PIPESTATUS[0]}"
  summary="$(grep -E '^=+ .* in [0-9.]+s( \([0-9:]+\))? =+$' "$log" | tail -n 1 || true)"
  info "$suite summary: ${summary:-<no summary line>} ($(($(now_s) - start)) s)"
  case "$rc" in
    0) ;;
    5) die "$suite: pytest collected no tests (exit 5): an empty suite is a failure" ;;
    *) die "$suite: pytest failed (exit $rc)" ;;
  esac
}

main "$@"
