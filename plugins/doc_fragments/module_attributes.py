# Copyright: ds01.infra maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attributes block every ds01.infra host module shares (private to this collection's modules)."""


class ModuleDocFragment:
    # A module that differs (details, or no diff support) names only the attribute it changes; its own keys win
    # over these when ansible-doc merges them.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
  platform:
    platforms: posix
"""
