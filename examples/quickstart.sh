#!/bin/sh
# kiln's quick start: the daemon on its embedded defaults. A local repository (a copy of
# examples/hello that this script makes), SQLite state and local OCI layouts; no GitHub, no
# registry, no database server. Needs Docker, Rust, git and Debian's busybox-static.
#
#   examples/quickstart.sh          # then commit in the printed directory to see a second build
#
# KILN_QUICKSTART (default /tmp/kiln-quickstart) holds the repository, the config and the state;
# KILN_LISTEN (default 127.0.0.1:7878) is where the API answers.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
work=${KILN_QUICKSTART:-/tmp/kiln-quickstart}
listen=${KILN_LISTEN:-127.0.0.1:7878}
cd "$top"

echo "==> building kiln (cargo build --release; the first build takes a few minutes)"
cargo build --release

echo "==> the builder image (a static busybox, made locally: no registry needed)"
sh tests/support/builder-image.sh busybox >/dev/null

repo="$work/hello"
if [ ! -d "$repo/.git" ]; then
  echo "==> a repository to watch: $repo (a copy of examples/hello)"
  mkdir -p "$repo"
  cp examples/hello/hello.sh examples/hello/kiln.toml "$repo/"
  git -C "$repo" init -q -b main
  git -C "$repo" add -A
  git -C "$repo" -c user.name=kiln -c user.email=kiln@localhost commit -q -m "hello from kiln"
fi

cat >"$work/kiln.toml" <<CONFIG
state_dir = "$work/state"
listen = "$listen"

[[repo]]
path = "$repo"
branches = ["main"]
CONFIG

cat <<NEXT
==> starting the daemon on $work/kiln.toml (Ctrl-C stops it). The first build starts now.
    In another terminal, make a commit and watch the second build:
      cd $repo && echo "# \$(date)" >> hello.sh && git -c user.name=you -c user.email=you@localhost commit -qam change
    Then:
      curl -s http://$listen/api/builds                 # the builds, newest first
      skopeo inspect oci:$work/state/layout/hello:main  # the image the branch points at
NEXT
exec target/release/kiln daemon --config "$work/kiln.toml"
