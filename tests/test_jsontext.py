"""Deep JSON is refused before the parser recurses (engine/jsontext.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import jsontext
from engine.jsontext import MAX_DEPTH, NestedTooDeeply, nesting_depth

TEXT = st.text(alphabet=st.sampled_from('ab"\\[]{}\u00e9\u2200\n'), max_size=8)
ENCODINGS = st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None, database=None)
@given(VALUES, st.booleans(), ENCODINGS)
def test_the_depth_is_the_values_nesting_brackets_in_strings_aside(
    value: Any, ascii: bool, encoding: str
):
    text = json.dumps(value, ensure_ascii=ascii)
    # Bytes are read as json.loads reads them: in UTF-16 "\u2200" is the
    # bytes 22 00 or 00 22, a quote if the bytes were taken for UTF-8.
    data = text.encode(encoding)
    assert nesting_depth(text) == _depth(value) == nesting_depth(data)
    assert jsontext.loads(text) == value == jsontext.loads(data)


def test_deep_text_is_refused_without_recursing():
    hidden = '["\u2200",' + "[" * 5000 + '"x"' + "]" * 5000 + "]"
    for deep in ("[" * 100_000, b"{\"a\":" * 50_000, "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
                 hidden.encode("utf-16-le"), hidden.encode("utf-32-be"),
                 # An unclosed string of escaped quotes (once a quadratic scan).
                 b"[" * (MAX_DEPTH + 1) + b'"' + b'\\"' * 200_000):
        with pytest.raises(NestedTooDeeply):
            jsontext.loads(deep)
    # Escapes: a quote after an odd run of backslashes is text, after an even run it closes.
    assert nesting_depth(r'["\\", [[1]]]') == 3
    assert nesting_depth(r'["\\\"[[", [1]]') == 2
    at_limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert nesting_depth(at_limit) == MAX_DEPTH
    assert jsontext.loads(at_limit) is not None
    # Many brackets side by side are not deep.
    assert jsontext.loads(json.dumps([[i] for i in range(1000)]))[999] == [999]


def test_what_json_loads_takes_loads_takes():
    assert jsontext.loads(bytearray(b'{"a": [1]}')) == {"a": [1]} == jsontext.loads(b'{"a": [1]}')
    with pytest.raises(TypeError):
        jsontext.loads(None)  # type: ignore[arg-type]


def test_malformed_text_gets_a_depth_and_the_parser_judges_it():
    for text in ('{"a": "unterminated [[[', "]]]]", "", "\"\\", '{"a":\xff}'):
        assert nesting_depth(text) >= 0
        with pytest.raises(ValueError):
            jsontext.loads(text)
