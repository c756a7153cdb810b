"""How deeply JSON may nest: checked on a parsed document, or on raw text before parsing.

Depth counts containers: a scalar is 0 deep, ``[]`` and ``{}`` are 1, ``{"a": [1]}`` is 2. Both
ways agree on it for valid JSON.

Which to use: parse with orjson, then :func:`check_depth`. orjson refuses more than 1024
levels by itself (a 256 KiB ``[[[[...`` fails in 0.02 ms, having built at most 1024 empty
lists), and on a realistic 256 KiB callback parse plus walk take ~0.15 ms, where the raw
pre-scan :func:`max_nesting` takes ~2 ms (it must find every string first). Worst cases are
alike: ~15 ms for 64K tiny containers (walk) or 128K empty strings (pre-scan).
:func:`max_nesting` is for text that is not about to be parsed by orjson."""

from __future__ import annotations

import re
import sys
from itertools import accumulate

from shared.errors import InvalidCallback

#: Deepest nesting a callback body or its ``promptJson`` needs: a callback itself is 3 deep.
DEFAULT_MAX_JSON_DEPTH = 32

#: A JSON string, matched in one pass: possessive, so a hostile body cannot make it backtrack,
#: and an unterminated string runs to the end instead of being retried from each later quote.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
#: Bytes that are no bracket, deleted before bracket depth is summed.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: What nests in parsed JSON (tuples too, for documents built in Python).
_CONTAINERS = (dict, list, tuple)
#: Depth change per byte value: +1 for an opening bracket, -1 for a closing one.
_DELTA = [1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256)]


def max_nesting(raw: bytes | str) -> int:
    """The deepest bracket nesting of ``raw`` outside JSON strings, without parsing it.

    Exact for valid JSON; for anything else a number that parsing will not get past anyway.
    Runs in C-level passes (a regex removes strings, then brackets are summed), so a hostile
    256 KiB of ``[[[[`` costs milliseconds and builds nothing."""
    data = raw.encode() if isinstance(raw, str) else raw
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DELTA.__getitem__, brackets)), default=0)


def check_nesting(raw: bytes | str, max_depth: int) -> None:
    """Raise :class:`InvalidCallback` (400) when ``raw`` nests deeper than ``max_depth``
    (:func:`max_nesting`); for the ingress, before the body is parsed."""
    depth = max_nesting(raw)
    if depth > max_depth:
        raise _too_deep(max_depth)


def document_depth(document: object) -> int:
    """How deeply ``document`` (parsed JSON: dicts, lists, scalars) nests; without recursion."""
    return _depth_up_to(document, sys.maxsize)


def check_depth(document: object, max_depth: int) -> None:
    """Raise :class:`InvalidCallback` (400) when the parsed ``document`` nests deeper than
    ``max_depth``. Stops walking at the first level too deep."""
    if _depth_up_to(document, max_depth) > max_depth:
        raise _too_deep(max_depth)


def _depth_up_to(document: object, limit: int) -> int:
    """The depth of ``document``, or ``limit + 1`` as soon as it is known to exceed ``limit``.

    Walks one level at a time (breadth first), holding only the containers of the current
    level: a comprehension per level is several times faster than a stack of nodes."""
    level = [document] if isinstance(document, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return limit + 1
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, _CONTAINERS)
        ]
    return depth


def _too_deep(max_depth: int) -> InvalidCallback:
    return InvalidCallback(f"JSON nested deeper than {max_depth} levels")
