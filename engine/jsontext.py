"""JSON text from peers, parsed only when it is shallow enough.

`json.loads` recurses once per level of nesting, so 16 KB of ``[`` reaches
Python's recursion limit. Every caller then has to catch `RecursionError`
(the interview evaluation did not: a deeply nested reply from the model
crashed it), and whatever runs at that depth runs with no stack to spare.
So the nesting is measured first, without recursion, and deep text is refused
before the parser sees it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

__all__ = ["MAX_DEPTH", "NestedTooDeeply", "loads", "nesting_depth"]

# Nothing this server reads nests more than a few levels.
MAX_DEPTH = 64

# A JSON string, escapes and all: brackets inside strings do not nest.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class NestedTooDeeply(ValueError):
    """JSON text nested deeper than allowed."""


def nesting_depth(text: str | bytes) -> int:
    """How deep the brackets of JSON ``text`` nest (strings left out).

    Malformed text gets a number too (an unterminated string's brackets
    count), never an exception: the parser judges the rest.
    """
    steps = _OPEN[np.frombuffer(_STRING.sub(b"", _bytes(text)), np.uint8)]
    if steps.size == 0:
        return 0
    return max(0, int(np.cumsum(steps, dtype=np.int64).max()))


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads`, or `NestedTooDeeply` past ``max_depth`` levels."""
    data = _bytes(text)
    # Text with fewer brackets than the limit cannot nest past it.
    if data.count(b"[") + data.count(b"{") > max_depth and nesting_depth(data) > max_depth:
        raise NestedTooDeeply(f"nested deeper than {max_depth} levels")
    return json.loads(text)


def _bytes(text: str | bytes) -> bytes:
    return text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
