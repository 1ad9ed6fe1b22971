"""The anon/file scan balance of classic reclaim: ``get_scan_count``'s arithmetic.

Models
    The decision ``get_scan_count`` makes for one lruvec before it scans, and the reclaim
    costs it weighs, as pure integer functions (the kernel's u64 arithmetic, floor division):

    - which balance applies (``scan_balance``): no swap (or no anon reclaim allowed): file
      only (SCAN_FILE); cgroup reclaim at swappiness 0: file only; priority 0 with a non-zero
      swappiness: every list by its size (SCAN_EQUAL); file "tiny" (``prepare_scan_control``:
      file + free <= the high watermarks, no anon deactivation due, inactive anon left at this
      priority): anon only (SCAN_ANON); cache trim mode (``prepare_scan_control``: inactive
      file left at this priority and no file deactivation due, i.e. the cache is not
      thrashing): file only; otherwise SCAN_FRACT.
    - SCAN_FRACT's fractions (``calculate_pressure_balance``): each type is pressed in inverse
      proportion to its recent reclaim cost, and at least a third of the pressure applies to
      each before swappiness weighs them (swappiness 100: anon and file I/O cost the same)::

          total = anon_cost + file_cost
          anon  = total + anon_cost ;  file = total + file_cost ;  total = anon + file
          ap    = swappiness * (total + 1) // (anon + 1)
          fp    = (200 - swappiness) * (total + 1) // (file + 1)

    - the costs themselves (``lru_note_cost``): each reclaim batch adds ``nr_io *
      SWAP_CLUSTER_MAX + nr_rotated`` to its type's cost, and both costs halve once their sum
      exceeds a quarter of the lruvec's LRU pages (all four lists).

Kernel reference
    mm/vmscan.c: ``get_scan_count``, ``calculate_pressure_balance`` (its SCAN_FRACT part;
    inline in ``get_scan_count`` in older kernels), ``prepare_scan_control`` (``file_is_tiny``,
    ``cache_trim_mode``, ``may_deactivate``); mm/swap.c: ``lru_note_cost``;
    Documentation/admin-guide/sysctl/vm.rst (swappiness 0-200 since 5.8).

Simplifications
    One zone: "the high watermarks" are the one zone's. two_list passes the inactive anon
    left after memory.low/min scaling as ``anon_left`` (the kernel tests the node's). The
    per-list scan target (``lru_size >> priority`` times the type's fraction) is the caller's:
    two_list floors it, as the kernel does for online memcgs (``div64_u64``; it rounds up,
    ``DIV64_U64_ROUND_UP``, only for an offlined memcg's last pages).
"""

from __future__ import annotations

from enum import IntEnum

from sim.host.memory import SWAP_CLUSTER_MAX

MAX_SWAPPINESS = 200


class ScanBalance(IntEnum):
    """``enum scan_balance``: how ``get_scan_count`` spreads a pass over anon and file."""

    SCAN_EQUAL = 0  # scan every list by its size (priority 0)
    SCAN_FRACT = 1  # scan each type by its fraction of the pressure (swappiness and costs)
    SCAN_ANON = 2  # scan anon only (file is tiny)
    SCAN_FILE = 3  # scan file only (no swap, or cache trim mode)


def scan_balance(
    *,
    can_reclaim_anon: bool,
    cgroup_reclaim: bool,
    swappiness: int,
    priority: int,
    file_is_tiny: bool,
    cache_trim_mode: bool,
) -> ScanBalance:
    """``get_scan_count``'s choice of balance, in the kernel's order of tests."""
    if not can_reclaim_anon:
        return ScanBalance.SCAN_FILE
    if cgroup_reclaim and not swappiness:
        return ScanBalance.SCAN_FILE
    if not priority and swappiness:
        return ScanBalance.SCAN_EQUAL
    if file_is_tiny:
        return ScanBalance.SCAN_ANON
    if cache_trim_mode:
        return ScanBalance.SCAN_FILE
    return ScanBalance.SCAN_FRACT


def file_is_tiny(
    *, nr_file: int, nr_free: int, high_wmark: int, may_deactivate_anon: bool, anon_left: bool
) -> bool:
    """``prepare_scan_control``'s ``sc->file_is_tiny`` (global reclaim only): file and free
    pages together at or below the high watermarks, no anon deactivation due, and inactive
    anon left to scan at this priority (``anon >> priority``)."""
    return nr_file + nr_free <= high_wmark and not may_deactivate_anon and anon_left


def cache_trim_mode(*, inactive_file_left: bool, may_deactivate_file: bool) -> bool:
    """``prepare_scan_control``'s ``sc->cache_trim_mode``: inactive file left to scan at this
    priority (``file >> priority``) and the cache not thrashing (no file deactivation due)."""
    return inactive_file_left and not may_deactivate_file


def calculate_pressure_balance(swappiness: int, anon_cost: int, file_cost: int) -> tuple[int, int]:
    """``calculate_pressure_balance``: SCAN_FRACT's (anon, file) fractions; their sum is the
    denominator."""
    total = anon_cost + file_cost
    anon = total + anon_cost
    file = total + file_cost
    total = anon + file
    ap = swappiness * (total + 1) // (anon + 1)
    fp = (MAX_SWAPPINESS - swappiness) * (total + 1) // (file + 1)
    return ap, fp


def lru_note_cost(
    anon_cost: int, file_cost: int, *, file: bool, nr_io: int, nr_rotated: int, lru_pages: int
) -> tuple[int, int]:
    """``lru_note_cost``: add one batch's cost (I/O weighs SWAP_CLUSTER_MAX rotations) to its
    type; halve both once they exceed a quarter of the lruvec's LRU pages. Returns the new
    (anon_cost, file_cost)."""
    cost = nr_io * SWAP_CLUSTER_MAX + nr_rotated
    if file:
        file_cost += cost
    else:
        anon_cost += cost
    if anon_cost + file_cost > lru_pages // 4:
        anon_cost //= 2
        file_cost //= 2
    return anon_cost, file_cost
