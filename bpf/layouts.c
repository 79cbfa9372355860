// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * User-space half of the map layouts in bpf/include/traceplane/: the CBPFLayouts target
 * compiles this file so Swift can import the same structs the BPF programs write. The BPF
 * target and the host ABI both align 64-bit fields to 8 bytes; these checks fail the build
 * if a change to a header ever makes the two disagree, or moves what user space reads.
 */
#include <stddef.h>
#include "traceplane/syscall_hub.h"

_Static_assert(sizeof(struct tp_stats) == 56, "tp_stats: 6 counters and a pad");
_Static_assert(sizeof(struct tp_proc) == 32, "tp_proc: tgid, pad, calls, comm[16]");
_Static_assert(offsetof(struct tp_proc, calls) == 8 && offsetof(struct tp_proc, comm) == 16, "tp_proc layout");
_Static_assert(sizeof(struct hub_nr) == 32, "hub_nr: count, 6 slots, pad");
_Static_assert(sizeof(struct hub_filter) == 128, "hub_filter: filter, then the aggregation settings");
_Static_assert(offsetof(struct hub_filter, hist_min) == 88 && offsetof(struct hub_filter, cgroup_id) == 120, "hub_filter layout");
_Static_assert(sizeof(struct tp_key_stats) == 32, "tp_key_stats: 4 counters");
_Static_assert(sizeof(struct hub_key) == 120, "hub_key: 3 numbers, comm, thread, string");
_Static_assert(offsetof(struct hub_key, str) == 56 && HUB_KEY_SHORT == 56, "hub_key layout: the short key is all but the string");
_Static_assert(sizeof(struct hub_key_value) == 32 + 8 * HUB_HIST_SLOTS, "hub_key_value: stats then the histogram");
_Static_assert(sizeof(struct hub_agg) == 56 + 8 * TP_HIST_SLOTS, "hub_agg: stats then the histogram");
_Static_assert(offsetof(struct hub_agg, hist) == sizeof(struct tp_stats), "hub_agg layout");
