"""Shared fixtures: paths to the read-only real data beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data`, or a skip when this clone has no such folder (real-data tests)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present (real-data test)")
    return SHARED_DATA
