// SPDX-License-Identifier: GPL-2.0
/*
 * One aggregation body with thin attach flavours, as in libbpf-tools' funclatency:
 * user space autoloads the entry/exit pair of one flavour and binds it to the target.
 * Everything is aggregated in the kernel (per-CPU counters and a log2 histogram); no
 * per-event data reaches user space.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "traceplane/probe.h"
#include "aggregate.h"

/* Settings filled in before load. */
const volatile u32 filter_tgid = 0;            /* 0: every process */
const volatile bool filter_comm_set = false;
const volatile char filter_comm[TP_COMM_LEN] = {};
const volatile bool use_task_storage = true;   /* else `starts` is a hash keyed by thread id */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct tp_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TP_HIST_SLOTS);
	__type(key, u32);
	__type(value, u64);
} hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << TP_PROCS_BITS);
	__type(key, u32);
	__type(value, struct tp_proc);
} procs SEC(".maps");

/* Entry timestamps: task-local storage, or (map type changed before load) a hash keyed
 * by thread id on kernels without task storage for this program type. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, u64);
} starts SEC(".maps");

static __always_inline bool pass_filter(void)
{
	if (filter_tgid) {
		u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (tgid != filter_tgid)
			return false;
	}
	if (filter_comm_set) {
		char comm[TP_COMM_LEN];
		bpf_get_current_comm(comm, sizeof(comm));
#pragma unroll
		for (int i = 0; i < TP_COMM_LEN; i++) {
			if (comm[i] != filter_comm[i])
				return false;
			if (comm[i] == 0)
				break;
		}
	}
	return true;
}

static __always_inline void count_process(u32 tgid)
{
	proc_table_count(&procs, 0, TP_PROCS_BITS, tgid);
}

static __always_inline u64 *start_slot(bool create)
{
	if (use_task_storage) {
		struct task_struct *task = bpf_get_current_task_btf();
		return bpf_task_storage_get(&starts, task, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	}
	u32 tid = (u32)bpf_get_current_pid_tgid();
	if (create) {
		u64 zero = 0;
		bpf_map_update_elem(&starts, &tid, &zero, BPF_ANY);
	}
	return bpf_map_lookup_elem(&starts, &tid);
}

static __always_inline int on_entry(void)
{
	if (!pass_filter())
		return 0;
	u64 *ts = start_slot(true);
	if (ts)
		*ts = bpf_ktime_get_ns();
	return 0;
}

/* No filter here: only calls that passed it at entry have a timestamp, so the lookup
 * filters (and a helper call less on every traced call). */
static __always_inline int on_exit(s64 ret)
{
	u64 *ts = start_slot(false);
	if (!ts || *ts == 0)
		return 0; /* filtered out at entry, or entry not seen (probe attached mid-call) */
	u64 delta = bpf_ktime_get_ns() - *ts;
	*ts = 0;
	u32 key = 0;
	struct tp_stats *s = bpf_map_lookup_elem(&stats, &key);
	if (s) {
		s->calls++;
		if (ret < 0)
			s->errors++;
		s->lat_count++;
		s->lat_sum_ns += delta;
	}
	u32 slot = log2_slot(delta);
	if (slot >= TP_HIST_SLOTS)
		slot = TP_HIST_SLOTS - 1;
	u64 *bucket = bpf_map_lookup_elem(&hist, &slot);
	if (bucket)
		(*bucket)++;
	count_process(bpf_get_current_pid_tgid() >> 32);
	return 0;
}

static __always_inline int on_event(void)
{
	if (!pass_filter())
		return 0;
	u32 key = 0;
	struct tp_stats *s = bpf_map_lookup_elem(&stats, &key);
	if (s)
		s->calls++;
	count_process(bpf_get_current_pid_tgid() >> 32);
	return 0;
}

/* fentry/fexit (kfunc/kretfunc): target bound at load time. */
SEC("fentry")
int lat_fentry(void *ctx) { return on_entry(); }

SEC("fexit")
int lat_fexit(void *ctx)
{
	u64 ret = 0;
	bpf_get_func_ret(ctx, &ret);
	return on_exit((s64)ret);
}

/* kprobe/kretprobe. */
SEC("kprobe")
int lat_kprobe(struct pt_regs *ctx) { return on_entry(); }

SEC("kretprobe")
int lat_kretprobe(struct pt_regs *ctx) { return on_exit((s64)PT_REGS_RC(ctx)); }

/* Per-syscall perf tracepoints syscalls:sys_enter_X / sys_exit_X. */
struct syscall_exit_args {
	u64 common;
	s32 nr;
	s64 ret;
};

SEC("tracepoint")
int lat_sys_enter(void *ctx) { return on_entry(); }

SEC("tracepoint")
int lat_sys_exit(struct syscall_exit_args *ctx) { return on_exit(ctx->ret); }

/* raw_syscalls sys_enter/sys_exit: see syscall_hub.bpf.c, shared by all syscall probes. */

/* uprobe/uretprobe. */
SEC("uprobe")
int lat_uprobe(struct pt_regs *ctx) { return on_entry(); }

SEC("uretprobe")
int lat_uretprobe(struct pt_regs *ctx) { return on_exit((s64)PT_REGS_RC(ctx)); }

/* Tracepoint targets count events; they have no latency. */
SEC("tp_btf")
int cnt_tp_btf(void *ctx) { return on_event(); }

SEC("raw_tracepoint")
int cnt_raw_tp(void *ctx) { return on_event(); }

SEC("tracepoint")
int cnt_tracepoint(void *ctx) { return on_event(); }

char LICENSE[] SEC("license") = "GPL";
