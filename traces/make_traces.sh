#!/usr/bin/env bash
# Regenerate the real-program memory traces: full valgrind lackey traces in traces/full/
# (gitignored, about 2 GB) and the small samples committed beside this script.
#
#   bash traces/make_traces.sh                  # every full trace, then the samples
#   bash traces/make_traces.sh sqlite3 python3  # just these full traces
#   bash traces/make_traces.sh samples          # the samples, from existing full traces
#
# Needs valgrind, sqlite3, gzip and python3; the .npy sample is written with the repository's
# own reader, run by $PYTHON (default: .venv/bin/python if present, else python3). Each full
# trace takes 5-15 minutes. traces/README.md says what each file is.
set -euo pipefail
cd "$(dirname "$0")"
HERE="$PWD"
REPO="$(cd .. && pwd)"
FULL="$HERE/full"
PYTHON="${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}"
# the real interpreter, not a pyenv/asdf shim script (valgrind would trace the shell)
PY3="$(python3 -c 'import sys; print(sys.executable)')"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# sqlite3 slice: data accesses (L/S/M lines) SQLITE_SKIP+1 .. SQLITE_SKIP+SQLITE_COUNT
SQLITE_SKIP="${SQLITE_SKIP:-58700000}"
SQLITE_COUNT="${SQLITE_COUNT:-600000}"
# python3 slice for the .npy sample, likewise (page numbers of data accesses, 4 KiB pages)
PYTHON_SKIP="${PYTHON_SKIP:-175000000}"
PYTHON_COUNT="${PYTHON_COUNT:-1000000}"

lackey() { # lackey OUT PROG ARGS... (stdin passed through, program stdout discarded)
  local out="$1"
  shift
  # valgrind writes the trace to fd 9 (the pipe into gzip); the program's stdout goes nowhere
  { valgrind --tool=lackey --trace-mem=yes --log-fd=9 "$@" 9>&1 1>/dev/null; } | gzip -1 >"$out.tmp"
  mv "$out.tmp" "$out"
  echo "wrote $out ($(du -h "$out" | cut -f1))"
}

versions() {
  valgrind --version
  sqlite3 --version
  gzip --version | head -n 1
  "$PY3" --version
}

sqlite3_trace() { # a table of 20,000 rows, an index, three queries, on a database file
  mkdir -p "$FULL"
  cat >"$FULL/sqlite3.sql" <<'SQL'
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)
INSERT INTO t(k, v)
  SELECT (i * 7919) % 10007, printf('row-%06d-%08x', i, (i * 2654435761) % 4294967296) FROM c;
CREATE INDEX t_k ON t(k);
SELECT count(*), sum(k) FROM t WHERE k BETWEEN 100 AND 2000;
SELECT k, count(*) FROM t GROUP BY k ORDER BY count(*) DESC LIMIT 5;
SELECT v FROM t WHERE k = 4242;
SQL
  rm -f "$WORK/db.sqlite"
  lackey "$FULL/sqlite3.lackey.gz" sqlite3 "$WORK/db.sqlite" <"$FULL/sqlite3.sql"
}

gzip_trace() { # compress 30,000 generated lines (1.2 MB) at the default level
  mkdir -p "$FULL"
  seq -f 'line %06g of a generated file for gzip' 1 30000 >"$WORK/input.txt"
  lackey "$FULL/gzip.lackey.gz" gzip -c "$WORK/input.txt"
}

python3_trace() { # a short script building, sorting and serialising a dict
  mkdir -p "$FULL"
  cat >"$FULL/python3.py" <<'PYSRC'
import json

d = {f"key{i:06d}": [i, i * i % 9973, str(i)] for i in range(30000)}
items = sorted(d.items(), key=lambda kv: kv[1][1])
print(len(json.dumps(items[:5000])))
PYSRC
  lackey "$FULL/python3.lackey.gz" "$PY3" "$FULL/python3.py"
}

slice_lackey() { # slice_lackey FULL SKIP COUNT: leading == lines, then data lines SKIP+1..SKIP+COUNT
  local src="$1" skip="$2" count="$3"
  set +o pipefail # head closes the pipe early
  zcat "$src" | head -n 50 | awk '!/^==/ { exit } { print }'
  zcat "$src" | grep '^ [LSM] ' | tail -n "+$((skip + 1))" | head -n "$count"
  set -o pipefail
}

samples() {
  slice_lackey "$FULL/sqlite3.lackey.gz" "$SQLITE_SKIP" "$SQLITE_COUNT" | gzip -9n >"$HERE/sqlite3.lackey.gz"
  echo "wrote $HERE/sqlite3.lackey.gz ($(du -h "$HERE/sqlite3.lackey.gz" | cut -f1))"
  slice_lackey "$FULL/python3.lackey.gz" "$PYTHON_SKIP" "$PYTHON_COUNT" >"$FULL/python3.slice.lackey"
  (cd "$REPO" && "$PYTHON" - "$FULL/python3.slice.lackey" "$HERE/python3.npy.gz" <<'PYSRC'
import gzip
import io
import sys

import numpy as np

from sim.guest.traces import read_trace

tr = read_trace(sys.argv[1], page_size=4096)
assert tr.pages.max() < 2**31
buf = io.BytesIO()
np.save(buf, tr.pages.astype(np.int32))
with open(sys.argv[2], "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
    gz.write(buf.getvalue())
print(f"wrote {sys.argv[2]}: {tr.pages.size} accesses, {np.unique(tr.pages).size} pages")
PYSRC
  )
  rm -f "$FULL/python3.slice.lackey"
}

[ $# -gt 0 ] || set -- sqlite3 gzip python3 samples
versions
for what in "$@"; do
  case "$what" in
    sqlite3 | gzip | python3) "${what}_trace" ;;
    samples) samples ;;
    *) echo "usage: $0 [sqlite3] [gzip] [python3] [samples]" >&2 && exit 2 ;;
  esac
done
