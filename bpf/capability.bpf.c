// SPDX-License-Identifier: GPL-2.0
/*
 * Minimal programs, one per attach mechanism, used to detect what this kernel really
 * supports. User space autoloads exactly one of them, attaches it to a safe target,
 * fires the event from its own process, and checks that `hits` moved.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* The agent's tgid: only events from our own process count. */
const volatile u32 target_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} hits SEC(".maps");

static __always_inline int record_hit(void)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid != target_tgid)
		return 0;
	u32 key = 0;
	u64 *value = bpf_map_lookup_elem(&hits, &key);
	if (value)
		__sync_fetch_and_add(value, 1);
	return 0;
}

SEC("fentry")
int cap_fentry(void *ctx) { return record_hit(); }

/* Calls bpf_get_func_ret as the probes' fexit program (lat_fexit) does: a kernel whose
 * fexit programs cannot read the return value (before 5.17) must not report fexit usable. */
SEC("fexit")
int cap_fexit(void *ctx)
{
	u64 ret = 0;
	bpf_get_func_ret(ctx, &ret);
	return record_hit();
}

SEC("kprobe")
int cap_kprobe(void *ctx) { return record_hit(); }

SEC("kretprobe")
int cap_kretprobe(void *ctx) { return record_hit(); }

SEC("kprobe.multi")
int cap_kprobe_multi(void *ctx) { return record_hit(); }

SEC("tracepoint")
int cap_tracepoint(void *ctx) { return record_hit(); }

SEC("raw_tracepoint")
int cap_raw_tracepoint(void *ctx) { return record_hit(); }

SEC("tp_btf")
int cap_tp_btf(void *ctx) { return record_hit(); }

SEC("uprobe")
int cap_uprobe(void *ctx) { return record_hit(); }

SEC("uretprobe")
int cap_uretprobe(void *ctx) { return record_hit(); }

SEC("perf_event")
int cap_perf_event(void *ctx) { return record_hit(); }

char LICENSE[] SEC("license") = "GPL";
