/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Aggregation helpers shared by latency.bpf.c (a probe's own object) and syscall_hub.bpf.c
 * (BPF side only; the map layouts they write are in include/traceplane/). */
#ifndef TRACEPLANE_AGGREGATE_H
#define TRACEPLANE_AGGREGATE_H

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
	if (task_group_leader_offset && task_comm_offset) {
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
static __always_inline void proc_table_count(void *table, u32 base, u32 bits, u32 tgid)
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
			__sync_fetch_and_add(&p->calls, 1);
			/* The name is read again at 2, 4, 8 … calls and then every 1,024th, so a
			 * process that execs after its first traced call (fork, then exec) soon
			 * shows its new name; a process that exited keeps the last one. */
			if (n > 1 && ((n & (n - 1)) == 0 || (n & 1023) == 0))
				process_comm(p->comm);
			return;
		}
	}
}

#endif
