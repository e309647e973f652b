"""``python -m ds01``: the same as the ``ds01`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
