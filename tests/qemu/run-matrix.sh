#!/usr/bin/env bash
# Kernel matrix: boots stock Debian kernels under QEMU (software emulation, no KVM needed)
# from an initramfs holding the agent, runs `traceplane selftest` there and on this host,
# asserts the results (check_selftest.py) and regenerates docs/kernel-matrix.md. Needs root.
#
# Installs (apt):  qemu-system-x86  boots the kernels
#                  busybox-static   the initramfs userland (sh, mount, poweroff) and its cpio
# Downloads (apt-get download, cached in .cache/qemu/): the newest linux-image-6.1.0-*-cloud-amd64
# and, when the archive has one, the newest linux-image-6.12.*-cloud-amd64. The cloud kernels
# build in everything the test uses (BPF, BTF, kprobes, tracefs, serial console, initrd), so
# no modules are copied; debugfs is not mounted (kprobes attach through the perf PMU).
# Fails loudly, never skips, when QEMU or the 6.1 kernel cannot be had.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$SECONDS
cache=.cache/qemu
die() { echo "!!! KERNEL MATRIX FAILED: $*" >&2; exit 1; }
mkdir -p "$cache/debs" "$cache/logs"

if ! command -v qemu-system-x86_64 >/dev/null || ! dpkg-query -W -f="\${Status}" busybox-static 2>/dev/null | grep -q "install ok installed"; then
  echo "--- installing qemu-system-x86 and busybox-static"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 busybox-static >/dev/null \
    || die "cannot install qemu-system-x86 and busybox-static"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is not on PATH"

echo "--- building the release agent"
swift build -c release --product traceplane || die "the release build failed"
bin=.build/release/traceplane

# newest PATTERN: the newest kernel package whose name matches PATTERN (extended regexp).
newest() { apt-cache search --names-only "$1" | awk '{print $1}' | sort -V | tail -n 1; }

# kernel PACKAGE: downloads (once) and unpacks the package, prints the path of its vmlinuz.
kernel() {
  local pkg=$1 deb dir=$cache/x/$1
  if ! ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1; then
    (cd "$cache/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) || return 1
    deb=$(ls "$cache/debs/${pkg}"_*.deb | head -n 1)
    mkdir -p "$dir" && dpkg-deb -x "$deb" "$dir"
    rm -rf "$dir/lib"  # only boot/ is used
  fi
  ls "$dir"/boot/vmlinuz-*
}

echo "--- building the initramfs"
root=$cache/initramfs
rm -rf "$root" && mkdir -p "$root"/{bin,dev,proc,sys,tmp}
cp /bin/busybox "$root/bin/" && for a in sh mount echo poweroff; do ln -s busybox "$root/bin/$a"; done
cp "$bin" "$root/bin/traceplane"
for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
  mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"
done
cp tests/qemu/init "$root/init"
(cd "$root" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) | gzip -1 > "$cache/initramfs.cpio.gz"

k61=$(newest '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$')
[ -n "$k61" ] || die "apt has no linux-image-6.1.0-*-cloud-amd64 (after apt-get update)"
k612=$(newest '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-cloud-amd64$')
columns=()
boot() {  # LABEL PACKAGE
  local vmlinuz log=$cache/logs/$1.log
  vmlinuz=$(kernel "$2") || die "cannot download or unpack $2"
  echo "--- booting $2 under qemu (TCG)"
  local t=$SECONDS
  timeout 300 qemu-system-x86_64 -m 1024 -smp 1 -nographic -no-reboot -kernel "$vmlinuz" \
    -initrd "$cache/initramfs.cpio.gz" -append "console=ttyS0 panic=-1 quiet" </dev/null >"$log" 2>&1 \
    || { tail -n 40 "$log" >&2; die "qemu failed or timed out booting $2 (log: $log)"; }
  echo "    booted and tested in $((SECONDS - t)) s"
  python3 tests/qemu/check_selftest.py check --profile fentry-kprobe "$log" --vm || die "assertions failed on $2 (log: $log)"
  columns+=("$1=$log")
}
boot "Debian 6.1" "$k61"
if [ -n "$k612" ]; then
  boot "Debian 6.12" "$k612"
else
  echo "!!! NO 6.12 KERNEL in the configured archive (apt-cache search linux-image-6.12): matrix has 6.1 only" >&2
fi

echo "--- self-test on this host"
"$bin" selftest >"$cache/logs/host.log" || { cat "$cache/logs/host.log" >&2; die "selftest failed on this host"; }
python3 tests/qemu/check_selftest.py check --profile host "$cache/logs/host.log" || die "host assertions failed"

mkdir -p docs
python3 tests/qemu/check_selftest.py matrix docs/kernel-matrix.md "this host=$cache/logs/host.log" "${columns[@]}"
echo "--- kernel matrix passed in $((SECONDS - started)) s (docs/kernel-matrix.md regenerated)"
