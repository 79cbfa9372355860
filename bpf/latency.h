/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Types shared by latency.bpf.c and user space: fixed width, no kernel headers. */
#ifndef TRACEPLANE_LATENCY_H
#define TRACEPLANE_LATENCY_H

#define TP_HIST_SLOTS 64
#define TP_COMM_LEN 16

/* Per-CPU totals, in map `stats` (one entry). */
struct tp_stats {
	__u64 calls;      /* completed calls (events for count-only targets) */
	__u64 errors;     /* calls that returned a negative value */
	__u64 lat_count;  /* calls with a measured latency */
	__u64 lat_sum_ns; /* sum of measured latencies */
};

/* Entry of a process table (map `procs`, an array): an open-addressing table keyed by
 * tgid, claimed with compare-and-swap (see aggregate.h). */
struct tp_proc {
	__u32 tgid;       /* 0: free */
	__u32 pad;
	__u64 calls;
	char comm[TP_COMM_LEN];
};
#define TP_PROCS_BITS 10  /* a probe's own table: 1,024 processes */
#define TP_PROCS_PROBES 8 /* entries tried for one process */

/* The shared raw_syscalls hook (syscall_hub.bpf.c): one program pair for every syscall
 * probe that uses it. Each probe owns a slot: its filter, its aggregates. */
#define HUB_SLOTS 256     /* probes per hub as compiled; user space sets the maps' size at load */
#define HUB_PER_NR 6      /* probes on one syscall */
#define HUB_MAX_NR 1024   /* syscall numbers */
#define HUB_PROCS_BITS 8  /* process table entries per slot: 256 */

/* Value of map `by_nr` (array keyed by syscall number): the slots tracing it. */
struct hub_nr {
	__u32 count;
	__u32 slots[HUB_PER_NR];
	__u32 pad;
};

/* Value of map `filters` (array keyed by slot). */
struct hub_filter {
	__u32 tgid;       /* 0: every process */
	__u32 comm_set;
	char comm[TP_COMM_LEN];
};

/* Value of map `aggs` (per-CPU array keyed by slot): totals and log2 latency histogram. */
struct hub_agg {
	struct tp_stats stats;
	__u64 hist[TP_HIST_SLOTS];
};


#endif
