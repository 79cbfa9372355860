// SPDX-License-Identifier: Apache-2.0
// Independent kernel oracles: raw bpf(2)/perf_event_open(2) and sysfs/tracefs/procfs reads.
// See include/ckerneloracle.h. libbpf is used only to parse vmlinux BTF.
#define _GNU_SOURCE
#include <sched.h>
#include "ckerneloracle.h"

#include <bpf/btf.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <zlib.h>

_Static_assert(ORACLE_BTF_KIND_STRUCT == BTF_KIND_STRUCT, "BTF_KIND_STRUCT");
_Static_assert(ORACLE_BTF_KIND_TYPEDEF == BTF_KIND_TYPEDEF, "BTF_KIND_TYPEDEF");
_Static_assert(ORACLE_BTF_KIND_FUNC == BTF_KIND_FUNC, "BTF_KIND_FUNC");

// MARK: system calls

static int oracle_sys_bpf(int cmd, union bpf_attr *attr)
{
    long rc;
    do {
        rc = syscall(__NR_bpf, cmd, attr, sizeof(*attr));
    } while (rc < 0 && errno == EINTR);
    return rc < 0 ? -errno : (int)rc;
}

static int oracle_perf_event_open(struct perf_event_attr *attr, pid_t pid, int cpu)
{
    long rc;
    do {
        rc = syscall(__NR_perf_event_open, attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC);
    } while (rc < 0 && errno == EINTR);
    return rc < 0 ? -errno : (int)rc;
}

static void oracle_close(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void oracle_fire_getpgid(void)
{
    for (int i = 0; i < 8; i++)
        syscall(SYS_getpgid, 0);
}

// MARK: instructions

#define O_INSN(CODE, DST, SRC, OFF, IMM) \
    ((struct bpf_insn){ .code = (CODE), .dst_reg = (DST), .src_reg = (SRC), .off = (OFF), .imm = (IMM) })

/// r0 = 0; exit
static const struct bpf_insn oracle_return_zero[] = {
    O_INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0),
    O_INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
};

enum { ORACLE_COUNTER_INSNS = 14 };

/// if (current tgid == tgid) counter[0] += 1; return 0
static void oracle_counter_program(struct bpf_insn *insns, int map_fd, int tgid)
{
    struct bpf_insn program[ORACLE_COUNTER_INSNS] = {
        /* 0 */ O_INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_current_pid_tgid),
        /* 1 */ O_INSN(BPF_ALU64 | BPF_RSH | BPF_K, BPF_REG_0, 0, 0, 32),
        /* 2 */ O_INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_0, 0, 9, tgid),
        /* 3 */ O_INSN(BPF_ST | BPF_MEM | BPF_W, BPF_REG_10, 0, -4, 0),
        /* 4 */ O_INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0),
        /* 5 */ O_INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4),
        /* 6 */ O_INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        /* 7 */ O_INSN(0, 0, 0, 0, 0),
        /* 8 */ O_INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        /* 9 */ O_INSN(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 2, 0),
        /* 10 */ O_INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 1),
        /* 11 */ O_INSN(BPF_STX | BPF_ATOMIC | BPF_DW, BPF_REG_0, BPF_REG_1, 0, BPF_ADD),
        /* 12 */ O_INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0),
        /* 13 */ O_INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    memcpy(insns, program, sizeof(program));
}

static int oracle_counter_map(void)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 8;
    attr.max_entries = 1;
    return oracle_sys_bpf(BPF_MAP_CREATE, &attr);
}

static uint64_t oracle_counter_read(int map_fd)
{
    union bpf_attr attr;
    uint32_t key = 0;
    uint64_t value = 0;
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)map_fd;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)&value;
    if (oracle_sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr) < 0)
        return 0;
    return value;
}

static uint32_t oracle_kernel_version(void)
{
    struct utsname u;
    unsigned a = 0, b = 0, c = 0;
    if (uname(&u) != 0)
        return 0;
    sscanf(u.release, "%u.%u.%u", &a, &b, &c);
    return (a << 16) + (b << 8) + (c > 255 ? 255 : c);
}

/// BPF_PROG_LOAD; returns the fd or -errno.
static int oracle_prog_load(enum bpf_prog_type type, enum bpf_attach_type expected, uint32_t btf_id,
                            const struct bpf_insn *insns, int count)
{
    static const char license[] = "GPL";
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = type;
    attr.expected_attach_type = expected;
    attr.attach_btf_id = btf_id;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = (uint32_t)count;
    attr.license = (uint64_t)(uintptr_t)license;
    attr.kern_version = oracle_kernel_version();
    return oracle_sys_bpf(BPF_PROG_LOAD, &attr);
}

/// BPF_RAW_TRACEPOINT_OPEN (name NULL attaches a tracing program at its BTF target).
static int oracle_raw_tp_open(int prog_fd, const char *name)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.raw_tracepoint.name = (uint64_t)(uintptr_t)name;
    attr.raw_tracepoint.prog_fd = (uint32_t)prog_fd;
    return oracle_sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &attr);
}

// MARK: BTF

/// The vmlinux BTF id of `name` of `kind`: > 0, or -errno.
static int oracle_btf_id(const char *name, int kind)
{
    struct btf *btf = btf__load_vmlinux_btf();
    if (!btf)
        return errno ? -errno : -ENOENT;
    int id = btf__find_by_name_kind(btf, name, kind);
    btf__free(btf);
    return id > 0 ? id : -ENOENT;
}

int oracle_btf_has(const char *name, int kind)
{
    struct btf *btf = btf__load_vmlinux_btf();
    if (!btf)
        return errno ? -errno : -ENOENT;
    int id = btf__find_by_name_kind(btf, name, kind);
    btf__free(btf);
    return id > 0 ? 1 : 0;
}

int oracle_syscall_entry(char *buf, size_t size)
{
    static const char *const candidates[] = {
        "__x64_sys_getpgid", "__arm64_sys_getpgid", "__s390x_sys_getpgid", "__riscv_sys_getpgid",
        "__ia32_sys_getpgid", "sys_getpgid",
    };
    struct btf *btf = btf__load_vmlinux_btf();
    if (!btf)
        return errno ? -errno : -ENOENT;
    int rc = -ENOENT;
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
        if (btf__find_by_name_kind(btf, candidates[i], BTF_KIND_FUNC) > 0) {
            if (strlen(candidates[i]) + 1 > size) {
                rc = -ERANGE;
            } else {
                strcpy(buf, candidates[i]);
                rc = 0;
            }
            break;
        }
    }
    btf__free(btf);
    return rc;
}

// MARK: load-only checks

static int oracle_load_tracing(const char *btf_name, int kind, enum bpf_attach_type type)
{
    int id = oracle_btf_id(btf_name, kind);
    if (id < 0)
        return id;
    int fd = oracle_prog_load(BPF_PROG_TYPE_TRACING, type, (uint32_t)id, oracle_return_zero, 2);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

int oracle_load_fentry(const char *func)
{
    return oracle_load_tracing(func, BTF_KIND_FUNC, BPF_TRACE_FENTRY);
}

int oracle_load_fexit(const char *func)
{
    return oracle_load_tracing(func, BTF_KIND_FUNC, BPF_TRACE_FEXIT);
}

int oracle_load_tp_btf(const char *tp)
{
    char name[256];
    snprintf(name, sizeof(name), "btf_trace_%s", tp);
    return oracle_load_tracing(name, BTF_KIND_TYPEDEF, BPF_TRACE_RAW_TP);
}

int oracle_raw_tracepoint_open(const char *name)
{
    int prog = oracle_prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT, 0, 0, oracle_return_zero, 2);
    if (prog < 0)
        return prog;
    int link = oracle_raw_tp_open(prog, name);
    close(prog);
    if (link < 0)
        return link;
    close(link);
    return 0;
}

// MARK: tracefs and sysfs

static const char *const oracle_tracefs_roots[] = { "/sys/kernel/tracing", "/sys/kernel/debug/tracing" };

/// Reads the first line of `path` into buf; 0 or -errno.
static int oracle_read_line(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    int rc = fgets(buf, (int)size, f) ? 0 : -EIO;
    fclose(f);
    return rc;
}

static long long oracle_tracepoint_id(const char *category, const char *name)
{
    char path[512], line[64];
    int rc = -ENOENT;
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/events/%s/%s/id", oracle_tracefs_roots[i], category, name);
        rc = oracle_read_line(path, line, sizeof(line));
        if (rc == 0)
            return strtoll(line, NULL, 10);
    }
    return rc;
}

int oracle_pmu_type(const char *pmu)
{
    char path[256], line[64];
    snprintf(path, sizeof(path), "/sys/bus/event_source/devices/%s/type", pmu);
    int rc = oracle_read_line(path, line, sizeof(line));
    return rc < 0 ? rc : atoi(line);
}

/// The config bit that makes a kprobe/uprobe PMU event a return probe ("config:0").
static int oracle_retprobe_bit(const char *pmu)
{
    char path[256], line[64];
    int bit = 0;
    snprintf(path, sizeof(path), "/sys/bus/event_source/devices/%s/format/retprobe", pmu);
    if (oracle_read_line(path, line, sizeof(line)) < 0 || sscanf(line, "config:%d", &bit) != 1)
        return -ENOENT;
    return bit;
}

int oracle_kprobe_events_exists(void)
{
    char path[256];
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/kprobe_events", oracle_tracefs_roots[i]);
        if (access(path, F_OK) == 0)
            return 1;
    }
    return 0;
}

int oracle_kprobes_available(void)
{
    return oracle_pmu_type("kprobe") >= 0 || oracle_kprobe_events_exists();
}

static int oracle_config_search(gzFile file, const char *option)
{
    char line[512];
    char set[256], unset[256];
    snprintf(set, sizeof(set), "%s=", option);
    snprintf(unset, sizeof(unset), "# %s is not set", option);
    size_t setLength = strlen(set);
    while (gzgets(file, line, sizeof(line))) {
        if (strncmp(line, set, setLength) == 0) {
            char value = line[setLength];
            return value == 'y' ? 1 : value == 'm' ? 2 : 1;
        }
        if (strncmp(line, unset, strlen(unset)) == 0)
            return 0;
    }
    return 0;
}

int oracle_config_option(const char *option)
{
    // gzopen reads uncompressed files transparently, so /boot/config-* works the same way.
    gzFile file = gzopen("/proc/config.gz", "rb");
    if (!file) {
        struct utsname u;
        char path[512];
        if (uname(&u) != 0)
            return -ENOENT;
        snprintf(path, sizeof(path), "/boot/config-%s", u.release);
        file = gzopen(path, "rb");
    }
    if (!file)
        return -ENOENT;
    int rc = oracle_config_search(file, option);
    gzclose(file);
    return rc;
}

int oracle_fs_magic_is(const char *path, long magic)
{
    struct statfs s;
    if (statfs(path, &s) != 0)
        return -errno;
    return (long)s.f_type == magic ? 1 : 0;
}

int oracle_bpf_fd_count(void)
{
    static const char *const kinds[] = {
        "anon_inode:bpf-prog", "anon_inode:bpf-map", "anon_inode:bpf_link", "anon_inode:[perf_event]",
    };
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return -errno;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        char target[256];
        ssize_t n = readlinkat(dirfd(dir), entry->d_name, target, sizeof(target) - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
            if (strcmp(target, kinds[i]) == 0) {
                count++;
                break;
            }
        }
    }
    closedir(dir);
    return count;
}

/// Whether `name` starts with one of the comma-separated `prefixes`.
static int oracle_has_prefix(const char *name, const char *prefixes)
{
    const char *p = prefixes;
    while (p && *p) {
        const char *comma = strchr(p, ',');
        size_t length = comma ? (size_t)(comma - p) : strlen(p);
        if (length > 0 && strncmp(name, p, length) == 0)
            return 1;
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

static int oracle_obj_info(int fd, void *info, uint32_t size)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    memset(info, 0, size);
    attr.info.bpf_fd = (uint32_t)fd;
    attr.info.info_len = size;
    attr.info.info = (uint64_t)(uintptr_t)info;
    return oracle_sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr);
}

/// The name of the program with id `id`; 0 or -errno.
static int oracle_prog_name(uint32_t id, char *name, size_t size)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_id = id;
    int fd = oracle_sys_bpf(BPF_PROG_GET_FD_BY_ID, &attr);
    if (fd < 0)
        return fd;
    struct bpf_prog_info info;
    int rc = oracle_obj_info(fd, &info, sizeof(info));
    close(fd);
    if (rc < 0)
        return rc;
    snprintf(name, size, "%s", info.name);
    return 0;
}

int oracle_fd_census(const char *prog_prefixes, const char *map_prefixes, oracle_fd_counts *all,
                     oracle_fd_counts *owned)
{
    memset(all, 0, sizeof(*all));
    memset(owned, 0, sizeof(*owned));
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return -errno;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        int fd = atoi(entry->d_name);
        if (fd == dirfd(dir))
            continue;
        char target[256];
        ssize_t n = readlinkat(dirfd(dir), entry->d_name, target, sizeof(target) - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        char name[64] = "";
        if (strcmp(target, "anon_inode:bpf-prog") == 0) {
            all->progs++;
            struct bpf_prog_info info;
            if (oracle_obj_info(fd, &info, sizeof(info)) == 0 && oracle_has_prefix(info.name, prog_prefixes))
                owned->progs++;
        } else if (strcmp(target, "anon_inode:bpf-map") == 0) {
            all->maps++;
            struct bpf_map_info info;
            if (oracle_obj_info(fd, &info, sizeof(info)) == 0 && oracle_has_prefix(info.name, map_prefixes))
                owned->maps++;
        } else if (strcmp(target, "anon_inode:bpf_link") == 0) {
            all->links++;
            struct bpf_link_info info;
            if (oracle_obj_info(fd, &info, sizeof(info)) == 0 && oracle_prog_name(info.prog_id, name, sizeof(name)) == 0 &&
                oracle_has_prefix(name, prog_prefixes))
                owned->links++;
        } else if (strcmp(target, "anon_inode:[perf_event]") == 0) {
            all->perf_events++;
            union bpf_attr attr;
            memset(&attr, 0, sizeof(attr));
            attr.task_fd_query.pid = (uint32_t)getpid();
            attr.task_fd_query.fd = (uint32_t)fd;
            if (oracle_sys_bpf(BPF_TASK_FD_QUERY, &attr) == 0 &&
                oracle_prog_name(attr.task_fd_query.prog_id, name, sizeof(name)) == 0 &&
                oracle_has_prefix(name, prog_prefixes))
                owned->perf_events++;
        }
    }
    closedir(dir);
    return 0;
}

int oracle_count_programs_with_prefix(const char *prefix)
{
    uint32_t id = 0;
    int count = 0;
    size_t length = strlen(prefix);
    for (;;) {
        union bpf_attr attr;
        memset(&attr, 0, sizeof(attr));
        attr.start_id = id;
        int rc = oracle_sys_bpf(BPF_PROG_GET_NEXT_ID, &attr);
        if (rc == -ENOENT)
            break;
        if (rc < 0)
            return rc;
        id = attr.next_id;
        memset(&attr, 0, sizeof(attr));
        attr.prog_id = id;
        int fd = oracle_sys_bpf(BPF_PROG_GET_FD_BY_ID, &attr);
        if (fd < 0)
            continue; // unloaded meanwhile
        struct bpf_prog_info info;
        memset(&info, 0, sizeof(info));
        memset(&attr, 0, sizeof(attr));
        attr.info.bpf_fd = (uint32_t)fd;
        attr.info.info_len = sizeof(info);
        attr.info.info = (uint64_t)(uintptr_t)&info;
        if (oracle_sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) == 0 && strncmp(info.name, prefix, length) == 0)
            count++;
        close(fd);
    }
    return count;
}

const char *oracle_errno_name(int err)
{
    static _Thread_local char unknown[16];
    if (err == 524)
        return "ENOTSUPP";
    const char *name = strerrorname_np(err);
    if (name)
        return name;
    snprintf(unknown, sizeof(unknown), "E%d", err);
    return unknown;
}

int oracle_perf_tracepoint(const char *category, const char *name)
{
    long long id = oracle_tracepoint_id(category, name);
    if (id < 0)
        return (int)id;
    int prog = oracle_prog_load(BPF_PROG_TYPE_TRACEPOINT, 0, 0, oracle_return_zero, 2);
    if (prog < 0)
        return prog;
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.type = PERF_TYPE_TRACEPOINT;
    attr.size = sizeof(attr);
    attr.config = (uint64_t)id;
    attr.sample_period = 1;
    attr.wakeup_events = 1;
    int event = oracle_perf_event_open(&attr, -1, 0);
    if (event < 0) {
        close(prog);
        return event;
    }
    int rc = ioctl(event, PERF_EVENT_IOC_SET_BPF, prog) < 0 ? -errno : 0;
    close(event);
    close(prog);
    return rc;
}

// MARK: full trials

typedef struct {
    int map;
    int prog;
    int attach[2]; // link, perf event
} oracle_trial;

static oracle_outcome oracle_outcome_make(int stage, int rc)
{
    oracle_outcome o = { .stage = stage, .err = rc < 0 ? -rc : rc, .hits = 0 };
    return o;
}

static void oracle_trial_close(oracle_trial *t)
{
    oracle_close(&t->attach[0]);
    oracle_close(&t->attach[1]);
    oracle_close(&t->prog);
    oracle_close(&t->map);
}

/// Creates the counter map and loads the counting program. Fills t; returns 0 or an outcome stage.
static int oracle_trial_load(oracle_trial *t, enum bpf_prog_type type, enum bpf_attach_type expected,
                             uint32_t btf_id, int *err)
{
    t->map = t->prog = t->attach[0] = t->attach[1] = -1;
    int map = oracle_counter_map();
    if (map < 0) {
        *err = map;
        return ORACLE_STAGE_LOAD;
    }
    t->map = map;
    struct bpf_insn insns[ORACLE_COUNTER_INSNS];
    oracle_counter_program(insns, map, (int)getpid());
    int prog = oracle_prog_load(type, expected, btf_id, insns, ORACLE_COUNTER_INSNS);
    if (prog < 0) {
        *err = prog;
        oracle_trial_close(t);
        return ORACLE_STAGE_LOAD;
    }
    t->prog = prog;
    return ORACLE_STAGE_NONE;
}

/// Fires, counts, closes everything.
static oracle_outcome oracle_trial_finish(oracle_trial *t, void (*fire)(void))
{
    uint64_t hits = 0;
    for (int i = 0; i < 3 && hits == 0; i++) {
        fire();
        hits = oracle_counter_read(t->map);
    }
    oracle_trial_close(t);
    oracle_outcome o = { .stage = hits ? ORACLE_STAGE_NONE : ORACLE_STAGE_FIRE, .err = 0, .hits = hits };
    return o;
}

/// Loads a trial program and attaches it with BPF_RAW_TRACEPOINT_OPEN (`tp` NULL for programs
/// bound at load time: fentry, fexit, tp_btf), then fires getpgid.
static oracle_outcome oracle_try_raw_tp_open(enum bpf_prog_type prog_type, enum bpf_attach_type type, uint32_t btf_id,
                                             const char *tp)
{
    oracle_trial t;
    int err = 0;
    int stage = oracle_trial_load(&t, prog_type, type, btf_id, &err);
    if (stage != ORACLE_STAGE_NONE)
        return oracle_outcome_make(stage, err);
    int link = oracle_raw_tp_open(t.prog, tp);
    if (link < 0) {
        oracle_trial_close(&t);
        return oracle_outcome_make(ORACLE_STAGE_ATTACH, link);
    }
    t.attach[0] = link;
    return oracle_trial_finish(&t, oracle_fire_getpgid);
}

static oracle_outcome oracle_try_tracing(const char *btf_name, int kind, enum bpf_attach_type type)
{
    int id = oracle_btf_id(btf_name, kind);
    if (id < 0)
        return oracle_outcome_make(ORACLE_STAGE_SETUP, id);
    return oracle_try_raw_tp_open(BPF_PROG_TYPE_TRACING, type, (uint32_t)id, NULL);
}

oracle_outcome oracle_try_fentry(const char *func, int fexit)
{
    return oracle_try_tracing(func, BTF_KIND_FUNC, fexit ? BPF_TRACE_FEXIT : BPF_TRACE_FENTRY);
}

oracle_outcome oracle_try_tp_btf(const char *tp)
{
    char name[256];
    snprintf(name, sizeof(name), "btf_trace_%s", tp);
    return oracle_try_tracing(name, BTF_KIND_TYPEDEF, BPF_TRACE_RAW_TP);
}

oracle_outcome oracle_try_raw_tracepoint(const char *tp)
{
    return oracle_try_raw_tp_open(BPF_PROG_TYPE_RAW_TRACEPOINT, 0, 0, tp);
}

/// Opens `attr` as a perf event, attaches the trial's program with PERF_EVENT_IOC_SET_BPF
/// and enables it. Returns 0 or -errno.
static int oracle_trial_perf_attach(oracle_trial *t, struct perf_event_attr *attr, pid_t pid, int cpu)
{
    int event = oracle_perf_event_open(attr, pid, cpu);
    if (event < 0)
        return event;
    t->attach[1] = event;
    if (ioctl(event, PERF_EVENT_IOC_SET_BPF, t->prog) < 0)
        return -errno;
    if (ioctl(event, PERF_EVENT_IOC_ENABLE, 0) < 0)
        return -errno;
    return 0;
}

oracle_outcome oracle_try_perf_tracepoint(const char *category, const char *name)
{
    long long id = oracle_tracepoint_id(category, name);
    if (id < 0)
        return oracle_outcome_make(ORACLE_STAGE_SETUP, (int)id);
    oracle_trial t;
    int err = 0;
    int stage = oracle_trial_load(&t, BPF_PROG_TYPE_TRACEPOINT, 0, 0, &err);
    if (stage != ORACLE_STAGE_NONE)
        return oracle_outcome_make(stage, err);
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.type = PERF_TYPE_TRACEPOINT;
    attr.size = sizeof(attr);
    attr.config = (uint64_t)id;
    attr.sample_period = 1;
    attr.wakeup_events = 1;
    // A BPF program on a tracepoint runs for every CPU, whichever CPU the event is bound to.
    int rc = oracle_trial_perf_attach(&t, &attr, -1, 0);
    if (rc < 0) {
        oracle_trial_close(&t);
        return oracle_outcome_make(ORACLE_STAGE_ATTACH, rc);
    }
    return oracle_trial_finish(&t, oracle_fire_getpgid);
}

__attribute__((noinline, used)) int oracle_uprobe_target(int x)
{
    __asm__ volatile("" : "+r"(x));
    return x + 1;
}

/* A trial through a dynamic PMU (kprobe or uprobe): config1 is the function name or the
 * binary's path, config2 the offset; the retprobe bit comes from the PMU's format. */
static oracle_outcome oracle_try_pmu_probe(const char *pmu, int retprobe, uint64_t config1, uint64_t config2,
                                           pid_t pid, int cpu, void (*fire)(void))
{
    int type = oracle_pmu_type(pmu);
    if (type < 0)
        return oracle_outcome_make(ORACLE_STAGE_SETUP, type);
    int bit = 0;
    if (retprobe && (bit = oracle_retprobe_bit(pmu)) < 0)
        return oracle_outcome_make(ORACLE_STAGE_SETUP, bit);
    oracle_trial t;
    int err = 0;
    int stage = oracle_trial_load(&t, BPF_PROG_TYPE_KPROBE, 0, 0, &err);
    if (stage != ORACLE_STAGE_NONE)
        return oracle_outcome_make(stage, err);
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.type = (uint32_t)type;
    attr.size = sizeof(attr);
    attr.config = retprobe ? (1ULL << bit) : 0;
    attr.config1 = config1;
    attr.config2 = config2;
    attr.sample_period = 1;
    attr.wakeup_events = 1;
    int rc = oracle_trial_perf_attach(&t, &attr, pid, cpu);
    if (rc < 0) {
        oracle_trial_close(&t);
        return oracle_outcome_make(ORACLE_STAGE_ATTACH, rc);
    }
    return oracle_trial_finish(&t, fire);
}

static void oracle_fire_uprobe(void)
{
    int (*volatile target)(int) = oracle_uprobe_target;
    for (int i = 0; i < 4; i++)
        (void)target(i);
}

/// The file and file offset that `address` maps to, from /proc/self/maps. 0 or -errno.
static int oracle_file_offset(uintptr_t address, char *path, size_t size, uint64_t *offset)
{
    FILE *maps = fopen("/proc/self/maps", "re");
    if (!maps)
        return -errno;
    char line[1024];
    int rc = -ENOENT;
    while (fgets(line, sizeof(line), maps)) {
        unsigned long start, end, file_offset;
        char perms[8];
        int consumed = 0;
        if (sscanf(line, "%lx-%lx %7s %lx %*s %*s%n", &start, &end, perms, &file_offset, &consumed) < 4)
            continue;
        if (address < start || address >= end)
            continue;
        char *file = line + consumed;
        while (*file == ' ')
            file++;
        file[strcspn(file, "\n")] = '\0';
        if (file[0] != '/' || strlen(file) + 1 > size)
            break;
        strcpy(path, file);
        *offset = (uint64_t)(address - start + file_offset);
        rc = 0;
        break;
    }
    fclose(maps);
    return rc;
}

oracle_outcome oracle_try_uprobe(int retprobe)
{
    char path[512];
    uint64_t offset = 0;
    int rc = oracle_file_offset((uintptr_t)&oracle_uprobe_target, path, sizeof(path), &offset);
    if (rc < 0)
        return oracle_outcome_make(ORACLE_STAGE_SETUP, rc);
    // A process-wide uprobe: the filter is by address space, so any thread of ours fires it.
    return oracle_try_pmu_probe("uprobe", retprobe, (uint64_t)(uintptr_t)path, offset, getpid(), -1, oracle_fire_uprobe);
}

oracle_outcome oracle_try_kprobe(const char *func, int retprobe)
{
    return oracle_try_pmu_probe("kprobe", retprobe, (uint64_t)(uintptr_t)func, 0, -1, 0, oracle_fire_getpgid);
}

// MARK: process names and task_struct

int oracle_set_thread_name(const char *name)
{
	return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) == 0 ? 0 : -errno;
}

static long member_offset(const struct btf *btf, const struct btf_type *t, const char *member, int depth)
{
	if (depth > 8)
		return -ENOENT;
	const struct btf_member *m = btf_members(t);
	for (int i = 0; i < btf_vlen(t); i++, m++) {
		long bits = btf_member_bit_offset(t, i);
		const char *name = btf__name_by_offset(btf, m->name_off);
		if (name && strcmp(name, member) == 0)
			return bits % 8 == 0 ? bits / 8 : -EINVAL;
		if (name && name[0] == 0) {
			const struct btf_type *inner = btf__type_by_id(btf, btf__resolve_type(btf, m->type));
			if (inner && (btf_is_struct(inner) || btf_is_union(inner))) {
				long found = member_offset(btf, inner, member, depth + 1);
				if (found >= 0)
					return bits / 8 + found;
			}
		}
	}
	return -ENOENT;
}

long oracle_task_struct_offset(const char *member)
{
	struct btf *btf = btf__load_vmlinux_btf();
	if (!btf)
		return -errno;
	long result = -ENOENT;
	int id = btf__find_by_name_kind(btf, "task_struct", BTF_KIND_STRUCT);
	if (id > 0)
		result = member_offset(btf, btf__type_by_id(btf, id), member, 0);
	btf__free(btf);
	return result;
}


/* Makes `n` getppid syscalls from the calling thread pinned to CPU `cpu`, then gives the
 * thread back the CPUs it had: a per-CPU count the test knows exactly. Returns n, or
 * -errno when the thread could not be pinned. */
long oracle_getppid_on_cpu(int cpu, long n)
{
	cpu_set_t old, one;
	if (sched_getaffinity(0, sizeof(old), &old) != 0)
		return -errno;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	if (sched_setaffinity(0, sizeof(one), &one) != 0)
		return -errno;
	for (long i = 0; i < n; i++)
		syscall(SYS_getppid);
	sched_setaffinity(0, sizeof(old), &old);
	return n;
}

// MARK: pinned maps

/// Possible CPUs, from /sys/devices/system/cpu/possible ("0-3", "0,2-5"): the per-CPU
/// value count of a per-CPU map. -errno when it cannot be read.
static int oracle_possible_cpus(void)
{
    char line[256];
    int rc = oracle_read_line("/sys/devices/system/cpu/possible", line, sizeof(line));
    if (rc < 0)
        return rc;
    int highest = -1;
    for (char *p = line; *p;) {
        char *end;
        long first = strtol(p, &end, 10);
        if (end == p)
            break;
        long last = first;
        if (*end == '-')
            last = strtol(end + 1, &end, 10);
        if (last > highest)
            highest = (int)last;
        p = *end == ',' ? end + 1 : end;
        if (*p == '\n')
            break;
    }
    return highest < 0 ? -EINVAL : highest + 1;
}

int oracle_pinned_map_u64s(const char *path, uint32_t key, size_t offset, size_t count, uint64_t *out)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.pathname = (uint64_t)(uintptr_t)path;
    attr.file_flags = BPF_F_RDONLY;
    int fd = oracle_sys_bpf(BPF_OBJ_GET, &attr);
    if (fd < 0)
        return fd;
    struct bpf_map_info info;
    int rc = oracle_obj_info(fd, &info, sizeof(info));
    if (rc < 0)
        goto out;
    if (info.key_size != sizeof(uint32_t) || offset + count * sizeof(uint64_t) > info.value_size) {
        rc = -EINVAL;
        goto out;
    }
    int percpu = info.type == BPF_MAP_TYPE_PERCPU_ARRAY || info.type == BPF_MAP_TYPE_PERCPU_HASH ||
                 info.type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
    int cpus = percpu ? oracle_possible_cpus() : 1;
    if (cpus < 0) {
        rc = cpus;
        goto out;
    }
    size_t stride = percpu ? ((size_t)info.value_size + 7) / 8 * 8 : info.value_size;
    unsigned char *values = calloc((size_t)cpus, stride);
    if (!values) {
        rc = -ENOMEM;
        goto out;
    }
    memset(&attr, 0, sizeof(attr));
    attr.map_fd = (uint32_t)fd;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)values;
    rc = oracle_sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr);
    if (rc == 0) {
        memset(out, 0, count * sizeof(uint64_t));
        for (int cpu = 0; cpu < cpus; cpu++) {
            for (size_t i = 0; i < count; i++) {
                uint64_t word;
                memcpy(&word, values + (size_t)cpu * stride + offset + i * sizeof(uint64_t), sizeof(word));
                out[i] += word;
            }
        }
    }
    free(values);
out:
    close(fd);
    return rc;
}

int oracle_pin_new_map(const char *path, const char *name)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 8;
    attr.max_entries = 1;
    strncpy(attr.map_name, name, sizeof(attr.map_name) - 1);
    int fd = oracle_sys_bpf(BPF_MAP_CREATE, &attr);
    if (fd < 0)
        return fd;
    struct bpf_map_info info;
    int rc = oracle_obj_info(fd, &info, sizeof(info));
    if (rc == 0) {
        memset(&attr, 0, sizeof(attr));
        attr.pathname = (uint64_t)(uintptr_t)path;
        attr.bpf_fd = (uint32_t)fd;
        rc = oracle_sys_bpf(BPF_OBJ_PIN, &attr);
    }
    close(fd);
    return rc < 0 ? rc : (int)info.id;
}

int oracle_map_exists(uint32_t id)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.map_id = id;
    int fd = oracle_sys_bpf(BPF_MAP_GET_FD_BY_ID, &attr);
    if (fd == -ENOENT)
        return 0;
    if (fd < 0)
        return fd;
    close(fd);
    return 1;
}
