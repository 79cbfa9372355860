// SPDX-License-Identifier: Apache-2.0
// Thin C shim over libbpf: every macro, variadic or struct-heavy libbpf API that Swift
// cannot call directly is wrapped here as a small prefixed function.
#ifndef TRACEPLANE_CLIBBPF_H
#define TRACEPLANE_CLIBBPF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>

/// Receives one formatted libbpf log line (no trailing newline). level: 0 warn, 1 info, 2 debug.
typedef void (*tp_log_callback)(int level, const char *line);

/// Routes libbpf's own log output through `callback` instead of stderr.
void tp_libbpf_set_logger(tp_log_callback callback);

/// Starts capturing this thread's libbpf warning lines (the verifier log among them).
void tp_log_capture_begin(void);
/// Stops capturing and copies the captured tail (at most size-1 bytes) into buf.
void tp_log_capture_end(char *buf, size_t size);

/// Opens an in-memory ELF object. Returns NULL with errno set on failure.
struct bpf_object *tp_object_open_mem(const void *data, size_t size, const char *name);

/// Writes `size` bytes into the `.rodata` variable `var` of an opened (not loaded) object.
/// Returns 0, or a negative errno (-ENOENT when there is no such variable, -E2BIG on size mismatch).
int tp_object_set_rodata(struct bpf_object *obj, const char *var, const void *value, size_t size);

/// Loads the object; returns 0 or a negative errno. The verifier log goes to the logger.
int tp_object_load(struct bpf_object *obj);

/// Attach helpers for APIs that take LIBBPF_OPTS. Return NULL with errno set on failure.
struct bpf_link *tp_attach_kprobe(const struct bpf_program *prog, const char *func, bool retprobe);
struct bpf_link *tp_attach_kprobe_multi(const struct bpf_program *prog, const char *pattern, bool retprobe);
struct bpf_link *tp_attach_uprobe(const struct bpf_program *prog, pid_t pid, const char *binary,
                                  const char *func, bool retprobe);
struct bpf_link *tp_attach_tracepoint(const struct bpf_program *prog, const char *category, const char *name);
struct bpf_link *tp_attach_raw_tracepoint(const struct bpf_program *prog, const char *name);
struct bpf_link *tp_attach_trace(const struct bpf_program *prog);
struct bpf_link *tp_attach_perf_event(const struct bpf_program *prog, int pfd);

/// Destroys a link (detaches). Safe with NULL.
void tp_link_destroy(struct bpf_link *link);

/// Opens a software cpu-clock perf event on the calling thread, sampling every `period_ns`.
/// Returns an fd or a negative errno.
int tp_perf_event_open_cpu_clock(uint64_t period_ns);
/* A cpu-clock sampler of every task on `cpu`, `frequency_hz` samples per second: the fd, or -errno. */
int tp_perf_event_open_cpu_sampler(int cpu, uint64_t frequency_hz);

/// Run-time statistics and identity of a loaded program (from BPF_OBJ_GET_INFO_BY_FD).
typedef struct {
    uint32_t id;
    uint64_t run_time_ns;
    uint64_t run_cnt;
} tp_prog_info;
int tp_prog_get_info(int prog_fd, tp_prog_info *info);

/// A map created outside an object (a key table put into an array of maps), with
/// close-on-exec. Returns an fd or a negative errno.
int tp_map_create(enum bpf_map_type type, uint32_t key_size, uint32_t value_size, uint32_t max_entries, uint32_t flags);

/// Sizes of a map (from BPF_OBJ_GET_INFO_BY_FD).
typedef struct {
    uint32_t key_size;
    uint32_t value_size;
    uint32_t max_entries;
} tp_map_info;
int tp_map_get_info(int map_fd, tp_map_info *info);

/// Enables BPF run-time stats for as long as the returned fd is open. Negative errno on failure.
int tp_enable_runtime_stats(void);
/* What BPF run-time stats add to every run they measure: the run time per run of an empty
 * program (r0 = 0; exit), test-run `runs` times while stats are on (the caller holds a
 * BPF_ENABLE_STATS fd, or kernel.bpf_stats_enabled is 1). Returns nanoseconds per run, or
 * -errno. */
double tp_stats_bias_ns(int runs);

/* The calibration of budgets where BPF stats are refused (BudgetCalibrator): `n` calls
 * of one kind from the calling thread, timed with CLOCK_MONOTONIC; returns nanoseconds in
 * all. Kind 0: getppid(2); kind 1: tp_budget_calibration_target() (the uprobe target). */
double tp_budget_calibration_loop(int kind, long n);
/* A function that does nothing, never inlined, for uprobes to be calibrated on. */
int tp_budget_calibration_target(int x);

/// Names the calling thread (prctl PR_SET_NAME; the kernel keeps 15 bytes). 0 or -errno.
/// Self-tests call from a renamed thread to check that processes are named after their leader.
int tp_set_thread_name(const char *name);

/// Bounds what glibc keeps after libbpf frees the kernel BTF it parsed: a fixed mmap
/// threshold (bytes; blocks from that size up are mmapped and unmapped on free) and at most
/// `arena_max` malloc arenas. Returns 0, or -1 if glibc refused a setting.
int tp_malloc_bound_retention(int mmap_threshold, int arena_max);

/// Ring buffer / task storage / helper availability, probed by libbpf loading real bytecode.
/// Return 1 supported, 0 not, negative errno on error.
int tp_probe_map_type(int map_type);
int tp_probe_helper(int prog_type, int helper_id);

/// The absolute path of the cgroup v2 directory with id `id` (open_by_handle_at with the
/// kernfs handle, then the fd's link), under `mount`. Returns its length, or -errno
/// (-ESTALE: no such cgroup; -EPERM without CAP_DAC_READ_SEARCH).
int tp_cgroup_path(const char *mount, uint64_t id, char *path, size_t size);

/// Program/map type and helper constants (enums that Swift imports awkwardly).
enum {
    TP_MAP_TYPE_RINGBUF = BPF_MAP_TYPE_RINGBUF,
    TP_MAP_TYPE_TASK_STORAGE = BPF_MAP_TYPE_TASK_STORAGE,
    TP_MAP_TYPE_HASH = BPF_MAP_TYPE_HASH,
    TP_PROG_TYPE_KPROBE = BPF_PROG_TYPE_KPROBE,
    TP_PROG_TYPE_TRACEPOINT = BPF_PROG_TYPE_TRACEPOINT,
    TP_FUNC_GET_ATTACH_COOKIE = BPF_FUNC_get_attach_cookie,
    TP_FUNC_GET_CURRENT_ANCESTOR_CGROUP_ID = BPF_FUNC_get_current_ancestor_cgroup_id,
};

/// Creates a BPF link through BPF_LINK_CREATE for a perf event (the modern link API).
/// Returns the link fd or a negative errno.
int tp_link_create_perf_event(int prog_fd, int perf_fd);

/// Opens a perf event for the tracepoint with the given tracefs id. Returns fd or -errno.
int tp_perf_event_open_tracepoint(uint64_t tracepoint_id);

/// The self-test's cgroup workload: forks a child that moves itself into the cgroup v2
/// directory `cgroup` (writes "0" to its cgroup.procs), names itself `comm` and makes
/// `calls` raw getppid syscalls, then waits for it. Returns 0, or -errno (the child's
/// errno when it could not join the cgroup). The child makes only async-signal-safe calls.
int tp_getppid_in_cgroup(const char *cgroup, const char *comm, long calls);

/// A function with a stable symbol that the uprobe capability probe attaches to.
int traceplane_uprobe_target(int value);

/// The self-test's user stack workload (selftest_chains.c): makes `calls` getppid syscalls,
/// each through tp_selftest_getppid_chain -> tp_selftest_chain_a -> tp_selftest_chain_b ->
/// tp_selftest_chain_c -> tp_selftest_direct_getppid (the syscall instruction), every
/// function with a frame pointer, none inlined or tail-called.
void tp_selftest_getppid_chain(long calls);

/// Pins the calling thread to `cpu` and keeps it busy for `milliseconds` (the self-test's
/// profile: a cpu-clock sampler in frequency mode takes few samples on an idle CPU).
/// 0, or -errno when the thread cannot be pinned.
int tp_selftest_spin_on_cpu(int cpu, long milliseconds);

#endif

#ifndef TRACEPLANE_CLIBBPF_H_EXTRA
#define TRACEPLANE_CLIBBPF_H_EXTRA
/// Loads a trivial perf_event program through bpf_prog_load, opens a software cpu-clock
/// perf event on this thread, and links them with BPF_LINK_CREATE (the kernel's perf link,
/// the same for tracepoint, kprobe and uprobe events). Everything is closed again. Returns 0
/// when BPF links work for perf events, or a negative errno; *stage is set to 0 for a load
/// failure and 1 for a link failure. A software event, not a tracepoint: closing a
/// tracepoint's last perf event waits for it to be unregistered under a global mutex
/// (30–200 ms here), which was most of capability detection.
int tp_probe_perf_link(int *stage);

/// The file system magic number of `path` (statfs f_type). Returns 0 or -errno.
int tp_fs_magic(const char *path, long *magic);

/// Whether the kernel's vmlinux BTF loads, and which syscall-wrapper prefix it uses:
/// writes the prefix (possibly empty) into `prefix` and returns 1 when a getpgid entry
/// function was found, 0 when BTF loads but none was found, negative errno when BTF
/// does not load.
int tp_vmlinux_btf_syscall_prefix(char *prefix, size_t size);
#endif

#ifndef TRACEPLANE_CLIBBPF_H_SYSCALLS
#define TRACEPLANE_CLIBBPF_H_SYSCALLS
/// The number of the syscall `name` on this architecture, or -1 when there is none.
long tp_syscall_number(const char *name);
#endif

#ifndef TRACEPLANE_CLIBBPF_H_RINGS
#define TRACEPLANE_CLIBBPF_H_RINGS
#include <stddef.h>
#include <stdint.h>

/// A consumer of one BPF ring buffer map (libbpf's ring_buffer): it keeps its own duplicate
/// of the map's fd, so the map lives while the consumer does. NULL with errno set on failure.
struct tp_ring;
struct tp_ring *tp_ring_open(int map_fd);

/// A file descriptor that is readable when the ring has records (an epoll fd; add it to
/// another epoll set to wait for several rings at once).
int tp_ring_poll_fd(const struct tp_ring *ring);

/// Copies up to `max` records of exactly `size` bytes into `out` (back to back) and
/// consumes them; records of another size are consumed and counted in *skipped. Returns
/// the records copied, or -errno.
long tp_ring_consume(struct tp_ring *ring, void *out, size_t size, size_t max, uint64_t *skipped);

/// Unmaps the ring and closes its fds. NULL is ignored.
void tp_ring_close(struct tp_ring *ring);

/// epoll without the packed struct epoll_event in Swift: each fd carries a 64-bit tag.
int tp_epoll_create(void);
int tp_epoll_add(int epfd, int fd, uint64_t tag);
int tp_epoll_remove(int epfd, int fd);
/// Waits up to `timeout_ms` (-1: forever) and writes the tags of ready fds; returns their
/// number (0 on timeout or EINTR) or -errno.
int tp_epoll_wait(int epfd, uint64_t *tags, int max, int timeout_ms);
#endif
