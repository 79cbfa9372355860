#!/usr/bin/env bash
# Installs the Debian packages TracePlane builds and runs with. Needs root.
#   libbpf-dev, libelf-dev, zlib1g-dev  the BPF loader (libbpf) and what it links against
#   libmicrohttpd-dev                   the embedded HTTP server
#   bpftool                             tests cross-check loaded programs, maps and links
#   curl, openssl                       tests: a real HTTP client; a throwaway CA for the TLS tests
#   prometheus                          tests: promtool check metrics, and a real Prometheus scraping the agent
#   python3-venv                        tests: venvs for schemathesis, openapi-spec-validator, kubernetes-validate
#   chromium                            tests: a real browser renders the flame graph SVG
#   fonts-dejavu-core                   a font for it (installed without recommends, chromium brings none)
#   binutils                            tests: readelf and nm, oracles for the ELF symbolizer
#   protobuf-compiler                   tests: protoc --decode, an independent decoder of the protobuf exposition
# The Swift 6 toolchain (with its clang that targets bpf) must already be on PATH.
set -euo pipefail
packages=(libbpf-dev libelf-dev zlib1g-dev libmicrohttpd-dev bpftool curl openssl pkg-config prometheus python3-venv chromium fonts-dejavu-core binutils protobuf-compiler "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "install-deps: no swift on PATH (need the Swift 6 toolchain, e.g. /opt/swift/usr/bin)" >&2; exit 1; }
command -v clang >/dev/null || { echo "install-deps: no clang on PATH (the Swift toolchain's clang builds the BPF programs)" >&2; exit 1; }
