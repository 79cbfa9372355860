// SPDX-License-Identifier: Apache-2.0
#define _GNU_SOURCE 1
#include "clibbpf.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <malloc.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/bpf.h>

static tp_log_callback log_callback;

#define CAPTURE_SIZE 4096
static __thread bool capturing;
static __thread char captured[CAPTURE_SIZE];
static __thread size_t captured_len;

static void capture(const char *line, size_t len)
{
    if (len + 1 >= CAPTURE_SIZE) {
        line += len - (CAPTURE_SIZE - 2);
        len = CAPTURE_SIZE - 2;
    }
    if (captured_len + len + 1 >= CAPTURE_SIZE) {
        size_t drop = captured_len + len + 1 - (CAPTURE_SIZE - 1);
        memmove(captured, captured + drop, captured_len - drop);
        captured_len -= drop;
    }
    memcpy(captured + captured_len, line, len);
    captured_len += len;
    captured[captured_len++] = '\n';
    captured[captured_len] = '\0';
}

void tp_log_capture_begin(void)
{
    capturing = true;
    captured_len = 0;
    captured[0] = '\0';
}

void tp_log_capture_end(char *buf, size_t size)
{
    capturing = false;
    if (!buf || !size)
        return;
    size_t n = captured_len < size - 1 ? captured_len : size - 1;
    memcpy(buf, captured + (captured_len - n), n);
    buf[n] = '\0';
    captured_len = 0;
}

static int print_to_callback(enum libbpf_print_level level, const char *fmt, va_list args)
{
    char line[8192];
    int n = vsnprintf(line, sizeof(line), fmt, args);
    if (n < 0)
        return n;
    size_t len = strnlen(line, sizeof(line));
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == ' '))
        line[--len] = '\0';
    if (len == 0)
        return n;
    if (capturing && level == LIBBPF_WARN)
        capture(line, len);
    tp_log_callback cb = __atomic_load_n(&log_callback, __ATOMIC_ACQUIRE);
    if (cb)
        cb((int)level, line);
    return n;
}

void tp_libbpf_set_logger(tp_log_callback callback)
{
    __atomic_store_n(&log_callback, callback, __ATOMIC_RELEASE);
    libbpf_set_print(print_to_callback);
}

struct bpf_object *tp_object_open_mem(const void *data, size_t size, const char *name)
{
    LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name);
    struct bpf_object *obj = bpf_object__open_mem(data, size, &opts);
    if (!obj && errno == 0)
        errno = EINVAL;
    return obj;
}

int tp_object_set_rodata(struct bpf_object *obj, const char *var, const void *value, size_t size)
{
    struct bpf_map *map = NULL, *it;
    bpf_object__for_each_map(it, obj) {
        const char *name = bpf_map__name(it);
        size_t len = strlen(name);
        if (len >= 7 && strcmp(name + len - 7, ".rodata") == 0) {
            map = it;
            break;
        }
    }
    if (!map)
        return -ENOENT;
    struct btf *btf = bpf_object__btf(obj);
    if (!btf)
        return -ENOENT;
    int sec_id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
    if (sec_id < 0)
        return -ENOENT;
    const struct btf_type *sec = btf__type_by_id(btf, sec_id);
    const struct btf_var_secinfo *vs = btf_var_secinfos(sec);
    size_t data_size = 0;
    void *data = (void *)bpf_map__initial_value(map, &data_size);
    if (!data)
        return -ENOENT;
    for (unsigned short i = 0; i < btf_vlen(sec); i++, vs++) {
        const struct btf_type *v = btf__type_by_id(btf, vs->type);
        if (strcmp(btf__name_by_offset(btf, v->name_off), var) != 0)
            continue;
        if (vs->size != size || vs->offset + size > data_size)
            return -E2BIG;
        memcpy((char *)data + vs->offset, value, size);
        return 0;
    }
    return -ENOENT;
}

int tp_object_load(struct bpf_object *obj)
{
    int err = bpf_object__load(obj);
    if (err == 0)
        return 0;
    if (err > 0)
        err = -err;
    return err;
}

static struct bpf_link *fix_errno(struct bpf_link *link)
{
    if (!link && errno == 0)
        errno = EINVAL;
    return link;
}

struct bpf_link *tp_attach_kprobe(const struct bpf_program *prog, const char *func, bool retprobe)
{
    LIBBPF_OPTS(bpf_kprobe_opts, opts, .retprobe = retprobe);
    return fix_errno(bpf_program__attach_kprobe_opts(prog, func, &opts));
}

struct bpf_link *tp_attach_kprobe_multi(const struct bpf_program *prog, const char *pattern, bool retprobe)
{
    /* libbpf resolves a pattern by reading all of /proc/kallsyms (about 60 ms); one exact
     * name goes to the kernel as is. */
    if (!strpbrk(pattern, "*?")) {
        const char *syms[] = { pattern };
        LIBBPF_OPTS(bpf_kprobe_multi_opts, exact, .retprobe = retprobe, .syms = syms, .cnt = 1);
        return fix_errno(bpf_program__attach_kprobe_multi_opts(prog, NULL, &exact));
    }
    LIBBPF_OPTS(bpf_kprobe_multi_opts, opts, .retprobe = retprobe);
    return fix_errno(bpf_program__attach_kprobe_multi_opts(prog, pattern, &opts));
}

struct bpf_link *tp_attach_uprobe(const struct bpf_program *prog, pid_t pid, const char *binary,
                                  const char *func, bool retprobe)
{
    LIBBPF_OPTS(bpf_uprobe_opts, opts, .retprobe = retprobe, .func_name = func);
    return fix_errno(bpf_program__attach_uprobe_opts(prog, pid, binary, 0, &opts));
}

struct bpf_link *tp_attach_tracepoint(const struct bpf_program *prog, const char *category, const char *name)
{
    return fix_errno(bpf_program__attach_tracepoint(prog, category, name));
}

struct bpf_link *tp_attach_raw_tracepoint(const struct bpf_program *prog, const char *name)
{
    return fix_errno(bpf_program__attach_raw_tracepoint(prog, name));
}

struct bpf_link *tp_attach_trace(const struct bpf_program *prog)
{
    return fix_errno(bpf_program__attach_trace(prog));
}

struct bpf_link *tp_attach_perf_event(const struct bpf_program *prog, int pfd)
{
    return fix_errno(bpf_program__attach_perf_event(prog, pfd));
}

void tp_link_destroy(struct bpf_link *link)
{
    if (link)
        bpf_link__destroy(link);
}

static int perf_event_open(struct perf_event_attr *attr, pid_t pid, int cpu)
{
    int fd;
    do {
        fd = (int)syscall(__NR_perf_event_open, attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int tp_perf_event_open_cpu_clock(uint64_t period_ns)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    attr.sample_period = period_ns;
    return perf_event_open(&attr, 0, -1);
}

int tp_perf_event_open_cpu_sampler(int cpu, uint64_t frequency_hz)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    attr.freq = 1;
    attr.sample_freq = frequency_hz;
    return perf_event_open(&attr, -1, cpu);
}

int tp_perf_event_open_tracepoint(uint64_t tracepoint_id)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    attr.type = PERF_TYPE_TRACEPOINT;
    attr.config = tracepoint_id;
    attr.sample_period = 1;
    attr.wakeup_events = 1;
    return perf_event_open(&attr, -1, 0);
}

int tp_prog_get_info(int prog_fd, tp_prog_info *out)
{
    struct bpf_prog_info info;
    __u32 len = sizeof(info);
    memset(&info, 0, sizeof(info));
    int err = bpf_obj_get_info_by_fd(prog_fd, &info, &len);
    if (err)
        return err < 0 ? err : -err;
    out->id = info.id;
    out->run_time_ns = info.run_time_ns;
    out->run_cnt = info.run_cnt;
    return 0;
}

int tp_map_create(enum bpf_map_type type, uint32_t key_size, uint32_t value_size, uint32_t max_entries, uint32_t flags)
{
    LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = flags);
    int fd = bpf_map_create(type, "tp_keys", key_size, value_size, max_entries, &opts);
    return fd < 0 ? -errno : fd;
}

int tp_map_get_info(int map_fd, tp_map_info *out)
{
    struct bpf_map_info info;
    __u32 len = sizeof(info);
    memset(&info, 0, sizeof(info));
    int err = bpf_obj_get_info_by_fd(map_fd, &info, &len);
    if (err)
        return err < 0 ? err : -err;
    out->key_size = info.key_size;
    out->value_size = info.value_size;
    out->max_entries = info.max_entries;
    return 0;
}

int tp_enable_runtime_stats(void)
{
    int fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
    return fd < 0 ? -errno : fd;
}

double tp_stats_bias_ns(int runs)
{
    struct bpf_insn insns[] = {
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    int fd = bpf_prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT, "tp_stats_bias", "GPL", insns, 2, NULL);
    if (fd < 0)
        return -errno;
    __u64 args[1] = { 0 };
    LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = args, .ctx_size_in = sizeof(args));
    for (int i = 0; i < runs; i++) {
        if (bpf_prog_test_run_opts(fd, &opts) < 0) {
            int err = errno;
            close(fd);
            return -err;
        }
    }
    struct bpf_prog_info info = {};
    __u32 len = sizeof(info);
    int rc = bpf_obj_get_info_by_fd(fd, &info, &len);
    int err = errno;
    close(fd);
    if (rc < 0)
        return -err;
    if (info.run_cnt == 0)
        return -ENODATA; /* stats are off */
    return (double)info.run_time_ns / (double)info.run_cnt;
}

__attribute__((noinline, used, visibility("default"))) int tp_budget_calibration_target(int x)
{
    __asm__ volatile("" : : "r"(x) : "memory");
    return x + 1;
}

double tp_budget_calibration_loop(int kind, long n)
{
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (kind == 0) {
        for (long i = 0; i < n; i++)
            syscall(SYS_getppid);
    } else {
        volatile int sink = 0;
        for (long i = 0; i < n; i++)
            sink = tp_budget_calibration_target(sink);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    return (double)(end.tv_sec - start.tv_sec) * 1e9 + (double)(end.tv_nsec - start.tv_nsec);
}

int tp_malloc_bound_retention(int mmap_threshold, int arena_max)
{
    int ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold);
    ok &= mallopt(M_ARENA_MAX, arena_max);
    return ok ? 0 : -1;
}

int tp_probe_map_type(int map_type)
{
    return libbpf_probe_bpf_map_type((enum bpf_map_type)map_type, NULL);
}

int tp_probe_helper(int prog_type, int helper_id)
{
    return libbpf_probe_bpf_helper((enum bpf_prog_type)prog_type, (enum bpf_func_id)helper_id, NULL);
}

int tp_link_create_perf_event(int prog_fd, int perf_fd)
{
    int fd = bpf_link_create(prog_fd, perf_fd, BPF_PERF_EVENT, NULL);
    return fd < 0 ? -errno : fd;
}

__attribute__((noinline, used, visibility("default")))
int tp_set_thread_name(const char *name)
{
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) == 0 ? 0 : -errno;
}

int tp_getppid_in_cgroup(const char *cgroup, const char *comm, long calls)
{
    char procs[4096];
    if (snprintf(procs, sizeof(procs), "%s/cgroup.procs", cgroup) >= (int)sizeof(procs))
        return -ENAMETOOLONG;
    pid_t child = fork();
    if (child < 0)
        return -errno;
    if (child == 0) {
        /* Only async-signal-safe calls here: the parent is multi-threaded. */
        int fd = open(procs, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            _exit(errno & 0xff);
        if (write(fd, "0\n", 2) != 2) /* "0": the writing process itself */
            _exit(errno & 0xff);
        close(fd);
        prctl(PR_SET_NAME, (unsigned long)comm, 0, 0, 0);
        for (long i = 0; i < calls; i++)
            syscall(SYS_getppid);
        _exit(0);
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    if (!WIFEXITED(status))
        return -ECHILD;
    return -WEXITSTATUS(status);
}

int traceplane_uprobe_target(int value)
{
    __asm__ volatile("" : "+r"(value));
    return value + 1;
}

int tp_probe_perf_link(int *stage)
{
    struct bpf_insn insns[] = {
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    *stage = 0;
    int prog = bpf_prog_load(BPF_PROG_TYPE_PERF_EVENT, "tp_link_probe", "GPL", insns, 2, NULL);
    if (prog < 0)
        return -errno;
    *stage = 1;
    int pfd = tp_perf_event_open_cpu_clock(1000000000ULL);
    if (pfd < 0) {
        close(prog);
        return pfd;
    }
    int link = tp_link_create_perf_event(prog, pfd);
    if (link >= 0)
        close(link);
    close(pfd);
    close(prog);
    return link < 0 ? link : 0;
}

int tp_vmlinux_btf_syscall_prefix(char *prefix, size_t size)
{
    static const char *const candidates[] = { "__x64_", "__arm64_", "__s390x_", "__riscv_", "__ia32_", "" };
    struct btf *btf = btf__load_vmlinux_btf();
    int err = libbpf_get_error(btf);
    if (err)
        return err < 0 ? err : -err;
    int found = 0;
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
        char name[64];
        snprintf(name, sizeof(name), "%ssys_getpgid", candidates[i]);
        if (btf__find_by_name_kind(btf, name, BTF_KIND_FUNC) > 0) {
            snprintf(prefix, size, "%s", candidates[i]);
            found = 1;
            break;
        }
    }
    btf__free(btf);
    return found;
}

int tp_fs_magic(const char *path, long *magic)
{
    struct statfs info;
    if (statfs(path, &info) != 0)
        return -errno;
    *magic = (long)info.f_type;
    return 0;
}

long tp_syscall_number(const char *name)
{
    static const struct { const char *name; long nr; } table[] = {
#define TP_SYSCALL(n) { #n, __NR_##n },
#include "syscall_names.h"
#undef TP_SYSCALL
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (strcmp(table[i].name, name) == 0)
            return table[i].nr;
    }
    return -1;
}

int tp_cgroup_path(const char *mount, uint64_t id, char *path, size_t size)
{
	/* A kernfs file handle is the node's 64-bit id (FILEID_KERNFS). */
	struct {
		struct file_handle fh;
		uint64_t id;
	} handle = { .fh = { .handle_bytes = sizeof(uint64_t), .handle_type = 0xfe } };
	memcpy(handle.fh.f_handle, &id, sizeof(id));
	int mount_fd = open(mount, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (mount_fd < 0)
		return -errno;
	int fd = open_by_handle_at(mount_fd, &handle.fh, O_RDONLY | O_CLOEXEC);
	int err = errno;
	close(mount_fd);
	if (fd < 0)
		return -err;
	char link[64];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, size - 1);
	err = errno;
	close(fd);
	if (n < 0)
		return -err;
	path[n] = 0;
	return (int)n;
}

/* Ring buffers ------------------------------------------------------------------------ */

#include <bpf/libbpf.h>
#include <sys/epoll.h>

struct tp_ring_batch {
    uint8_t *out;
    size_t size;
    size_t max;
    size_t count;
    uint64_t skipped;
};

struct tp_ring {
    struct ring_buffer *rb;
    int fd;
    struct tp_ring_batch batch;
};

static int tp_ring_sample(void *ctx, void *data, size_t size)
{
    struct tp_ring_batch *b = ctx;
    if (size != b->size) {
        b->skipped++;
        return 0;
    }
    memcpy(b->out + b->count * b->size, data, size);
    b->count++;
    /* libbpf has consumed this record already; stopping here keeps the rest for the next call. */
    return b->count >= b->max ? -E2BIG : 0;
}

struct tp_ring *tp_ring_open(int map_fd)
{
    struct tp_ring *ring = calloc(1, sizeof(*ring));
    if (!ring)
        return NULL;
    ring->fd = fcntl(map_fd, F_DUPFD_CLOEXEC, 0);
    if (ring->fd < 0) {
        int e = errno;
        free(ring);
        errno = e;
        return NULL;
    }
    ring->rb = ring_buffer__new(ring->fd, tp_ring_sample, &ring->batch, NULL);
    if (!ring->rb) {
        int e = errno ? errno : EINVAL;
        close(ring->fd);
        free(ring);
        errno = e;
        return NULL;
    }
    return ring;
}

int tp_ring_poll_fd(const struct tp_ring *ring)
{
    return ring_buffer__epoll_fd(ring->rb);
}

long tp_ring_consume(struct tp_ring *ring, void *out, size_t size, size_t max, uint64_t *skipped)
{
    if (max == 0)
        return 0;
    ring->batch = (struct tp_ring_batch){.out = out, .size = size, .max = max};
    int rc = ring_buffer__consume(ring->rb);
    if (skipped)
        *skipped = ring->batch.skipped;
    if (rc < 0 && rc != -E2BIG)
        return rc;
    return (long)ring->batch.count;
}

void tp_ring_close(struct tp_ring *ring)
{
    if (!ring)
        return;
    ring_buffer__free(ring->rb);
    close(ring->fd);
    free(ring);
}

int tp_epoll_create(void)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int tp_epoll_add(int epfd, int fd, uint64_t tag)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int tp_epoll_remove(int epfd, int fd)
{
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

int tp_epoll_wait(int epfd, uint64_t *tags, int max, int timeout_ms)
{
    struct epoll_event evs[64];
    if (max > 64)
        max = 64;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++)
        tags[i] = evs[i].data.u64;
    return n;
}
