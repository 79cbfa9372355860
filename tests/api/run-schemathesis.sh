#!/usr/bin/env bash
# Conformance stage: openapi/openapi.yaml must validate, and the real agent (real kernel,
# root) must conform to it under schemathesis with all of its checks, then hold nothing.
#
# Installs into .venv-test/ (gitignored; made once, remade when the pins change):
#   openapi-spec-validator  validates the OpenAPI 3.1 document
#   schemathesis            generates requests from it and checks every response
# Needs python3 with venv (Debian: python3-venv), curl, and root for the agent.
#
# Environment: SCHEMATHESIS_EXAMPLES (examples per operation, default 1000),
# SCHEMATHESIS_SEED (default 20261125), SCRATCH_PATH (SwiftPM scratch path, default .build).
set -euo pipefail
cd "$(dirname "$0")/../.."

pins=(schemathesis==4.32.5 openapi-spec-validator==0.9.0)
examples=${SCHEMATHESIS_EXAMPLES:-1000}
seed=${SCHEMATHESIS_SEED:-20261125}
scratch=(--scratch-path "${SCRATCH_PATH:-.build}")
venv=.venv-test

if [ "$(id -u)" -ne 0 ]; then
  # Like the real-kernel tests: skipped loudly, but under CI (CI set) a failure.
  echo "SKIPPED run-schemathesis: not root (uid $(id -u)); the agent needs root for BPF. CI runs it as root." >&2
  [ -z "${CI:-}" ] || exit 1
  exit 0
fi

# --- tools -------------------------------------------------------------------------------
if [ "$(cat "$venv/pins" 2>/dev/null)" != "${pins[*]}" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" || { echo "run-schemathesis: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" > "$venv/pins"
fi

# --- the document --------------------------------------------------------------------------
"$venv/bin/openapi-spec-validator" openapi/openapi.yaml
if [ "$(uname -m)" = x86_64 ]; then
  # The syscall enum must be the agent's table: syscall_names.h entries defined on x86_64.
  "$venv/bin/python" - <<'EOF'
import re, sys, yaml
spec = yaml.safe_load(open("openapi/openapi.yaml"))["components"]["schemas"]["SyscallName"]["enum"]
defined = set(re.findall(r"^#define __NR_(\w+)\s", open("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").read(), re.M))
table = [n for n in re.findall(r"TP_SYSCALL\((\w+)\)", open("Sources/CLibBPF/syscall_names.h").read()) if n in defined]
if spec != table:
    sys.exit(f"openapi.yaml SyscallName enum differs from the agent's table: "
             f"missing {sorted(set(table) - set(spec))}, extra {sorted(set(spec) - set(table))}")
print(f"SyscallName enum matches the agent's x86_64 table ({len(table)} syscalls)")
EOF
fi

# --- the agent -----------------------------------------------------------------------------
swift build --product traceplane "${scratch[@]}"
agent="$(swift build --show-bin-path "${scratch[@]}")/traceplane"
work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# With an admin token, so that schemathesis also checks that requests without it (or with
# a wrong one) are refused. Port 0: the kernel picks a free port; the agent logs the one
# it got. At most 64 probes, so that what schemathesis attaches stays cheap for the machine.
(umask 077; head -c 24 /dev/urandom | base64 | tr -d '\n' >"$work/admin.token")
auth="Authorization: Bearer $(cat "$work/admin.token")"
"$agent" serve --listen 127.0.0.1:0 --max-probes 64 --token-file "$work/admin.token" >"$work/agent.log" 2>&1 &
pid=$!
fail() { echo "run-schemathesis: $*" >&2; echo "--- agent log (tail)" >&2; tail -n 40 "$work/agent.log" >&2; exit 1; }
base=
for _ in $(seq 300); do
  port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/agent.log" | head -n 1)
  if [ -n "$port" ] && curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then base="http://127.0.0.1:$port"; break; fi
  kill -0 "$pid" 2>/dev/null || fail "the agent exited"
  sleep 0.1
done
[ -n "$base" ] || fail "the agent did not become ready within 30 s"
echo "agent pid $pid ready at $base"

# The agent's BPF objects and perf events, by kind (its fds; the kernel frees them on close).
bpf_fds() {
  for fd in /proc/"$pid"/fd/*; do readlink "$fd" 2>/dev/null || true; done \
    | grep -E '^anon_inode:(bpf|btf|\[perf_event\])' | sort | uniq -c | tr -s ' ' | tr '\n' ';' || true
}
baseline=$(bpf_fds)

# Two busy probes with events, so that the events endpoint streams real events of both kinds
# (hooks.py sends part of its cases to them): every read(2) on the machine, and every context
# switch, each at most 100 a second. Deleted with the rest at the end.
event_probes=conformance-reads,conformance-switches
put_probe() {
  code=$(curl -sS -o "$work/put.json" -w '%{http_code}' -H "$auth" -H 'Content-Type: application/json' \
    -X PUT "$base/v1/probes/$1" -d "$2")
  [ "$code" = 201 ] || fail "PUT /v1/probes/$1 answered $code: $(cat "$work/put.json")"
}
put_probe conformance-reads '{"target":{"type":"syscall","name":"read"},"aggregate":{"by":["comm","errno"]},"events":{"min_latency_ns":0,"max_per_second":100}}'
put_probe conformance-switches '{"target":{"type":"tracepoint","name":"sched:sched_switch"},"aggregate":{"by":["cpu","cgroup","kstack"]},"events":{"max_per_second":100,"buffer_kib":64}}'
for name in ${event_probes//,/ }; do
  for _ in $(seq 100); do
    consumed=$(curl -fsS -H "$auth" "$base/v1/probes/$name/metrics" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["events"]["consumed"])')
    [ "$consumed" -gt 0 ] && break
    sleep 0.1
  done
  [ "$consumed" -gt 0 ] || fail "probe $name streamed no event within 10 s"
done

# The first stacks of a profile read the symbol tables of every binary sampled (the agent's
# own debug build among them): about 10 s on two cores, which schemathesis's response-time
# check (10 s) would hold against whichever stacks request comes first. Paid here instead.
put_probe conformance-warm-up '{"target":{"type":"profile"},"ttl_seconds":600}'
sleep 1
curl -fsS -o /dev/null --max-time 120 -H "$auth" "$base/v1/probes/conformance-warm-up/stacks?format=json" \
  || fail "the warm-up profile's stacks failed"
curl -fsS -o /dev/null -H "$auth" -X DELETE "$base/v1/probes/conformance-warm-up"

# --- schemathesis --------------------------------------------------------------------------
status=0
# Hypothesis keeps its caches in the temporary directory, not in the work tree.
TP_EVENT_PROBES=$event_probes TP_EVENTS_SUMMARY="$work/events.json" \
HYPOTHESIS_STORAGE_DIRECTORY="$work/hypothesis" SCHEMATHESIS_HOOKS="$PWD/tests/api/hooks.py" \
  "$venv/bin/schemathesis" --no-color \
  --config-file tests/api/schemathesis.toml \
  run openapi/openapi.yaml --url "$base" --header "$auth" --checks all \
  --max-examples "$examples" --seed "$seed" --workers 2 --request-timeout 30 \
  --generation-database none || status=$?
echo "events checked by hooks.py's event_streams: $(cat "$work/events.json" 2>/dev/null || echo 'none (no summary written)')"

# --- nothing leaked ------------------------------------------------------------------------
names=$(curl -fsS -H "$auth" "$base/v1/probes" | "$venv/bin/python" -c 'import json,sys; print(*(p["name"] for p in json.load(sys.stdin)["probes"]))')
for name in $names; do
  code=$(curl -sS -o /dev/null -w '%{http_code}' -H "$auth" -X DELETE "$base/v1/probes/$name")
  # 404: its TTL ran out meanwhile.
  [ "$code" = 204 ] || [ "$code" = 404 ] || fail "DELETE /v1/probes/$name answered $code"
done
echo "deleted the $(wc -w <<<"$names") probe(s) schemathesis left"
left=$(curl -fsS -H "$auth" "$base/v1/probes")
[ "$left" = '{"probes":[]}' ] || fail "probes left after deleting them all: $left"
# Detaching runs in the background: give it a few seconds to bring the fds back to baseline.
for _ in $(seq 100); do [ "$(bpf_fds)" = "$baseline" ] && break; sleep 0.1; done
[ "$(bpf_fds)" = "$baseline" ] || fail "BPF fds not back to baseline: before '$baseline', after '$(bpf_fds)'"
curl -fsS "$base/healthz" >/dev/null || fail "the agent stopped answering /healthz"
echo "no probes and no BPF fds left (baseline '${baseline}')"

kill -TERM "$pid"
agent_status=0
wait "$pid" || agent_status=$?
pid=
[ "$agent_status" -eq 0 ] || fail "the agent exited with $agent_status after SIGTERM"
exit "$status"
