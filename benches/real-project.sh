#!/usr/bin/env bash
# Benchmark: kiln's build caches (`kiln build --cache`) on two real projects.
#
#   rust: ripgrep 14.1.1 as published on crates.io, its 57 dependency crates vendored, built with
#         cargo in kiln-builder/rust:<host rustc version> (Debian bookworm + the host's toolchain);
#         cache = the target dir.
#   go:   fzf 0.38.0 (Debian's source package), its modules vendored from Debian's golang-*-dev
#         packages, built with Debian's Go 1.19 in kiln-builder/debian-go:bookworm; cache = GOCACHE.
#
# For each project:
#   (a) cold:  `kiln build` of commit 1 without --cache
#       fill:  a --cache build of commit 1 (a new, empty cache, which it fills)
# then ROUNDS times (default 3), a new commit an hour after the last (so a new SOURCE_DATE_EPOCH,
# the mtime kiln gives every source file) with a different one-line change in the project's own
# code, and of it:
#   (b) warm:  a --cache build, timed against
#   (c) cold:  a build without --cache, whose artifact digest must equal the warm one's
# The figure is the median over the rounds of warm / cold (target <= 0.25); a digest that differs
# makes the script exit 1. Last, what the warm build compiled (cargo's `Compiling` lines,
# `go build -v`'s packages). Times are wall times of `kiln build` on whatever else the host runs.
#
# Set-up needs the network of a package registry only: cargo fetches ripgrep's package and its
# dependencies (`cargo fetch`, `cargo vendor`); apt-get fetches fzf's source and the Go modules
# (`apt-get source`, `apt-get download`) through a private apt state in the work dir, built from
# the host's Debian sources. Builds themselves are offline. Needs docker, git, cargo, go
# (golang-go), debootstrap, bc; run as root (builder images are made from a debootstrap'd rootfs).
#
#   benches/real-project.sh                   # both projects
#   PROJECTS=go ROUNDS=5 benches/real-project.sh   # one of them (rust, go), 5 rounds
#   KILN=/path/to/kiln KEEP=1 benches/...     # a given kiln; keep the work dir (logs, repos)
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECTS=${PROJECTS:-rust go}
ROUNDS=${ROUNDS:-3}
KEEP=${KEEP:-}
KILN=${KILN:-}
if [ -z "$KILN" ]; then
  cargo build --release --locked -q
  KILN=target/release/kiln
fi
KILN=$(realpath "$KILN")
here=$PWD/benches/real-project
work=$(mktemp -d /tmp/kiln-real-bench.XXXXXX)
cleanup() {
  "$KILN" cache prune --all --cache-dir "$work/cache" >/dev/null 2>&1 || true
  if [ -n "$KEEP" ]; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

RG_VERSION=14.1.1
FZF_VERSION=0.38.0
FZF_DEBIAN=0.38.0-1
# fzf's go.mod requirements: module, the Debian package shipping its source, that package's
# version (bookworm). The module is required at the upstream version Debian packages.
GO_DEPS="
github.com/gdamore/encoding        golang-github-gdamore-encoding-dev        1.0.0-3
github.com/gdamore/tcell/v2        golang-github-gdamore-tcell.v2-dev        2.5.4-1
github.com/lucasb-eyer/go-colorful golang-github-lucasb-eyer-go-colorful-dev 1.2.0-1
github.com/mattn/go-isatty         golang-github-mattn-go-isatty-dev         0.0.17-1
github.com/mattn/go-runewidth      golang-github-mattn-go-runewidth-dev      0.0.14-1
github.com/mattn/go-shellwords     golang-github-mattn-go-shellwords-dev     1.0.10-2
github.com/rivo/uniseg             golang-github-rivo-uniseg-dev             0.4.2-1
github.com/saracen/walker          golang-github-saracen-walker-dev          0.1.2-1
golang.org/x/sync                  golang-golang-x-sync-dev                  0.1.0-1
golang.org/x/sys                   golang-golang-x-sys-dev                   0.3.0-1
golang.org/x/term                  golang-golang-x-term-dev                  0.3.0-1
golang.org/x/text                  golang-golang-x-text-dev                  0.7.0-1
"
EPOCH1=1704164645
status=0

die() { echo "real-project: $*" >&2; exit 1; }
now() { date +%s.%N; }

commit() { # DIR EPOCH MESSAGE
  git -C "$1" add -A -f
  GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=b@x GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=b@x \
    GIT_COMMITTER_DATE="@$2 +0000" GIT_AUTHOR_DATE="@$2 +0000" git -C "$1" commit -q -m "$3"
}

# logof LABEL: where kbuild keeps the stderr of the build LABEL.
logof() { echo "$work/log-$(tr -c 'a-zA-Z0-9\n' - <<<"$1")"; }

# kbuild LABEL REPO [ARGS...]: one `kiln build` into a fresh layout, timed; sets secs and digest.
# Its stderr and build log (the steps' output) are kept in $(logof LABEL).
kbuild() {
  local label=$1 repo=$2 s e out log
  shift 2
  log=$(logof "$label")
  s=$(now)
  if ! out=$("$KILN" build "$repo" --output "$log.layout" "$@" 2>"$log"); then
    echo "kiln build ($label) failed:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  e=$(now)
  # Without a terminal kiln names the build log on stderr instead of streaming the steps' output.
  sed -n 's/^build log: //p' "$log" | while IFS= read -r f; do cat "$f" >>"$log"; done
  secs=$(echo "$e - $s" | bc -l)
  digest=$(awk 'NR == 1 {print $3}' <<<"$out")
  printf '  %-34s %7.1fs  %s\n' "$label" "$secs" "$digest"
}

# measure NAME REPO FILE SED_EXPR: the builds above. SED_EXPR makes the one-line change to FILE;
# it holds @N@, replaced by the round's number so that each round's commit is new.
measure() {
  local name=$1 repo=$2 file=$3 expr=$4 i cold1 fill1 d_cold1 d_fill1 warm cold d_warm ratio ratios=() line same=yes
  echo "$name: builds (wall time of \`kiln build\`, artifact digest)"
  kbuild "$name cold, commit 1" "$repo"
  cold1=$secs d_cold1=$digest
  kbuild "$name --cache (new cache), commit 1" "$repo" --cache --cache-dir "$work/cache"
  fill1=$secs d_fill1=$digest
  if [ "$d_fill1" != "$d_cold1" ]; then
    echo "$name: the --cache build of commit 1 differs from its cold build"
    status=1
  fi
  for i in $(seq 1 "$ROUNDS"); do
    sed -i "${expr//@N@/$i}" "$repo/$file"
    [ "$(git -C "$repo" diff --numstat | awk '{a += $1; d += $2} END {print NR, a, d}')" = "1 1 1" ] ||
      die "the change to $file is not a one-line change"
    git -C "$repo" diff -U0 | grep '^+[^+]' | sed "s/^+ */    commit $((i + 1)): /"
    commit "$repo" "$((EPOCH1 + i * 3600))" "a one-line change"
    kbuild "$name --cache (warm), commit $((i + 1))" "$repo" --cache --cache-dir "$work/cache"
    warm=$secs d_warm=$digest
    grep -q 'cache [^ ]*: warm' "$(logof "$name --cache (warm), commit $((i + 1))")" ||
      die "the warm build did not report a warm cache"
    kbuild "$name cold, commit $((i + 1))" "$repo"
    cold=$secs
    ratios+=("$(echo "$warm / $cold" | bc -l)")
    if [ "$d_warm" = "$digest" ]; then
      line="same digest"
    else
      line="DIGESTS DIFFER: $d_warm (warm) vs $digest (cold)"
      same=NO
      status=1
    fi
    printf '  round %d: warm %.1fs / cold %.1fs = %.3f, %s\n' "$i" "$warm" "$cold" "${ratios[-1]}" "$line"
  done
  ratio=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
  printf '%s: cold build %.1fs, first --cache build (fills the cache) %.1fs\n' "$name" "$cold1" "$fill1"
  printf '%s: median warm / cold after a one-line change, over %d rounds: %.3f (target <= 0.25: %s)\n' \
    "$name" "$ROUNDS" "$ratio" "$([ "$(echo "$ratio <= 0.25" | bc -l)" = 1 ] && echo met || echo MISSED)"
  printf '%s: digests: --cache == cold for commit 1: %s; warm == cold in every round: %s\n' "$name" \
    "$([ "$d_fill1" = "$d_cold1" ] && echo yes || echo NO)" \
    "$same"
}

rust() {
  local image fetch crate want repo ndeps c w
  image=$(tests/support/builder-image.sh rust)
  echo "rust: builder $image ($(docker run --rm --network none "$image" rustc --version))"
  # ripgrep's package as cargo fetches it (checked against the index's checksum), unpacked.
  fetch=$work/fetch-ripgrep
  mkdir -p "$fetch/src"
  : >"$fetch/src/lib.rs"
  printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\nripgrep = "=%s"\n' \
    "$RG_VERSION" >"$fetch/Cargo.toml"
  cargo fetch -q --manifest-path "$fetch/Cargo.toml" 2>"$fetch/log" || { cat "$fetch/log" >&2; die "cargo fetch failed"; }
  want=$(grep -A3 '^name = "ripgrep"$' "$fetch/Cargo.lock" | sed -n 's/^checksum = "\(.*\)"$/\1/p')
  crate=
  for c in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"ripgrep-$RG_VERSION.crate"; do
    [ "$(sha256sum <"$c" | cut -d' ' -f1)" = "$want" ] && crate=$c
  done
  [ -n "$crate" ] || die "ripgrep-$RG_VERSION.crate (sha256 $want) not found in cargo's cache"
  repo=$work/ripgrep
  mkdir -p "$repo"
  tar -xzf "$crate" -C "$repo" --strip-components=1
  (cd "$repo" && cargo vendor -q --locked vendor >/dev/null)
  cat >>"$repo/.cargo/config.toml" <<'EOF'

[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "vendor"
EOF
  sed "s|@IMAGE@|$image|" "$here/ripgrep.kiln.toml" >"$repo/kiln.toml"
  ndeps=$(find "$repo/vendor" -mindepth 1 -maxdepth 1 -type d | wc -l)
  echo "rust: ripgrep $RG_VERSION, $ndeps vendored dependency crates ($(du -sh "$repo/vendor" | cut -f1))"
  [ "$ndeps" -ge 50 ] || die "ripgrep has $ndeps dependency crates, fewer than 50"
  git -C "$repo" init -q -b main
  commit "$repo" "$EPOCH1" "ripgrep $RG_VERSION, dependencies vendored"

  measure rust "$repo" crates/core/main.rs 's/which means ripgrep [a-z0-9-]* /which means ripgrep likely-@N@ /'
  c=$(grep -c '^ *Compiling ' "$(logof "rust cold, commit 1")" || true)
  w=$(grep -oE '^ *Compiling [^ ]+ v[^ ]+' "$(logof "rust --cache (warm), commit $((ROUNDS + 1))")" | awk '{print $2}' | paste -sd' ' - || true)
  echo "rust: compiled: cold $c crates; warm: ${w:-nothing}"
  grep -o 'kiln: caches: .*' "$(logof "rust --cache (warm), commit $((ROUNDS + 1))")" | sed 's/^/rust: warm: /' || true
  printf "rust: cargo's own time (its Finished line): cold %ss, last warm %ss\n" \
    "$(sed -n 's/.*Finished .* in \([0-9.]*\)s$/\1/p' "$(logof "rust cold, commit 1")")" \
    "$(sed -n 's/.*Finished .* in \([0-9.]*\)s$/\1/p' "$(logof "rust --cache (warm), commit $((ROUNDS + 1))")")"
}

# apt_get ARGS...: apt-get on a private state in $work/apt: the host's Debian sources with deb-src
# added, lists and caches of its own (the host's apt state is left alone).
apt_get() {
  apt-get -q -o Dir::Etc::SourceList="$work/apt/sources.list" -o Dir::Etc::SourceParts="$work/apt/parts" \
    -o Dir::State::Lists="$work/apt/lists" -o Dir::Cache="$work/apt/cache" -o APT::Sandbox::User=root "$@"
}

apt_setup() {
  mkdir -p "$work/apt/parts" "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/dl" "$work/apt/debs"
  : >"$work/apt/sources.list"
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources >"$work/apt/parts/debian.sources"
  elif [ -f /etc/apt/sources.list ]; then
    grep '^deb ' /etc/apt/sources.list | sed 'p; s/^deb /deb-src /' >"$work/apt/sources.list"
  else
    die "no Debian apt sources found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)"
  fi
  apt_get update >"$work/apt/update.log" 2>&1 || { cat "$work/apt/update.log" >&2; die "apt-get update failed"; }
}

go_() {
  local image repo src mods pkgs m mm d pkg best ver gov n_mods n_pkgs n c w
  command -v go >/dev/null || die "go not found: apt-get install golang-go"
  image=$(tests/support/builder-image.sh debian-go)
  echo "go: builder $image ($(docker run --rm --network none "$image" go version))"
  apt_setup
  (cd "$work/apt/dl" && apt_get source --download-only "fzf=$FZF_DEBIAN" >"$work/apt/source.log" 2>&1) ||
    { cat "$work/apt/source.log" >&2; die "apt-get source fzf=$FZF_DEBIAN failed"; }
  # shellcheck disable=SC2046
  (cd "$work/apt/debs" && apt_get download $(awk 'NF {print $2 "=" $3}' <<<"$GO_DEPS") >"$work/apt/download.log" 2>&1) ||
    { cat "$work/apt/download.log" >&2; die "apt-get download of the Go modules failed"; }
  for d in "$work/apt/debs"/*.deb; do dpkg-deb -x "$d" "$work/apt/root"; done
  src=$work/apt/root/usr/share/gocode/src

  repo=$work/fzf
  mkdir -p "$repo"
  tar -xzf "$work/apt/dl/fzf_$FZF_VERSION.orig.tar.gz" -C "$repo" --strip-components=1
  # Every requirement of fzf's go.mod must be in GO_DEPS: require it at the version Debian has.
  mods=$(awk 'NF {print $1}' <<<"$GO_DEPS")
  for m in $(awk '/^require \(/ {b = 1; next} b && /^\)/ {b = 0} b && NF {print $1} /^require [^(]/ {print $2}' "$repo/go.mod"); do
    grep -qxF "$m" <<<"$mods" || die "fzf requires $m, which GO_DEPS does not name"
  done
  while read -r m _ ver; do
    [ -n "$m" ] || continue
    (cd "$repo" && go mod edit -require="$m@v${ver%-*}")
  done <<<"$GO_DEPS"

  # `go mod vendor` cannot run offline here: it wants every package of every platform, and
  # Debian's golang.org/x/sys ships unix/ only (no windows/, plan9/). So vendor by hand what it
  # would for linux: list the packages a linux build of fzf imports (GOPATH mode over Debian's
  # gocode tree, as Debian builds it), copy them and write vendor/modules.txt; `go list` in
  # vendor mode then checks the result against go.mod.
  mkdir -p "$work/gopath/src/github.com/junegunn"
  cp -a "$src/." "$work/gopath/src/"
  cp -a "$repo" "$work/gopath/src/github.com/junegunn/fzf"
  pkgs=$(cd "$work/gopath/src/github.com/junegunn/fzf" &&
    GO111MODULE=off GOPATH="$work/gopath" GOFLAGS= GOOS=linux GOARCH=amd64 CGO_ENABLED=0 GOCACHE="$work/gocache" \
      go list -deps -f '{{if not .Standard}}{{.ImportPath}}{{end}}' . | grep -v '^github.com/junegunn/fzf' | sort)
  mkdir -p "$repo/vendor"
  n_mods=0 n_pkgs=0
  for m in $(sort <<<"$mods"); do
    ver=$(awk -v m="$m" '$1 == m {print $3}' <<<"$GO_DEPS")
    gov=$(awk '$1 == "go" {print $2; exit}' "$src/$m/go.mod" 2>/dev/null || true)
    printf '# %s v%s\n## explicit%s\n' "$m" "${ver%-*}" "${gov:+; go $gov}" >>"$repo/vendor/modules.txt"
    n_mods=$((n_mods + 1))
    n=0
    for pkg in $pkgs; do
      # The module of pkg: the longest module path that is pkg or a prefix of it.
      best=
      for mm in $mods; do
        case "$pkg" in "$mm" | "$mm"/*) if [ ${#mm} -gt ${#best} ]; then best=$mm; fi ;; esac
      done
      [ -n "$best" ] || die "no module in GO_DEPS provides $pkg"
      [ "$best" = "$m" ] || continue
      echo "$pkg" >>"$repo/vendor/modules.txt"
      mkdir -p "$repo/vendor/$pkg"
      find -L "$src/$pkg" -maxdepth 1 -type f ! -name '*_test.go' ! -name '.*' ! -name '_*' \
        -exec cp -L {} "$repo/vendor/$pkg/" \;
      n=$((n + 1))
    done
    n_pkgs=$((n_pkgs + n))
    if [ "$n" -gt 0 ]; then
      find -L "$src/$m" -maxdepth 1 -type f \( -iname 'LICENSE*' -o -iname 'COPYING*' -o -iname 'NOTICE*' -o -iname 'PATENTS*' -o -iname 'AUTHORS*' \) \
        -exec cp -L {} "$repo/vendor/$m/" \;
    fi
  done
  (cd "$repo" && GOFLAGS=-mod=vendor GOPROXY=off GOCACHE="$work/gocache" go list -deps . >/dev/null) ||
    die "the hand-made vendor/ does not satisfy go (see above)"
  sed "s|@IMAGE@|$image|" "$here/fzf.kiln.toml" >"$repo/kiln.toml"
  echo "go: fzf $FZF_VERSION ($FZF_DEBIAN), $n_mods required modules from Debian, $n_pkgs packages of them vendored (a linux build needs those)"
  git -C "$repo" init -q -b main
  commit "$repo" "$EPOCH1" "fzf $FZF_VERSION, dependencies vendored"

  measure go "$repo" src/options.go 's/Enable [a-zA-Z0-9-]*-match$/Enable exact-@N@-match/'
  # `go build -v` names each package it compiles; anything else in the step output is kiln's.
  c=$(grep -cE '^[a-z][a-z0-9_./-]*$' "$(logof "go cold, commit 1")" || true)
  w=$(grep -E '^[a-z][a-z0-9_./-]*$' "$(logof "go --cache (warm), commit $((ROUNDS + 1))")" | paste -sd' ' - || true)
  echo "go: compiled: cold $c packages (with the standard library's); warm: ${w:-nothing}"
}

for p in $PROJECTS; do
  case "$p" in
  rust) rust ;;
  go) go_ ;;
  *) die "unknown project: $p (rust, go)" ;;
  esac
done
exit "$status"
