#!/usr/bin/env bash
# Regenerates docs/flamegraph.png, the README's flame graph: runs the one real-server test
# that profiles a busy tests/stacks/callchains.c for 3 s, fetches its SVG from the agent and
# draws it in headless Chromium (tests/stacks/screenshot.py).
# Needs root (BPF), chromium and clang (scripts/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "gen-flamegraph-screenshot: needs root (the agent attaches BPF programs)" >&2; exit 1; }
swift build --build-tests
TRACEPLANE_WRITE_SCREENSHOT=1 swift test --skip-build --no-parallel --filter 'StacksAPITests/profileOverHTTP'
test -s docs/flamegraph.png || { echo "gen-flamegraph-screenshot: the test wrote no docs/flamegraph.png" >&2; exit 1; }
echo "wrote docs/flamegraph.png"
