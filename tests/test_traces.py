"""Trace readers (sim/guest/traces.py) and the ``trace`` workload (sim/guest/workloads.py).

Lackey parsing is checked against a line-by-line reference model written from valgrind's format;
the committed samples are checked against the numbers traces/README.md documents.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from pydantic import ValidationError

from sim.cli import main
from sim.config import parse_scenario
from sim.errors import ConfigError, TraceError
from sim.guest import traces, workloads
from sim.guest.traces import FORMATS, Trace, detect_format, read_trace
from sim.guest.workloads import CHUNK, AccessStream, TraceConfig
from tests.conftest import TINY

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "traces"

# traces/README.md documents these; test_samples_match_the_readme keeps them in step
SQLITE_LINES = 600_000  # L/S/M lines after the 5 header lines
SQLITE_ACCESSES = 600_000  # page accesses: no access in this slice crosses a page
SQLITE_PAGES = 216
PYTHON_ACCESSES = 1_000_004  # 1,000,000 lines; 4 accesses cross a page
PYTHON_PAGES = 3_622

HEADER = "==4242== Lackey, an example Valgrind tool\n==4242== Command: ./prog\n==4242== \n"

# --------------------------------------------------------------------------------------------
# helpers


def _write(path: Path, data: bytes | str) -> Path:
    raw = data.encode() if isinstance(data, str) else data
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def _npy_bytes(arr: NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _raises(fn: Callable[[], Any], *needles: str) -> str:
    with pytest.raises(TraceError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


Record = tuple[str, int, int]  # (op, address, size)


def _reference(
    records: list[Record], page_size: int, instructions: bool
) -> tuple[list[int], list[bool]]:
    """The pages and write flags of lackey records, one access at a time."""
    pages: list[int] = []
    writes: list[bool] = []
    for op, addr, size in records:
        if op == "I" and not instructions:
            continue
        for page in range(addr // page_size, (addr + size - 1) // page_size + 1):
            pages.append(page)
            writes.append(op in "SM")
    return pages, writes


def _render(op: str, addr: int, size: int, style: int = 0) -> str:
    """A lackey line: valgrind's own spelling (style 0) or a lenient one the reader accepts."""
    if style == 1:
        return f"{op}\t{addr:x},{size}\r"
    if style == 2:
        return f"  {op}  {addr:X},{size} "
    return f"I  {addr:08x},{size}" if op == "I" else f" {op} {addr:08x},{size}"


# --------------------------------------------------------------------------------------------
# format detection and common errors


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.npy", "npy"),
        ("a.npy.gz", "npy"),
        ("a.parquet", "parquet"),
        ("a.PARQUET.gz", "parquet"),
        ("a.csv", "csv"),
        ("a.csv.gz", "csv"),
        ("sqlite3.lackey.gz", "lackey"),
        ("trace.txt", "lackey"),
        ("trace", "lackey"),
        ("a.gz", "lackey"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt
    assert fmt in FORMATS


@pytest.mark.parametrize("page_size", [0, 256, 511, 1000, 4095, 3 << 12])
def test_page_size_must_be_a_power_of_two_of_at_least_512(tmp_path: Path, page_size: int) -> None:
    p = _write(tmp_path / "t.lackey", " L 1000,8\n")
    _raises(lambda: read_trace(p, page_size=page_size), str(page_size), "power of two")


def test_page_size_512_and_large_pages(tmp_path: Path) -> None:
    p = _write(tmp_path / "t.lackey", " L 1000,8\n S 3fffff,1\n")
    assert read_trace(p, page_size=512).pages.tolist() == [8, 0x3FFFFF >> 9]
    assert read_trace(p, page_size=1 << 21).pages.tolist() == [0, 1]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.lackey.gz"
    _raises(lambda: read_trace(missing), str(missing), "cannot read")


def test_unknown_format(tmp_path: Path) -> None:
    p = _write(tmp_path / "t.lackey", " L 1000,8\n")
    _raises(lambda: read_trace(p, fmt="vtune"), "unknown trace format")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("t.lackey", HEADER + "\n"),
        ("t.lackey.gz", ""),
        ("t.lackey", "I  04010e7c,3\n"),  # instruction fetches only, and they are not kept
        ("t.csv", "page,write\n"),
        ("t.npy", _npy_bytes(np.empty(0, dtype=np.int64))),
    ],
)
def test_empty_trace_is_an_error(tmp_path: Path, name: str, data: str | bytes) -> None:
    p = _write(tmp_path / name, data)
    _raises(lambda: read_trace(p), str(p), "no accesses")


def test_corrupt_gzip(tmp_path: Path) -> None:
    p = tmp_path / "t.lackey.gz"
    p.write_bytes(gzip.compress(b" L 1000,8\n" * 1000)[:-30])
    _raises(lambda: read_trace(p), str(p), "gzip")


# --------------------------------------------------------------------------------------------
# lackey


def test_lackey_lines(tmp_path: Path) -> None:
    text = HEADER + (
        "I  04010e7c,3\n"
        " L 1ffefffc48,8\n"
        "\n"
        " S 00001000,4\n"
        "==4242== a valgrind warning in the middle, with a comma, and 0x1234,8\n"
        " M 00002008,8\n"
        "I  04010e7f,5\n"
    )
    for name in ("t.lackey", "t.lackey.gz", "t.txt"):
        p = _write(tmp_path / name, text)
        tr = read_trace(p)
        assert isinstance(tr, Trace)
        assert tr.pages.dtype == np.int64
        assert tr.writes.dtype == np.bool_
        assert tr.pages.tolist() == [0x1FFEFFFC48 >> 12, 1, 2]
        assert tr.writes.tolist() == [False, True, True]
        assert tr.t_ns is None
        assert tr.vcpu is None
        assert tr.source == str(p)
        full = read_trace(p, instructions=True)
        assert full.pages.tolist() == [0x4010, 0x1FFEFFFC48 >> 12, 1, 2, 0x4010]
        assert full.writes.tolist() == [False, False, True, True, False]


def test_lackey_modify_is_one_write_access(tmp_path: Path) -> None:
    p = _write(tmp_path / "t.lackey", " M 7ff000010,8\n M 7ff000018,8\n")
    tr = read_trace(p)
    assert tr.pages.tolist() == [0x7FF000, 0x7FF000]
    assert tr.writes.tolist() == [True, True]


def test_lackey_page_crossing_touches_both_pages_in_order(tmp_path: Path) -> None:
    text = (
        " L 00000ffc,4\n"  # ends exactly at the boundary: one page
        " L 00000ffe,4\n"  # crosses: pages 0 and 1
        " S 00001ff9,8\n"  # crosses: pages 1 and 2, both written
        " L 00003000,1\n"
        "I  00004fff,2\n"  # an instruction fetch that crosses, when kept
    )
    p = _write(tmp_path / "t.lackey", text)
    tr = read_trace(p)
    assert tr.pages.tolist() == [0, 0, 1, 1, 2, 3]
    assert tr.writes.tolist() == [False, False, False, True, True, False]
    assert read_trace(p, instructions=True).pages.tolist()[-2:] == [4, 5]
    # with 512-byte pages, 0x0ffc..0x0fff stays in page 7 but 0x1ff9..0x2000 crosses into 16
    assert read_trace(p, page_size=512).pages.tolist() == [7, 7, 8, 15, 16, 24]


def test_lackey_top_of_the_address_space(tmp_path: Path) -> None:
    p = _write(tmp_path / "t.lackey", " L ffffffffffffffc0,64\n L fffffffffffffff8,8\n")
    top = (1 << 64) >> 12
    assert read_trace(p).pages.tolist() == [top - 1, top - 1]


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("garbage", "unrecognised line 'garbage'"),
        (" L 04222cac", "unrecognised line"),
        (" L 0x04222cac,8", "unrecognised line"),
        (" X 04222cac,8", "unrecognised line"),
        (" L 0422g2cac,8", "unrecognised line"),
        (" L 04222cac,-8", "unrecognised line"),
        (" L 04222cac,8,8", "unrecognised line"),
        (" L ,8", "unrecognised line"),
        (" L 04222cac,0", "access size 0"),
        (" L 04222cac,513", "access size 513"),
        (" L 1ffefffc48ffffffff,8", "longer than 64 bits"),
        ("= single equals sign", "unrecognised line"),
        ("\x00\xff binary", "unrecognised line"),
    ],
)
def test_lackey_garbage_names_the_line(tmp_path: Path, bad: str, needle: str) -> None:
    text = HEADER + " L 1000,8\n\n S 2000,8\n" + bad + "\n L 3000,8\n"
    p = _write(tmp_path / "t.lackey", text.encode("latin-1"))
    msg = _raises(lambda: read_trace(p), f"{p}:7: ", needle)
    assert msg.endswith("expected a valgrind lackey line like ' L 04222cac,8'")


def test_lackey_garbage_deep_in_a_gzip_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, bad_line = 200_000, 187_654
    lines = [f" L {0x10000 + 8 * i:08x},8" for i in range(n)]
    lines[bad_line - 1] = " L 1ffefffc48;8"
    p = _write(tmp_path / "deep.lackey.gz", "\n".join(lines) + "\n")
    _raises(lambda: read_trace(p), f"{p}:{bad_line}: unrecognised line ' L 1ffefffc48;8'")
    monkeypatch.setattr(traces, "BLOCK_BYTES", 1 << 16)  # ~70 blocks: the count carries over
    _raises(lambda: read_trace(p), f"{p}:{bad_line}: ")


def test_lackey_without_a_final_newline(tmp_path: Path) -> None:
    p = _write(tmp_path / "t.lackey", " L 1000,8\n S 2000,8")
    assert read_trace(p).pages.tolist() == [1, 2]
    p = _write(tmp_path / "u.lackey", " L 1000,8\n S 2000")
    _raises(lambda: read_trace(p), f"{p}:2: ")


ops = st.sampled_from("ILSM")
addrs = st.one_of(
    st.integers(0, 1 << 20),
    st.integers(0, 1 << 48),
    st.integers((1 << 64) - (1 << 20), (1 << 64) - 513),
)
records = st.lists(st.tuples(ops, addrs, st.integers(1, 512)), min_size=1, max_size=60)


@settings(max_examples=60)
@given(
    recs=records,
    noise=st.lists(st.tuples(st.integers(0, 60), st.sampled_from(["", "==1== x,y", "  "]))),
    styles=st.lists(st.integers(0, 2), min_size=60, max_size=60),
    lenient=st.booleans(),
    page_shift=st.integers(9, 14),
    instructions=st.booleans(),
    block=st.sampled_from([16, 64, 1 << 12, 1 << 23]),
    gz=st.booleans(),
)
def test_lackey_matches_a_reference_model(
    tmp_path_factory: pytest.TempPathFactory,
    recs: list[Record],
    noise: list[tuple[int, str]],
    styles: list[int],
    lenient: bool,
    page_shift: int,
    instructions: bool,
    block: int,
    gz: bool,
) -> None:
    """Random loads/stores/modifies/fetches (crossing pages or not, at the top of the address
    space too), valgrind lines and blank lines between them, canonical or leniently spaced,
    parsed in blocks of any size, give the accesses of the line-by-line reference model."""
    lines = [_render(op, a, s, styles[i] if lenient else 0) for i, (op, a, s) in enumerate(recs)]
    for pos, extra in sorted(noise, reverse=True):
        lines.insert(min(pos, len(lines)), extra)
    page_size = 1 << page_shift
    pages, writes = _reference(recs, page_size, instructions)
    p = _write(tmp_path_factory.mktemp("lk") / ("t.lackey.gz" if gz else "t"), "\n".join(lines))
    old = traces.BLOCK_BYTES
    traces.BLOCK_BYTES = block
    try:
        if not pages:
            _raises(lambda: read_trace(p, page_size=page_size, instructions=instructions))
            return
        tr = read_trace(p, page_size=page_size, instructions=instructions)
    finally:
        traces.BLOCK_BYTES = old
    assert tr.pages.tolist() == pages
    assert tr.writes.tolist() == writes


# --------------------------------------------------------------------------------------------
# csv


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_csv_pages_and_optional_columns(tmp_path: Path, name: str) -> None:
    text = "t_ns,vcpu,page,write\n0,0,17,true\n5,1,3,0\n9,0,17,FALSE\n12,1,8,1\n"
    tr = read_trace(_write(tmp_path / name, text))
    assert tr.pages.tolist() == [17, 3, 17, 8]
    assert tr.writes.tolist() == [True, False, False, True]
    assert tr.t_ns is not None
    assert tr.t_ns.tolist() == [0, 5, 9, 12]
    assert tr.vcpu is not None
    assert tr.vcpu.tolist() == [0, 1, 0, 1]


def test_csv_addresses_decimal_and_hex(tmp_path: Path) -> None:
    text = "addr\n4096\n0x1ffefffc48\n0X2000\n 8191\n0xffffffffffffffff\n"
    p = _write(tmp_path / "t.csv", text)
    tr = read_trace(p)
    assert tr.pages.tolist() == [1, 0x1FFEFFFC48 >> 12, 2, 1, (1 << 52) - 1]
    assert tr.writes.tolist() == [False] * 5
    assert tr.t_ns is None
    assert tr.vcpu is None
    assert read_trace(p, page_size=8192).pages.tolist()[:4] == [0, 0x1FFEFFFC48 >> 13, 1, 0]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("t_ns,write\n1,true\n", ["no page or addr column"]),
        ("page,addr\n1,2\n", ["both a page and an addr column"]),
        ("page\n1\n2\nx\n", [":4: column 'page'", "'x'", "not a non-negative integer"]),
        ("page\n1\n-2\n", [":3: column 'page'", "'-2' is negative"]),
        ("page\n1\n2.5\n", [":3: column 'page'", "'2.5'"]),
        ("page\n1\n\n\n7\nz\n", [":6: column 'page'", "'z'"]),  # blank lines keep numbering
        ("addr,vcpu\n0x10,0\n0x1g,0\n", [":3: column 'addr'", "'0x1g'", "0x-hex"]),
        ("addr\n-4096\n", [":2: column 'addr'", "is negative"]),
        ("page,vcpu\n1,0\n2,-1\n", [":3: column 'vcpu'", "is negative"]),
        ("page,t_ns\n1,0\n2,\n", [":3: column 't_ns'", "''"]),
        ("page,write\n1,true\n2,yes\n", [":3: column 'write'", "'yes'", "true/false/1/0"]),
        ("page\n99999999999999999999\n", [":2: column 'page'", "64 bits"]),
        ("", ["empty file"]),
    ],
)
def test_csv_errors_name_the_line_and_column(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = _write(tmp_path / "bad.csv.gz", text)
    _raises(lambda: read_trace(p), str(p), *needles)


# --------------------------------------------------------------------------------------------
# npy


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.uint64])
@pytest.mark.parametrize("name", ["t.npy", "t.npy.gz"])
def test_npy_round_trip(tmp_path: Path, name: str, dtype: type) -> None:
    pages = np.array([5, 3, 5, 1000, 0], dtype=dtype)
    tr = read_trace(_write(tmp_path / name, _npy_bytes(pages)))
    assert tr.pages.dtype == np.int64
    assert tr.pages.tolist() == [5, 3, 5, 1000, 0]
    assert not tr.writes.any()
    assert tr.writes.size == 5
    assert tr.t_ns is None
    assert tr.vcpu is None


@pytest.mark.parametrize(
    ("arr", "needle"),
    [
        (np.array([1.0, 2.0]), "dtype float64"),
        (np.array([True, False]), "dtype bool"),
        (np.array(["a", "b"]), "dtype <U1"),
        (np.zeros((2, 3), dtype=np.int64), "shape (2, 3)"),
        (np.int64(7), "shape ()"),
        (np.array([3, -1, 4]), "element 1: page number -1 is negative"),
        (np.array([1, 1 << 63], dtype=np.uint64), "element 1"),
    ],
)
def test_npy_errors(tmp_path: Path, arr: NDArray[Any], needle: str) -> None:
    p = _write(tmp_path / "bad.npy", _npy_bytes(arr))
    _raises(lambda: read_trace(p), str(p), needle)


def test_npy_not_an_array(tmp_path: Path) -> None:
    p = _write(tmp_path / "bad.npy", " L 1000,8\n")
    _raises(lambda: read_trace(p), str(p), "not a .npy array")
    assert read_trace(p, fmt="lackey").pages.tolist() == [1]


def test_npy_object_arrays_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([1, "x"], dtype=object), allow_pickle=True)
    p = _write(tmp_path / "bad.npy", buf.getvalue())
    _raises(lambda: read_trace(p), str(p), "got dtype object")


# --------------------------------------------------------------------------------------------
# parquet


@pytest.mark.parametrize("name", ["t.parquet", "t.parquet.gz"])
def test_parquet_round_trip(tmp_path: Path, name: str) -> None:
    df = pd.DataFrame(
        {
            "t_ns": np.array([0, 10, 20], dtype=np.int64),
            "vcpu": np.array([1, 0, 1], dtype=np.int16),
            "addr": np.array([0x1000, 0x1FFEFFFC48, (1 << 64) - 1], dtype=np.uint64),
            "write": [True, False, True],
            "comment": ["a", "b", "c"],  # unknown columns are ignored
        }
    )
    tr = read_trace(_write(tmp_path / name, _parquet_bytes(df)))
    assert tr.pages.tolist() == [1, 0x1FFEFFFC48 >> 12, (1 << 52) - 1]
    assert tr.writes.tolist() == [True, False, True]
    assert tr.t_ns is not None
    assert tr.t_ns.tolist() == [0, 10, 20]
    assert tr.vcpu is not None
    assert tr.vcpu.tolist() == [1, 0, 1]


def test_parquet_text_columns_parse_like_csv(tmp_path: Path) -> None:
    df = pd.DataFrame({"addr": ["0x2000", "12288"], "write": ["true", "0"]})
    tr = read_trace(_write(tmp_path / "t.parquet", _parquet_bytes(df)))
    assert tr.pages.tolist() == [2, 3]
    assert tr.writes.tolist() == [True, False]


@pytest.mark.parametrize(
    ("df", "needles"),
    [
        (pd.DataFrame({"page": [1, 2, -3]}), ["row 2: column 'page': -3 is negative"]),
        (pd.DataFrame({"page": [1.0, 2.5]}), ["row 1: column 'page': 2.5 is not an integer"]),
        (pd.DataFrame({"page": [1, 2], "write": [0, 2]}), ["row 1: column 'write'"]),
        (pd.DataFrame({"page": pd.array([1, None], dtype="Int64")}), ["row 1", "missing"]),
        (pd.DataFrame({"page": [1], "vcpu": ["x"]}), ["row 0: column 'vcpu': 'x'"]),
        (pd.DataFrame({"t_ns": [1, 2]}), ["no page or addr column"]),
    ],
)
def test_parquet_errors_give_the_row(tmp_path: Path, df: pd.DataFrame, needles: list[str]) -> None:
    p = _write(tmp_path / "bad.parquet", _parquet_bytes(df))
    _raises(lambda: read_trace(p), str(p), *needles)


def test_parquet_garbage(tmp_path: Path) -> None:
    p = _write(tmp_path / "bad.parquet", "page\n1\n")
    _raises(lambda: read_trace(p), str(p), "not a parquet file")


# --------------------------------------------------------------------------------------------
# the committed samples


def test_samples_match_the_readme() -> None:
    readme = (SAMPLES / "README.md").read_text()
    for n in (SQLITE_LINES, SQLITE_ACCESSES, SQLITE_PAGES, PYTHON_ACCESSES, PYTHON_PAGES):
        assert f"{n:,}" in readme
    committed = [p for p in SAMPLES.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in committed) < 2_000_000


def test_sqlite3_sample() -> None:
    path = SAMPLES / "sqlite3.lackey.gz"
    with gzip.open(path, "rt") as f:
        head = [next(f) for _ in range(3)]
    assert all(line.startswith("==") for line in head)  # valgrind's header is kept
    tr = read_trace(path)
    assert len(tr) == SQLITE_ACCESSES
    assert np.unique(tr.pages).size == SQLITE_PAGES
    assert 0.05 < tr.writes.mean() < 0.95


def test_python3_sample() -> None:
    tr = read_trace(SAMPLES / "python3.npy.gz")
    assert len(tr) == PYTHON_ACCESSES
    assert np.unique(tr.pages).size == PYTHON_PAGES


# --------------------------------------------------------------------------------------------
# the trace workload


def _stream(
    cfg: TraceConfig,
    *,
    vm_pages: int = 1024,
    vcpu: int = 0,
    nr_vcpus: int = 1,
    write_ratio: float = 0.5,
) -> AccessStream:
    return AccessStream(
        cfg,
        vm_pages=vm_pages,
        working_set_pages=vm_pages,
        access_rate_per_s=1_000_000,
        write_ratio=write_ratio,
        vcpu=vcpu,
        nr_vcpus=nr_vcpus,
        rng=np.random.default_rng(0),
    )


def _npy_trace(tmp_path: Path, pages: list[int], name: str = "t.npy") -> TraceConfig:
    _write(tmp_path / name, _npy_bytes(np.array(pages, dtype=np.int64)))
    return TraceConfig(type="trace", path=str(tmp_path / name))


def test_trace_config_validation() -> None:
    cfg = TraceConfig.model_validate({"type": "trace", "path": "x.lackey.gz"})
    assert (cfg.format, cfg.page_size, cfg.instructions) == ("auto", 4096, False)
    for bad in ({"page_size": 1000}, {"page_size": 256}, {"format": "vtune"}, {"path": ""}):
        with pytest.raises(ValidationError):
            TraceConfig.model_validate({"type": "trace", "path": "x", **bad})
    raw = {**TINY, "vms": [{**TINY["vms"][0], "workload": {"type": "trace", "path": "t"}}]}
    sc = parse_scenario(raw)
    assert isinstance(sc.vms[0].workload, TraceConfig)
    raw["vms"][0]["workload"] = {"type": "trace", "path": "t", "page_size": 1000}
    with pytest.raises(ConfigError, match="workload.page_size: .*power of two"):
        parse_scenario(raw)


def test_trace_pages_become_dense_gfns_in_first_appearance_order(tmp_path: Path) -> None:
    cfg = _npy_trace(tmp_path, [900, 7, 900, 1 << 40, 7, 3, 3, 900])
    g, w = _stream(cfg, vm_pages=4).next(8)
    assert g.tolist() == [0, 1, 0, 2, 1, 3, 3, 0]
    assert not w.any()  # write_ratio 0.5 is ignored: .npy traces only read


def test_trace_writes_come_from_the_trace(tmp_path: Path) -> None:
    p = _write(tmp_path / "t.lackey", " L 5000,8\n S 9000,8\n M 5008,8\n L 9000,4\n")
    cfg = TraceConfig(type="trace", path=str(p))
    for ratio in (0.0, 1.0):
        g, w = _stream(cfg, write_ratio=ratio).next(8)
        assert g.tolist() == [0, 1, 0, 1] * 2
        assert w.tolist() == [False, True, True, False] * 2


def test_trace_stays_below_the_vm_size_and_cycles(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pages = rng.integers(0, 1 << 30, 5000)
    cfg = _npy_trace(tmp_path, pages.tolist())
    d = np.unique(pages).size
    g, _ = _stream(cfg, vm_pages=d).next(3 * pages.size + 17)
    assert g.min() == 0
    assert g.max() == d - 1
    n = pages.size
    assert (g[:n] == g[n : 2 * n]).all()
    assert (g[:n] == g[2 * n : 3 * n]).all()
    assert (g[3 * n :] == g[:17]).all()
    assert g.size == 3 * n + 17


def test_trace_too_big_for_the_vm(tmp_path: Path) -> None:
    cfg = _npy_trace(tmp_path, list(range(0, 3000 * 8, 8)))
    _stream(cfg, vm_pages=3000)
    msg = _raises(lambda: _stream(cfg, vm_pages=2999), "3000 distinct pages", "2999")
    assert msg == (
        f"{cfg.path}: the trace touches 3000 distinct pages but the VM has 2999; "
        f"raise memory_mib to at least 12"
    )


def test_trace_vcpus_are_staggered(tmp_path: Path) -> None:
    cfg = _npy_trace(tmp_path, list(range(10)))
    for j, start in enumerate([0, 3, 6]):
        g, _ = _stream(cfg, vcpu=j, nr_vcpus=3).next(12)
        assert g.tolist() == [(start + i) % 10 for i in range(12)]


def test_trace_vcpu_column(tmp_path: Path) -> None:
    text = "page,vcpu,write\n10,1,0\n20,0,1\n10,0,0\n30,1,1\n40,1,0\n"
    p = _write(tmp_path / "t.csv", text)
    cfg = TraceConfig(type="trace", path=str(p))
    g0, w0 = _stream(cfg, vcpu=0, nr_vcpus=2).next(5)
    g1, w1 = _stream(cfg, vcpu=1, nr_vcpus=2).next(5)
    # gfns: 10 -> 0, 20 -> 1, 30 -> 2, 40 -> 3 (first appearance over the whole trace)
    assert g0.tolist() == [1, 0, 1, 0, 1]
    assert w0.tolist() == [True, False, True, False, True]
    assert g1.tolist() == [0, 2, 3, 0, 2]
    assert w1.tolist() == [False, True, False, False, True]
    _raises(
        lambda: _stream(cfg, vcpu=0, nr_vcpus=1), "vcpu column goes up to 1", "vcpus to at least 2"
    )
    _raises(lambda: _stream(cfg, vcpu=2, nr_vcpus=3), "no accesses for vCPU 2")


@settings(max_examples=25)
@given(
    batches=st.lists(st.integers(0, 3 * CHUNK), min_size=1, max_size=12),
    nr_vcpus=st.integers(1, 4),
)
def test_trace_stream_does_not_depend_on_batch_sizes(
    tmp_path_factory: pytest.TempPathFactory, batches: list[int], nr_vcpus: int
) -> None:
    tmp = tmp_path_factory.mktemp("tr")
    rng = np.random.default_rng(5)
    cfg = _npy_trace(tmp, rng.integers(0, 800, 3 * CHUNK + 123).tolist())
    for j in range(nr_vcpus):
        total = sum(batches)
        ref_g, ref_w = _stream(cfg, vcpu=j, nr_vcpus=nr_vcpus).next(total)
        s = _stream(cfg, vcpu=j, nr_vcpus=nr_vcpus)
        parts = [s.next(b) for b in batches]
        assert np.concatenate([p[0] for p in parts]).tolist() == ref_g.tolist()
        assert np.concatenate([p[1] for p in parts]).tolist() == ref_w.tolist()


def test_trace_file_is_read_once_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def counting(path: str, **kw: Any) -> Trace:
        calls.append(path)
        return read_trace(path, **kw)

    monkeypatch.setattr(workloads, "read_trace", counting)
    cfg = _npy_trace(tmp_path, [1, 2, 3], name="once.npy")
    for j in range(4):
        _stream(cfg, vcpu=j, nr_vcpus=4)
    _stream(TraceConfig(type="trace", path=str(tmp_path / "once.npy"), format="npy"))
    assert len(calls) == 2  # format is part of the key; vCPUs and VMs share a read
    _write(tmp_path / "once.npy", _npy_bytes(np.arange(10, dtype=np.int64)))
    assert _stream(cfg).next(10)[0].tolist() == list(range(10))  # rewritten: read again
    assert len(calls) == 3


def test_trace_relative_path_resolves_against_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _npy_trace(tmp_path, [4, 4, 2], name="rel.npy")
    monkeypatch.chdir(tmp_path)
    g, _ = _stream(TraceConfig(type="trace", path="rel.npy")).next(3)
    assert g.tolist() == [0, 0, 1]
    _raises(lambda: _stream(TraceConfig(type="trace", path="nope.npy")), "nope.npy", "cannot read")


# --------------------------------------------------------------------------------------------
# through the CLI


def _scenario(tmp_path: Path, trace: Path, **workload: Any) -> Path:
    raw = {
        **TINY,
        "duration_s": 0.02,
        "vms": [{**TINY["vms"][0], "workload": {"type": "trace", "path": str(trace), **workload}}],
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def test_cli_garbage_trace_line_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    lines = [f" L {0x10000 + 64 * i:08x},8" for i in range(5000)]
    lines[4321] = "this is not lackey"
    trace = _write(tmp_path / "bad.lackey.gz", HEADER + "\n".join(lines) + "\n")
    cfg = _scenario(tmp_path, trace)
    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(out), "-q"])
    assert r.exit_code == 2, r.output
    assert f"{trace}:{4322 + 3}: unrecognised line 'this is not lackey'" in r.output
    assert "Traceback" not in r.output
    assert [ln for ln in r.output.splitlines() if ln.strip()][-1].startswith("error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.lackey.gz", "cfg.yaml"]


def test_cli_trace_too_big_for_the_vm(tmp_path: Path) -> None:
    trace = _write(tmp_path / "big.npy", _npy_bytes(np.arange(5000, dtype=np.int64)))
    cfg = _scenario(tmp_path, trace)
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "res"), "-q"])
    assert r.exit_code == 2, r.output
    assert "5,000 distinct pages but the VM has 2,048; raise vms[0].memory_mib to at least 20" in (
        r.output
    )
    assert not (tmp_path / "res").exists()


def test_cli_runs_the_committed_sample(tmp_path: Path) -> None:
    cfg = _scenario(tmp_path, SAMPLES / "sqlite3.lackey.gz")
    out = tmp_path / "res"
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    faults = pd.read_parquet(out / "faults.parquet")
    assert faults.gfn.max() < SQLITE_PAGES


def test_config_hash_and_manifest_follow_the_trace_contents(tmp_path: Path) -> None:
    """A run is named by its trace's bytes, not just its path, so a sweep never reuses a run
    made from an older version of the file."""
    path = tmp_path / "t.npy"

    def scenario() -> Any:
        return parse_scenario(
            {
                "name": "tr",
                "duration_s": 0.002,
                "host": {"memory_mib": 8},
                "vms": [
                    {
                        "name": "vm",
                        "memory_mib": 4,
                        "workload": {"type": "trace", "path": str(path)},
                    }
                ],
            },
            "tr",
        )

    np.save(path, np.arange(64, dtype=np.int64))
    first = scenario()
    h1 = first.config_hash()
    assert h1 == scenario().config_hash()  # stable
    before = path.stat().st_mtime_ns
    np.save(path, np.arange(64, dtype=np.int64)[::-1].copy())
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a coarse clock must not hide the edit
    assert scenario().config_hash() != h1
    from sim.engine import run_scenario

    out = tmp_path / "run"
    run_scenario(scenario(), out)
    manifest = yaml.safe_load((out / "manifest.json").read_text())
    assert manifest["traces_sha256"] == {str(path): scenario().trace_digests()[str(path)]}
    assert len(manifest["traces_sha256"][str(path)]) == 64
