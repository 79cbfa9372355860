/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Aggregation helpers shared by latency.bpf.c (a probe's own object) and syscall_hub.bpf.c
 * (BPF side only; the map layouts they write are in include/traceplane/). */
#ifndef TRACEPLANE_AGGREGATE_H
#define TRACEPLANE_AGGREGATE_H

/* Histogram indexes pass through barrier_var (bpf_helpers.h) before their bounds check or
 * mask: clang otherwise moves a mask into an OR of partial results, which the 6.1 verifier
 * cannot bound ("unbounded memory access"). */

/* The log2 histogram slot of `v`: floor(log2(v)), 0 for 0 and 1. */
static __always_inline u32 log2_slot(u64 v)
{
	u32 r = 0, shift;
	shift = (v > 0xffffffffULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xffff) << 4; v >>= shift; r |= shift;
	shift = (v > 0xff) << 3; v >>= shift; r |= shift;
	shift = (v > 0xf) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

/* Offsets of `group_leader` and `comm` in struct task_struct, read from the kernel's BTF by
 * user space once (no CO-RE relocation, so loading an object never parses vmlinux BTF);
 * 0 when unknown, and the calling thread's comm is recorded instead. */
const volatile u32 task_group_leader_offset = 0;
const volatile u32 task_comm_offset = 0;

/* The process's name: the thread-group leader's comm, not the calling thread's (threads
 * rename themselves, e.g. "MHD-single"; a process table keyed by tgid names processes). */
static __always_inline void process_comm(char *comm)
{
	char name[TP_COMM_LEN];
	u64 id = bpf_get_current_pid_tgid();
	/* The leader itself: its comm is the current one, one helper call instead of two reads. */
	if ((u32)id != id >> 32 && task_group_leader_offset && task_comm_offset) {
		u64 task = bpf_get_current_task();
		u64 leader = 0;
		/* Read into a local: a failed read zeroes its destination, and a reader of the
		 * table must never see an empty name where there was one. */
		if (bpf_probe_read_kernel(&leader, sizeof(leader), (void *)(task + task_group_leader_offset)) == 0 && leader &&
		    bpf_probe_read_kernel(name, sizeof(name), (void *)(leader + task_comm_offset)) == 0) {
			__builtin_memcpy(comm, name, sizeof(name));
			return;
		}
	}
	if (bpf_get_current_comm(name, sizeof(name)) == 0)
		__builtin_memcpy(comm, name, sizeof(name));
}

/* Per-process call counts in an array map of struct tp_proc: a table of 2^bits entries
 * starting at `base`, open addressing keyed by tgid, entries claimed with compare-and-swap.
 * An array lookup is inlined by the verifier; the LRU hash it replaces cost about 25 ns
 * more per traced call. A process whose neighbourhood is full is counted in the totals
 * only (by_process then lists fewer processes). The entry's name is the process's
 * (see process_comm), read when the entry is claimed and refreshed now and then. */
static __always_inline void proc_table_count(void *table, u32 base, u32 bits, u32 tgid, u64 weight)
{
	u32 home = (tgid * 2654435761u) >> (32 - bits);
	for (int i = 0; i < TP_PROCS_PROBES; i++) {
		u32 key = base + ((home + i) & ((1u << bits) - 1));
		struct tp_proc *p = bpf_map_lookup_elem(table, &key);
		if (!p)
			return;
		u32 owner = p->tgid;
		if (owner == 0) {
			owner = __sync_val_compare_and_swap(&p->tgid, 0, tgid);
			if (owner == 0) {
				process_comm(p->comm);
				owner = tgid;
			}
		}
		if (owner == tgid) {
			u64 n = p->calls + 1; /* a plain read: only decides when to refresh the name */
			__sync_fetch_and_add(&p->calls, weight);
			/* The name is read again at 2, 4, 8 … calls and then every 1,024th, so a
			 * process that execs after its first traced call (fork, then exec) soon
			 * shows its new name; a process that exited keeps the last one. */
			if (n > 1 && ((n & (n - 1)) == 0 || (n & 1023) == 0))
				process_comm(p->comm);
			return;
		}
	}
}


/* An argument as its C type has it: the low `len` bytes (all for 0 or 8), sign-extended
 * for a signed type. Registers may hold anything above a 32-bit int. */
static __always_inline u64 narrow(u64 v, u32 len, bool is_signed)
{
	if (len == 0 || len >= 8)
		return v;
	u32 shift = 64 - 8 * len;
	return is_signed ? (u64)(((s64)(v << shift)) >> shift) : (v << shift) >> shift;
}

/* The value histogram slot of `v`: log2 (negative values in the last slot), or linear
 * (below `min` in slot 0, at or above the top in slot n-1). */
static __always_inline u32 value_slot(s64 v, u32 kind, s64 min, s64 step, u32 n)
{
	if (kind == TP_H_LOG2)
		return v < 0 ? TP_LOG2_SLOTS - 1 : log2_slot((u64)v);
	if (v < min || step <= 0)
		return 0;
	u64 i = (u64)(v - min) / (u64)step + 1;
	return i >= n - 1 ? n - 1 : (u32)i;
}

/* Adds one call to a key table: creates the key from `zero` (a value of the table's size,
 * all zeros) when it is new; false when the table has no room for it. Racing creators of
 * one key both end on the same entry (the second finds it). */
static __always_inline struct tp_key_stats *key_entry(void *table, void *key, void *zero)
{
	struct tp_key_stats *v = bpf_map_lookup_elem(table, key);
	if (v)
		return v;
	long err = bpf_map_update_elem(table, key, zero, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST */)
		return 0;
	return bpf_map_lookup_elem(table, key);
}

/* Whether one more event may go out at `rate` per second: `word` holds the current second
 * of the monotonic clock above TP_EV_COUNT_BITS and the events admitted in it below, for
 * the whole probe (not per CPU: per-CPU buckets would let ncpu times the rate through, or
 * starve a probe whose calls all run on one CPU). Exact: every event is admitted or
 * refused once; a CPU that loses the compare-and-swap 8 times in a row refuses it. */
static __always_inline bool tp_event_admit(u64 *word, u64 now, u32 rate)
{
	u64 second = now / 1000000000ULL;
	for (int i = 0; i < 8; i++) {
		u64 old = *(volatile u64 *)word;
		u64 next;
		if ((old >> TP_EV_COUNT_BITS) != second)
			next = (second << TP_EV_COUNT_BITS) | 1;
		else if ((old & TP_EV_MAX_RATE) >= rate)
			return false;
		else
			next = old + 1;
		if (__sync_val_compare_and_swap(word, old, next) == old)
			return true;
	}
	return false;
}

/* Everything of an event but its key, which is zeroed. */
static __always_inline void tp_event_fill(struct tp_event *e, u64 now, u64 latency, s64 ret, u32 flags)
{
	u64 id = bpf_get_current_pid_tgid();
	e->time_ns = now;
	e->latency_ns = latency;
	e->ret = ret;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = id >> 32;
	e->tid = (u32)id;
	e->cpu = bpf_get_smp_processor_id();
	e->flags = flags;
	process_comm(e->comm);
	bpf_get_current_comm(e->thread, TP_COMM_LEN);
	__builtin_memset(e->key, 0, TP_KEY_MAX);
}
#endif
