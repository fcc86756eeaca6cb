#!/bin/sh
# fresh.sh CACHE_DIR [begin|end]: let cargo's mtime-based freshness see what a commit changed.
#
# kiln copies the source in with every mtime = SOURCE_DATE_EPOCH, the commit time. That is older
# than the outputs a previous build left in a cache at CACHE_DIR (cargo's dep-info files carry
# the time that build ran), so cargo takes a changed file of a path package for fresh and links
# the old object code: a stale binary, no error. (ripgrep escapes it only because its build.rs
# has no rerun-if-changed, which makes cargo rerun it whenever any file of the package is newer.)
#
# `begin` hashes every file outside CACHE_DIR, touches (to now) each one whose content is not in
# the record the last build left in CACHE_DIR, and writes the new record beside it; `end` (after
# a successful build) puts the new record in place. An empty CACHE_DIR (a new cache) is only
# recorded; one with contents but no record (left by a recipe without fresh.sh) gets every file
# touched, which rebuilds every path package once.
# Vendored crates are a directory source: cargo fingerprints them by version and checksum, never
# by mtime, so they are not rebuilt whatever their mtimes.
set -eu
export LC_ALL=C
cache=${1:?usage: fresh.sh CACHE_DIR begin|end}
record="$cache/.kiln-sources.sha256"
case "${2:-begin}" in
begin)
  mkdir -p "$cache"
  find . -path "./${cache#./}" -prune -o -type f -print0 | sort -z | xargs -0 -r sha256sum >"$record.next"
  if [ -f "$record" ]; then
    sort "$record" >"$record.old"
    sort "$record.next" | comm -13 "$record.old" - | cut -c67- >"$record.changed"
    n=0
    while IFS= read -r f; do touch -- "$f"; n=$((n + 1)); done <"$record.changed"
    rm -f "$record.old" "$record.changed"
    echo "fresh.sh: $n file(s) new or changed since the cached build: touched" >&2
  elif [ -n "$(ls -A "$cache" | grep -v '^\.kiln-sources\.')" ]; then
    # A cache left by a build that kept no record: what changed is unknown, so touch everything.
    find . -path "./${cache#./}" -prune -o -type f -exec touch -- {} +
    echo "fresh.sh: no record of the cached build's sources: touched every file" >&2
  fi
  ;;
end) mv "$record.next" "$record" ;;
*) echo "fresh.sh: begin or end" >&2; exit 2 ;;
esac
