"""Memory traces of real programs: read them into page-number arrays the workloads can replay.

Models
    A recorded sequence of memory accesses, reduced to what the simulator needs: the page each
    access touches and whether it writes, plus optional timestamps and vCPU indices. Four formats:

    - ``lackey``: the output of ``valgrind --tool=lackey --trace-mem=yes PROG``, one access per
      line: ``I  04010e7c,3`` (instruction fetch), `` L 1ffefffc48,8`` (load), `` S ...``
      (store), `` M ...`` (modify: a load and a store to the same bytes, one access that writes).
      Addresses are hex, sizes decimal; valgrind's own ``==PID==`` lines and blank lines are
      skipped. An access that crosses a page boundary touches both pages, in address order.
    - ``csv``: a header and a ``page`` column (page numbers) or an ``addr`` column (decimal or
      ``0x`` hex byte addresses), optional ``t_ns``, ``vcpu`` and ``write`` (true/false/1/0).
    - ``npy``: a 1-D integer array of page numbers (reads only).
    - ``parquet``: the CSV columns, typed.

    Any of them may be gzip'd (recognised by its magic bytes, whatever the name).

Simplifications
    Lackey reports accesses of 1 to 512 bytes (``MAX_DSIZE`` in ``lk_main.c``), so with pages of
    at least 512 bytes an access spans at most two pages; larger sizes are rejected as
    malformed. Instruction fetches are dropped unless asked for: they outnumber data accesses
    about two to one but hit a few hot code pages, so they would swamp the data-access pattern.
    Spacing is lenient (tabs, extra blanks, CRLF line ends); the op letter, hex address and
    decimal size are not.

Bounds
    Trace files are opened as regular files only (a FIFO or device is refused, never waited
    on), and nothing is read without a bound: a lackey line longer than ``MAX_LINE_BYTES`` is
    an error (a file of NULs or binary fails in its first block), an ``.npy`` header's shape is
    checked against the file's size and the memory limit before any data is read (and data is
    read in chunks, so a header that lies about a gzip'd file costs only what is really there),
    and text is loaded only while what it takes stays within the memory limit
    (:mod:`sim.budget`). With ``limit_bytes`` only that many decompressed bytes are read: the
    result is the trace's start (``Trace.complete`` is False), which is what ``validate`` checks.

Invariants
    A returned :class:`Trace` has at least one access (unless it is an incomplete prefix);
    ``pages`` are non-negative; every array has the same length; errors are
    :class:`~sim.errors.TraceError` with one line naming the file and the line (or row) and
    column at fault.

Speed
    Lackey text is parsed in blocks of a few MiB with numpy (newline positions, then each
    line's fields at fixed offsets from its ends, digits through lookup tables); only a block
    holding a line the vectorised parser does not accept in valgrind's exact spelling is
    re-scanned line by line, to parse a lenient spelling or to name the bad line.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from sim import fast
from sim.budget import check_fits, memory_limit
from sim.errors import TraceError, shown_path
from sim.inputs import open_regular

FORMATS = ("lackey", "csv", "npy", "parquet")

LACKEY_EXAMPLE = "expected a valgrind lackey line like ' L 04222cac,8'"
BLOCK_BYTES = 8 << 20  # lackey text parsed per numpy pass
MAX_ACCESS_BYTES = 512  # lackey's MAX_DSIZE; also the smallest page size accepted

_GZIP_MAGIC = b"\x1f\x8b"
CHECK_BYTES = 64 << 20  # decompressed bytes of a trace that `validate` reads
MAX_LINE_BYTES = 4096  # longest lackey line (or CSV header) accepted
READ_CHUNK = 16 << 20
# peak bytes of memory while loading, per byte of what is measured (then renumbered densely)
LACKEY_LOAD_FACTOR = 4  # per byte of parsed (op, address, size) arrays
CSV_LOAD_FACTOR = 32  # per byte of CSV text: pandas holds every cell as a Python string
PARQUET_LOAD_FACTOR = 8  # per byte of the parquet file
NPY_LOAD_BYTES = 48  # per entry beyond its own bytes: int64 pages, write flags, renumbering


@dataclass(frozen=True, slots=True)
class Trace:
    """A trace in memory: one entry per page access, in program order."""

    pages: NDArray[np.int64]
    writes: NDArray[np.bool_]
    t_ns: NDArray[np.int64] | None
    vcpu: NDArray[np.int64] | None
    source: str
    complete: bool = True  # False: only the first ``limit_bytes`` were read

    def __len__(self) -> int:
        return int(self.pages.size)


def detect_format(path: str | Path) -> str:
    """The format a file name implies (a trailing ``.gz`` is ignored); lackey if unknown."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in ((".npy", "npy"), (".parquet", "parquet"), (".csv", "csv")):
        if name.endswith(ext):
            return fmt
    return "lackey"


def read_trace(
    path: str | Path,
    *,
    fmt: str | None = None,
    page_size: int = 4096,
    instructions: bool = False,
    numbers_page_size: int | None = None,
    limit_bytes: int | None = None,
) -> Trace:
    """Read a trace file (gzip'd or not) into page numbers.

    Args:
        path: the file.
        fmt: one of :data:`FORMATS`; ``None`` or ``"auto"`` picks it from the file name.
        page_size: bytes per page, to turn addresses into page numbers (a power of two >= 512).
        instructions: keep lackey's instruction fetches (``I`` lines) as read accesses.
        numbers_page_size: bytes per page of the page numbers a trace gives directly (npy, a
            ``page`` column); None: ``page_size``. When smaller, they are merged into pages of
            ``page_size`` (``page >> log2(page_size / numbers_page_size)``): a trace of 512-byte
            pages drives a guest of 4 KiB pages.
        limit_bytes: read at most this many decompressed bytes and return the accesses they
            hold (``complete`` False if there was more); None: the whole file.
    """
    if page_size < MAX_ACCESS_BYTES or page_size & (page_size - 1):
        raise TraceError(f"{path}: page_size {page_size} must be a power of two >= 512")
    if numbers_page_size is None:
        numbers_page_size = page_size
    if not 0 < numbers_page_size <= page_size or numbers_page_size & (numbers_page_size - 1):
        raise TraceError(
            f"{path}: numbers_page_size {numbers_page_size} must be a power of two "
            f"<= page_size {page_size}"
        )
    if fmt is None or fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise TraceError(f"{path}: unknown trace format {fmt!r}; use one of {', '.join(FORMATS)}")
    shift = page_size.bit_length() - 1
    merge = shift - (numbers_page_size.bit_length() - 1)
    src = shown_path(path)
    try:
        with _open(path, limit_bytes) as f:
            if fmt == "lackey":
                trace = _read_lackey(f, src, shift, instructions)
            elif fmt == "npy":
                trace = _read_npy(f, src, merge)
            elif fmt == "csv":
                trace = _read_csv(f, src, shift, merge)
            else:
                trace = _read_parquet(f, src, shift, merge)
            if f.truncated:
                trace = Trace(trace.pages, trace.writes, trace.t_ns, trace.vcpu, src, False)
    except OSError as exc:
        raise TraceError(f"{src}: cannot read: {exc.strerror or _first_line(exc)}") from None
    except (EOFError, zlib.error) as exc:
        raise TraceError(f"{src}: corrupt gzip data: {_first_line(exc)}") from None
    if len(trace) == 0 and trace.complete:
        raise TraceError(f"{src}: no accesses in the trace")
    return trace


class _Stream:
    """A trace file's decompressed bytes. With ``limit``, reading stops after that many and
    ``truncated`` tells whether the file had more."""

    def __init__(self, raw: IO[bytes], limit: int | None) -> None:
        self.raw = raw
        magic = raw.read(2)
        raw.seek(0)
        self.compressed = magic == _GZIP_MAGIC
        self.file_size = os.fstat(raw.fileno()).st_size
        self.data: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if self.compressed else raw
        self.limit, self.pos, self.truncated = limit, 0, False

    def read(self, n: int = -1) -> bytes:
        if self.limit is not None:
            left = self.limit - self.pos
            if left <= 0:
                return b""
            n = left if n < 0 else min(n, left)
        data = self.data.read(n)
        self.pos += len(data)
        if self.limit is not None and self.pos >= self.limit:
            self.truncated = bool(self.data.read(1))  # is there more than the limit?
        return data

    def read_all(self, factor: int, what: str, src: str) -> bytes:
        """Everything left, refused as soon as holding it would take ``factor`` times its size
        in memory beyond the limit."""
        limit = memory_limit()[0]
        if limit is None:
            return self.read()
        data = self.read(limit // factor + 1)
        check_fits(len(data) * factor, f"{src}: loading this {what} trace", TraceError)
        return data

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.compressed:
            self.data.close()
        self.raw.close()


def _open(path: str | Path, limit: int | None = None) -> _Stream:
    """The file as a binary stream (a regular file only), decompressed if it starts with
    gzip's magic bytes."""
    return _Stream(open_regular(path, TraceError), limit)


# --------------------------------------------------------------------------------------------
# lackey

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DEC = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789"):
    _DEC[_c] = _i
_MAX_HEX = 16  # digits in a 64-bit address
_MAX_DEC = 3  # digits in a size up to 512

_OP_I, _OP_L, _OP_S, _OP_M = (ord(c) for c in "ILSM")
_LINE = re.compile(rb"[ \t]*([ILSM])[ \t]+([0-9A-Fa-f]+),([0-9]+)[ \t\r]*")


class _LongLine(Exception):
    """A line longer than ``MAX_LINE_BYTES``: not lackey text (binary, NULs, one huge line)."""


def _blocks(f: _Stream) -> Iterator[bytes]:
    """Whole lines, a few MiB at a time, each block ending with a newline; a line that is
    still unfinished after ``MAX_LINE_BYTES`` raises :class:`_LongLine` (so reading a file
    without newlines stops at its first block instead of growing one line forever). A last
    line cut off by the read limit is dropped."""
    carry = b""
    while True:
        data = f.read(BLOCK_BYTES)
        if not data:
            break
        data = carry + data
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if len(carry) > MAX_LINE_BYTES:
            raise _LongLine
        if cut:
            yield data[:cut]
    if carry and not f.truncated:
        yield carry + b"\n"


def _read_lackey(f: _Stream, src: str, shift: int, instructions: bool) -> Trace:
    page_size = 1 << shift
    ops: list[NDArray[np.uint8]] = []
    addrs: list[NDArray[np.uint64]] = []
    sizes: list[NDArray[np.int64]] = []
    held = 0  # bytes of parsed arrays kept
    lineno = 0  # lines before the current block
    blocks = _blocks(f)
    while True:
        try:
            block = next(blocks, None)
        except _LongLine:
            raise TraceError(
                f"{src}:{lineno + 1}: line longer than {MAX_LINE_BYTES} bytes (binary data?); "
                f"{LACKEY_EXAMPLE}"
            ) from None
        if block is None:
            break
        parsed = _parse_block_fast(block) if fast.enabled("lackey_numpy_parse") else None
        if parsed is None:
            parsed = _parse_block_slow(block, src, lineno)
        else:
            fast.took("lackey_numpy_parse")
        op, addr, size, nlines = parsed
        if size.size and (size.min() < 1 or size.max() > MAX_ACCESS_BYTES):
            _parse_block_slow(block, src, lineno)  # raises, naming the line
        if not instructions:
            keep = op != _OP_I
            op, addr, size = op[keep], addr[keep], size[keep]
        ops.append(op)
        addrs.append(addr)
        sizes.append(size)
        lineno += nlines
        held += op.nbytes + addr.nbytes + size.nbytes
        check_fits(held * LACKEY_LOAD_FACTOR, f"{src}: loading this trace", TraceError)
    op = np.concatenate(ops) if ops else np.empty(0, np.uint8)
    addr = np.concatenate(addrs) if addrs else np.empty(0, np.uint64)
    size = np.concatenate(sizes) if sizes else np.empty(0, np.int64)
    first = (addr >> np.uint64(shift)).astype(np.int64)
    offset = (addr & np.uint64(page_size - 1)).astype(np.int64)
    cross = offset + size > page_size
    write = (op == _OP_S) | (op == _OP_M)
    if cross.any():
        reps = 1 + cross.astype(np.int64)
        pages = np.repeat(first, reps)
        pages[np.cumsum(reps)[cross] - 1] += 1
        write = np.repeat(write, reps)
    else:
        pages = first
    return Trace(pages, write, None, None, src)


def _parse_block_fast(
    block: bytes,
) -> tuple[NDArray[np.uint8], NDArray[np.uint64], NDArray[np.int64], int] | None:
    """Parse a block of canonical lackey lines with numpy; None if any line is not canonical.

    Canonical: ``I  hex,dec`` or `` X hex,dec`` (X in L/S/M) with 1-16 hex digits and 1-3 size
    digits, ``==...``, or empty. Returns (op byte, address, size, lines in the block).
    """
    buf = np.frombuffer(block + b"\0\0\0\0", dtype=np.uint8)
    ends = np.flatnonzero(buf[: len(block)] == 10)
    n = ends.size
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    c0, c1, c2 = buf[starts], buf[starts + 1], buf[starts + 2]
    data = (c0 == 32) & ((c1 == _OP_L) | (c1 == _OP_S) | (c1 == _OP_M)) & (c2 == 32)
    instr = (c0 == _OP_I) & (c1 == 32) & (c2 == 32)
    rec = data | instr
    if not (rec | (ends == starts) | ((c0 == 61) & (c1 == 61))).all():
        return None
    r = np.flatnonzero(rec)
    end, first = ends[r], starts[r] + 3  # first address digit
    # the comma is 2, 3 or 4 bytes before the newline (1-3 size digits); before the first line
    # these indices wrap into the zero padding, which is no comma
    comma = np.full(r.size, -1, dtype=np.int64)
    for k in (4, 3, 2):
        comma = np.where(buf[end - k] == 44, end - k, comma)
    a_len = comma - first
    if r.size and (a_len.min() < 1 or a_len.max() > _MAX_HEX):
        return None
    size = np.zeros(r.size, dtype=np.int64)
    seen = np.zeros(r.size, dtype=np.uint8)  # OR of every digit value: 255 marks a non-digit
    for k in range(1, _MAX_DEC + 1):
        live = comma + k < end
        d = np.where(live, _DEC[buf[comma + k]], 0)
        seen |= d
        size = np.where(live, size * 10 + d, size)
    addr = np.zeros(r.size, dtype=np.uint64)
    for length in np.unique(a_len).tolist():
        sel = np.flatnonzero(a_len == length)
        pos = first[sel]
        val = np.zeros(sel.size, dtype=np.uint64)
        seen_here = np.zeros(sel.size, dtype=np.uint8)
        for k in range(length):
            d = _HEX[buf[pos + k]]
            seen_here |= d
            val <<= np.uint64(4)
            val |= d
        addr[sel] = val
        seen[sel] |= seen_here
    if r.size and seen.max() > 15:
        return None
    op = np.where(instr[r], np.uint8(_OP_I), c1[r])
    return op, addr, size, n


def _parse_block_slow(
    block: bytes, src: str, lineno: int
) -> tuple[NDArray[np.uint8], NDArray[np.uint64], NDArray[np.int64], int]:
    """Line by line: accept lenient spacing (tabs, CRLF), or raise naming the first bad line."""
    ops: list[int] = []
    addrs: list[int] = []
    sizes: list[int] = []
    lines = block.split(b"\n")[:-1]
    for i, line in enumerate(lines, start=lineno + 1):
        if line.startswith(b"==") or not line.strip():
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise TraceError(f"{src}:{i}: unrecognised line {_show(line)}; {LACKEY_EXAMPLE}")
        op, hexa, dec = m.groups()
        if len(hexa) > _MAX_HEX:
            raise TraceError(
                f"{src}:{i}: address {_show(hexa)} is longer than 64 bits; {LACKEY_EXAMPLE}"
            )
        size = int(dec)
        if not 1 <= size <= MAX_ACCESS_BYTES:
            raise TraceError(
                f"{src}:{i}: access size {size} is outside 1..{MAX_ACCESS_BYTES}; {LACKEY_EXAMPLE}"
            )
        ops.append(op[0])
        addrs.append(int(hexa, 16))
        sizes.append(size)
    return (
        np.array(ops, dtype=np.uint8),
        np.array(addrs, dtype=np.uint64),
        np.array(sizes, dtype=np.int64),
        len(lines),
    )


def _show(text: bytes | str, limit: int = 60) -> str:
    """A value for a one-line message: repr'd (no raw newlines), cut to ``limit`` characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --------------------------------------------------------------------------------------------
# npy


def _read_npy(f: _Stream, src: str, merge: int) -> Trace:
    """An ``.npy`` array, read from its header on: the shape is checked against the file's
    size and the memory limit first, and the data is read in chunks, so a header claiming
    2**40 entries costs nothing."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, SyntaxError, TypeError, KeyError) as exc:
        raise TraceError(f"{src}: not a .npy array: {_first_line(exc)}") from None
    if len(shape) != 1:
        raise TraceError(f"{src}: expected a 1-D array of page numbers, got shape {shape}")
    if dtype.kind not in "iu":
        raise TraceError(f"{src}: expected an integer array of page numbers, got dtype {dtype}")
    count, item = int(shape[0]), dtype.itemsize
    if not f.compressed and count * item > f.file_size - f.pos:
        raise TraceError(
            f"{src}: the header claims {count:,} entries ({count * item:,} bytes) but the file "
            f"holds {max(0, f.file_size - f.pos):,} bytes of data; it is truncated or not a trace"
        )
    check_fits(count * (item + NPY_LOAD_BYTES), f"{src}: loading {count:,} accesses", TraceError)
    chunks: list[bytes] = []
    left = count * item
    while left > 0:
        data = f.read(min(left, READ_CHUNK))
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    if left > 0 and not f.truncated:
        got = (count * item - left) // item
        raise TraceError(
            f"{src}: the header claims {count:,} entries but the data ends after {got:,}; "
            "the file is truncated"
        )
    raw = b"".join(chunks)
    arr = np.frombuffer(raw, dtype=dtype, count=len(raw) // item)
    pages = _numeric(arr, "page number", lambda i: f"{src}: element {i}") >> merge
    return Trace(pages, np.zeros(pages.size, dtype=np.bool_), None, None, src)


# --------------------------------------------------------------------------------------------
# csv and parquet: named columns

Where = Callable[[int], str]  # names row i in a message: "path:line" or "path: row i"

_INT_TEXT = re.compile(r"[0-9]+")
_ADDR_TEXT = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]+")
_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}
_COLUMNS = ("page", "addr", "t_ns", "vcpu", "write")


def _read_csv(f: _Stream, src: str, shift: int, merge: int) -> Trace:
    import pandas as pd

    head = f.read(MAX_LINE_BYTES)
    if len(head) == MAX_LINE_BYTES and b"\n" not in head:
        raise TraceError(
            f"{src}:1: no CSV header line in the first {MAX_LINE_BYTES} bytes (binary data?); "
            "expected a header naming page or addr"
        )
    data = head + f.read_all(CSV_LOAD_FACTOR, "CSV", src)
    if f.truncated:  # a prefix: drop the line the limit cut
        data = data[: data.rfind(b"\n") + 1]
    try:
        df = pd.read_csv(
            io.BytesIO(data),
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError:
        raise TraceError(
            f"{src}: empty file; expected a CSV header with a page or addr column"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TraceError(f"{src}: cannot parse as CSV: {_first_line(exc)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    blank = (df == "").all(axis=1).to_numpy()
    lines = np.flatnonzero(~blank) + 2  # header is line 1; blank lines keep their numbers
    df = df[~blank]
    cols = {c: df[c].to_numpy(dtype=object) for c in _COLUMNS if c in df.columns}
    return _from_columns(cols, src, shift, merge, lambda i: f"{src}:{lines[i]}")


def _read_parquet(f: _Stream, src: str, shift: int, merge: int) -> Trace:
    import pyarrow as pa
    import pyarrow.parquet as pq

    head = f.read(4)
    if head != b"PAR1":
        raise TraceError(f"{src}: not a parquet file (it does not start with PAR1)")
    data = head + f.read_all(PARQUET_LOAD_FACTOR, "parquet", src)
    if f.truncated:  # the footer is at the end: a prefix of a parquet file says nothing more
        return Trace(np.empty(0, np.int64), np.empty(0, np.bool_), None, None, src, False)
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise TraceError(f"{src}: not a parquet file: {_first_line(exc)}") from None
    cols: dict[str, NDArray[Any]] = {}
    for name in _COLUMNS:
        if name not in table.column_names:
            continue
        col = table.column(name)
        if col.null_count:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise TraceError(f"{src}: row {i}: column {name!r}: missing value")
        cols[name] = col.to_numpy(zero_copy_only=False)
    return _from_columns(cols, src, shift, merge, lambda i: f"{src}: row {i}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _from_columns(
    cols: dict[str, NDArray[Any]], src: str, shift: int, merge: int, where: Where
) -> Trace:
    """Validate named columns (text from CSV, typed from parquet) into a :class:`Trace`."""
    if "page" in cols and "addr" in cols:
        raise TraceError(f"{src}: has both a page and an addr column; keep one")
    if "page" in cols:
        pages = _int_column(cols["page"], "page", where) >> merge
    elif "addr" in cols:
        pages = _addr_column(cols["addr"], shift, where)
    else:
        raise TraceError(
            f"{src}: no page or addr column; expected a header naming page (page numbers) or "
            f"addr (byte addresses), and optionally t_ns, vcpu, write"
        )
    writes = (
        _bool_column(cols["write"], where)
        if "write" in cols
        else np.zeros(pages.size, dtype=np.bool_)
    )
    t_ns = _int_column(cols["t_ns"], "t_ns", where) if "t_ns" in cols else None
    vcpu = _int_column(cols["vcpu"], "vcpu", where) if "vcpu" in cols else None
    return Trace(pages, writes, t_ns, vcpu, src)


def _int_column(values: NDArray[Any], name: str, where: Where) -> NDArray[np.int64]:
    """Non-negative integers from a text or numeric column."""
    kind = values.dtype.kind
    if kind in "iu":
        return _numeric(values, f"column {name!r}:", where)
    if kind == "f":
        ok = np.isfinite(values) & (values == np.floor(values))
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise TraceError(f"{where(i)}: column {name!r}: {values[i]} is not an integer")
        return _numeric(values.astype(np.int64), f"column {name!r}:", where)
    if kind != "O":
        raise TraceError(f"{where(0)}: column {name!r}: {values.dtype} values; expected integers")
    out = np.empty(values.size, dtype=np.int64)
    for i, v in enumerate(values):
        text = v.strip() if isinstance(v, str) else str(v)
        if not _INT_TEXT.fullmatch(text):
            what = "is negative" if _is_negative(text) else "is not a non-negative integer"
            raise TraceError(f"{where(i)}: column {name!r}: {_show(text)} {what}")
        k = int(text)
        if k >= 1 << 63:
            raise TraceError(f"{where(i)}: column {name!r}: {text} does not fit in 64 bits")
        out[i] = k
    return out


def _addr_column(values: NDArray[Any], shift: int, where: Where) -> NDArray[np.int64]:
    """Page numbers from byte addresses (decimal or 0x-hex text, or integers)."""
    kind = values.dtype.kind
    if kind == "u":
        return (values.astype(np.uint64) >> np.uint64(shift)).astype(np.int64)
    if kind in "if":
        return _int_column(values, "addr", where) >> shift
    if kind != "O":
        raise TraceError(f"{where(0)}: column 'addr': {values.dtype} values; expected addresses")
    out = np.empty(values.size, dtype=np.int64)
    for i, v in enumerate(values):
        text = v.strip() if isinstance(v, str) else str(v)
        if not _ADDR_TEXT.fullmatch(text):
            what = "is negative" if _is_negative(text) else "is not an address (decimal or 0x-hex)"
            raise TraceError(f"{where(i)}: column 'addr': {_show(text)} {what}")
        a = int(text[2:], 16) if text[1:2] in ("x", "X") else int(text)
        if a >= 1 << 64:
            raise TraceError(f"{where(i)}: column 'addr': {text} does not fit in 64 bits")
        out[i] = a >> shift
    return out


def _is_negative(text: str) -> bool:
    return text.startswith("-") and _ADDR_TEXT.fullmatch(text[1:]) is not None


def _bool_column(values: NDArray[Any], where: Where) -> NDArray[np.bool_]:
    """Write flags: booleans, 0/1 integers, or true/false/1/0 text (any case)."""
    kind = values.dtype.kind
    if kind == "b":
        return values.astype(np.bool_)
    if kind in "iu":
        bad = (values != 0) & (values != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TraceError(f"{where(i)}: column 'write': {values[i]} is not 0 or 1")
        return values.astype(np.bool_)
    out = np.empty(values.size, dtype=np.bool_)
    for i, v in enumerate(values):
        flag = _BOOL_TEXT.get(v.strip().lower()) if isinstance(v, str) else None
        if flag is None:
            raise TraceError(f"{where(i)}: column 'write': {_show(str(v))} is not true/false/1/0")
        out[i] = flag
    return out


def _numeric(arr: NDArray[Any], label: str, where: Where) -> NDArray[np.int64]:
    """An integer array as int64, or an error at its first negative (or too large) value."""
    bad = arr > np.iinfo(np.int64).max if arr.dtype.kind == "u" else arr < 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "does not fit in 64 bits" if arr.dtype.kind == "u" else "is negative"
        raise TraceError(f"{where(i)}: {label} {arr[i]} {what}")
    return arr.astype(np.int64)
