// SPDX-License-Identifier: GPL-2.0
/*
 * One aggregation body with thin attach flavours, as in libbpf-tools' funclatency:
 * user space autoloads the entry/exit pair of one flavour and binds it to the target.
 * Everything is aggregated in the kernel (per-CPU counters and a log2 histogram); only
 * the calls a probe's `events` spec asks for reach user space, one by one, through the
 * ring buffer `events`.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "traceplane/probe.h"
#include "aggregate.h"

/* Settings filled in before load. */
const volatile u32 filter_tgid = 0;            /* 0: every process */
const volatile bool filter_comm_set = false;
const volatile char filter_comm[TP_COMM_LEN] = {};
const volatile u32 filter_cgroup_mode = TP_CG_NONE; /* enum tp_cgroup_mode */
const volatile u64 filter_cgroup_id = 0;       /* TP_CG_ANCESTOR: the filter cgroup's id... */
const volatile u32 filter_cgroup_level = 0;    /* ...and its depth below the root cgroup */
const volatile bool use_task_storage = true;   /* else `starts` is a hash keyed by thread id */
const volatile bool count_procs = true;        /* the top-process table (aggregate.by_process) */
const volatile u64 min_latency_ns = 0;         /* filter.min_latency_ns: faster calls are not counted */
const volatile u32 ret_len = 0;                /* the return type's width when narrower than a register; 255: void */
const volatile bool ret_signed = true;

/* Keyed aggregation (see include/traceplane/probe.h); all off by default, so the verifier
 * drops every branch of it from a probe without keys. */
const volatile bool keyed = false;             /* calls also go to the key table `keys` */
const volatile u32 key_n = 0;                  /* key parts */
const volatile u32 key_kind[TP_KEY_PARTS] = {};
const volatile u32 key_arg[TP_KEY_PARTS] = {}; /* argument index, or record offset of a field */
const volatile u32 key_len[TP_KEY_PARTS] = {}; /* bytes of a field */
const volatile bool key_signed[TP_KEY_PARTS] = {};
const volatile u32 key_off[TP_KEY_PARTS] = {}; /* offset of the part in the packed key */
const volatile u32 val_kind = TP_V_NONE;
const volatile u32 val_arg = 0;
const volatile u32 val_len = 0;
const volatile bool val_signed = false;
const volatile u32 hist_kind = TP_H_LOG2;
const volatile u32 hist_n = TP_LOG2_SLOTS;    /* value histogram slots */
const volatile s64 hist_min = 0;
const volatile s64 hist_step = 1;
const volatile bool need_args = false;         /* a key or the value is an argument */
const volatile u32 str_arg = 0;                /* argument of the TP_K_ARG_STR part */
const volatile bool str_user = true;           /* it points to user memory (else kernel) */
const volatile bool syscall_regs = false;      /* the traced function takes the syscall's pt_regs */
const volatile bool need_stacks = false;       /* a key part is kstack or ustack */
const volatile u64 stack_seed = 0;             /* random per load: the frames' hash cannot be forged */
/* A key part is ustack: each new key is told to user space through the `events` ring
 * (TP_EV_NEW_KEY), so its process's mappings are read while it runs. */
const volatile bool notify_new_keys = false;

/* Events (spec `events`): off by default, so a probe without them has no branch of it. */
const volatile bool events_on = false;
const volatile u64 event_min_latency_ns = 0;   /* a call this slow is an event (0: every call) */
const volatile u32 event_rate = 0;             /* events.max_per_second */

/* Budgets (spec `budget`, serve --max-cpu-percent): off by default, so a probe without one
 * has no branch of it. */
const volatile bool budget_on = false;

/* The rate limit's word (see tp_event_admit). */
u64 event_window = 0;

/* Events to user space; user space sizes it (events.buffer_kib) before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct tp_stats);
} stats SEC(".maps");

/* budget_on: how the probe records calls now, set by user space at any time. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct tp_budget);
} budget SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TP_HIST_SLOTS);
	__type(key, u32);
	__type(value, u64);
} hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << TP_PROCS_BITS);
	__type(key, u32);
	__type(value, struct tp_proc);
} procs SEC(".maps");

/* What the exit needs from the entry: its time and, for keyed probes, the arguments of
 * the key parts (args[i] for part i) and the value (args[TP_KEY_PARTS]), and the string a
 * TP_K_ARG_STR part names. */
struct tp_start {
	u64 ts;
	u64 weight; /* budget_on: how many calls this one counts for (1-in-N sampling) */
	u64 args[TP_KEY_PARTS + 1];
	char str[TP_STR_LEN];
};

/* TP_CG_UNDER: the filter cgroup, put here by user space after load and before attach. */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u32);
} filter_cgroup SEC(".maps");

/* Entry records: task-local storage, or (map type changed before load) a hash keyed by
 * thread id on kernels without task storage for this program type. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tp_start);
} starts SEC(".maps");

/* The key table: packed key -> struct tp_key_stats and `hist_n` histogram slots. User space
 * sets both sizes and the entry count (aggregate.max_keys) before load. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1);
	__uint(key_size, 8);
	__uint(value_size, sizeof(struct tp_key_stats));
} keys SEC(".maps");

/* Stacks of the kstack and ustack key parts: the frames, keyed by a 64-bit hash of them
 * (what the key part holds). A hash names one stack, unlike a stack-trace map's bucket
 * index, which two stacks share whenever their buckets collide (bpf_get_stackid then
 * drops the second). User space sizes it from aggregate.max_keys before load. */
struct tp_stack {
	u64 ips[TP_STACK_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, u64);
	__type(value, struct tp_stack);
} stacks SEC(".maps");

/* Where bpf_get_stack writes (too large for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct tp_stack);
} stack_scratch SEC(".maps");

/* One all-zero value of the key table's size: what a new key starts from. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, 4);
	__uint(value_size, sizeof(struct tp_key_stats));
} zero_value SEC(".maps");

static __always_inline bool pass_filter(void)
{
	if (filter_tgid) {
		u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (tgid != filter_tgid)
			return false;
	}
	if (filter_cgroup_mode == TP_CG_ANCESTOR) {
		if (bpf_get_current_ancestor_cgroup_id(filter_cgroup_level) != filter_cgroup_id)
			return false;
	} else if (filter_cgroup_mode == TP_CG_UNDER) {
		if (bpf_current_task_under_cgroup(&filter_cgroup, 0) != 1)
			return false;
	}
	if (filter_comm_set) {
		char comm[TP_COMM_LEN];
		bpf_get_current_comm(comm, sizeof(comm));
#pragma unroll
		for (int i = 0; i < TP_COMM_LEN; i++) {
			if (comm[i] != filter_comm[i])
				return false;
			if (comm[i] == 0)
				break;
		}
	}
	return true;
}

static __always_inline void count_process(u32 tgid, u64 weight)
{
	proc_table_count(&procs, 0, TP_PROCS_BITS, tgid, weight);
}

/* budget_on: whether this call is recorded, and how many calls it counts for: 0 when the
 * probe is suspended or the call falls between two samples, N for the one call in N that
 * 1-in-N sampling records (per CPU), else 1. Every call is counted in `seen`. */
static __always_inline u64 budget_weight(void)
{
	u32 z = 0;
	struct tp_budget *b = bpf_map_lookup_elem(&budget, &z);
	struct tp_stats *s = bpf_map_lookup_elem(&stats, &z);
	if (!b || !s)
		return 0;
	s->seen++;
	if (b->suspended)
		return 0;
	u32 n = b->sample_every;
	if (n <= 1)
		return 1;
	if (++s->sample_tick < n)
		return 0;
	s->sample_tick = 0;
	return n;
}

static __always_inline struct tp_start *start_slot(bool create)
{
	if (use_task_storage) {
		struct task_struct *task = bpf_get_current_task_btf();
		return bpf_task_storage_get(&starts, task, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	}
	u32 tid = (u32)bpf_get_current_pid_tgid();
	if (create) {
		struct tp_start zero = {};
		bpf_map_update_elem(&starts, &tid, &zero, BPF_ANY);
	}
	return bpf_map_lookup_elem(&starts, &tid);
}

/* Where a program finds the traced call's arguments (a constant per program). */
enum arg_source { ARGS_NONE, ARGS_FENTRY, ARGS_REGS, ARGS_SYSCALL_TP };

/* Per-syscall tracepoint records: syscalls:sys_enter_X and sys_exit_X. */
struct syscall_enter_args {
	u64 common;
	s32 nr;
	u64 args[TP_ARGS];
};

struct syscall_exit_args {
	u64 common;
	s32 nr;
	s64 ret;
};

/* The six arguments of the call, by the calling convention of what is traced: a function's
 * (fentry: from the BTF-typed context; kprobe and uprobe: registers), or a syscall's (its
 * tracepoint record; or the pt_regs the x86-64 and arm64 syscall wrappers take). */
static __always_inline void entry_args(void *ctx, enum arg_source src, u64 *a)
{
	if (src == ARGS_SYSCALL_TP) {
		/* Through a helper: a program that loads beyond the record of a syscall with fewer
		 * than six arguments is refused at attach (EACCES, max_ctx_offset). */
		struct syscall_enter_args *e = ctx;
		bpf_probe_read_kernel(a, 8 * TP_ARGS, e->args);
		return;
	}
	if (src == ARGS_FENTRY && !syscall_regs) {
		for (int i = 0; i < TP_ARGS; i++)
			bpf_get_func_arg(ctx, i, &a[i]);
		return;
	}
	struct pt_regs *regs = ctx;
	if (src == ARGS_FENTRY) {
		regs = (struct pt_regs *)((u64 *)ctx)[0];
#if defined(__TARGET_ARCH_x86)
		/* BTF-typed loads: the verifier knows the wrapper's argument is a struct pt_regs. */
		a[0] = regs->di; a[1] = regs->si; a[2] = regs->dx;
		a[3] = regs->r10; a[4] = regs->r8; a[5] = regs->r9;
#elif defined(__TARGET_ARCH_arm64)
		a[0] = regs->regs[0]; a[1] = regs->regs[1]; a[2] = regs->regs[2];
		a[3] = regs->regs[3]; a[4] = regs->regs[4]; a[5] = regs->regs[5];
#endif
		return;
	}
	if (syscall_regs) {
		/* kprobe on a syscall wrapper: the syscall's registers are in the pt_regs its
		 * first argument points to. */
#if defined(__TARGET_ARCH_x86)
		struct pt_regs *inner = (struct pt_regs *)regs->di;
		u64 r[8]; /* r10 r9 r8 ax cx dx si di: adjacent in struct pt_regs */
		if (bpf_probe_read_kernel(r, sizeof(r), &inner->r10) == 0) {
			a[0] = r[7]; a[1] = r[6]; a[2] = r[5]; a[3] = r[0]; a[4] = r[2]; a[5] = r[1];
		}
#elif defined(__TARGET_ARCH_arm64)
		struct pt_regs *inner = (struct pt_regs *)regs->regs[0];
		bpf_probe_read_kernel(a, 8 * TP_ARGS, &inner->regs[0]);
#endif
		return;
	}
#if defined(__TARGET_ARCH_x86)
	a[0] = regs->di; a[1] = regs->si; a[2] = regs->dx;
	a[3] = regs->cx; a[4] = regs->r8; a[5] = regs->r9;
#elif defined(__TARGET_ARCH_arm64)
	a[0] = regs->regs[0]; a[1] = regs->regs[1]; a[2] = regs->regs[2];
	a[3] = regs->regs[3]; a[4] = regs->regs[4]; a[5] = regs->regs[5];
#endif
}

/* A stack key part: the hash of the current kernel or user stack, its frames stored in
 * `stacks` under it; TP_STACK_NONE when there is no stack (a kernel thread's user stack),
 * TP_STACK_FULL when `stacks` had no room for a new one (counted at exit). Hashes are odd,
 * so neither marker is one. */
static __always_inline u64 stack_part(void *ctx, bool user)
{
	u32 z = 0;
	struct tp_stack *b = bpf_map_lookup_elem(&stack_scratch, &z);
	if (!b)
		return TP_STACK_NONE;
	/* The kernel zeroes what follows the frames it wrote: equal stacks are equal entries. */
	long n = bpf_get_stack(ctx, b->ips, sizeof(b->ips), user ? BPF_F_USER_STACK : 0);
	if (n <= 0)
		return TP_STACK_NONE;
	u32 frames = (u32)n / 8;
	u64 h = 0xcbf29ce484222325ULL ^ stack_seed; /* FNV-1a over the frames, a word at a time, seeded */
	for (int i = 0; i < TP_STACK_DEPTH; i++) {
		if (i >= frames)
			break;
		h = (h ^ b->ips[i]) * 0x100000001b3ULL;
	}
	h = (h ^ frames) * 0x100000001b3ULL;
	h |= 1;
	if (!bpf_map_lookup_elem(&stacks, &h)) {
		long err = bpf_map_update_elem(&stacks, &h, b, BPF_NOEXIST);
		if (err && err != -17 /* EEXIST: another CPU stored it first */)
			return TP_STACK_FULL;
	}
	return h;
}

/* At entry: the stacks of the stack parts (the callers of the traced function; at exit a
 * kernel stack would start in the return trampoline). */
static __always_inline void record_stacks(void *ctx, struct tp_start *st)
{
#pragma unroll
	for (int i = 0; i < TP_KEY_PARTS; i++) {
		if (i >= key_n)
			break;
		if (key_kind[i] == TP_K_KSTACK)
			st->args[i] = stack_part(ctx, false);
		else if (key_kind[i] == TP_K_USTACK)
			st->args[i] = stack_part(ctx, true);
	}
}

/* Records at entry the arguments (and the string) the exit's key and value need. */
static __always_inline void record_args(void *ctx, enum arg_source src, struct tp_start *st)
{
	u64 a[TP_ARGS] = {};
	entry_args(ctx, src, a);
#pragma unroll
	for (int i = 0; i < TP_KEY_PARTS; i++) {
		if (i >= key_n)
			break;
		if (key_kind[i] == TP_K_ARG)
			st->args[i] = narrow(a[key_arg[i] % TP_ARGS], key_len[i], key_signed[i]);
		if (key_kind[i] == TP_K_ARG_STR) {
			void *p = (void *)a[str_arg % TP_ARGS];
			__builtin_memset(st->str, 0, TP_STR_LEN);
			/* Kernels built with gcc have no `__user` tags in BTF: a kernel read that fails
			 * is tried as a user string. */
			if (str_user || bpf_probe_read_kernel_str(st->str, TP_STR_LEN, p) < 0)
				bpf_probe_read_user_str(st->str, TP_STR_LEN, p);
		}
	}
	if (val_kind == TP_V_ARG)
		st->args[TP_KEY_PARTS] = narrow(a[val_arg % TP_ARGS], val_len, val_signed);
}

/* A number in a tracepoint record: `len` (1, 2, 4 or 8) bytes at `off`, sign-extended
 * when the format says it is signed. */
static __always_inline s64 record_field(void *ctx, u32 off, u32 len, bool is_signed)
{
	u64 v = 0;
	if (len == 1) bpf_probe_read_kernel(&v, 1, ctx + off);
	else if (len == 2) bpf_probe_read_kernel(&v, 2, ctx + off);
	else if (len == 4) bpf_probe_read_kernel(&v, 4, ctx + off);
	else bpf_probe_read_kernel(&v, 8, ctx + off);
	if (is_signed && len < 8) {
		u32 shift = 64 - 8 * len;
		return ((s64)(v << shift)) >> shift;
	}
	return (s64)v;
}

/* The packed key of one call (or event: `st` is null) into `key` (TP_KEY_MAX bytes, zeroed);
 * a stack part the stack map has no room for is counted in `s` when given. */
static __always_inline void fill_key(void *ctx, struct tp_start *st, struct tp_stats *s, s64 ret, u8 *key)
{
	u64 id = bpf_get_current_pid_tgid();
#pragma unroll
	for (int i = 0; i < TP_KEY_PARTS; i++) {
		if (i >= key_n)
			break;
		void *p = key + key_off[i];
		switch (key_kind[i]) {
		case TP_K_PID: *(u64 *)p = id >> 32; break;
		case TP_K_TID: *(u64 *)p = (u32)id; break;
		case TP_K_COMM: process_comm(p); break;
		case TP_K_THREAD: bpf_get_current_comm(p, TP_COMM_LEN); break;
		case TP_K_CGROUP: *(u64 *)p = bpf_get_current_cgroup_id(); break;
		case TP_K_CPU: *(u64 *)p = bpf_get_smp_processor_id(); break;
		case TP_K_ERRNO: *(u64 *)p = ret < 0 ? -ret : 0; break;
		case TP_K_RET: *(s64 *)p = ret; break;
		case TP_K_ARG: if (st) *(u64 *)p = st->args[i]; break;
		case TP_K_ARG_STR: if (st) __builtin_memcpy(p, st->str, TP_STR_LEN); break;
		case TP_K_FIELD: *(s64 *)p = record_field(ctx, key_arg[i], key_len[i], key_signed[i]); break;
		case TP_K_FIELD_STR: bpf_probe_read_kernel(p, key_len[i], ctx + key_arg[i]); break;
		case TP_K_KSTACK:
		case TP_K_USTACK: {
			u64 part = st ? st->args[i] : stack_part(ctx, key_kind[i] == TP_K_USTACK);
			if (part == TP_STACK_FULL && s)
				s->stack_full++;
			*(u64 *)p = part;
			/* User addresses mean something only in their process: its tgid follows. */
			if (key_kind[i] == TP_K_USTACK)
				*(u64 *)(p + 8) = id >> 32;
			break;
		}
		case TP_K_FIELD_DATALOC: {
			u32 loc = 0;
			bpf_probe_read_kernel(&loc, sizeof(loc), ctx + key_arg[i]);
			bpf_probe_read_kernel_str(p, TP_STR_LEN, ctx + (loc & 0xffff));
			break;
		}
		}
	}
}

/* notify_new_keys: a notice that the current process has a new key, to the `events` ring.
 * Not an event: no rate limit and no event counter; a notice the ring has no room for is
 * lost (user space still reads the process's mappings within a second, if it lives). */
static __always_inline void notify_new_key(void)
{
	struct tp_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e)); /* ring memory is not zeroed: nothing of it may leak */
	e->flags = TP_EV_NEW_KEY;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->time_ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

/* One call (or event: `st` is null) into the key table. */
static __always_inline void keyed_update(void *ctx, struct tp_start *st, struct tp_stats *s, u64 delta, s64 ret, u64 w)
{
	u8 key[TP_KEY_MAX] = {};
	fill_key(ctx, st, s, ret, key);
	struct tp_key_stats *v = bpf_map_lookup_elem(&keys, key);
	if (!v) {
		u32 z = 0;
		void *zero = bpf_map_lookup_elem(&zero_value, &z);
		if (!zero)
			return;
		v = key_entry(&keys, key, zero);
		if (!v) {
			if (s)
				s->dropped_keys++;
			return;
		}
		/* Per key, not per stack: processes of one non-PIE binary share stack hashes, but a
		 * ustack part holds the tgid, so each process has keys of its own. (Two CPUs that
		 * create one key at once may both tell it; user space reads the mappings once.) */
		if (notify_new_keys)
			notify_new_key();
	}
	v->calls += w;
	if (ret < 0)
		v->errors += w;
	if (val_kind == TP_V_NONE)
		return;
	s64 value = 0;
	switch (val_kind) {
	case TP_V_LATENCY: value = (s64)delta; break;
	case TP_V_RET: value = ret; break;
	case TP_V_ARG: if (st) value = (s64)st->args[TP_KEY_PARTS]; break;
	case TP_V_FIELD: value = record_field(ctx, val_arg, val_len, val_signed); break;
	}
	v->count += w;
	v->sum += value * (s64)w;
	u32 slot = value_slot(value, hist_kind, hist_min, hist_step, hist_n);
	barrier_var(slot);
	if (slot >= hist_n)
		return;
	u64 *h = (u64 *)(v + 1);
	h[slot] += w;
}

/* One event to the ring buffer, unless over the rate (throttled) or the ring is full (lost). */
static __always_inline void emit_event(void *ctx, struct tp_start *st, struct tp_stats *s, u64 now, u64 delta, s64 ret, u32 flags)
{
	if (!tp_event_admit(&event_window, now, event_rate)) {
		if (s)
			s->throttled++;
		return;
	}
	struct tp_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		if (s)
			s->lost++;
		return;
	}
	tp_event_fill(e, now, delta, ret, flags);
	if (keyed)
		fill_key(ctx, st, 0, ret, e->key);
	bpf_ringbuf_submit(e, 0);
	if (s)
		s->events++;
}

static __always_inline int on_entry(void *ctx, enum arg_source src)
{
	if (!pass_filter())
		return 0;
	u64 w = 1;
	if (budget_on) {
		w = budget_weight();
		if (!w)
			return 0; /* not recorded: its exit finds no timestamp */
	}
	struct tp_start *st = start_slot(true);
	if (!st)
		return 0;
	if (budget_on)
		st->weight = w;
	if (keyed && need_args)
		record_args(ctx, src, st);
	if (keyed && need_stacks)
		record_stacks(ctx, st);
	st->ts = bpf_ktime_get_ns();
	return 0;
}

/* No filter here: only calls that passed it at entry have a timestamp, so the lookup
 * filters (and a helper call less on every traced call). */
static __always_inline int on_exit(void *ctx, s64 ret)
{
	/* A function returning `int` leaves the upper half of the register zero: -EBADF
	 * would read as 4294967287, neither an error nor its errno. */
	if (ret_len == 255)
		ret = 0;
	else if (ret_len)
		ret = (s64)narrow((u64)ret, ret_len, ret_signed);
	struct tp_start *st = start_slot(false);
	if (!st || st->ts == 0)
		return 0; /* filtered out at entry, or entry not seen (probe attached mid-call) */
	u64 now = bpf_ktime_get_ns();
	u64 delta = now - st->ts;
	st->ts = 0;
	/* Under the threshold, events cost this one comparison. */
	bool event = events_on && delta >= event_min_latency_ns;
	u32 key = 0;
	if (min_latency_ns && delta < min_latency_ns) {
		/* Not aggregated, but still as slow as an event asks. */
		if (event)
			emit_event(ctx, st, bpf_map_lookup_elem(&stats, &key), now, delta, ret, TP_EV_CALL);
		return 0;
	}
	u64 w = 1;
	if (budget_on && st->weight > 1)
		w = st->weight;
	struct tp_stats *s = bpf_map_lookup_elem(&stats, &key);
	if (s) {
		s->calls += w;
		if (ret < 0)
			s->errors += w;
		s->lat_count += w;
		s->lat_sum_ns += delta * w;
		if (w > 1)
			s->estimated += w;
	}
	u32 slot = log2_slot(delta);
	if (slot >= TP_HIST_SLOTS)
		slot = TP_HIST_SLOTS - 1;
	u64 *bucket = bpf_map_lookup_elem(&hist, &slot);
	if (bucket)
		(*bucket) += w;
	if (count_procs)
		count_process(bpf_get_current_pid_tgid() >> 32, w);
	if (keyed)
		keyed_update(ctx, st, s, delta, ret, w);
	if (event)
		emit_event(ctx, st, s, now, delta, ret, TP_EV_CALL);
	return 0;
}

static __always_inline int on_event(void *ctx)
{
	if (!pass_filter())
		return 0;
	u64 w = 1;
	if (budget_on) {
		w = budget_weight();
		if (!w)
			return 0;
	}
	u32 key = 0;
	struct tp_stats *s = bpf_map_lookup_elem(&stats, &key);
	if (s) {
		s->calls += w;
		if (w > 1)
			s->estimated += w;
	}
	if (count_procs)
		count_process(bpf_get_current_pid_tgid() >> 32, w);
	if (keyed)
		keyed_update(ctx, 0, s, 0, 0, w);
	if (events_on)
		emit_event(ctx, 0, s, bpf_ktime_get_ns(), 0, 0, 0);
	return 0;
}

/* fentry/fexit (kfunc/kretfunc): target bound at load time. */
SEC("fentry")
int lat_fentry(void *ctx) { return on_entry(ctx, ARGS_FENTRY); }

SEC("fexit")
int lat_fexit(void *ctx)
{
	u64 ret = 0;
	bpf_get_func_ret(ctx, &ret);
	return on_exit(ctx, (s64)ret);
}

/* kprobe/kretprobe. */
SEC("kprobe")
int lat_kprobe(struct pt_regs *ctx) { return on_entry(ctx, ARGS_REGS); }

SEC("kretprobe")
int lat_kretprobe(struct pt_regs *ctx) { return on_exit(ctx, (s64)PT_REGS_RC(ctx)); }

/* Per-syscall perf tracepoints syscalls:sys_enter_X / sys_exit_X. */
SEC("tracepoint")
int lat_sys_enter(void *ctx) { return on_entry(ctx, ARGS_SYSCALL_TP); }

SEC("tracepoint")
int lat_sys_exit(struct syscall_exit_args *ctx) { return on_exit(ctx, ctx->ret); }

/* raw_syscalls sys_enter/sys_exit: see syscall_hub.bpf.c, shared by all syscall probes. */

/* uprobe/uretprobe. */
SEC("uprobe")
int lat_uprobe(struct pt_regs *ctx) { return on_entry(ctx, ARGS_REGS); }

SEC("uretprobe")
int lat_uretprobe(struct pt_regs *ctx) { return on_exit(ctx, (s64)PT_REGS_RC(ctx)); }

/* Tracepoint targets count events; they have no latency. */
SEC("tp_btf")
int cnt_tp_btf(void *ctx) { return on_event(ctx); }

SEC("raw_tracepoint")
int cnt_raw_tp(void *ctx) { return on_event(ctx); }

SEC("tracepoint")
int cnt_tracepoint(void *ctx) { return on_event(ctx); }

/* Profile targets: a cpu-clock perf event on every CPU samples whatever runs there. */
SEC("perf_event")
int cnt_perf_event(void *ctx) { return on_event(ctx); }

char LICENSE[] SEC("license") = "GPL";
