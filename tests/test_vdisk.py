"""The guest's virtual disk through the host page cache (``vms[].guest.disk_cache``,
sim/guest/vdisk.py): QEMU's image opened with cache=writeback or writethrough, worked by hand
on one guest with an idle host."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.engine import build_world
from sim.errors import ConfigError
from sim.guest.kernel import DISK_CACHE_HITS
from sim.host.memory import PG_DIRTY, PG_RESIDENT, PG_SWAP
from tests.test_guest import _raw

PAGE_KIB = 4
SWAPPED = list(range(8))  # the guest pages swapped out


def _world(mode: str, **vm: Any) -> Any:
    """A guest of 8 MiB RAM with a 16 MiB swap area on a roomy host, not started: the tests
    drive its faults and reclaim themselves."""
    raw = _raw(32, 8, 12, disk_cache=mode, swap={"size_mib": 16, "latency_cv": 0.0})
    raw["reclaim"] = {"policy": "two_list"}
    raw["vms"][0].update(vm)
    return build_world(parse_scenario(raw), None)


def _drive(w: Any, gen: Any) -> Any:
    """Run one process to its end (with whatever it starts); returns its value."""
    p = w.env.process(gen)
    w.env.run(until=p)
    return p.value


def _swap_out(w: Any, pids: list[int]) -> None:
    """Fault ``pids`` in (first touch), then reclaim the guest directly until each is only in
    its swap, letting the writes end between passes."""
    g = w.vms[0].guest
    for p in pids:
        _drive(w, g.fault.handle_mm_fault(p, True))
    for _ in range(50):
        if (g.mem.flags[pids] == PG_SWAP).all():
            w.check()
            return
        _drive(w, g.direct.try_to_free_pages(g.kswapd))
        w.env.run(until=w.env.now + 1_000_000)
    raise AssertionError("the guest did not swap its pages out")


def _read_ns(g: Any) -> int:
    return round(g.swap.cfg.read_latency_us * 1000)


def _host(w: Any, *keys: str) -> dict[str, int]:
    return {k: int(w.vmstat[k]) for k in keys}


def test_a_swap_out_then_in_is_served_by_the_host_page_cache_with_no_device_io() -> None:
    w = _world("writeback")
    g = w.vms[0].guest
    _swap_out(w, SWAPPED)
    assert g.vmstat["pswpout"] == 8
    img = g.image
    hp = img.base + g.swap.page_slot[SWAPPED]  # the image's pages: at the slots
    assert (w.mem.flags[hp] & (PG_RESIDENT | PG_DIRTY) == PG_RESIDENT | PG_DIRTY).all()
    assert w.mem.nr_resident[1] == 8  # host memory holds the copy, in the image's owner
    assert _host(w, "nr_dirtied", "nr_written", "pgpgin", "pgpgout") == {
        "nr_dirtied": 8,
        "nr_written": 0,
        "pgpgin": 0,
        "pgpgout": 0,
    }
    assert g.swap.busy_ns == 0  # written back later: the device has done nothing yet
    assert _drive(w, g.fault.handle_mm_fault(3, False)) == "major"
    assert g.vmstat["pswpin"] == 1
    assert g.stats[DISK_CACHE_HITS] == 1
    assert g.swap.busy_ns == 0
    assert w.vmstat["pgpgin"] == 0
    w.check()


def test_without_the_host_page_cache_the_same_swap_in_reads_the_device() -> None:
    w = _world("none")
    g = w.vms[0].guest
    _swap_out(w, SWAPPED)
    written = g.swap.busy_ns
    assert written > 0  # eight writes on the device
    _drive(w, g.fault.handle_mm_fault(3, False))
    assert g.vmstat["pswpin"] == 1
    assert g.swap.busy_ns - written == _read_ns(g)  # one read at read_latency_us, cv 0
    assert len(w.mem.nr_resident) == 1  # no host page cache at all
    assert DISK_CACHE_HITS not in g.stats


def test_the_flusher_writes_the_dirty_image_and_reclaim_drops_it_then_a_read_misses() -> None:
    w = _world("writeback")
    g = w.vms[0].guest
    _swap_out(w, SWAPPED)
    img = g.image
    w.env.process(img.flusher())
    w.env.run(until=w.env.now + 40_000_000_000)  # past dirty_expire and a writeback period
    assert _host(w, "nr_written", "pgpgout") == {"nr_written": 8, "pgpgout": 8 * PAGE_KIB}
    assert g.swap.busy_ns == 8 * 30_000  # written to the image's device: the virtual disk
    hp = int(img.base + g.swap.page_slot[5])
    assert w.mem.flags[hp] & (PG_RESIDENT | PG_DIRTY) == PG_RESIDENT  # clean, still cached
    w.check()
    for _ in range(20):  # host direct reclaim until it has dropped that clean image page
        if not w.mem.flags[hp] & PG_RESIDENT:
            break
        _drive(w, w.alloc.direct.try_to_free_pages(w.kswapd))
    assert not w.mem.flags[hp] & PG_RESIDENT
    assert w.vmstat["pgsteal_file"] > 0
    w.check()
    busy = g.swap.busy_ns
    _drive(w, g.fault.handle_mm_fault(5, False))
    assert g.stats[DISK_CACHE_HITS] == 0  # a miss
    assert g.swap.busy_ns - busy == _read_ns(g)  # read from the device
    assert _host(w, "pgpgin", "workingset_refault_file") == {
        "pgpgin": PAGE_KIB,
        "workingset_refault_file": 1,  # its shadow was recent
    }
    assert w.mem.flags[hp] & PG_RESIDENT  # cached again
    w.check()


def test_writethrough_completes_a_write_once_it_is_on_the_device() -> None:
    w = _world("writethrough")
    g = w.vms[0].guest
    _swap_out(w, SWAPPED)
    hp = g.image.base + g.swap.page_slot[SWAPPED]
    assert _host(w, "nr_dirtied", "nr_written") == {"nr_dirtied": 8, "nr_written": 8}
    assert (w.mem.flags[hp] & (PG_RESIDENT | PG_DIRTY) == PG_RESIDENT).all()  # cached, clean
    _drive(w, g.fault.handle_mm_fault(3, False))
    assert g.stats[DISK_CACHE_HITS] == 1


def test_the_image_is_charged_to_the_vms_memcg() -> None:
    w = _world("writeback", memcg={})
    g = w.vms[0].guest
    _swap_out(w, SWAPPED)
    lim = w.memcg_limits
    image_owner = w.mem.page_owner(g.image.base)
    assert lim.owner_memcg[image_owner] == 0  # the VM's memcg, not the root's
    assert w.memcg.usage(0) == w.mem.nr_resident[0] + 8 + lim.overhead[0]
    w.check()  # memcg charges equal the frames each memcg's pages own


def test_an_image_on_the_host_swap_device_writes_back_through_its_queue() -> None:
    raw = _raw(32, 8, 12, disk_cache="writeback", disk="host_swap")
    raw["reclaim"] = {"policy": "two_list"}
    raw["vms"][0]["guest"]["swap"] = {"size_mib": 16, "latency_cv": 0.0}
    w = build_world(parse_scenario(raw), None)
    g = w.vms[0].guest
    _swap_out(w, SWAPPED)
    w.env.process(g.image.flusher())
    w.env.run(until=w.env.now + 40_000_000_000)
    assert w.vmstat["pswpout"] == 0
    assert w.vmstat["nr_written"] == 8
    assert w.swap.busy_ns == 8 * 30_000  # the host device's one queue did the writes


def test_a_run_with_the_image_cached_keeps_every_invariant_and_reports_it() -> None:
    from tests.conftest import run_checked

    raw = _raw(6, 8, 12, disk_cache="writeback", file_mib=2)
    raw["reclaim"] = {"policy": "two_list"}
    raw["vms"][0]["guest"]["swap"] = {"size_mib": 16, "read_latency_us": 10}
    raw["duration_s"] = 0.2
    w = build_world(parse_scenario(raw), None)
    run_checked(w, every_ns=5_000_000)
    g = w.vms[0].guest
    s = w.summary(0.0)["vms"][0]["guest"]
    assert s["pswpout"] > 0
    assert s[DISK_CACHE_HITS] > 0
    assert w.vmstat["nr_dirtied"] > 0  # the guest's swap-outs dirtied host page cache
    assert "disk_dirty_pause_ns" in s
    assert w.vmstat["pgpgin"] > 0  # the guest's file and swap-ins missing it read the device
    assert g.stats[DISK_CACHE_HITS] == s[DISK_CACHE_HITS]


def test_disk_cache_none_dumps_and_hashes_as_before() -> None:
    plain = parse_scenario(_raw(32, 8, 12))
    none = parse_scenario(_raw(32, 8, 12, disk_cache="none"))
    assert "disk_cache" not in plain.model_dump()["vms"][0]["guest"]
    assert none.config_hash() == plain.config_hash()
    wb = parse_scenario(_raw(32, 8, 12, disk_cache="writeback"))
    assert wb.config_hash() != plain.config_hash()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"reclaim": {"policy": "clock"}}, r"vms\[0\]\.guest\.disk_cache: .*two_list or mglru"),
        ({"vms.0.guest.disk_cache": "unsafe"}, r"disk_cache"),
    ],
)
def test_bad_disk_cache_settings_are_one_line_errors(change: dict[str, Any], match: str) -> None:
    raw = _raw(32, 8, 12, disk_cache="writeback")
    for k, v in change.items():
        if k.startswith("vms."):
            raw["vms"][0]["guest"]["disk_cache"] = v
        else:
            raw[k] = v
    with pytest.raises(ConfigError, match=match) as e:
        parse_scenario(raw)
    assert "\n" not in str(e.value).strip()


def test_the_same_seed_gives_the_same_run_with_the_image_cached() -> None:
    def once() -> Any:
        raw = _raw(6, 8, 12, disk_cache="writeback")
        raw["reclaim"] = {"policy": "two_list"}
        w = build_world(parse_scenario(raw), None)
        w.run()
        return w.summary(0.0)["vms"], {k: int(v) for k, v in w.vmstat.items()}

    assert once() == once()


def test_guest_swap_slots_have_identities_only_with_the_image_cached() -> None:
    assert not _world("none").vms[0].guest.swap.tracks_slots
    g = _world("writeback").vms[0].guest
    assert g.swap.tracks_slots
    assert np.all(g.swap.page_slot == -1)
