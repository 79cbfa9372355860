// SPDX-License-Identifier: Apache-2.0
// Independent oracles for the kernel integration tests. Everything here talks to the
// kernel with raw bpf(2) and perf_event_open(2) system calls and reads sysfs, tracefs and
// procfs directly; it never uses the code under test nor libbpf's object loader (libbpf is
// only used to parse vmlinux BTF). Every function closes every fd it opens.
#ifndef TRACEPLANE_CKERNELORACLE_H
#define TRACEPLANE_CKERNELORACLE_H

#include <stddef.h>
#include <stdint.h>

/// Where a trial stopped.
enum {
    /// Loaded, attached, and the program ran when the event was made to happen.
    ORACLE_STAGE_NONE = 0,
    /// Before the kernel was asked anything: BTF type, tracefs id or PMU not found.
    ORACLE_STAGE_SETUP = 1,
    /// BPF_PROG_LOAD (or the counter map creation) failed.
    ORACLE_STAGE_LOAD = 2,
    /// Attaching failed (perf_event_open, PERF_EVENT_IOC_SET_BPF, BPF_RAW_TRACEPOINT_OPEN).
    ORACLE_STAGE_ATTACH = 3,
    /// Attached, but the program never ran for this process when the event was triggered.
    ORACLE_STAGE_FIRE = 4,
};

/// BTF kinds for oracle_btf_has (the values of linux/btf.h's BTF_KIND_*).
enum {
    ORACLE_BTF_KIND_STRUCT = 4,
    ORACLE_BTF_KIND_TYPEDEF = 8,
    ORACLE_BTF_KIND_FUNC = 12,
};

/// The result of a full trial: load a counting program, attach it, trigger the event from
/// this process, read the counter.
typedef struct {
    int stage;     ///< one of ORACLE_STAGE_*
    int err;       ///< positive errno at `stage` (0 when none)
    uint64_t hits; ///< how often the program ran for this process
} oracle_outcome;

// MARK: load-only checks (two-instruction programs). Return 0 or -errno.

/// Loads BPF_PROG_TYPE_TRACING / BPF_TRACE_FENTRY bound to BTF function `func`.
/// -ENOENT (without asking the kernel) when vmlinux BTF has no such function.
int oracle_load_fentry(const char *func);
/// The same with BPF_TRACE_FEXIT.
int oracle_load_fexit(const char *func);
/// Loads BPF_PROG_TYPE_TRACING / BPF_TRACE_RAW_TP bound to BTF typedef `btf_trace_<tp>`.
int oracle_load_tp_btf(const char *tp);
/// Loads a BPF_PROG_TYPE_RAW_TRACEPOINT program and opens raw tracepoint `name` with it.
int oracle_raw_tracepoint_open(const char *name);
/// Opens perf tracepoint `category:name` (id from tracefs) and attaches a
/// BPF_PROG_TYPE_TRACEPOINT program with PERF_EVENT_IOC_SET_BPF.
int oracle_perf_tracepoint(const char *category, const char *name);

// MARK: full trials (load, attach, fire, count).

/// fentry (or fexit when `fexit` != 0) on `func`, fired by getpgid(0).
oracle_outcome oracle_try_fentry(const char *func, int fexit);
/// tp_btf on `tp` (e.g. "sys_enter"), fired by getpgid(0).
oracle_outcome oracle_try_tp_btf(const char *tp);
/// raw_tracepoint on `tp`, fired by getpgid(0).
oracle_outcome oracle_try_raw_tracepoint(const char *tp);
/// perf tracepoint `category:name`, fired by getpgid(0).
oracle_outcome oracle_try_perf_tracepoint(const char *category, const char *name);
/// uprobe (uretprobe when `retprobe` != 0) through the uprobe PMU on a function of this
/// library, fired by calling it.
oracle_outcome oracle_try_uprobe(int retprobe);
/// kprobe (kretprobe when `retprobe` != 0) through the kprobe PMU on `func`, fired by
/// getpgid(0). Stage SETUP with ENOENT when there is no kprobe PMU.
oracle_outcome oracle_try_kprobe(const char *func, int retprobe);

// MARK: facts.

/// Writes the name of getpgid's kernel entry as vmlinux BTF has it (`__x64_sys_getpgid`,
/// `__arm64_sys_getpgid`, … or `sys_getpgid`). Returns 0, or -errno.
int oracle_syscall_entry(char *buf, size_t size);
/// 1 when vmlinux BTF has a type `name` of BTF kind `kind` (ORACLE_BTF_KIND_*), 0 when not, -errno
/// when vmlinux BTF cannot be loaded.
int oracle_btf_has(const char *name, int kind);
/// The `type` number of perf PMU `pmu` (/sys/bus/event_source/devices/<pmu>/type), or -errno.
int oracle_pmu_type(const char *pmu);
/// 1 when tracefs (at /sys/kernel/tracing or /sys/kernel/debug/tracing) has `kprobe_events`.
int oracle_kprobe_events_exists(void);
/// Looks `option` (e.g. "CONFIG_KPROBES") up in /proc/config.gz (or /boot/config-<release>):
/// 1 for `=y`, 2 for `=m`, 0 when not set, -ENOENT when no kernel config can be read.
int oracle_config_option(const char *option);
/// Whether kprobes can be used: the kprobe PMU exists, or tracefs has kprobe_events.
/// (CONFIG_KPROBES alone is not enough: both interfaces come with it.)
int oracle_kprobes_available(void);
/// 1 when `path` is on a file system with magic `magic` (statfs), 0 when not, -errno.
int oracle_fs_magic_is(const char *path, long magic);
/// Number of this process's fds that are BPF programs, maps, links or perf events
/// (`anon_inode:bpf-prog`, `anon_inode:bpf-map`, `anon_inode:bpf_link`,
/// `anon_inode:[perf_event]`).
int oracle_bpf_fd_count(void);

/// Counts of this process's fds by kind.
typedef struct {
    int progs;       ///< anon_inode:bpf-prog
    int maps;        ///< anon_inode:bpf-map
    int links;       ///< anon_inode:bpf_link
    int perf_events; ///< anon_inode:[perf_event]
} oracle_fd_counts;

/// Takes a census of this process's BPF and perf fds. `all` counts every one; `owned`
/// counts those that belong to given programs: programs whose name starts with one of the
/// comma-separated `prog_prefixes`, links and perf events whose attached program does
/// (BPF_OBJ_GET_INFO_BY_FD, BPF_TASK_FD_QUERY), and maps whose name starts with one of the
/// comma-separated `map_prefixes`. Perf events whose program cannot be queried (cpu-clock
/// events carry BPF_PROG_TYPE_PERF_EVENT programs, which BPF_TASK_FD_QUERY does not report)
/// are counted in `all` only. Returns 0 or -errno.
int oracle_fd_census(const char *prog_prefixes, const char *map_prefixes, oracle_fd_counts *all,
                     oracle_fd_counts *owned);

/// Number of BPF programs loaded anywhere in the kernel whose name starts with `prefix`
/// (BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD), or -errno.
int oracle_count_programs_with_prefix(const char *prefix);

/// The symbolic name of positive errno `err` ("EPERM"; "ENOTSUPP" for the kernel-internal
/// 524), from glibc's strerrorname_np; "E<n>" when glibc has no name.
const char *oracle_errno_name(int err);

/// Names the calling thread (prctl PR_SET_NAME, at most 15 bytes kept). Returns 0 or -errno.
int oracle_set_thread_name(const char *name);

/// The byte offset of `member` in `struct task_struct` according to libbpf's BTF parser
/// (looking into anonymous structs and unions), or -errno (-ENOENT when absent).
long oracle_task_struct_offset(const char *member);

/// The function the uprobe trials attach to. Returns `x + 1`.
int oracle_uprobe_target(int x);

/* `n` getppid syscalls from this thread pinned to CPU `cpu` (then unpinned): n, or -errno. */
long oracle_getppid_on_cpu(int cpu, long n);

/* Reads the map pinned at `path` on bpffs (BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD,
   BPF_MAP_LOOKUP_ELEM): at u32 key `key`, the `count` u64 words from byte `offset` of the
   value, summed over every possible CPU for a per-CPU map, into `out`. Returns 0, -ENOENT
   for a key with no value, -EINVAL when the map's keys are not u32 or the words lie beyond
   its value, or another -errno. */
int oracle_pinned_map_u64s(const char *path, uint32_t key, size_t offset, size_t count, uint64_t *out);

/* Creates a one-entry array map named `name` and pins it at `path` (BPF_MAP_CREATE,
   BPF_OBJ_PIN); the fd is closed, so the pin alone holds the map. Returns the map's id, or
   -errno. */
int oracle_pin_new_map(const char *path, const char *name);

/* 1 when a map with id `id` still exists (BPF_MAP_GET_FD_BY_ID), 0 when not, -errno. */
int oracle_map_exists(uint32_t id);

#endif
