// SPDX-License-Identifier: Apache-2.0
// Times a tight loop of one syscall: prints the median, min and max ns per call over
// several rounds.
//   syscall_loop getppid|getpid|read1 [iterations] [rounds]   one measurement
//   syscall_loop serve    one measurement per stdin line "SYSCALL ITERATIONS ROUNDS",
//                         answered on stdout, so that tracers can filter on one known pid
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

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

static int measure(int fd, const char *what, long n, int rounds)
{
    char byte;
    double results[64];
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
        fprintf(stderr, "usage: %s getppid|getpid|read1 [iterations] [rounds] | serve\n", argv[0]);
        return 2;
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
