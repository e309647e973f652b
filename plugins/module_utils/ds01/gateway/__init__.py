"""Docker API gateway (see gateway/server.py)."""

from __future__ import annotations
