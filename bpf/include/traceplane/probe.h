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

/* How a cgroup filter (filter.cgroup, container_id, pod_uid) is checked in the kernel:
 * the current task's cgroup v2 ancestor at the filter's level compared with the filter's
 * id (bpf_get_current_ancestor_cgroup_id), or membership of the cgroup in a cgroup array
 * (bpf_current_task_under_cgroup) where that helper is missing or the levels are unknown.
 * Both match the cgroup and every descendant, including ones created later. */
enum tp_cgroup_mode {
	TP_CG_NONE = 0,
	TP_CG_ANCESTOR = 1,
	TP_CG_UNDER = 2,
};

/* Per-CPU totals, in map `stats` (one entry). */
struct tp_stats {
	__u64 calls;        /* completed calls (events for count-only targets) */
	__u64 errors;       /* calls that returned a negative value */
	__u64 lat_count;    /* calls with a measured latency */
	__u64 lat_sum_ns;   /* sum of measured latencies */
	__u64 dropped_keys; /* calls counted above whose key found no room in the key table */
	__u64 stack_full;   /* kstack/ustack parts not recorded: the stack map had no room */
	__u64 events;       /* events written to the probe's ring buffer */
	__u64 throttled;    /* events over events.max_per_second: not written */
	__u64 lost;         /* events the ring buffer had no room for (nobody drained it in time) */
	__u64 seen;         /* budgeted probes: calls (events) that passed the filter, recorded or not */
	__u64 estimated;    /* the part of `calls` that comes from 1-in-N sampling (each call it
	                     * records is counted N times): an estimate, not a count */
	__u64 sample_tick;  /* budgeted probes: calls since the last recorded one (not a count) */
};

/*
 * Budget control (spec `budget`, serve --max-cpu-percent): written by user space, read by
 * the programs of a probe built with budget_on (one entry of map `budget`; the hub's
 * `slot_budget` has one per slot). A budgeted probe counts every call that passes its
 * filter in `seen`; with sample_every N > 1 it records one call in N (per CPU) and counts
 * it N times, so the totals, histograms and keys stay estimates of the truth; suspended, it
 * records nothing.
 */
struct tp_budget {
	__u32 sample_every; /* 0 or 1: every call */
	__u32 suspended;
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

/*
 * Keyed aggregation (spec `aggregate`): a hash map from a packed key of up to three parts
 * to per-CPU calls, errors and a histogram of the probe's value. User space packs and
 * unpacks keys with the layout it chose before load (every part 8-byte aligned).
 */
#define TP_KEY_PARTS 3
#define TP_KEY_MAX 128    /* bytes of a packed key */
#define TP_STR_LEN 64     /* a string key part: at most 63 bytes and a NUL */
#define TP_ARGS 6         /* arguments readable at entry */
#define TP_LOG2_SLOTS 65  /* log2 value histogram: slots 0-63, and 64 for negative values */

enum tp_key_kind {
	TP_K_NONE = 0,
	TP_K_PID = 1,          /* tgid */
	TP_K_TID = 2,
	TP_K_COMM = 3,         /* the process's name (thread-group leader's comm), 16 bytes */
	TP_K_THREAD = 4,       /* the thread's comm, 16 bytes */
	TP_K_CGROUP = 5,       /* cgroup v2 id */
	TP_K_CPU = 6,
	TP_K_ERRNO = 7,        /* -ret for a negative return, else 0 */
	TP_K_RET = 8,
	TP_K_ARG = 9,          /* argument `arg` (0-5), recorded at entry */
	TP_K_ARG_STR = 10,     /* string that argument `arg` points to, read at entry */
	TP_K_FIELD = 11,       /* tracepoint record field: `len` bytes at offset `arg` */
	TP_K_FIELD_STR = 12,   /* tracepoint record char[len] at offset `arg` */
	TP_K_FIELD_DATALOC = 13, /* tracepoint record __data_loc char[] at offset `arg` */
	TP_K_KSTACK = 14,      /* kernel stack: the hash its frames are stored under in map `stacks` */
	TP_K_USTACK = 15,      /* user stack: the hash, then the tgid to symbolize it in (16 bytes) */
};

/* Frames a stack map entry holds (the kernel's default perf_event_max_stack). */
#define TP_STACK_DEPTH 127
/* Stack parts that are not a hash (hashes are odd). */
#define TP_STACK_NONE 0   /* no stack: a kernel thread has no user stack */
#define TP_STACK_FULL 2   /* not recorded: the stack map had no room */

enum tp_value_kind {
	TP_V_NONE = 0,
	TP_V_LATENCY = 1,
	TP_V_RET = 2,
	TP_V_ARG = 3,          /* argument `arg`, recorded at entry */
	TP_V_FIELD = 4,        /* tracepoint record field: `len` bytes at offset `arg` */
};

enum tp_hist_kind {
	TP_H_LOG2 = 0,         /* TP_LOG2_SLOTS slots */
	TP_H_LINEAR = 1,       /* slot 0: below min; 1..n-2: [min + (i-1)*step, min + i*step); n-1: max and above */
};

/* Head of a key table's value; `hist` follows with as many slots as the probe's histogram has. */
struct tp_key_stats {
	__u64 calls;
	__u64 errors;
	__u64 count;  /* values recorded */
	__s64 sum;    /* their sum */
};

/*
 * Events (spec `events`): each call at least event_min_latency_ns slow (each event, for
 * tracepoint targets) goes to the probe's BPF ring buffer as one struct tp_event, at most
 * event_rate per second of the monotonic clock (see tp_event_admit in aggregate.h).
 */
#define TP_EV_CALL 1             /* flags: a call; latency_ns and ret are set */
#define TP_EV_NEW_KEY 2          /* flags: not an event but a notice (notify_new_keys): process `pid`
                                  * has a new key, read its mappings now; only time_ns and pid are
                                  * set, the rest is zero; never counted as an event */
#define TP_EV_COUNT_BITS 24      /* the rate word: second << TP_EV_COUNT_BITS | events in it */
#define TP_EV_MAX_RATE ((1 << TP_EV_COUNT_BITS) - 1)

struct tp_event {
	__u64 time_ns;    /* bpf_ktime_get_ns (CLOCK_MONOTONIC) when the call returned, or of the event */
	__u64 latency_ns;
	__s64 ret;
	__u64 cgroup_id;  /* cgroup v2 id */
	__u32 pid;        /* tgid */
	__u32 tid;
	__u32 cpu;
	__u32 flags;      /* TP_EV_* */
	char comm[TP_COMM_LEN];   /* the process's name (thread-group leader's comm) */
	char thread[TP_COMM_LEN]; /* the thread's comm */
	__u8 key[TP_KEY_MAX];     /* the probe's packed key, in its key table's layout; zeros without keys */
};

#endif
