#!/usr/bin/env bash
# Validates deploy/ offline, with no cluster and no systemd running:
#   1. the systemd unit: `systemd-analyze verify` (unit syntax, dependencies, and that
#      ExecStart exists) in a temporary root where /usr/local/bin/traceplane is the built
#      binary, then `systemd-analyze security --offline` must rate it "OK" or better;
#   2. the Kubernetes manifests: kubernetes-validate (PyPI, installed into the gitignored
#      .venv-deploy/) in strict mode, so unknown fields are errors;
#   3. the Prometheus config: promtool check config (Debian package `prometheus`), and its
#      rules and alerts: promtool check rules, then promtool test rules on synthetic series.
# Usage: tests/deploy/validate.sh [path/to/traceplane]   (default: .build/debug/traceplane)
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=${1:-.build/debug/traceplane}
[ -x "$binary" ] || { echo "validate: no executable $binary (build first, or pass its path)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "--- systemd: deploy/systemd/traceplane.service"
# --root= makes verify look for every unit (targets included) and ExecStart under the
# root, so the root gets the system's units, the unit under test and the binary.
mkdir -p "$work/root/usr/lib/systemd" "$work/root/etc/systemd/system" "$work/root/usr/local/bin"
cp -r /lib/systemd/system "$work/root/usr/lib/systemd/"
cp deploy/systemd/traceplane.service "$work/root/etc/systemd/system/"
cp "$binary" "$work/root/usr/local/bin/traceplane"
# verify only warns (exit 0) about unknown or misspelt keys: any output fails too.
if ! out=$(systemd-analyze verify --root="$work/root" traceplane.service 2>&1) || [ -n "$out" ]; then
  printf '%s\n' "$out" >&2
  echo "validate: systemd-analyze verify rejected the unit" >&2
  exit 1
fi
# Exposure from 0.0 (locked down) to 10.0 (unprotected); --threshold counts tenths. The
# unit scores 2.9 ("OK"); a change that weakens it past 4.0 fails here.
systemd-analyze security --offline=true --root="$work/root" --threshold=40 --no-pager traceplane.service >"$work/security.txt" \
  || { cat "$work/security.txt"; echo "validate: the unit's exposure rose above 4.0" >&2; exit 1; }
tail -1 "$work/security.txt"

echo "--- kubernetes: deploy/kubernetes/*.yaml"
venv=.venv-deploy
if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "1.37.0" ]; then
  echo "installing kubernetes-validate 1.37.0 into $venv (schemas of every Kubernetes release)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
"$venv/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml

echo "--- prometheus: deploy/prometheus/prometheus.yml, rules.yml"
promtool check rules deploy/prometheus/rules.yml
# The pod joins (rules.test.yml), the latency quantiles and the alerts.
promtool test rules tests/deploy/*.test.yml
# The credentials file is a path inside the Prometheus pod; promtool insists it exists.
# Debian's promtool is built without Kubernetes service discovery; then the scrape job is
# checked with a static target in its place, and the kubernetes_sd_configs block by
# check_sd.py against the fields and meta labels Prometheus documents.
mkdir -p "$work/prom"
echo "read-token-for-promtool-check" >"$work/prom/read.token"
sed "s#credentials_file: .*#credentials_file: $work/prom/read.token#" deploy/prometheus/prometheus.yml >"$work/prom/prometheus.yml"
# rule_files is relative to the config: the copy needs rules.yml beside it.
cp deploy/prometheus/rules.yml "$work/prom/"
if promtool check config --syntax-only "$work/prom/prometheus.yml" >/dev/null 2>&1; then
  promtool check config "$work/prom/prometheus.yml"
else
  echo "(this promtool has no kubernetes_sd_configs: checking the job with a static target in its place)"
  "$venv/bin/python" tests/deploy/check_sd.py deploy/prometheus/prometheus.yml "$work/prom/static.yml" "$work/prom/read.token"
  promtool check config "$work/prom/static.yml"
fi
echo "deploy: all valid"
