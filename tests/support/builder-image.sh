#!/bin/sh
# Make a builder image in the local Docker engine, without any registry.
#
#   tests/support/builder-image.sh busybox      -> kiln-builder/busybox:latest
#   tests/support/builder-image.sh debian-gcc   -> kiln-builder/debian-gcc:bookworm
#   tests/support/builder-image.sh hostile      -> kiln-builder/hostile:latest
#   tests/support/builder-image.sh debian-go    -> kiln-builder/debian-go:bookworm
#   tests/support/builder-image.sh rust         -> kiln-builder/rust:<host rustc version>
#
# busybox: a rootfs holding the host's static busybox (Debian's busybox-static) and a link per
# applet. hostile: the same, plus /data holding 100k empty files and a directory 1000 levels
# deep (made on the host: creating them inside a container on a FUSE storage driver takes
# minutes). debian-gcc: a debootstrap'd Debian bookworm with gcc and libc6-dev; its rootfs tar is
# cached in $KILN_CACHE (default /var/cache/kiln-test) so later runs only re-import it.
# debian-go: the same plus Debian's golang-go (Go 1.19), installed by debootstrap, so the
# toolchain is what Debian ships, not whatever the host has; cached the same way. rust: the
# debian-gcc rootfs plus the host's Rust toolchain (`rustc --print sysroot`: bin/ and lib/, not
# share/ or rust-src) under /usr/local, tagged with its version (bookworm's own rustc, 1.63, is
# too old for current crates, and no toolchain can be downloaded here).
# Each is loaded once: an existing image is left as it is.
#
# Images are loaded from a `docker save`-format archive built here with a fixed creation time,
# not with `docker import` (which stamps the current time): the same rootfs then gives the same
# image ID on every host, and so the same builder digest in what kiln builds with it.
set -eu
kind=${1:?usage: builder-image.sh busybox|hostile|debian-gcc|debian-go|rust}
cache=${KILN_CACHE:-/var/cache/kiln-test}

have() { docker image inspect "$1" >/dev/null 2>&1; }

# load_rootfs ROOTFS_TAR IMAGE PATH_ENV: docker load a one-layer image made of ROOTFS_TAR.
load_rootfs() {
  arch=$(uname -m); case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
  dir=$(mktemp -d)
  layer=$(sha256sum "$1" | cut -d' ' -f1)
  mkdir "$dir/$layer"
  ln -s "$(realpath "$1")" "$dir/$layer/layer.tar" 2>/dev/null || cp "$1" "$dir/$layer/layer.tar"
  printf '{"architecture":"%s","config":{"Env":["PATH=%s"]},"created":"1970-01-01T00:00:00Z","os":"linux","rootfs":{"diff_ids":["sha256:%s"],"type":"layers"}}' \
    "$arch" "$3" "$layer" >"$dir/config.json"
  config=$(sha256sum "$dir/config.json" | cut -d' ' -f1)
  mv "$dir/config.json" "$dir/$config.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$config" "$2" "$layer" >"$dir/manifest.json"
  tar --dereference --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir" -cf - . | docker load -q >/dev/null
  rm -rf "$dir"
}

debian_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# debian_rootfs NAME PACKAGES: print the path of a cached rootfs tar of a debootstrap'd bookworm
# (minbase) with PACKAGES (comma-separated), made on first use. Call it as $(...): a subshell.
debian_rootfs() {
  tarball="$cache/$1-bookworm.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "debootstrap not found: apt-get install debootstrap" >&2; exit 1; }
    mkdir -p "$cache"
    broot=$(mktemp -d)
    trap 'rm -rf "$broot"' EXIT
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    debootstrap --variant=minbase --include="$2" bookworm "$broot" "$mirror" >&2
    rm -rf "$broot/var/cache/apt/archives/"*.deb "$broot/var/lib/apt/lists/"*
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$broot" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$broot"
  fi
  echo "$tarball"
}

case "$kind" in
busybox|hostile)
  image=kiln-builder/$kind:latest
  have "$image" && { echo "$image"; exit 0; }
  bb=$(command -v busybox || true)
  [ -n "$bb" ] || { echo "busybox not found: apt-get install busybox-static" >&2; exit 1; }
  ldd "$bb" 2>&1 | grep -q 'not a dynamic' ||
    { echo "$bb is not statically linked: apt-get install busybox-static" >&2; exit 1; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root"
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  chmod 755 "$root" "$root/bin" "$root/etc" "$root/root"
  chmod 644 "$root/etc/passwd" "$root/etc/group"
  chmod 755 "$root/bin/busybox"
  if [ "$kind" = hostile ]; then
    mkdir -p "$root/data/many"
    (cd "$root/data/many" && seq 1 100000 | xargs touch)
    d="$root/data/deep"; i=0
    while [ $i -lt 1000 ]; do d="$d/d"; i=$((i+1)); done
    mkdir -p "$d" && echo bottom >"$d/f"
  fi
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$root.tar" .
  load_rootfs "$root.tar" "$image" /bin
  rm -f "$root.tar"
  ;;
debian-gcc|debian-go)
  image=kiln-builder/$kind:bookworm
  have "$image" && { echo "$image"; exit 0; }
  case "$kind" in debian-gcc) include=gcc,libc6-dev ;; *) include=gcc,libc6-dev,golang-go ;; esac
  tarball=$(debian_rootfs "$kind" "$include")
  load_rootfs "$tarball" "$image" "$debian_path"
  ;;
rust)
  command -v rustc >/dev/null || { echo "rustc not found: install a Rust toolchain (rustup)" >&2; exit 1; }
  version=$(rustc --version | cut -d' ' -f2)
  image=kiln-builder/rust:$version
  have "$image" && { echo "$image"; exit 0; }
  sysroot=$(rustc --print sysroot)
  base=$(debian_rootfs debian-gcc gcc,libc6-dev)
  root=$(mktemp -d)
  trap 'rm -rf "$root" "$root.tar"' EXIT
  tar -xf "$base" -C "$root"
  mkdir -p "$root/usr/local/bin" "$root/usr/local/lib"
  cp -a "$sysroot/bin/." "$root/usr/local/bin/"
  cp -a "$sysroot/lib/." "$root/usr/local/lib/"
  rm -rf "$root/usr/local/lib/rustlib/src"
  "$root/usr/local/bin/rustc" --version >/dev/null  # the copy runs (finds its own sysroot)
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$root.tar" .
  load_rootfs "$root.tar" "$image" "$debian_path"
  ;;
*)
  echo "unknown builder image kind: $kind" >&2
  exit 2
  ;;
esac
echo "$image"
