#!/bin/sh
# The quick start in one command: build kiln, make a builder image from the host's busybox if
# the engine has none, build this example with `kiln build --load`, and run the image.
set -eu
cd "$(dirname "$0")/../.."
tests/support/builder-image.sh busybox >/dev/null
cargo build --release --locked -q
out=${KILN_OUT:-$(mktemp -d /tmp/kiln-hello.XXXXXX)}
target/release/kiln build examples/hello --output "$out/layout" --load --json >"$out/result.json"
image=$(sed -n 's/.*"loaded_as": "\([^"]*\)".*/\1/p' "$out/result.json")
echo "built $(sed -n 's/.*"digest": "\([^"]*\)".*/\1/p' "$out/result.json") as $image (layout: $out/layout)" >&2
docker run --rm "$image"
