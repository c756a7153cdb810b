"""Time as mjhook writes it: Unix seconds in, ISO 8601 UTC out."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(timestamp: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds, e.g. ``2026-11-25T13:29:01.123Z``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_seconds(value: str) -> float | None:
    """Unix seconds of an ISO 8601 time such as :func:`utc_iso` writes (``Z`` or an offset), or
    None when ``value`` is none (a manifest written by hand or another program)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


#: The largest integer every JSON reader takes exactly (a double's 53 bits; JavaScript's
#: Number.MAX_SAFE_INTEGER); orjson writes none past 64 bits.
MAX_JSON_INTEGER = 2**53 - 1


def record_millis(value: str | None) -> int | None:
    """A task record's time in Unix ms, or None when it holds none this version can read (written
    by hand, another program or version; a number past :data:`MAX_JSON_INTEGER`): one such
    record must not fail a whole list."""
    try:
        millis = int(value) if value is not None else None
    except ValueError:
        return None
    return millis if millis is not None and abs(millis) <= MAX_JSON_INTEGER else None
