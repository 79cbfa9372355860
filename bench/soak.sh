#!/usr/bin/env bash
# TracePlane soak: one agent on loopback under probe churn, scrapes, SSE subscribers and a
# workload in three cgroups for M minutes, then a verdict (exit 1 when it fails). See
# bench/soak.py for what runs and how the final state is checked; bench/NOTES.md ("Soak").
#
#   bench/soak.sh [--minutes M] [--out DIR] [--agent PATH] [--ci] [soak.py options]
#       as root; default 30 minutes into .build/soak/ (soak.csv, soak.png, soak.md, agent.log)
#   bench/soak.sh --minutes 3 --ci --agent .build/debug/traceplane      the CI version
#   bench/soak.sh --publish       the 30-minute run, and when it passes its plot becomes
#                                 docs/soak.png (the one BENCHMARKS.md shows)
#
# Installs from Debian what it needs: curl, gcc, bpftool (counts the host's BPF objects),
# python3 (Debian's, /usr/bin/python3) and, except with --ci, python3-matplotlib for the
# plot (with --ci the plot is drawn only when matplotlib is already there). Without
# --agent it builds the release agent. Loopback only; bounded: the workload loops exit on
# their own and with the driver.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30 out=.build/soak agent="" ci=0 publish=0 rest=()
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --agent) agent="$2"; shift 2 ;;
        --ci) ci=1; shift ;;
        --publish) publish=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) rest+=("$1"); shift ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/soak.sh: run as root (the agent loads BPF programs; the workload makes cgroups)" >&2
    exit 1
fi

missing=()
for need in curl:curl gcc:gcc bpftool:bpftool /usr/bin/python3:python3; do
    command -v "${need%%:*}" >/dev/null || missing+=("${need#*:}")
done
if [ "$ci" -eq 0 ] && ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    missing+=(python3-matplotlib)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench/soak.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ -z "$agent" ]; then
    swift build -c release --product traceplane
    agent=.build/release/traceplane
fi
if [ ! -x "$agent" ]; then
    echo "bench/soak.sh: no agent binary at $agent" >&2
    exit 1
fi
mkdir -p "$out"
gcc -O2 -Wall -fno-omit-frame-pointer -o "$out/soak_load" bench/soak_load.c

ci_flag=()
[ "$ci" -eq 1 ] && ci_flag=(--ci)
if [ "$publish" -eq 1 ] && { [ "$ci" -eq 1 ] || [ "$minutes" != 30 ]; }; then
    echo "bench/soak.sh: --publish is for the 30-minute run without --ci" >&2
    exit 2
fi
run=(/usr/bin/python3 bench/soak.py --agent "$agent" --workload "$out/soak_load" --minutes "$minutes" --out "$out"
     "${ci_flag[@]}" ${rest[@]+"${rest[@]}"})
[ "$publish" -eq 1 ] || exec "${run[@]}"
"${run[@]}"    # a failing verdict ends here (set -e): nothing is published
mkdir -p docs
cp "$out/soak.png" docs/soak.png
echo "bench/soak.sh: the plot is docs/soak.png; quote $out/soak.md in BENCHMARKS.md"
