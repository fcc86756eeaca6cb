#!/usr/bin/env bash
# Benchmark: `kiln push` of a ~450 MB image (about 250 MB of real files and 200 MB of random
# bytes) from a local layout to a fresh loopback registry, against
# `skopeo copy oci:LAYOUT:TAG docker://REF` to another fresh one. Runs alternate, 3 pairs; the
# median of the per-pair ratios is reported, with the re-push (nothing to upload) times.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in skopeo docker-registry bc curl; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install skopeo docker-registry bc curl)"; exit 1; }
done
PAIRS=${PAIRS:-3}
KILN=${KILN:-}
if [ -z "$KILN" ]; then
  cargo build --release --locked -q
  KILN=target/release/kiln
fi
work=$(mktemp -d /tmp/kiln-push-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

tree="$work/tree"
mkdir -p "$tree/usr/lib" "$tree/data"
cp -a /usr/include "$tree/usr/include"
cp -a /usr/lib/gcc "$tree/usr/lib/gcc"
head -c 200000000 /dev/urandom >"$tree/data/random.bin"
"$KILN" pack "$tree" --output "$work/layout" --tag big --source-date-epoch 1700000000 >/dev/null 2>&1
echo "image: $(du -sb "$work/layout/blobs" | cut -f1) bytes of blobs from $(du -sb "$tree" | cut -f1) bytes of files"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_registry() {
  local dir="$work/reg-$1" p
  p=$(port)
  mkdir -p "$dir"
  printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$dir/data" "$p" >"$dir/config.yml"
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$p/v2/" >/dev/null && break; sleep 0.1; done
  echo "127.0.0.1:$p"
}
now() { date +%s.%N; }
ratios=(); kre=(); sre=()
for i in $(seq 1 "$PAIRS"); do
  a=$(start_registry "k$i"); b=$(start_registry "s$i")
  s=$(now); "$KILN" push "$work/layout:big" "$a/bench/big:v1" >/dev/null 2>&1; e=$(now); k=$(echo "$e - $s" | bc -l)
  s=$(now); skopeo copy -q --dest-tls-verify=false "oci:$work/layout:big" "docker://$b/bench/big:v1"; e=$(now); sk=$(echo "$e - $s" | bc -l)
  s=$(now); "$KILN" push "$work/layout:big" "$a/bench/big:v1" >/dev/null 2>&1; e=$(now); kre+=("$(echo "$e - $s" | bc -l)")
  s=$(now); skopeo copy -q --dest-tls-verify=false "oci:$work/layout:big" "docker://$b/bench/big:v1"; e=$(now); sre+=("$(echo "$e - $s" | bc -l)")
  ratios+=("$(echo "$k / $sk" | bc -l)")
  printf 'pair %d: kiln push %.2fs  skopeo copy %.2fs  ratio %.3f   re-push: kiln %.3fs skopeo %.3fs\n' "$i" "$k" "$sk" "${ratios[-1]}" "${kre[-1]}" "${sre[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf 'median wall-time ratio kiln push / skopeo copy: %.3f\n' "$(median "${ratios[@]}")"
printf 'median re-push: kiln %.3fs, skopeo %.3fs\n' "$(median "${kre[@]}")" "$(median "${sre[@]}")"
