/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Map value layouts of the shared raw_syscalls hook (syscall_hub.bpf.c), shared with user
 * space. One program pair serves every syscall probe that uses it; each probe owns a slot:
 * its filter, its aggregates, its process table.
 */
#ifndef TRACEPLANE_SYSCALL_HUB_H
#define TRACEPLANE_SYSCALL_HUB_H

#include "probe.h"

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
