/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Types shared by latency.bpf.c and user space: fixed width, no kernel headers. */
#ifndef TRACEPLANE_LATENCY_H
#define TRACEPLANE_LATENCY_H

#define TP_HIST_SLOTS 64
#define TP_COMM_LEN 16
#define TP_MAX_PROCS 1024

/* Per-CPU totals, in map `stats` (one entry). */
struct tp_stats {
	__u64 calls;      /* completed calls (events for count-only targets) */
	__u64 errors;     /* calls that returned a negative value */
	__u64 lat_count;  /* calls with a measured latency */
	__u64 lat_sum_ns; /* sum of measured latencies */
};

/* Value of map `procs` (LRU hash keyed by tgid). */
struct tp_proc {
	__u64 calls;
	char comm[TP_COMM_LEN];
};

#endif
