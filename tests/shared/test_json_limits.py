"""JSON nesting depth: on parsed documents and on raw bytes, agreeing with each other."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import InvalidCallback
from shared.json_limits import check_depth, check_nesting, document_depth, max_nesting

KIB = 1024


def reference_depth(document: object) -> int:
    """The obvious recursive definition, trusted for the small documents hypothesis builds."""
    if isinstance(document, dict):
        return 1 + max((reference_depth(v) for v in document.values()), default=0)
    if isinstance(document, list):
        return 1 + max((reference_depth(v) for v in document), default=0)
    return 0


# Strings are drawn from brackets, quotes and backslashes too, so the raw scan must skip them.
tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\ab:,\n\u00e9\u2028'), max_size=12)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
scalars = st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | tricky_text
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=40,
)


@given(documents)
def test_document_depth_equals_the_actual_depth(document: object) -> None:
    assert document_depth(document) == reference_depth(document)


@given(st.lists(st.sampled_from(["list", "dict"]), max_size=300), documents)
def test_deep_chains_of_lists_and_objects_are_measured_exactly(shape: list[str], leaf: object) -> None:
    # Given a chain `shape` deep around a random document
    document = leaf
    for kind in shape:
        document = [1, document] if kind == "list" else {"k": document, "x": "]}"}
    depth = len(shape) + reference_depth(leaf)
    assert document_depth(document) == depth
    assert max_nesting(orjson.dumps(document)) == depth


@given(documents)
def test_the_raw_scan_equals_the_actual_depth(document: object) -> None:
    raw = orjson.dumps(document)
    assert max_nesting(raw) == reference_depth(document)
    assert max_nesting(raw.decode()) == reference_depth(document)


@given(documents, st.integers(min_value=0, max_value=8))
def test_both_checks_refuse_exactly_what_is_deeper_than_the_limit(document: object, limit: int) -> None:
    too_deep = reference_depth(document) > limit
    checks: list[Callable[[], None]] = [
        lambda: check_depth(document, limit),
        lambda: check_nesting(orjson.dumps(document), limit),
    ]
    for check in checks:
        if too_deep:
            with pytest.raises(InvalidCallback, match=f"^JSON nested deeper than {limit} levels$"):
                check()
        else:
            check()


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"0", 0),
        (b'"[[{{"', 0),
        (b"[]", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'["\\"[", [[]]]', 3),  # an escaped quote does not end the string
        (b'["\\\\", [[]]]', 3),  # an escaped backslash does
        (b"[[[", 3),  # unbalanced: counted, parsing refuses it anyway
        (b'"unterminated [[[', 0),
        (b'"ends in a backslash\\', 0),
        (b"", 0),
    ],
)
def test_max_nesting_on_chosen_inputs(raw: bytes, depth: int) -> None:
    assert max_nesting(raw) == depth


def test_the_depth_refusal_is_a_400() -> None:
    with pytest.raises(InvalidCallback) as caught:
        check_depth([[[[]]]], 3)
    assert caught.value.status == 400
    assert caught.value.reason == "JSON nested deeper than 3 levels"


def test_a_document_far_deeper_than_the_recursion_limit_is_walked() -> None:
    # Given a document built in Python, deeper than any recursive walk could go
    document: list[object] = []
    for _ in range(100_000):
        document = [document]
    assert document_depth(document) == 100_001
    with pytest.raises(InvalidCallback):
        check_depth(document, 32)


def test_tuples_count_as_containers() -> None:
    assert document_depth(({"a": (1, [2])},)) == 4


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"[" * (256 * KIB), 256 * KIB),
        (b'"' + b'\\"' * (128 * KIB - 1), 0),  # unterminated: one string running to the end
        (b'"' * (256 * KIB), 0),  # 128 Ki empty strings
        (b'["\\' * (80 * KIB), 40 * KIB),  # every other "[" is inside a string
    ],
)
def test_a_hostile_256_kib_body_gets_its_exact_depth_without_counting_brackets_in_strings(
    raw: bytes, depth: int
) -> None:
    # Bodies that make a backtracking scan quadratic. How fast they go is not asserted (nothing in
    # the scan can be counted instead of timed); that they are measured to the end, exactly, is.
    assert max_nesting(raw) == depth


def test_a_hostile_body_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidCallback, match="deeper than 32 levels"):
        check_nesting(b"[" * (200 * KIB), 32)
