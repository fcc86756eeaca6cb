#!/usr/bin/env bash
# Benchmark: what the SBOM costs `kiln pack`. The same tree is packed with and without
# `--sbom` (runs alternate, RUNS pairs, medians reported); the SBOM's cost is the difference,
# as a ratio of the plain pack's time (target <= 0.2). Two trees:
#   - GNU hello as Debian builds it (the files of Debian's `hello` package, with its dpkg
#     status entry, so a package is detected);
#   - 100,000 small files in 1,000 directories (the SBOM lists 10,000 and counts the rest).
# Peak RSS of `kiln pack --sbom` (and of the plain pack) is reported too (target <= 64 MB for
# the 100k tree).
#
#   benches/sbom.sh            # builds kiln in release mode first
#   KILN=path/to/kiln RUNS=5 benches/sbom.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for t in bc /usr/bin/time apt-get dpkg-deb; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install time bc)"; exit 1; }
done
KILN=${KILN:-}
if [ -z "$KILN" ]; then
  cargo build --release --locked -q
  KILN=target/release/kiln
fi
RUNS=${RUNS:-3}
EPOCH=1700000000
work=$(mktemp -d /tmp/kiln-sbom-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# GNU hello, as Debian built it.
hello="$work/hello"
mkdir -p "$hello/var/lib/dpkg"
(cd "$work" && apt-get download -q hello >/dev/null 2>&1) || { echo "apt-get download hello failed"; exit 1; }
dpkg-deb -x "$work"/hello_*.deb "$hello"
{ dpkg-deb -f "$work"/hello_*.deb Package Version Architecture; echo "Status: install ok installed"; } >"$hello/var/lib/dpkg/status"

# 100k small files.
many="$work/many"
mkdir -p "$many"
python3 - "$many" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(1000):
    p = os.path.join(root, f"d{d:04d}")
    os.mkdir(p)
    for f in range(100):
        with open(os.path.join(p, f"f{f:03d}.txt"), "w") as fh:
            fh.write(f"file {d}/{f}\n" * (1 + (d * 100 + f) % 40))
PY
sync

now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

bench() {
  local name=$1 tree=$2 plain=() with=() rss=() rss0=()
  echo "$name: $(find "$tree" -type f | wc -l) files, $(du -sb "$tree" | cut -f1) bytes"
  for i in $(seq 1 "$RUNS"); do
    rm -rf "$work/l1" "$work/l2"
    s=$(now)
    /usr/bin/time -f "%M" -o "$work/rss0" "$KILN" pack "$tree" --output "$work/l1" --source-date-epoch $EPOCH >/dev/null 2>&1
    e=$(now)
    plain+=("$(echo "$e - $s" | bc -l)")
    rss0+=("$(cat "$work/rss0")")
    s=$(now)
    /usr/bin/time -f "%M" -o "$work/rss" "$KILN" pack "$tree" --output "$work/l2" --source-date-epoch $EPOCH --sbom >/dev/null 2>"$work/err"
    e=$(now)
    with+=("$(echo "$e - $s" | bc -l)")
    rss+=("$(cat "$work/rss")")
    printf '  run %d: pack %.3fs, pack --sbom %.3fs (%s)\n' "$i" "${plain[-1]}" "${with[-1]}" "$(grep '^sbom' "$work/err")"
  done
  local p w
  p=$(median "${plain[@]}"); w=$(median "${with[@]}")
  printf '%s: median pack %.3fs, with SBOM %.3fs: SBOM cost / pack time = %.3f\n' "$name" "$p" "$w" "$(echo "($w - $p) / $p" | bc -l)"
  printf '%s: peak RSS (max of runs): pack --sbom %d KiB, pack %d KiB\n' "$name" \
    "$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)" "$(printf '%s\n' "${rss0[@]}" | sort -n | tail -1)"
}

bench "GNU hello (Debian's build)" "$hello"
bench "100k files" "$many"
