/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Map value layouts of a probe's own object (latency.bpf.c), shared with user space:
 * fixed-width types only. BPF programs get __u32 and friends from vmlinux.h; user space
 * (the CBPFLayouts target, imported by Swift) from <linux/types.h>. bpf/layouts.c checks
 * the sizes and offsets both sides rely on.
 */
#ifndef TRACEPLANE_PROBE_H
#define TRACEPLANE_PROBE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

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
 * tgid, claimed with compare-and-swap (see aggregate.h). `comm` is the process's name:
 * the thread-group leader's comm, read when the entry is claimed. */
struct tp_proc {
	__u32 tgid;       /* 0: free */
	__u32 pad;
	__u64 calls;
	char comm[TP_COMM_LEN];
};
#define TP_PROCS_BITS 10  /* a probe's own table: 1,024 processes */
#define TP_PROCS_PROBES 8 /* entries tried for one process */

#endif
