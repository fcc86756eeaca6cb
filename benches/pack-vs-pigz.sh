#!/usr/bin/env bash
# Benchmark: `kiln pack` against the reproducible GNU tar | pigz pipeline on a real ~250 MB
# tree (/usr/include + /usr/lib/gcc). Both sides hash the tar and the compressed stream and
# write the blob to disk, as kiln does. Runs alternate, 3 pairs; the median ratio is reported.
#
#   benches/pack-vs-pigz.sh            # builds kiln in release mode first
#   KILN=path/to/kiln benches/pack-vs-pigz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for t in tar pigz sha256sum bc /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install pigz time bc)"; exit 1; }
done
KILN=${KILN:-}
if [ -z "$KILN" ]; then
  cargo build --release --locked -q
  KILN=target/release/kiln
fi
PAIRS=${PAIRS:-3}
EPOCH=1700000000
work=$(mktemp -d /tmp/kiln-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
tree="$work/tree"
mkdir -p "$tree/usr/lib"
cp -a /usr/include "$tree/usr/include"
cp -a /usr/lib/gcc "$tree/usr/lib/gcc"
sync
echo "tree: $(du -sb "$tree" | cut -f1) bytes, $(find "$tree" | wc -l) entries"

baseline() {
  # The peers' reproducible recipe (field notes), hashed on both sides of pigz.
  ( cd "$tree" && tar --sort=name --format=posix \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
      --mtime=@$EPOCH --owner=0 --group=0 --numeric-owner -cf - . ) \
    | tee >(sha256sum >"$work/tar.sha") \
    | pigz -p 2 -6 -n \
    | tee >(sha256sum >"$work/gz.sha") >"$work/out.tar.gz"
}

now() { date +%s.%N; }
kiln_t=(); base_t=(); kiln_sz=0; base_sz=0; kiln_rss=(); kiln_cpu=()
for i in $(seq 1 "$PAIRS"); do
  rm -rf "$work/layout"
  s=$(now)
  /usr/bin/time -f "%M %U %S" -o "$work/time" \
    "$KILN" pack "$tree" --output "$work/layout" --source-date-epoch $EPOCH >/dev/null 2>"$work/kiln.err"
  e=$(now)
  kt=$(echo "$e - $s" | bc -l)
  read -r rss user sys <"$work/time"
  kiln_rss+=("$rss"); kiln_cpu+=("$(echo "($user + $sys) / $kt" | bc -l)")
  kiln_sz=$(find "$work/layout/blobs/sha256" -type f -size +1M -printf '%s\n' | sort -n | tail -1)

  rm -f "$work/out.tar.gz"
  s=$(now); baseline; e=$(now)
  bt=$(echo "$e - $s" | bc -l)
  base_sz=$(stat -c %s "$work/out.tar.gz")
  kiln_t+=("$kt"); base_t+=("$bt")
  printf 'pair %d: kiln %.2fs (peak RSS %d KiB, %.2f cores busy)  tar|pigz %.2fs\n' "$i" "$kt" "$rss" "${kiln_cpu[-1]}" "$bt"
done

ratios=()
for i in $(seq 0 $((PAIRS - 1))); do ratios+=("$(echo "${kiln_t[$i]} / ${base_t[$i]}" | bc -l)"); done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf 'median wall-time ratio kiln / (tar|pigz -p 2 -6): %.3f\n' "$(median "${ratios[@]}")"
printf 'compressed size: kiln %d, pigz %d, ratio %.4f\n' "$kiln_sz" "$base_sz" "$(echo "$kiln_sz / $base_sz" | bc -l)"
printf 'kiln peak RSS (max of runs): %d KiB\n' "$(printf '%s\n' "${kiln_rss[@]}" | sort -n | tail -1)"
printf 'kiln cores busy (median): %.2f\n' "$(median "${kiln_cpu[@]}")"
