// A known workload for budget tests and benchmarks: getppid(2) in a loop, as fast as it
// goes, for a given time or a given number of calls; prints the calls made and the
// calls per second.
//   syscall_loop --seconds S [--spin K]   loop for S seconds (fractions allowed)
//   syscall_loop --calls N [--spin K]     make exactly N calls
// --spin K adds K iterations of user-space work before each call, so that the loop makes
// about as many calls per second as a busier program would (K = 800 gives about 1M/s on the
// development machines, where a bare getppid loop makes 8M/s).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double seconds = 0;
	long long calls = -1;
	long spin = 0;
	if (argc == 5 && strcmp(argv[3], "--spin") == 0)
		spin = atol(argv[4]);
	else if (argc != 3)
		goto usage;
	if (strcmp(argv[1], "--seconds") == 0)
		seconds = atof(argv[2]);
	else if (strcmp(argv[1], "--calls") == 0)
		calls = atoll(argv[2]);
	else {
usage:
		fprintf(stderr, "usage: %s --seconds S | --calls N [--spin K]\n", argv[0]);
		return 2;
	}
	volatile unsigned long work = 0;
	double start = now(), end = start + seconds;
	long long made = 0;
	if (calls >= 0) {
		for (; made < calls; made++) {
			for (long k = 0; k < spin; k++)
				work++;
			syscall(SYS_getppid);
		}
	} else {
		/* The clock is read once per 1,024 calls: its cost stays out of the rate. */
		while (now() < end) {
			for (int i = 0; i < 1024; i++) {
				for (long k = 0; k < spin; k++)
					work++;
				syscall(SYS_getppid);
			}
			made += 1024;
		}
	}
	double took = now() - start;
	printf("{\"calls\": %lld, \"seconds\": %.6f, \"calls_per_second\": %.0f, \"pid\": %d}\n", made, took, made / took, getpid());
	return 0;
}
