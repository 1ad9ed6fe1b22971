"""Host event counters, named as ``/proc/vmstat`` and KVM's stats name them.

Counters are plain integers keyed by :class:`VmStat`; they only ever increase. The summary and
the timeline read them; nothing in the model decides on them (the kernel's ``prepare_scan_control``
reads ``workingset_activate``, which the two-list policy keeps itself).
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum


class VmStat(StrEnum):
    """Counter names (``/proc/vmstat`` where one exists)."""

    PGSCAN_KSWAPD = "pgscan_kswapd"
    PGSCAN_DIRECT = "pgscan_direct"
    PGSTEAL_KSWAPD = "pgsteal_kswapd"
    PGSTEAL_DIRECT = "pgsteal_direct"
    PGREFILL = "pgrefill"
    PGACTIVATE = "pgactivate"
    PGDEACTIVATE = "pgdeactivate"
    PSWPIN = "pswpin"
    PSWPOUT = "pswpout"
    PGMAJFAULT = "pgmajfault"
    PGFAULT = "pgfault"
    ALLOCSTALL = "allocstall_normal"
    PAGEOUTRUN = "pageoutrun"
    KSWAPD_WAKEUPS = "kswapd_wakeups"
    KSWAPD_FAILURES = "kswapd_failures"
    WORKINGSET_REFAULT = "workingset_refault_anon"
    WORKINGSET_ACTIVATE = "workingset_activate_anon"
    WORKINGSET_RESTORE = "workingset_restore_anon"
    SWAP_FULL = "swap_full"  # folios that could not get a swap slot (add_to_swap failed)
    OOM_KILL = "oom_kill"
    RMAP_WALKED = "rmap_walked"
    SPTES_WALKED = "kvm_sptes_walked"
    NOTIFIER_CALLS = "notifier_calls"
    TLB_FLUSHES = "remote_tlb_flush"
    RECLAIM_THROTTLE = "reclaim_throttle"


def new_vmstat() -> Counter[str]:
    """A zeroed counter set with every known name present (so summaries list them all)."""
    c: Counter[str] = Counter()
    for name in VmStat:
        c[name.value] = 0
    return c
