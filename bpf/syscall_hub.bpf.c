// SPDX-License-Identifier: GPL-2.0
/*
 * The shared raw_syscalls hook. One program pair on raw_syscalls sys_enter/sys_exit serves
 * every syscall probe that uses tp_btf (or raw_tp): the kernel runs it once per syscall of
 * the host whatever the number of probes, and it finds the probes of a syscall with one
 * array lookup. Attaching a program per probe to raw_syscalls instead makes every syscall
 * of the host pay for every probe (measured: +7.7 us per syscall with 64 probes).
 *
 * User space gives each probe a slot (its filter in `filters`, its aggregates in `aggs`
 * and `procs`; it sizes those maps to the agent's probe limit before load) and lists the
 * slots of each syscall number in `by_nr`. The entry program records one timestamp per
 * call with the slots whose filter passed; the exit program aggregates into exactly those.
 * Slots beyond a map's size fail its lookup, which the verifier checks.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "traceplane/syscall_hub.h"
#include "aggregate.h"

const volatile bool use_task_storage = true;   /* else `starts` is a hash keyed by thread id */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HUB_MAX_NR);
	__type(key, u32);
	__type(value, struct hub_nr);
} by_nr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HUB_SLOTS);
	__type(key, u32);
	__type(value, struct hub_filter);
} filters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HUB_SLOTS);
	__type(key, u32);
	__type(value, struct hub_agg);
} aggs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HUB_SLOTS << HUB_PROCS_BITS);
	__type(key, u32);
	__type(value, struct tp_proc);
} procs SEC(".maps");

struct hub_start {
	u64 ts;    /* entry time; 0 when no call is in flight */
	u32 tgid;  /* saves a helper call at exit */
	u32 count; /* entries of `slots` */
	u32 slots[HUB_PER_NR]; /* slot + 1 of each probe whose filter passed at entry, else 0 */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct hub_start);
} starts SEC(".maps");

static __always_inline struct hub_start *start_slot(bool create)
{
	if (use_task_storage) {
		struct task_struct *task = bpf_get_current_task_btf();
		return bpf_task_storage_get(&starts, task, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	}
	u32 tid = (u32)bpf_get_current_pid_tgid();
	if (create) {
		struct hub_start zero = {};
		bpf_map_update_elem(&starts, &tid, &zero, BPF_ANY);
	}
	return bpf_map_lookup_elem(&starts, &tid);
}

static __always_inline bool comm_matches(const char *comm, const struct hub_filter *f)
{
	for (int i = 0; i < TP_COMM_LEN; i++) {
		if (comm[i] != f->comm[i])
			return false;
		if (comm[i] == 0)
			break;
	}
	return true;
}

/* One call into one slot. A global function: the verifier checks it once, not once per
 * slot of the exit program's loop (which took it 200,000 instructions and 270 ms). */
__noinline int aggregate(u32 slot, u64 delta, u32 bucket, s64 ret, u32 tgid)
{
	struct hub_agg *a = bpf_map_lookup_elem(&aggs, &slot);
	if (a) {
		a->stats.calls++;
		if (ret < 0)
			a->stats.errors++;
		a->stats.lat_count++;
		a->stats.lat_sum_ns += delta;
		a->hist[bucket & (TP_HIST_SLOTS - 1)]++;
	}
	proc_table_count(&procs, slot << HUB_PROCS_BITS, HUB_PROCS_BITS, tgid);
	return 0;
}

/* Every syscall of the host comes here: an untraced one costs one array lookup. */
static __always_inline int hub_enter(s64 nr)
{
	u32 key = (u32)nr; /* negative numbers fall outside the array */
	struct hub_nr *e = bpf_map_lookup_elem(&by_nr, &key);
	if (!e || e->count == 0)
		return 0;
	u32 count = e->count;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	char comm[TP_COMM_LEN] = {};
	bool have_comm = false;
	u32 passed[HUB_PER_NR] = {};
	bool any = false;
	for (int i = 0; i < HUB_PER_NR; i++) {
		if (i >= count)
			break;
		u32 slot = e->slots[i];
		struct hub_filter *f = bpf_map_lookup_elem(&filters, &slot);
		if (!f)
			continue;
		if (f->tgid && f->tgid != tgid)
			continue;
		if (f->comm_set) {
			if (!have_comm) {
				bpf_get_current_comm(comm, sizeof(comm));
				have_comm = true;
			}
			if (!comm_matches(comm, f))
				continue;
		}
		passed[i] = slot + 1;
		any = true;
	}
	if (!any)
		return 0;
	struct hub_start *st = start_slot(true);
	if (!st)
		return 0;
	__builtin_memcpy(st->slots, passed, sizeof(passed));
	st->count = count;
	st->tgid = tgid;
	st->ts = bpf_ktime_get_ns();
	return 0;
}

static __always_inline int hub_exit(s64 nr, s64 ret)
{
	u32 key = (u32)nr;
	struct hub_nr *e = bpf_map_lookup_elem(&by_nr, &key);
	if (!e || e->count == 0)
		return 0;
	struct hub_start *st = start_slot(false);
	if (!st || st->ts == 0)
		return 0; /* filtered out at entry, or entry not seen (attached mid-call) */
	u64 delta = bpf_ktime_get_ns() - st->ts;
	u32 tgid = st->tgid;
	u32 n = st->count;
	st->ts = 0;
	u32 bucket = log2_slot(delta);
	if (bucket >= TP_HIST_SLOTS)
		bucket = TP_HIST_SLOTS - 1;
	for (int i = 0; i < HUB_PER_NR; i++) {
		if (i >= n)
			break;
		u32 slot = st->slots[i];
		if (slot)
			aggregate(slot - 1, delta, bucket, ret, tgid);
	}
	return 0;
}

/* raw_syscalls via BTF tracepoints: sys_enter(regs, id), sys_exit(regs, ret). */
SEC("tp_btf")
int hub_btf_enter(u64 *ctx) { return hub_enter((s64)ctx[1]); }

SEC("tp_btf")
int hub_btf_exit(u64 *ctx)
{
#if defined(__TARGET_ARCH_x86)
	/* A BTF-typed load the verifier checks: no helper call on every syscall exit. */
	return hub_exit((s64)((struct pt_regs *)ctx[0])->orig_ax, (s64)ctx[1]);
#else
	return 0;
#endif
}

/* raw_syscalls via raw tracepoints: the same, with untyped arguments. */
SEC("raw_tracepoint")
int hub_raw_enter(struct bpf_raw_tracepoint_args *ctx) { return hub_enter((s64)ctx->args[1]); }

SEC("raw_tracepoint")
int hub_raw_exit(struct bpf_raw_tracepoint_args *ctx)
{
#if defined(__TARGET_ARCH_x86)
	u64 nr = -1;
	bpf_probe_read_kernel(&nr, sizeof(nr), &((struct pt_regs *)ctx->args[0])->orig_ax);
	return hub_exit((s64)nr, (s64)ctx->args[1]);
#else
	return 0;
#endif
}

char LICENSE[] SEC("license") = "GPL";
