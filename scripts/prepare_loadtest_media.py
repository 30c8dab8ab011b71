"""Build the load test's pre-encoded media cache (once; skipped when up to date).

    .venv/bin/python scripts/prepare_loadtest_media.py [--out artifacts/loadtest-media]

WebM files of real speech (Opus) and real photos (VP8, 640x480, 10 fps) that
`python -m loadtest` candidates send without encoding anything; see
`loadtest/prepare.py` for what is built and why.
"""

from __future__ import annotations

import sys

from loadtest.prepare import main

if __name__ == "__main__":
    sys.exit(main())
