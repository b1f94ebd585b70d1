"""What a test needs from outside its Python packages (Debian's Chromium, the pinned FID Inception weights).

Missing, the test is skipped on a developer's machine; under CI (``$CI`` set, as .ci/run sets it), where `make test`
installs both, it fails instead: a broken install must not pass as a row of skips.
"""

from __future__ import annotations

import os

import pytest


def require(available: bool, what: str) -> None:
    """Skip the calling test (or fixture) when ``what`` is not ``available``; under CI, fail it."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"missing: {what} ($CI is set, and `make test` installs it)", pytrace=False)
    pytest.skip(f"missing: {what}")
