/* The soak's workload: a few syscalls at a bounded rate, so the probes have something to
 * count and the host is not saturated (bench/soak.py runs one per cgroup).
 *
 *   soak_load CALLS_PER_SECOND MAX_SECONDS
 *
 * Every 10 ms it makes CALLS_PER_SECOND / 100 rounds of getppid, read of /dev/zero, write
 * to /dev/null and openat + close of /etc/hostname, then sleeps (nanosleep) for the rest
 * of the tick. It exits after MAX_SECONDS, or at once when its parent goes (so a killed
 * driver leaves no loop behind). Built with frame pointers, so ustack keys name it. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void __attribute__((noinline)) one_round(int zero, int null)
{
    char buf[64];
    syscall(SYS_getppid);
    if (read(zero, buf, sizeof(buf)) < 0) _exit(1);
    if (write(null, buf, sizeof(buf)) < 0) _exit(1);
    int fd = openat(AT_FDCWD, "/etc/hostname", O_RDONLY);
    if (fd >= 0) close(fd);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s CALLS_PER_SECOND MAX_SECONDS\n", argv[0]);
        return 2;
    }
    long rate = atol(argv[1]);
    double max_seconds = atof(argv[2]);
    if (rate < 100 || rate > 1000000 || max_seconds <= 0) return 2;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) return 0;
    int zero = open("/dev/zero", O_RDONLY), null = open("/dev/null", O_WRONLY);
    if (zero < 0 || null < 0) { perror("open"); return 1; }
    long per_tick = rate / 100;
    double start = now(), tick = start;
    while (now() - start < max_seconds) {
        for (long i = 0; i < per_tick; i++) one_round(zero, null);
        tick += 0.01;
        double wait = tick - now();
        if (wait > 0) {
            struct timespec ts = {0, (long)(wait * 1e9)};
            nanosleep(&ts, NULL);
        } else if (wait < -1) {
            tick = now(); /* fell far behind (the host is busy): do not catch up in a burst */
        }
    }
    return 0;
}
