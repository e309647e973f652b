"""``python -m ds01``: the same as the ``ds01`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
