#!/usr/bin/env bash
# A long property-testing session over kiln's hostile-input parsers (tests/props.rs): the
# recipe and config checkers, untar and the tar normalizer, the WWW-Authenticate parser, and
# GitHub answers and webhook signatures. CI runs 256 cases per property; this runs many more
# (CASES, default 20000) in release mode. A failure is saved by proptest in
# tests/props.proptest-regressions: commit that file, so CI replays the case forever.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${CASES:-20000}
time PROPTEST_CASES="$CASES" cargo test --release --locked --test props -- --test-threads 2
