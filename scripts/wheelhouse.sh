#!/usr/bin/env bash
# Fill a wheelhouse with the ds01 runtime dependencies for an offline host.
#
#   scripts/wheelhouse.sh [DEST] [PYTHON_VERSION]
#
# DEST defaults to .cache/wheels, PYTHON_VERSION to 3.11 (Debian bookworm, the molecule host).
# The pins are the runtime block of requirements-dev.txt; the script refuses to run when the
# ds01_common role's pins (ds01_common_venv_packages) disagree with them, so a host never gets
# other versions than the ones the tests ran with. The ds01_common role copies DEST to the host
# and installs with `pip install --no-index --find-links` (set ds01_common_wheelhouse: DEST).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$here/.cache/wheels}"
pyver="${2:-${DS01_HOST_PYTHON:-3.11}}"
pip="${PIP:-$here/.venv/bin/pip}"
[ -x "$pip" ] || pip="python3 -m pip"

pins=()
while IFS= read -r line; do
  pins+=("$line")
done < <(grep -E '^(docker|nvidia-ml-py|PyYAML|prometheus-client)==' "$here/requirements-dev.txt")
if [ "${#pins[@]}" -ne 4 ]; then
  echo "wheelhouse: expected 4 runtime pins in requirements-dev.txt, found ${#pins[@]}" >&2
  exit 2
fi

role_pins="$(sed -n '/^ds01_common_venv_packages:/,/^[^ ]/p' "$here/roles/ds01_common/defaults/main.yml" \
  | sed -n 's/^ *- *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' | sort)"
req_pins="$(printf '%s\n' "${pins[@]}" | sort)"
if [ "$role_pins" != "$req_pins" ]; then
  echo "wheelhouse: roles/ds01_common/defaults/main.yml ds01_common_venv_packages differs from requirements-dev.txt:" >&2
  diff <(echo "$req_pins") <(echo "$role_pins") >&2 || true
  exit 2
fi

abi="cp${pyver/./}"
mkdir -p "$dest"
# Binary wheels only, for the host's interpreter (not the controller's): any manylinux x86_64
# wheel that a glibc >= 2.17 host can load, plus pure-Python wheels.
$pip download --quiet --disable-pip-version-check -d "$dest" \
  --only-binary=:all: --implementation cp --python-version "$pyver" --abi "$abi" --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any "${pins[@]}"
echo "wheelhouse: $(find "$dest" -name '*.whl' | wc -l) wheels in $dest for Python $pyver"
