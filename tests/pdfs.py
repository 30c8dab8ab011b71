"""Real PDFs written byte by byte: a small one with a text layer, and hostile ones."""

from __future__ import annotations

import zlib


def pdf_with_content(content: bytes, *, compress: bool = False) -> bytes:
    """A one-page PDF (Helvetica as /F1) whose page content stream is `content`."""
    stream_dict = b"/Length %d" % len(zlib.compress(content) if compress else content)
    data = zlib.compress(content) if compress else content
    if compress:
        stream_dict += b" /Filter /FlateDecode"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< " + stream_dict + b" >>\nstream\n" + data + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def text_pdf(text: str) -> bytes:
    """A small real resume: one line of `text` (ASCII) on one page."""
    return pdf_with_content(b"BT /F1 18 Tf 72 720 Td (%s) Tj ET" % text.encode("ascii"))


def slow_pdf(operators: int = 3_000_000) -> bytes:
    """A few hundred KB that pypdf spends a long time on: one page of
    `operators` text-showing operators, compressed (the whole file stays far
    under the 5 MB upload limit)."""
    content = b"BT /F1 12 Tf 72 720 Td " + b"(a) Tj " * operators + b"ET"
    return pdf_with_content(content, compress=True)
