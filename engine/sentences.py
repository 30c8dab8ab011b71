"""The one sentence splitter: what the interviewer says, cut where speech can pause.

`split_sentences` cuts a whole text; `sentences` regroups streamed text
(an LLM's deltas) with the same rules, yielding each sentence as soon as it
is known to be complete, so speech synthesis can start on the first one
while the model is still writing. The structured interviewer, the LLM
stream and the TTS benchmarks all go through `_cut`.

A sentence ends at whitespace after ".", "?", "!" or "…" (maybe followed
by closing quotes or brackets), at a line break, and always at a blank
line. It does not end after an abbreviation ("Mr.", "e.g.", "No. 5"), an
initial ("J. Smith"), a list number opening it ("1. First"), or before a
lower-case word after a "." or a line break ("Wait... what?", a wrapped
line). Decimals never split: there is no whitespace after their dot.
Whether a sentence ended is decided once the next non-blank character is
known, so streamed text splits exactly as the whole text would. A sentence
longer than `max_chars` is cut after commas, semicolons or colons, and at
spaces as a last resort. Whitespace inside a sentence becomes one space.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator

from engine.aio import aclose_quietly

__all__ = ["MAX_SENTENCE_CHARS", "sentences", "split_sentences"]

MAX_SENTENCE_CHARS = 200

# Terminal punctuation with any closing quotes or brackets, or nothing,
# then the whitespace after it; only a mark or a line break is a candidate.
_GAP = re.compile(r"(?P<mark>[.!?\u2026]+[\"'\u201d\u2019)\]]*)?(?P<space>\s+)")
# Words that end in "." without ending the sentence (compared lower-case,
# without the final dot). Words that end a sentence as often as not
# ("etc.", "Inc.") stay out; "no" counts only before a number ("No. 5").
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "approx", "cf",
    "dept", "fig", "eg", "ie",
})
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]")  # e.g, i.e, u.s, a.m
_OPENERS = "\"'\u201c\u2018(["
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Cut the whole of `text` into sentences to speak one by one."""
    done, rest = _cut(text, final=True, max_chars=max_chars)
    return done + _finish(rest, max_chars)


async def sentences(
    deltas: AsyncIterator[str], max_chars: int = MAX_SENTENCE_CHARS
) -> AsyncGenerator[str, None]:
    """Regroup streamed text into sentences, each yielded as soon as it is complete.

    Whatever is left when `deltas` ends is yielded as the last sentence. If
    `deltas` raises, sentences already complete are yielded, the unfinished
    one is dropped and the error propagates. Closing this generator early
    closes `deltas`.
    """
    buffer = ""
    try:
        async for delta in deltas:
            buffer += delta
            done, buffer = _cut(buffer, final=False, max_chars=max_chars)
            for sentence in done:
                yield sentence
    except Exception:
        for sentence in _cut(buffer, final=True, max_chars=max_chars)[0]:
            yield sentence
        raise
    finally:
        await aclose_quietly(deltas)
    for sentence in _finish(buffer, max_chars):
        yield sentence


def _cut(text: str, *, final: bool, max_chars: int) -> tuple[list[str], str]:
    """The sentences known to be complete in `text`, and the text after them.

    With `final` false, a boundary with nothing but whitespace after it is
    left undecided (it stays in the returned rest): the next character may
    be lower-case, or a number after "No.".
    """
    done: list[str] = []
    start = 0
    for gap in _GAP.finditer(text):
        mark, space = gap.group("mark") or "", gap.group("space")
        if not mark and "\n" not in space:
            continue
        following = text[gap.end() : gap.end() + 1]
        if not following and not final:
            break
        if _ends_sentence(text[start : gap.start()], mark, space, following):
            done += _finish(text[start : gap.start() + len(mark)], max_chars)
            start = gap.end()
    return done, text[start:]


def _ends_sentence(before: str, mark: str, space: str, following: str) -> bool:
    """Whether the gap after `before` + `mark`, then `following`, ends a sentence."""
    if space.count("\n") >= 2:
        return True  # a blank line ends a paragraph
    if mark[:1] in ("?", "!", "\u2026"):
        return True
    if following.islower():
        return False  # "Wait... what", or a line wrapped mid-sentence
    if not mark:
        return True  # a line break
    words = before.split()
    if not words:
        return True
    word = words[-1].lstrip(_OPENERS)
    lowered = word.lower()
    if lowered in _ABBREVIATIONS or _DOTTED.fullmatch(lowered):
        return False
    if lowered == "no" and following.isdigit():
        return False  # "No. 5"
    if len(word) == 1 and word.isupper():
        return False  # an initial: "J. Smith"
    return not (word.isdigit() and len(words) == 1)  # a list item: "1. First"


def _finish(sentence: str, max_chars: int) -> list[str]:
    """One sentence with its whitespace flattened, cut if it is too long."""
    flat = " ".join(sentence.split())
    return _split_long(flat, max_chars) if flat else []


def _split_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    current = ""
    for clause in _CLAUSE_END.split(sentence):
        if current and len(current) + 1 + len(clause) > max_chars:
            pieces.append(current)
            current = clause
        else:
            current = f"{current} {clause}" if current else clause
    pieces.append(current)
    return [part for piece in pieces for part in _split_at_spaces(piece, max_chars)]


def _split_at_spaces(text: str, max_chars: int) -> list[str]:
    pieces: list[str] = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars  # one enormous word: cut it anyway
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces
