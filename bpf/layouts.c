// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * User-space half of the map layouts in bpf/include/traceplane/: the CBPFLayouts target
 * compiles this file so Swift can import the same structs the BPF programs write. The BPF
 * target and the host ABI both align 64-bit fields to 8 bytes; these checks fail the build
 * if a change to a header ever makes the two disagree, or moves what user space reads.
 */
#include <stddef.h>
#include "traceplane/syscall_hub.h"

_Static_assert(sizeof(struct tp_stats) == 96, "tp_stats: 11 counters and the sampling tick");
_Static_assert(sizeof(struct tp_budget) == 8, "tp_budget: sample_every, suspended");
_Static_assert(sizeof(struct tp_proc) == 32, "tp_proc: tgid, pad, calls, comm[16]");
_Static_assert(offsetof(struct tp_proc, calls) == 8 && offsetof(struct tp_proc, comm) == 16, "tp_proc layout");
_Static_assert(sizeof(struct hub_nr) == 32, "hub_nr: count, 6 slots, pad");
_Static_assert(sizeof(struct hub_filter) == 144, "hub_filter: filter, the aggregation settings, the event settings");
_Static_assert(offsetof(struct hub_filter, event_min_latency_ns) == 128, "hub_filter: event settings last");
_Static_assert(offsetof(struct hub_filter, hist_min) == 88 && offsetof(struct hub_filter, cgroup_id) == 120, "hub_filter layout");
_Static_assert(sizeof(struct tp_key_stats) == 32, "tp_key_stats: 4 counters");
_Static_assert(sizeof(struct hub_key) == 120, "hub_key: 3 numbers, comm, thread, string");
_Static_assert(offsetof(struct hub_key, str) == 56 && HUB_KEY_SHORT == 56, "hub_key layout: the short key is all but the string");
_Static_assert(sizeof(struct hub_key_value) == 32 + 8 * HUB_HIST_SLOTS, "hub_key_value: stats then the histogram");
_Static_assert(sizeof(struct hub_agg) == 96 + 8 * TP_HIST_SLOTS, "hub_agg: stats then the histogram");
_Static_assert(offsetof(struct hub_agg, hist) == sizeof(struct tp_stats), "hub_agg layout");
_Static_assert(sizeof(struct tp_event) == 208, "tp_event: 4 words, 4 u32s, 2 comms, the key");
_Static_assert(offsetof(struct tp_event, pid) == 32 && offsetof(struct tp_event, comm) == 48 && offsetof(struct tp_event, key) == 80,
	       "tp_event layout");
_Static_assert(sizeof(struct hub_key) <= TP_KEY_MAX, "a hub key fits an event's key");
