#!/usr/bin/env bash
# Installs everything, builds, and runs every test stage. Run as root (BPF needs it).
# Stages and their usual time on 2 cores: see README.md "Tests".
set -euo pipefail
cd "$(dirname "$0")/.."
stage() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

stage "install dependencies"
scripts/install-deps.sh

stage "generated files are current"
scripts/gen-syscall-names.sh --check

stage "build (debug, with tests)"
swift build --build-tests

if [ "$(id -u)" -ne 0 ]; then
  echo "!!! NOT ROOT: the real-kernel tests will report themselves as skipped. CI runs as root." >&2
fi

stage "deploy files validate offline (systemd-analyze, kubernetes-validate, promtool)"
tests/deploy/validate.sh .build/debug/traceplane

stage "unit and HTTP tests"
swift test --skip-build --skip TraceCoreKernelTests --skip AgentIntegrationTests

stage "real-kernel and real-server tests (serialized: they count the process's BPF fds)"
swift test --skip-build --no-parallel --filter TraceCoreKernelTests --filter AgentIntegrationTests --skip 'AgentIntegrationTests\.Fault'

stage "fault suite: a hostile host (state disk, limits, mounts, processes, signals, clock; serialized, alone)"
swift test --skip-build --no-parallel --filter 'AgentIntegrationTests\.Fault'

stage "API conformance: schemathesis against the real agent (all checks, stateful)"
tests/api/run-schemathesis.sh

stage "kernel matrix under QEMU: Debian 6.1 + 6.12 and this host (regenerates docs/kernel-matrix.md)"
tests/qemu/run-matrix.sh

stage "soak, the CI version: 3 minutes of churn, scrapes, SSE and cgroup workloads, then a verdict (bench/soak.sh; the release agent the matrix built)"
bench/soak.sh --minutes 3 --ci --agent .build/release/traceplane --out .build/soak-ci
