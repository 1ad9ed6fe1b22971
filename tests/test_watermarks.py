"""Watermarks are derived the way __setup_per_zone_wmarks derives them (docs/MODEL.md section 2)."""

from __future__ import annotations

import pytest

from sim.host.memory import calculate_min_free_kbytes, setup_per_zone_wmarks


def test_8gib_zone_matches_model_example() -> None:
    """docs/MODEL.md: one 8 GiB zone -> min 2896, gap 2097, low 4993, high 7090 pages."""
    wm = setup_per_zone_wmarks(8 << 18)
    assert (wm.min, wm.low, wm.high) == (2896, 4993, 7090)
    assert wm.min_free_kbytes == 11585


@pytest.mark.parametrize(
    ("pages", "expected"),
    [(64, 128), (1 << 10, 256), (1 << 18, 4096), (256 << 18, 65536), (1 << 40, 262144)],
)
def test_min_free_kbytes_is_clamped_int_sqrt(pages: int, expected: int) -> None:
    assert calculate_min_free_kbytes(pages) == expected


def test_small_zone_gap_is_quarter_of_min() -> None:
    """When managed * wsf / 10000 is below min / 4, the gap is min / 4."""
    wm = setup_per_zone_wmarks(4096, min_free_kbytes=1024)
    assert wm.min == 256
    assert wm.low - wm.min == wm.high - wm.low == 64


def test_watermark_scale_factor_widens_the_gaps() -> None:
    base = setup_per_zone_wmarks(1 << 20)
    wide = setup_per_zone_wmarks(1 << 20, watermark_scale_factor=100)
    assert wide.min == base.min
    assert wide.low - wide.min == (1 << 20) * 100 // 10000
    assert wide.high - wide.low == wide.low - wide.min
