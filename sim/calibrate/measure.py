"""Measure the calibration guest against the plain process: first touch and steady-state cost.

Why: comparing the kernel with memsim needs to know what the guest itself costs on this
machine: a first touch (an EPT violation or, under shadow paging, a shadow page fault, plus the
host's anonymous fault) and a resident access (native in user mode, but TLB misses walk the
guest's tables and the host's). First touches are timed as one chunk touching every data page
once in order; steady-state accesses as the chunks of a stream that follow a writing pass over
its pages (per-chunk guest times leave that pass out, and each chunk costs one exit).

Run: ``python -m sim.calibrate.measure [--mem-mib 256] [--accesses 4000000]`` (prints markdown).
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

from sim.calibrate import streams, vmm
from sim.calibrate.streams import StreamSpec
from sim.guest.workloads import ScanConfig, UniformConfig, ZipfConfig


def _first_touch(
    pages: int, write: bool, mem_mib: int, plain: bool, populate: bool = False
) -> float:
    """ns per page of one pass touching ``pages`` fresh pages in order (one chunk)."""
    chunk = [(np.arange(pages, dtype=np.int64), np.full(pages, write))]
    r = vmm.run(
        chunk, mem_mib=mem_mib, plain=plain, chunk=pages, chunk_times=True, populate=populate
    )
    return r.chunk_ns[0] / pages


def _steady(spec: StreamSpec, mem_mib: int, plain: bool) -> tuple[float, int, float]:
    """(ns per access, exits, ns per access waiting for the stream) of ``spec`` over pages
    first written by a separate pass.

    The writing pass (its own chunks) makes every page private and resident: reads of a page
    never written map the shared zero page, which would make them all hit one frame.
    """
    chunk = vmm.DEFAULT_CHUNK
    prefault = [
        (np.arange(lo, min(lo + chunk, spec.pages), dtype=np.int64), None)
        for lo in range(0, spec.pages, chunk)
    ]
    pre = [(g, np.ones(g.size, dtype=np.bool_)) for g, _ in prefault]
    r = vmm.run(
        itertools.chain(pre, streams.chunks(spec)),
        mem_mib=mem_mib,
        plain=plain,
        chunk=chunk,
        chunk_times=True,
    )
    n = r.accesses
    return sum(r.chunk_ns[len(pre) :]) / spec.accesses, r.exits, r.feed_ns / n


def main(argv: list[str] | None = None) -> int:
    """Print a markdown table of first-touch and steady-state costs, guest vs plain."""
    ap = argparse.ArgumentParser(prog="python -m sim.calibrate.measure", description=__doc__)
    ap.add_argument("--mem-mib", type=int, default=256)
    ap.add_argument("--accesses", type=int, default=4_000_000, help="steady-state accesses")
    args = ap.parse_args(argv)
    mem = args.mem_mib
    full = streams.data_pages(mem)
    print("| first touch of a fresh page | mode | ns/page |")
    print("|---|---|---:|")
    try:
        for write in (False, True):
            for plain in (False, True):
                ns = _first_touch(full, write, mem, plain)
                what = "write (allocate + zero)" if write else "read (zero page)"
                print(f"| {what} | {'plain' if plain else 'kvm'} | {ns:,.0f} |")
            ns = _first_touch(full, write, mem, plain=False, populate=True)
            what = "write" if write else "read"
            print(
                f"| {what}, page already resident in the host (KVM fault only) | kvm | {ns:,.0f} |"
            )
        print()
        print("| steady state, resident pages | mode | ns/access | M accesses/s | exits |")
        print("|---|---|---:|---:|---:|")
        feeds: list[float] = []
        for name, pages, wl, wr in [
            ("uniform, 64 pages (TLB hits)", 64, UniformConfig(), 0.0),
            ("uniform, 16 MiB", 4096, UniformConfig(), 0.0),
            (f"uniform, {full >> 8} MiB", full, UniformConfig(), 0.0),
            (f"uniform, {full >> 8} MiB, 30% writes", full, UniformConfig(), 0.3),
            (f"zipf 0.99, {full >> 8} MiB", full, ZipfConfig(), 0.0),
            (f"scan, {full >> 8} MiB", full, ScanConfig(), 0.0),
        ]:
            spec = StreamSpec(workload=wl, accesses=args.accesses, pages=pages, write_ratio=wr)
            for plain in (False, True):
                ns, exits, feed = _steady(spec, mem, plain)
                feeds.append(feed)
                mode = "plain" if plain else "kvm"
                print(f"| {name} | {mode} | {ns:.1f} | {1e3 / ns:.0f} | {exits} |")
        print(
            f"\nstream generation and pipe, which the VMM waits on between chunks: "
            f"{min(feeds):.1f}..{max(feeds):.1f} ns per access"
        )
        n = 20_000
        one = [(np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.bool_))]
        r = vmm.run(one, mem_mib=mem, chunk=1)
        print()
        print(
            f"guest report round trip (one MMIO exit per 1-access chunk): "
            f"{r.loop_ns / n:,.0f} ns in KVM_RUN, {r.wall_ns / n:,.0f} ns wall per exit"
        )
    except vmm.CalibrateError as exc:
        print(f"memsim calibrate: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
