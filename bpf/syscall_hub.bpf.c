// SPDX-License-Identifier: GPL-2.0
/*
 * The shared raw_syscalls hook. One program pair on raw_syscalls sys_enter/sys_exit serves
 * every syscall probe that uses tp_btf (or raw_tp): the kernel runs it once per syscall of
 * the host whatever the number of probes, and it finds the probes of a syscall with one
 * array lookup. Attaching a program per probe to raw_syscalls instead makes every syscall
 * of the host pay for every probe (measured: +7.7 us per syscall with 64 probes).
 *
 * User space gives each probe a slot (its filter in `filters`, its aggregates in `aggs`
 * and `procs`; it sizes those maps to the agent's probe limit before load) and lists the
 * slots of each syscall number in `by_nr`. The entry program records one timestamp per
 * call with the slots whose filter passed; the exit program aggregates into exactly those.
 * Slots beyond a map's size fail its lookup, which the verifier checks.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "traceplane/syscall_hub.h"
#include "aggregate.h"

const volatile bool use_task_storage = true;   /* else `starts` is a hash keyed by thread id */
const volatile u32 cgroup_mode = TP_CG_ANCESTOR; /* how slots with HUB_F_CGROUP check it (enum tp_cgroup_mode) */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HUB_MAX_NR);
	__type(key, u32);
	__type(value, struct hub_nr);
} by_nr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HUB_SLOTS);
	__type(key, u32);
	__type(value, struct hub_filter);
} filters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HUB_SLOTS);
	__type(key, u32);
	__type(value, struct hub_agg);
} aggs SEC(".maps");

/* HUB_F_BUDGET: how each slot records calls now (struct tp_budget), set by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HUB_SLOTS);
	__type(key, u32);
	__type(value, struct tp_budget);
} slot_budget SEC(".maps");

/* TP_CG_UNDER: each filtering slot's cgroup at the slot's index. */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, HUB_SLOTS);
	__type(key, u32);
	__type(value, u32);
} filter_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HUB_SLOTS << HUB_PROCS_BITS);
	__type(key, u32);
	__type(value, struct tp_proc);
} procs SEC(".maps");

/* Each slot's key table (HUB_F_KEYED): a per-CPU hash user space creates with the probe's
 * max_keys and puts at the slot's index. Every table has this key and value size. */
struct slot_table {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1);
	/* Sizes, not types: BTF would only have forward declarations of them here. */
	__uint(key_size, HUB_KEY_SHORT);
	__uint(value_size, sizeof(struct hub_key_value));
};

struct slot_table_str {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(struct hub_key));
	__uint(value_size, sizeof(struct hub_key_value));
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, HUB_SLOTS);
	__type(key, u32);
	__array(values, struct slot_table);
} slot_keys SEC(".maps");

/* The same for slots with a string part (HUB_F_STR): the whole struct hub_key. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, HUB_SLOTS);
	__type(key, u32);
	__array(values, struct slot_table_str);
} slot_keys_str SEC(".maps");

/* Each slot's events (HUB_F_EVENTS): a ring buffer user space creates with the probe's
 * events.buffer_kib and puts at the slot's index (inner maps of a ring buffer array may
 * differ in size). */
struct slot_ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, HUB_SLOTS);
	__type(key, u32);
	__array(values, struct slot_ring);
} slot_events SEC(".maps");

/* Each slot's rate-limit word (see tp_event_admit), reset when the slot is taken. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HUB_SLOTS);
	__type(key, u32);
	__type(value, u64);
} slot_rate SEC(".maps");

/* One all-zero hub_key_value: what a new key starts from. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct hub_key_value);
} zero_value SEC(".maps");

#define HUB_PER_NR_POW2 8 /* HUB_PER_NR rounded up: indexes are masked, which the verifier follows */

struct hub_start {
	u64 ts;    /* entry time; 0 when no call is in flight */
	u32 tgid;  /* saves a helper call at exit */
	u32 count; /* entries of `slots` */
	u32 slots[HUB_PER_NR]; /* slot + 1 of each probe whose filter passed at entry, else 0 */
	u32 claims[HUB_PER_NR_POW2]; /* each listed slot's claim at entry (hub_filter.claim) */
	u32 weights[HUB_PER_NR_POW2]; /* HUB_F_BUDGET: how many calls this one counts for in each listed slot (0: 1) */
	u64 args[TP_ARGS];     /* the syscall's arguments, when a slot needs them (HUB_F_ARGS) */
	/* Per listed slot: its string argument (HUB_F_STR). One dimension: kernels before 6.6
	 * take a struct as a global function's argument only if its arrays are of scalars. */
	char strs[HUB_PER_NR_POW2 * TP_STR_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct hub_start);
} starts SEC(".maps");

/* An all-zero hub_start (too large for the stack): what a thread's record starts from
 * where `starts` is a hash. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct hub_start);
} zero_start SEC(".maps");

static __always_inline struct hub_start *start_slot(bool create)
{
	if (use_task_storage) {
		struct task_struct *task = bpf_get_current_task_btf();
		return bpf_task_storage_get(&starts, task, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	}
	u32 tid = (u32)bpf_get_current_pid_tgid();
	if (create) {
		u32 z = 0;
		struct hub_start *zero = bpf_map_lookup_elem(&zero_start, &z);
		if (zero)
			bpf_map_update_elem(&starts, &tid, zero, BPF_NOEXIST);
	}
	return bpf_map_lookup_elem(&starts, &tid);
}

static __always_inline bool comm_matches(const char *comm, const struct hub_filter *f)
{
	for (int i = 0; i < TP_COMM_LEN; i++) {
		if (comm[i] != f->comm[i])
			return false;
		if (comm[i] == 0)
			break;
	}
	return true;
}

/* The slot's key of one call into `key` (zeroed); `i` is the slot's place in the
 * syscall's list (where its string argument was recorded). */
static __always_inline void hub_fill_key(const struct hub_filter *f, struct hub_start *st, u32 i, s64 ret, struct hub_key *key)
{
	u32 n = f->key_n;
	/* Unrolled: with two callers clang keeps it a loop, whose index into `f` the 6.1
	 * verifier cannot bound ("unbounded memory access"). */
#pragma unroll
	for (int p = 0; p < TP_KEY_PARTS; p++) {
		if (p >= n)
			break;
		u32 arg = f->key_arg[p];
		switch (f->key_kind[p]) {
		case TP_K_PID: key->num[p] = st->tgid; break;
		case TP_K_TID: key->num[p] = (u32)bpf_get_current_pid_tgid(); break;
		case TP_K_COMM: process_comm(key->comm); break;
		case TP_K_THREAD: bpf_get_current_comm(key->thread, sizeof(key->thread)); break;
		case TP_K_CGROUP: key->num[p] = bpf_get_current_cgroup_id(); break;
		case TP_K_CPU: key->num[p] = bpf_get_smp_processor_id(); break;
		case TP_K_ERRNO: key->num[p] = ret < 0 ? -ret : 0; break;
		case TP_K_RET: key->num[p] = ret; break;
		case TP_K_ARG: if (arg < TP_ARGS) key->num[p] = narrow(st->args[arg], f->key_len[p], f->key_signed[p]); break;
		case TP_K_ARG_STR: __builtin_memcpy(key->str, &st->strs[(i & (HUB_PER_NR_POW2 - 1)) * TP_STR_LEN], TP_STR_LEN); break;
		}
	}
}

/* One call into a slot's key table, with the slot's settings `f`. */
static __always_inline void keyed_update(u32 slot, const struct hub_filter *f, struct hub_start *st, u32 i,
					 u64 delta, s64 ret, struct hub_agg *a, u64 w)
{
	void *table = f->flags & HUB_F_STR ? bpf_map_lookup_elem(&slot_keys_str, &slot) : bpf_map_lookup_elem(&slot_keys, &slot);
	if (!table)
		return;
	struct hub_key key = {};
	hub_fill_key(f, st, i, ret, &key);
	struct hub_key_value *v = bpf_map_lookup_elem(table, &key);
	if (!v) {
		u32 z = 0;
		void *zero = bpf_map_lookup_elem(&zero_value, &z);
		if (!zero)
			return;
		v = (struct hub_key_value *)key_entry(table, &key, zero);
		if (!v) {
			a->stats.dropped_keys++;
			return;
		}
	}
	v->stats.calls += w;
	if (ret < 0)
		v->stats.errors += w;
	s64 value = 0;
	switch (f->val_kind) {
	case TP_V_NONE: return;
	case TP_V_LATENCY: value = (s64)delta; break;
	case TP_V_RET: value = ret; break;
	case TP_V_ARG: if (f->val_arg < TP_ARGS) value = (s64)narrow(st->args[f->val_arg], f->val_len, f->val_signed); break;
	}
	v->stats.count += w;
	v->stats.sum += value * (s64)w;
	u32 b = value_slot(value, f->hist_kind, f->hist_min, f->hist_step, f->hist_n);
	barrier_var(b);
	if (b < HUB_HIST_SLOTS)
		v->hist[b] += w;
}

/* One event of slot `slot` to its ring buffer, unless over its rate (throttled) or the ring
 * is full or missing (lost). */
static __always_inline void hub_emit(u32 slot, const struct hub_filter *f, struct hub_start *st, u32 i, u64 delta, s64 ret,
				     struct hub_agg *a)
{
	u64 now = bpf_ktime_get_ns();
	u64 *word = bpf_map_lookup_elem(&slot_rate, &slot);
	if (!word)
		return;
	if (!tp_event_admit(word, now, f->event_rate)) {
		a->stats.throttled++;
		return;
	}
	void *ring = bpf_map_lookup_elem(&slot_events, &slot);
	if (!ring) {
		a->stats.lost++;
		return;
	}
	struct tp_event *e = bpf_ringbuf_reserve(ring, sizeof(*e), 0);
	if (!e) {
		a->stats.lost++;
		return;
	}
	tp_event_fill(e, now, delta, ret, TP_EV_CALL);
	if (f->flags & HUB_F_KEYED)
		hub_fill_key(f, st, i, ret, (struct hub_key *)e->key);
	bpf_ringbuf_submit(e, 0);
	a->stats.events++;
}

/* One call into one slot. A global function: the verifier checks it once, not once per
 * slot of the exit program's loop (which took it 200,000 instructions and 270 ms). */
__noinline int aggregate(u32 slot, u32 i, struct hub_start *st, u64 delta, s64 ret)
{
	if (!st || i >= HUB_PER_NR)
		return 0;
	const struct hub_filter *f = bpf_map_lookup_elem(&filters, &slot);
	if (!f || f->claim != st->claims[i & (HUB_PER_NR_POW2 - 1)])
		return 0;
	struct hub_agg *a = bpf_map_lookup_elem(&aggs, &slot);
	if (!a)
		return 0;
	/* Under the threshold, events cost this one test. */
	bool event = (f->flags & HUB_F_EVENTS) && delta >= f->event_min_latency_ns;
	if (f->min_latency_ns && delta < f->min_latency_ns) {
		if (event)
			hub_emit(slot, f, st, i, delta, ret, a);
		return 0;
	}
	u64 w = st->weights[i & (HUB_PER_NR_POW2 - 1)];
	if (w == 0)
		w = 1;
	a->stats.calls += w;
	if (ret < 0)
		a->stats.errors += w;
	a->stats.lat_count += w;
	a->stats.lat_sum_ns += delta * w;
	if (w > 1)
		a->stats.estimated += w;
	u32 bucket = log2_slot(delta);
	barrier_var(bucket);
	a->hist[bucket & (TP_HIST_SLOTS - 1)] += w;
	if (f->flags & HUB_F_PROCS)
		proc_table_count(&procs, slot << HUB_PROCS_BITS, HUB_PROCS_BITS, st->tgid, w);
	if (f->flags & HUB_F_KEYED)
		keyed_update(slot, f, st, i, delta, ret, a, w);
	if (event)
		hub_emit(slot, f, st, i, delta, ret, a);
	return 0;
}

/* The syscall's six arguments from the pt_regs sys_enter gets: BTF-typed loads for tp_btf
 * (`typed`), one bpf_probe_read_kernel for raw_tp. */
static __always_inline void syscall_args(struct pt_regs *regs, bool typed, u64 *a)
{
#if defined(__TARGET_ARCH_x86)
	if (typed) {
		a[0] = regs->di; a[1] = regs->si; a[2] = regs->dx;
		a[3] = regs->r10; a[4] = regs->r8; a[5] = regs->r9;
		return;
	}
	u64 r[8]; /* r10 r9 r8 ax cx dx si di: adjacent in struct pt_regs */
	if (bpf_probe_read_kernel(r, sizeof(r), &regs->r10) == 0) {
		a[0] = r[7]; a[1] = r[6]; a[2] = r[5]; a[3] = r[0]; a[4] = r[2]; a[5] = r[1];
	}
#endif
}

/* Every syscall of the host comes here: an untraced one costs one array lookup. */
static __always_inline int hub_enter(struct pt_regs *regs, bool typed, s64 nr)
{
	u32 key = (u32)nr; /* negative numbers fall outside the array */
	struct hub_nr *e = bpf_map_lookup_elem(&by_nr, &key);
	if (!e || e->count == 0)
		return 0;
	u32 count = e->count;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	char comm[TP_COMM_LEN] = {};
	bool have_comm = false;
	u32 passed[HUB_PER_NR] = {};
	u32 claims[HUB_PER_NR_POW2] = {};
	u32 weights[HUB_PER_NR_POW2] = {};
	bool any = false;
	u32 needs = 0;
	for (int i = 0; i < HUB_PER_NR; i++) {
		if (i >= count)
			break;
		u32 slot = e->slots[i];
		struct hub_filter *f = bpf_map_lookup_elem(&filters, &slot);
		if (!f)
			continue;
		if (f->tgid && f->tgid != tgid)
			continue;
		if (f->flags & HUB_F_CGROUP) {
			if (cgroup_mode == TP_CG_UNDER) {
				if (bpf_current_task_under_cgroup(&filter_cgroups, slot) != 1)
					continue;
			} else if (bpf_get_current_ancestor_cgroup_id(f->cgroup_level) != f->cgroup_id) {
				continue;
			}
		}
		if (f->comm_set) {
			if (!have_comm) {
				bpf_get_current_comm(comm, sizeof(comm));
				have_comm = true;
			}
			if (!comm_matches(comm, f))
				continue;
		}
		if (f->flags & HUB_F_BUDGET) {
			/* As budget_weight in latency.bpf.c, with the slot's entries. */
			struct tp_budget *b = bpf_map_lookup_elem(&slot_budget, &slot);
			struct hub_agg *a = bpf_map_lookup_elem(&aggs, &slot);
			if (!b || !a)
				continue;
			a->stats.seen++;
			if (b->suspended)
				continue;
			u32 n = b->sample_every;
			if (n > 1) {
				if (++a->stats.sample_tick < n)
					continue;
				a->stats.sample_tick = 0;
				weights[i & (HUB_PER_NR_POW2 - 1)] = n;
			}
		}
		passed[i] = slot + 1;
		claims[i] = f->claim;
		needs |= f->flags;
		any = true;
	}
	if (!any)
		return 0;
	struct hub_start *st = start_slot(true);
	if (!st)
		return 0;
	if (needs & HUB_F_ARGS) {
		syscall_args(regs, typed, st->args);
		if (needs & HUB_F_STR) {
			for (int i = 0; i < HUB_PER_NR; i++) {
				if (i >= count)
					break;
				if (!passed[i])
					continue;
				u32 slot = passed[i] - 1;
				struct hub_filter *f = bpf_map_lookup_elem(&filters, &slot);
				if (!f || !(f->flags & HUB_F_STR))
					continue;
				u32 arg = f->str_arg;
				if (arg >= TP_ARGS)
					continue;
				char *str = &st->strs[i * TP_STR_LEN];
				__builtin_memset(str, 0, TP_STR_LEN);
				bpf_probe_read_user_str(str, TP_STR_LEN, (void *)st->args[arg]);
			}
		}
	}
	__builtin_memcpy(st->slots, passed, sizeof(passed));
	__builtin_memcpy(st->claims, claims, sizeof(claims));
	__builtin_memcpy(st->weights, weights, sizeof(weights));
	st->count = count;
	st->tgid = tgid;
	st->ts = bpf_ktime_get_ns();
	return 0;
}

static __always_inline int hub_exit(s64 nr, s64 ret)
{
	u32 key = (u32)nr;
	struct hub_nr *e = bpf_map_lookup_elem(&by_nr, &key);
	if (!e || e->count == 0)
		return 0;
	struct hub_start *st = start_slot(false);
	if (!st || st->ts == 0)
		return 0; /* filtered out at entry, or entry not seen (attached mid-call) */
	u64 delta = bpf_ktime_get_ns() - st->ts;
	u32 n = st->count;
	st->ts = 0;
	for (int i = 0; i < HUB_PER_NR; i++) {
		if (i >= n)
			break;
		u32 slot = st->slots[i];
		if (slot)
			aggregate(slot - 1, i, st, delta, ret);
	}
	return 0;
}

/* raw_syscalls via BTF tracepoints: sys_enter(regs, id), sys_exit(regs, ret). */
SEC("tp_btf")
int hub_btf_enter(u64 *ctx) { return hub_enter((struct pt_regs *)ctx[0], true, (s64)ctx[1]); }

SEC("tp_btf")
int hub_btf_exit(u64 *ctx)
{
#if defined(__TARGET_ARCH_x86)
	/* A BTF-typed load the verifier checks: no helper call on every syscall exit. */
	return hub_exit((s64)((struct pt_regs *)ctx[0])->orig_ax, (s64)ctx[1]);
#else
	return 0;
#endif
}

/* raw_syscalls via raw tracepoints: the same, with untyped arguments. */
SEC("raw_tracepoint")
int hub_raw_enter(struct bpf_raw_tracepoint_args *ctx) { return hub_enter((struct pt_regs *)ctx->args[0], false, (s64)ctx->args[1]); }

SEC("raw_tracepoint")
int hub_raw_exit(struct bpf_raw_tracepoint_args *ctx)
{
#if defined(__TARGET_ARCH_x86)
	u64 nr = -1;
	bpf_probe_read_kernel(&nr, sizeof(nr), &((struct pt_regs *)ctx->args[0])->orig_ax);
	return hub_exit((s64)nr, (s64)ctx->args[1]);
#else
	return 0;
#endif
}

char LICENSE[] SEC("license") = "GPL";
