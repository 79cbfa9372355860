// SPDX-License-Identifier: Apache-2.0
// Times a tight loop of one syscall: prints the median, min and max ns per call over
// several rounds.
//   syscall_loop getppid|getpid|read1|switch|threadsK [iterations] [rounds]   one measurement
//   syscall_loop serve    one measurement per stdin line "SYSCALL ITERATIONS ROUNDS",
//                         answered on stdout, so that tracers can filter on one known pid
//   syscall_loop getters  prints the names of the syscalls threadsK makes, one a line
//   syscall_loop burn SECONDS   spins for SECONDS in call chains 10 to 40 frames deep, with
//                         a 64 KiB read of /dev/zero at every 4th leaf: a fixed load with
//                         user and kernel stacks for profilers to sample
// threadsK starts K threads that each make every one of GETTERS once and wait until all K
// have (so their K tids are distinct): K keys for probes keyed by tid on any of these
// syscalls, none of which the serve loop's own thread makes. threadsKxM: each makes every
// getter M times (so that each key's latency histogram spreads over a few slots).
// switch ping-pongs one byte over two pipes with a second thread N times and prints ns per
// context switch (both threads' switches, from getrusage(RUSAGE_THREAD)): run on one CPU
// (the partner inherits the caller's affinity), every hand-over is a sched_switch.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* name, then three arguments; `scratch` is a buffer the call may write. */
#define GETTERS(X) \
    X(getppid, 0, 0, 0) X(getpid, 0, 0, 0) X(gettid, 0, 0, 0) X(getuid, 0, 0, 0) X(geteuid, 0, 0, 0) \
    X(getgid, 0, 0, 0) X(getegid, 0, 0, 0) X(getsid, 0, 0, 0) X(getpgid, 0, 0, 0) X(sched_yield, 0, 0, 0) \
    X(sched_getscheduler, 0, 0, 0) X(sched_get_priority_max, 0, 0, 0) X(sched_get_priority_min, 0, 0, 0) \
    X(getpriority, PRIO_PROCESS, 0, 0) X(getresuid, scratch, scratch + 8, scratch + 16) \
    X(getresgid, scratch, scratch + 8, scratch + 16) X(getgroups, 0, 0, 0) X(sysinfo, scratch, 0, 0) \
    X(uname, scratch, 0, 0) X(times, scratch, 0, 0) X(getrusage, RUSAGE_SELF, scratch, 0) \
    X(sched_getparam, 0, scratch, 0) X(getitimer, 0, scratch, 0)

static pthread_barrier_t getters_done;
static long getter_repeats = 1;

static void *call_getters(void *unused)
{
    char scratch[1024] __attribute__((aligned(16)));
    (void)unused;
    for (long i = 0; i < getter_repeats; i++) {
#define CALL(name, a, b, c) syscall(SYS_##name, (long)(a), (long)(b), (long)(c));
        GETTERS(CALL)
#undef CALL
    }
    pthread_barrier_wait(&getters_done);
    return NULL;
}

static int run_threads(long k)
{
    pthread_t threads[4096];
    if (k < 1 || k > 4096 || pthread_barrier_init(&getters_done, NULL, (unsigned)k) != 0) return 2;
    long started = 0;
    while (started < k && pthread_create(&threads[started], NULL, call_getters, NULL) == 0) started++;
    for (long i = 0; i < started; i++) pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&getters_done);
    return started == k ? 0 : 1;
}

struct pingpong {
    int to_partner[2], to_caller[2];
    long partner_switches;
};

static long thread_switches(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return ru.ru_nvcsw + ru.ru_nivcsw;
}

static void *partner(void *arg)
{
    struct pingpong *p = arg;
    char c;
    long before = thread_switches();
    while (read(p->to_partner[0], &c, 1) == 1 && c != 'q' && write(p->to_caller[1], &c, 1) == 1) {}
    p->partner_switches = thread_switches() - before;
    return NULL;
}

/* n round trips with a partner thread; the ns per context switch of the two threads. */
static double ping_pong(long n, double (*clock_ns)(void))
{
    struct pingpong p = {0};
    pthread_t thread;
    char c = 'p';
    if (pipe(p.to_partner) != 0 || pipe(p.to_caller) != 0) return -1;
    if (pthread_create(&thread, NULL, partner, &p) != 0) return -1;
    long before = thread_switches();
    double start = clock_ns();
    for (long i = 0; i < n; i++) {
        if (write(p.to_partner[1], &c, 1) != 1 || read(p.to_caller[0], &c, 1) != 1) return -1;
    }
    double elapsed = clock_ns() - start;
    long mine = thread_switches() - before;
    c = 'q';
    if (write(p.to_partner[1], &c, 1) != 1) return -1;
    pthread_join(thread, NULL);
    for (int i = 0; i < 2; i++) { close(p.to_partner[i]); close(p.to_caller[i]); }
    long switches = mine + p.partner_switches;
    return switches > 0 ? elapsed / switches : -1;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int burn_fd = -1;
static volatile unsigned long burn_sink;

/* Distinct functions, so that chains of different depths and orders are distinct stacks. */
static void burn_leaf(unsigned long seed)
{
    static char buf[1 << 16];
    if ((seed & 3) == 0) {
        if (read(burn_fd, buf, sizeof(buf)) < 0) burn_sink++;
    } else {
        unsigned long x = seed;
        for (int i = 0; i < 5000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
        burn_sink += x;
    }
}
static void burn_a(int depth, unsigned long seed);
static void burn_b(int depth, unsigned long seed);
static void burn_c(int depth, unsigned long seed);
static void __attribute__((noinline)) burn_next(int depth, unsigned long seed)
{
    if (depth <= 0) { burn_leaf(seed); return; }
    switch ((seed >> (depth % 32)) % 3) {
    case 0: burn_a(depth - 1, seed); break;
    case 1: burn_b(depth - 1, seed); break;
    default: burn_c(depth - 1, seed); break;
    }
}
static void __attribute__((noinline)) burn_a(int depth, unsigned long seed) { burn_next(depth, seed); burn_sink++; }
static void __attribute__((noinline)) burn_b(int depth, unsigned long seed) { burn_next(depth, seed * 3); burn_sink++; }
static void __attribute__((noinline)) burn_c(int depth, unsigned long seed) { burn_next(depth, seed * 5); burn_sink++; }

static int burn(double seconds)
{
    burn_fd = open("/dev/zero", O_RDONLY);
    if (burn_fd < 0) return 1;
    double end = now_ns() + seconds * 1e9;
    unsigned long seed = 1;
    while (now_ns() < end) {
        for (int i = 0; i < 64; i++) {
            seed = seed * 2862933555777941757UL + 3037000493UL;
            burn_next(4 + (int)((seed >> 40) % 16), seed >> 8);
        }
    }
    return 0;
}

static int measure(int fd, const char *what, long n, int rounds)
{
    char byte;
    double results[64];
    long threads = 0;
    if (strncmp(what, "threads", 7) == 0) {
        char *end;
        threads = strtol(what + 7, &end, 10);
        if (threads < 1 || threads > 4096) return 2;
        getter_repeats = *end == 'x' ? strtol(end + 1, NULL, 10) : 1;
        if (getter_repeats < 1 || getter_repeats > 1000000) return 2;
    }
    if (n < 1 || rounds < 1) return 2;
    if (rounds > 64) rounds = 64;
    for (int r = 0; r < rounds; r++) {
        double start = now_ns();
        if (strcmp(what, "getppid") == 0)
            for (long i = 0; i < n; i++) syscall(SYS_getppid);
        else if (strcmp(what, "getpid") == 0)
            for (long i = 0; i < n; i++) syscall(SYS_getpid);
        else if (strcmp(what, "read1") == 0)
            for (long i = 0; i < n; i++) { if (read(fd, &byte, 1) != 1) return 1; }
        else if (strcmp(what, "switch") == 0) {
            results[r] = ping_pong(n, now_ns);
            if (results[r] < 0) return 1;
            continue;
        }
        else if (threads)
            for (long i = 0; i < n; i++) { if (run_threads(threads) != 0) return 1; }
        else
            return 2;
        results[r] = (now_ns() - start) / n;
    }
    qsort(results, rounds, sizeof(double), cmp);
    printf("%.1f %.1f %.1f\n", results[rounds / 2], results[0], results[rounds - 1]);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s getppid|getpid|read1|switch|threadsK [iterations] [rounds] | serve | getters | burn SECONDS\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "burn") == 0) return burn(argc > 2 ? atof(argv[2]) : 20);
    if (strcmp(argv[1], "getters") == 0) {
#define NAME(name, a, b, c) puts(#name);
        GETTERS(NAME)
#undef NAME
        return 0;
    }
    int fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) { perror("/dev/zero"); return 1; }
    if (strcmp(argv[1], "serve") != 0)
        return measure(fd, argv[1], argc > 2 ? atol(argv[2]) : 1000000, argc > 3 ? atoi(argv[3]) : 5);
    char line[128], what[32];
    long n;
    int rounds;
    while (fgets(line, sizeof(line), stdin)) {
        if (sscanf(line, "%31s %ld %d", what, &n, &rounds) != 3 || measure(fd, what, n, rounds) != 0) {
            printf("error\n");
            fflush(stdout);
        }
    }
    return 0;
}
