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

#define HUB_HIST_SLOTS 66 /* value histogram slots of a slot's key table: log2 (65), or linear up to 64 buckets */

/* Flags of a slot (hub_filter.flags). */
#define HUB_F_PROCS 1     /* count the top processes */
#define HUB_F_KEYED 2     /* the slot has a key table in `slot_keys` */
#define HUB_F_ARGS 4      /* its keys or value need the syscall's arguments */
#define HUB_F_STR 8       /* a key part is the string argument `str_arg` points to */
#define HUB_F_CGROUP 16   /* only calls from the cgroup `cgroup_id` (at `cgroup_level`) and below */
#define HUB_F_EVENTS 32   /* calls at least event_min_latency_ns slow go to the slot's ring buffer in `slot_events` */
#define HUB_F_BUDGET 64   /* the slot's entry of `slot_budget` samples or suspends it (see struct tp_budget) */

/* Value of map `filters` (array keyed by slot): the slot's filter and what it aggregates. */
struct hub_filter {
	__u32 tgid;       /* 0: every process */
	__u32 comm_set;
	char comm[TP_COMM_LEN];
	__u32 flags;
	__u32 key_n;                   /* key parts */
	__u32 key_kind[TP_KEY_PARTS];  /* enum tp_key_kind */
	__u32 key_arg[TP_KEY_PARTS];   /* argument index of TP_K_ARG parts */
	__u32 val_kind;                /* enum tp_value_kind */
	__u32 val_arg;
	__u32 hist_kind;               /* enum tp_hist_kind */
	__u32 hist_n;                  /* slots used, at most HUB_HIST_SLOTS */
	__u32 str_arg;
	__u8 key_len[TP_KEY_PARTS];    /* width of an argument part (1, 2, 4; 8 or 0: all of it) */
	__u8 key_signed[TP_KEY_PARTS]; /* sign-extended from that width */
	__u8 val_len;
	__u8 val_signed;
	__s64 hist_min;
	__s64 hist_step;
	__u64 min_latency_ns;          /* 0: every call */
	__u32 claim;                   /* which claim of the slot: a call that entered under an
	                                * earlier owner is not counted for the next */
	__u32 cgroup_level;            /* HUB_F_CGROUP: the filter cgroup's depth (root: 0) */
	__u64 cgroup_id;               /* HUB_F_CGROUP: its id (TP_CG_UNDER: the slot's entry of `filter_cgroups`) */
	__u64 event_min_latency_ns;    /* HUB_F_EVENTS: a call this slow is an event... */
	__u32 event_rate;              /* ...at most this many per second (the slot's word in `slot_rate`) */
	__u32 pad;
};

/* Key of a slot's key table: each kind of part has its place (numbers by part index). A
 * slot without a string part uses the shorter table of `slot_keys` (HUB_KEY_SHORT bytes,
 * the string left out), which hashes in half the time. */
#define HUB_KEY_SHORT 56
struct hub_key {
	__u64 num[TP_KEY_PARTS];
	char comm[TP_COMM_LEN];
	char thread[TP_COMM_LEN];
	char str[TP_STR_LEN];
};

/* Value of a slot's key table (per-CPU). */
struct hub_key_value {
	struct tp_key_stats stats;
	__u64 hist[HUB_HIST_SLOTS];
};

/* Value of map `aggs` (per-CPU array keyed by slot): totals and log2 latency histogram. */
struct hub_agg {
	struct tp_stats stats;
	__u64 hist[TP_HIST_SLOTS];
};

#endif
