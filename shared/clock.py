"""Time as mjhook writes it: Unix seconds in, ISO 8601 UTC out."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(timestamp: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds, e.g. ``2026-11-25T13:29:01.123Z``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
