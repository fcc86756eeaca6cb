#!/bin/sh
# Make a builder image in the local Docker engine, without any registry.
#
#   tests/support/builder-image.sh busybox      -> kiln-builder/busybox:latest
#   tests/support/builder-image.sh debian-gcc   -> kiln-builder/debian-gcc:bookworm
#
# busybox: a rootfs holding the host's static busybox (Debian's busybox-static) and a link per
# applet. debian-gcc: a debootstrap'd Debian bookworm with gcc and libc6-dev; its rootfs tar is
# cached in $KILN_CACHE (default /var/cache/kiln-test) so later runs only re-import it.
# Each is imported once: an existing image is left as it is.
set -eu
kind=${1:?usage: builder-image.sh busybox|debian-gcc}
cache=${KILN_CACHE:-/var/cache/kiln-test}

have() { docker image inspect "$1" >/dev/null 2>&1; }

case "$kind" in
busybox)
  image=kiln-builder/busybox:latest
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
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf - . |
    docker import --change 'ENV PATH=/bin' - "$image" >/dev/null
  ;;
debian-gcc)
  image=kiln-builder/debian-gcc:bookworm
  have "$image" && { echo "$image"; exit 0; }
  tarball="$cache/debian-gcc-bookworm.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "debootstrap not found: apt-get install debootstrap" >&2; exit 1; }
    mkdir -p "$cache"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    debootstrap --variant=minbase --include=gcc,libc6-dev bookworm "$root" "$mirror" >&2
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
    tar --sort=name --numeric-owner -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
  fi
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tarball" "$image" >/dev/null
  ;;
*)
  echo "unknown builder image kind: $kind" >&2
  exit 2
  ;;
esac
echo "$image"
