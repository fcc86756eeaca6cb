#!/usr/bin/env bash
# Benchmark: `kiln push` of a ~450 MB image (about 250 MB of real files and 200 MB of random
# bytes, one ~267 MB layer) from a local layout to a fresh loopback registry, against
# `skopeo copy oci:LAYOUT:TAG docker://REF` to another fresh one, and against the floor: the
# registry's own ingest of the layer, a bare `curl` POST plus one streamed PUT (`--upload-file`)
# of the blob to a third.
# Runs alternate, 3 rounds; the medians of the per-round ratios to the floor are reported, with
# the re-push (nothing to upload) times.
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
# The layer: the largest blob of the image.
layer=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(max(m["layers"], key=lambda l: l["size"])["digest"])' \
  "$work/layout/blobs/sha256/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"].split(":")[1])' "$work/layout/index.json")")
blob="$work/layout/blobs/sha256/${layer#sha256:}"
echo "layer: $layer, $(stat -c %s "$blob") bytes"
floor_push() { # curl POST + PUT of the layer
  local reg=$1 loc
  loc=$(curl -fsS -o /dev/null -D - -X POST "http://$reg/v2/bench/big/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  case "$loc" in http*) ;; *) loc="http://$reg$loc" ;; esac
  curl -fsS -o /dev/null -H 'Content-Type: application/octet-stream' --upload-file "$blob" "$loc&digest=$layer"
}
kr=(); sr=(); kre=(); sre=()
for i in $(seq 1 "$PAIRS"); do
  a=$(start_registry "k$i"); b=$(start_registry "s$i"); c=$(start_registry "c$i")
  s=$(now); floor_push "$c"; e=$(now); f=$(echo "$e - $s" | bc -l)
  s=$(now); "$KILN" push "$work/layout:big" "$a/bench/big:v1" >/dev/null 2>&1; e=$(now); k=$(echo "$e - $s" | bc -l)
  s=$(now); skopeo copy -q --dest-tls-verify=false "oci:$work/layout:big" "docker://$b/bench/big:v1"; e=$(now); sk=$(echo "$e - $s" | bc -l)
  s=$(now); "$KILN" push "$work/layout:big" "$a/bench/big:v1" >/dev/null 2>&1; e=$(now); kre+=("$(echo "$e - $s" | bc -l)")
  s=$(now); skopeo copy -q --dest-tls-verify=false "oci:$work/layout:big" "docker://$b/bench/big:v1"; e=$(now); sre+=("$(echo "$e - $s" | bc -l)")
  kr+=("$(echo "$k / $f" | bc -l)"); sr+=("$(echo "$sk / $f" | bc -l)")
  printf 'round %d: floor (curl POST+PUT) %.2fs  kiln push %.2fs (%.3fx)  skopeo copy %.2fs (%.3fx)   re-push: kiln %.3fs skopeo %.3fs\n' \
    "$i" "$f" "$k" "${kr[-1]}" "$sk" "${sr[-1]}" "${kre[-1]}" "${sre[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf 'median ratio to the floor: kiln push %.3f, skopeo copy %.3f\n' "$(median "${kr[@]}")" "$(median "${sr[@]}")"
printf 'median re-push: kiln %.3fs, skopeo %.3fs\n' "$(median "${kre[@]}")" "$(median "${sre[@]}")"
