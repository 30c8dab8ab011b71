"""Plain text of a candidate's resume PDF (pypdf), for the interviewer's prompt.

`extract_resume_text` never raises for bad content: an upload is whatever
the candidate had, and a resume the interviewer cannot read is a reason to
ask about it, not to fail the session. Blocking and CPU-bound: run it in an
executor.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata

from pypdf import PasswordType, PdfReader

__all__ = ["extract_resume_text", "normalise_whitespace", "truncate_at_word"]

logger = logging.getLogger(__name__)

# A resume is a page or three; a huge PDF is not worth the CPU beyond this.
_MAX_PAGES = 30
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")


def extract_resume_text(pdf: bytes, max_chars: int = 8000) -> str:
    """Text of every page of `pdf`, whitespace normalised, at most `max_chars` long.

    Lines are kept (one "\\n" between them, no blank lines, single spaces
    inside), and the text is cut at a word boundary. Returns "" for bytes
    that are not a readable PDF, a PDF encrypted with a user password, or
    a PDF without a text layer (a scan); the reason is logged.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    reader = _open(pdf)
    if reader is None:
        return ""
    text = "\n".join(_page_texts(reader, max_chars))
    if not text:
        logger.info("resume PDF has no text layer (%d pages)", len(reader.pages))
    return truncate_at_word(text, max_chars)


def _open(pdf: bytes) -> PdfReader | None:
    """A reader ready to extract from, or None (logged) if there is none."""
    # pypdf raises far more than PdfError on hostile or truncated files
    # (KeyError, ValueError, RecursionError...): none may escape.
    try:
        reader = PdfReader(io.BytesIO(pdf))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            logger.warning("resume PDF is password-protected; ignoring its text")
            return None
        pages = len(reader.pages)  # a broken page tree fails here, not later
    except Exception as exc:  # noqa: BLE001
        logger.warning("resume is not a readable PDF (%d bytes): %r", len(pdf), exc)
        return None
    if pages == 0:
        logger.warning("resume PDF has no pages")
        return None
    return reader


def _page_texts(reader: PdfReader, max_chars: int) -> list[str]:
    """Normalised text per page, stopping once `max_chars` are collected."""
    texts: list[str] = []
    collected = 0
    for number, page in enumerate(reader.pages):
        if number == _MAX_PAGES or collected > max_chars:
            break
        try:
            text = normalise_whitespace(page.extract_text())
        except Exception as exc:  # noqa: BLE001 - see _open
            logger.warning("could not extract text of resume page %d: %r", number + 1, exc)
            continue
        if text:
            texts.append(text)
            collected += len(text) + 1
    return texts


def normalise_whitespace(text: str) -> str:
    """NFKC text with single spaces in lines and no blank or padded lines."""
    text = _CONTROL.sub(" ", unicodedata.normalize("NFKC", text))
    lines = (_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def truncate_at_word(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` without splitting a word (unless one fills it)."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]  # one more: a space right after the limit is a boundary
    cut = max(head.rfind(" "), head.rfind("\n"))
    if cut <= 0:
        return text[:max_chars]
    return text[:cut].rstrip()
