/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Aggregation helpers shared by latency.bpf.c (a probe's own object) and syscall_hub.bpf.c. */
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

/* Per-process call counts in an array map of struct tp_proc: a table of 2^bits entries
 * starting at `base`, open addressing keyed by tgid, entries claimed with compare-and-swap.
 * An array lookup is inlined by the verifier; the LRU hash it replaces cost about 25 ns
 * more per traced call. A process whose neighbourhood is full is counted in the totals
 * only (by_process then lists fewer processes). */
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
				bpf_get_current_comm(p->comm, sizeof(p->comm));
				owner = tgid;
			}
		}
		if (owner == tgid) {
			__sync_fetch_and_add(&p->calls, 1);
			return;
		}
	}
}

#endif
