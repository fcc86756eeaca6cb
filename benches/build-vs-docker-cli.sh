#!/usr/bin/env bash
# Benchmark: `kiln build` of examples/hello against a plain script doing the same work with the
# docker CLI: docker create + docker cp in + docker start -a + docker cp out + a reproducible
# tar | gzip -n of the output. Runs alternate; the median of the per-pair ratios is reported.
#
#   benches/build-vs-docker-cli.sh           # PAIRS=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-5}
KILN=${KILN:-}
if [ -z "$KILN" ]; then
  cargo build --release --locked -q
  KILN=target/release/kiln
fi
image=$(tests/support/builder-image.sh busybox)
work=$(mktemp -d /tmp/kiln-build-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The example as its own repository, as a user would have it.
repo="$work/hello"
mkdir -p "$repo"
cp examples/hello/kiln.toml examples/hello/hello.sh "$repo/"
git -C "$repo" init -q -b main
git -C "$repo" add -A
GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=b@x GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=b@x \
  GIT_COMMITTER_DATE="@1704164645 +0000" GIT_AUTHOR_DATE="@1704164645 +0000" git -C "$repo" commit -q -m bench
epoch=$(git -C "$repo" log -1 --format=%ct)
steps='mkdir -p /out/bin && cp /bin/busybox /out/bin/busybox && ln -s busybox /out/bin/sh && sed "s/@EPOCH@/$SOURCE_DATE_EPOCH/" hello.sh > /out/bin/hello && chmod 755 /out/bin/hello'

baseline() {
  local d="$work/base"
  rm -rf "$d" && mkdir -p "$d/src"
  git -C "$repo" archive HEAD | tar -x -C "$d/src"
  id=$(docker create --network none -e SOURCE_DATE_EPOCH="$epoch" -w /src "$image" /bin/sh -c "$steps")
  docker cp "$d/src/." "$id:/src"
  docker start -a "$id" >/dev/null
  docker cp "$id:/out" "$d/out"
  docker rm "$id" >/dev/null
  (cd "$d/out" && tar --sort=name --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --mtime=@"$epoch" --owner=0 --group=0 --numeric-owner -cf - .) | gzip -n -6 >"$d/layer.tar.gz"
}

now() { date +%s.%N; }
ratios=()
for i in $(seq 1 "$PAIRS"); do
  rm -rf "$work/layout"
  s=$(now); "$KILN" build "$repo" --output "$work/layout" >/dev/null 2>&1; e=$(now)
  k=$(echo "$e - $s" | bc -l)
  s=$(now); baseline; e=$(now)
  b=$(echo "$e - $s" | bc -l)
  ratios+=("$(echo "$k / $b" | bc -l)")
  printf 'pair %d: kiln build %.3fs  docker CLI script %.3fs  ratio %.3f\n' "$i" "$k" "$b" "${ratios[-1]}"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf 'median wall-time ratio kiln build / docker CLI script: %.3f\n' "$median"
