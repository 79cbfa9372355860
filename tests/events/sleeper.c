// SPDX-License-Identifier: Apache-2.0
/*
 * The events tests' workload: known numbers of nanosleep(2) calls of known lengths, made
 * through syscall(2) so that each is exactly one nanosleep syscall. Its comm is
 * "tp-sleeper". It prints "tid N", waits for a line "go" on stdin, makes its calls, prints
 * "done" and exits when stdin closes.
 *
 *   sleeper mixed FAST SLOW SLOW_NS   FAST calls that fail at once (EINVAL: a negative
 *                                     tv_nsec; they never sleep, so a busy machine cannot
 *                                     make one slow) with SLOW calls of SLOW_NS spread evenly
 *                                     among them (the i-th slow call follows fast call
 *                                     i*FAST/(SLOW+1))
 *   sleeper burst N NS                N calls of NS each
 *   sleeper getppid N RATE            N getppid calls paced at RATE per second (0: flat out)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void sleep_ns(long ns)
{
	struct timespec t = {.tv_sec = ns / 1000000000L, .tv_nsec = ns % 1000000000L};
	syscall(SYS_nanosleep, &t, NULL);
}

static void fail_fast(void)
{
	struct timespec t = {.tv_sec = 0, .tv_nsec = -1};
	syscall(SYS_nanosleep, &t, NULL);
}

static long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

int main(int argc, char **argv)
{
	prctl(PR_SET_NAME, "tp-sleeper");
	if (argc < 3) {
		fprintf(stderr, "usage: sleeper mixed FAST SLOW SLOW_NS | burst N NS | getppid N RATE\n");
		return 2;
	}
	printf("tid %ld\n", (long)syscall(SYS_gettid));
	fflush(stdout);
	char line[64];
	if (!fgets(line, sizeof(line), stdin) || strncmp(line, "go", 2) != 0)
		return 1;
	if (strcmp(argv[1], "mixed") == 0 && argc == 5) {
		long fast = atol(argv[2]), slow = atol(argv[3]), slow_ns = atol(argv[4]);
		long next = 1;
		for (long i = 1; i <= fast; i++) {
			fail_fast();
			while (next <= slow && i == next * fast / (slow + 1)) {
				sleep_ns(slow_ns);
				next++;
			}
		}
	} else if (strcmp(argv[1], "burst") == 0 && argc == 4) {
		long n = atol(argv[2]), ns = atol(argv[3]);
		for (long i = 0; i < n; i++)
			sleep_ns(ns);
	} else if (strcmp(argv[1], "getppid") == 0 && argc == 4) {
		long n = atol(argv[2]), rate = atol(argv[3]);
		long start = now_ns();
		for (long i = 0; i < n; i++) {
			syscall(SYS_getppid);
			if (rate > 0) {
				long due = start + (i + 1) * (1000000000L / rate);
				while (now_ns() < due)
					;
			}
		}
	} else {
		fprintf(stderr, "sleeper: unknown mode %s\n", argv[1]);
		return 2;
	}
	printf("done\n");
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin))
		;
	return 0;
}
