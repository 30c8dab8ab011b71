"""Resume PDF text extraction on PDFs built here: real text, none, encrypted, garbage."""

from __future__ import annotations

import io
import logging

import pytest
from pypdf import PdfWriter

from adapters.resume import extract_resume_text, normalise_whitespace, truncate_at_word

RESUME_LINES = [
    "Jane   Doe",
    "Senior Backend Engineer",
    "Built a real-time media pipeline in Python serving 10,000 sessions.",
]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def text_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF: one Helvetica text line per entry, one page per list.

    Written by hand (pypdf cannot lay out text) with a correct xref table,
    so a strict reader accepts it too.
    """
    n = len(pages)
    page_ids = [4 + 2 * i for i in range(n)]
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % p for p in page_ids)
        + b"] /Count %d >>" % n,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for page_id, lines in zip(page_ids, pages, strict=True):
        content = b"BT /F1 12 Tf 14 TL 72 720 Td " + b" ".join(
            b"(%s) Tj T*" % _escape(line).encode("latin-1") for line in lines
        ) + b" ET"
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (page_id + 1)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    return _assemble(objects)


def _assemble(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref,
    )
    return bytes(out)


def blank_pdf(pages: int = 1) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def encrypted(pdf: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=io.BytesIO(pdf))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_extracts_text_of_every_page() -> None:
    pdf = text_pdf([RESUME_LINES, ["Education", "BSc Computer Science (2015)"]])
    assert extract_resume_text(pdf) == (
        "Jane Doe\n"
        "Senior Backend Engineer\n"
        "Built a real-time media pipeline in Python serving 10,000 sessions.\n"
        "Education\n"
        "BSc Computer Science (2015)"
    )


def test_truncates_at_a_word_boundary() -> None:
    pdf = text_pdf([RESUME_LINES])
    full = extract_resume_text(pdf)
    for limit in range(1, len(full) + 5):
        text = extract_resume_text(pdf, max_chars=limit)
        assert len(text) <= limit
        assert full.startswith(text)
        rest = full[len(text):]
        # Either the whole text, or the cut falls before whitespace...
        # ...unless the very first word is longer than the limit.
        assert rest == "" or rest[0].isspace() or " " not in full[: limit + 1]


def test_truncate_at_word() -> None:
    assert truncate_at_word("alpha beta gamma", 12) == "alpha beta"
    assert truncate_at_word("alpha beta gamma", 10) == "alpha beta"
    assert truncate_at_word("alpha beta gamma", 16) == "alpha beta gamma"
    assert truncate_at_word("alpha\nbeta gamma", 8) == "alpha"
    assert truncate_at_word("supercalifragilistic", 5) == "super"


def test_normalise_whitespace() -> None:
    messy = "  Jane\t\u00a0Doe  \n\n\n  Engineer\x00 at  \ufb01rm \r\n"
    assert normalise_whitespace(messy) == "Jane Doe\nEngineer at firm"


def test_pdf_without_text_layer_gives_empty_text(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="adapters.resume"):
        assert extract_resume_text(blank_pdf(pages=2)) == ""
    assert "no text layer" in caplog.text


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a pdf at all",
        b"%PDF-1.4\n" + bytes(range(256)) * 20,
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n",  # truncated
    ],
    ids=["empty", "text", "garbage-after-header", "truncated"],
)
def test_garbage_gives_empty_text(data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="adapters.resume"):
        assert extract_resume_text(data) == ""
    assert "adapters.resume" in {record.name for record in caplog.records}


def test_truncated_real_pdf_never_raises() -> None:
    pdf = text_pdf([RESUME_LINES])
    for end in range(0, len(pdf), 7):
        assert isinstance(extract_resume_text(pdf[:end]), str)


def test_password_protected_pdf_gives_empty_text(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="adapters.resume"):
        assert extract_resume_text(encrypted(text_pdf([RESUME_LINES]), "secret")) == ""
    assert "password" in caplog.text


def test_pdf_encrypted_without_user_password_is_read() -> None:
    # Common for exported resumes: "no copying" permissions, empty open password.
    text = extract_resume_text(encrypted(text_pdf([RESUME_LINES]), ""))
    assert text.startswith("Jane Doe\nSenior Backend Engineer")


def test_rejects_a_nonsense_limit() -> None:
    with pytest.raises(ValueError):
        extract_resume_text(text_pdf([RESUME_LINES]), max_chars=0)
