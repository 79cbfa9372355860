// SPDX-License-Identifier: Apache-2.0
// Times a tight loop of one syscall: prints the median ns per call over several rounds.
// Usage: syscall_loop getppid|getpid|read1 [iterations] [rounds]
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

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s getppid|getpid|read1 [iterations] [rounds]\n", argv[0]);
        return 2;
    }
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    int rounds = argc > 3 ? atoi(argv[3]) : 5;
    int fd = open("/dev/zero", O_RDONLY);
    char byte;
    double results[64];
    if (rounds > 64) rounds = 64;
    for (int r = 0; r < rounds; r++) {
        double start = now_ns();
        if (strcmp(argv[1], "getppid") == 0)
            for (long i = 0; i < n; i++) syscall(SYS_getppid);
        else if (strcmp(argv[1], "getpid") == 0)
            for (long i = 0; i < n; i++) syscall(SYS_getpid);
        else
            for (long i = 0; i < n; i++) { if (read(fd, &byte, 1) != 1) return 1; }
        results[r] = (now_ns() - start) / n;
    }
    qsort(results, rounds, sizeof(double), cmp);
    printf("%.1f %.1f %.1f\n", results[rounds / 2], results[0], results[rounds - 1]);
    return 0;
}
