#!/usr/bin/env bash
# TracePlane benchmarks, side by side in one run: tracing overhead (vs an empty-program
# floor, bpftrace and libbpf-tools), collateral cost, scaling to 64 probes, and the control
# plane (create/delete latency, capability detection, /metrics, RSS and fds), and stack keys,
# 99 Hz profiles and symbolization (section 6), events (section 7) and budgets (section 8).
#
#   bench/run.sh [bench.py options]      as root; about 13 minutes; writes BENCHMARKS.md
#   bench/run.sh --sections stacks --out .build/bench/stacks.md   section 6 (stacks) alone
#   bench/run.sh --sections events,events-stream --only events --out .build/bench/events.md   section 7 alone
#   bench/run.sh --sections budget --out .build/bench/budget.md   section 8 alone (about 2 minutes)
#
# Installs from Debian what it compares against or drives: bpftrace and libbpf-tools (the
# other tracers), wrk (the /metrics load), bpftool (counts BPF links left by others),
# gcc (the syscall loop) and python3 (the harness). Builds the agent in release mode.
# Numbers from a busy machine are noisier: run it when nothing else is building.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/run.sh: run as root (it loads BPF programs)" >&2
    exit 1
fi

missing=()
for need in bpftrace:bpftrace syscount:libbpf-tools wrk:wrk bpftool:bpftool gcc:gcc python3:python3 stdbuf:coreutils; do
    command -v "${need%%:*}" >/dev/null || missing+=("${need#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench/run.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

swift build -c release --product traceplane
mkdir -p .build/bench
gcc -O2 -Wall -pthread -o .build/bench/syscall_loop bench/syscall_loop.c
gcc -O2 -Wall -o .build/bench/sleeper tests/events/sleeper.c
gcc -O2 -Wall -o .build/bench/budget_loop tests/budget/syscall_loop.c

load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 1.0) }'; then
    echo "bench/run.sh: load average is $load: other work is running, numbers will be noisier" >&2
fi
exec python3 bench/bench.py "$@"
