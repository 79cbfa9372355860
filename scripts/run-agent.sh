#!/usr/bin/env bash
# Installs what the agent needs, builds it in release mode, and runs it (root needed for BPF).
# Extra arguments go to `traceplane serve`, e.g. --listen 127.0.0.1:9480.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release --product traceplane
exec .build/release/traceplane serve "$@"
