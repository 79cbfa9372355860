// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Known call chains for the stack tests (built by the test with frame pointers, -O0 so no
 * call is inlined or made a tail call):
 *   callchains N M [R]  waits for a line on stdin, then makes N getppid calls through
 *                    chain_a -> chain_b -> chain_c, M through chain_x -> chain_y, and one
 *                    through chain_r recursing d times for each d in 1..R (R distinct
 *                    stacks), prints "done" and waits for stdin to close before it exits;
 *   callchains spin S  burns CPU in spin_hot for S seconds (for profiles).
 * The syscall instruction is in chain_c and chain_y themselves: through libc's getppid (a
 * leaf without a frame) the unwinder would skip its caller.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>

__attribute__((noinline)) long direct_getppid(void)
{
	long r;
#if defined(__x86_64__)
	__asm__ volatile("syscall" : "=a"(r) : "0"((long)SYS_getppid) : "rcx", "r11", "memory");
#elif defined(__aarch64__)
	register long x8 __asm__("x8") = SYS_getppid;
	register long x0 __asm__("x0");
	__asm__ volatile("svc #0" : "=r"(x0) : "r"(x8) : "memory");
	r = x0;
#else
	r = syscall(SYS_getppid);
#endif
	return r;
}

__attribute__((noinline)) long chain_c(void) { return direct_getppid() + 1; }
__attribute__((noinline)) long chain_b(void) { return chain_c() + 1; }
__attribute__((noinline)) long chain_a(void) { return chain_b() + 1; }
__attribute__((noinline)) long chain_y(void) { return direct_getppid() + 2; }
__attribute__((noinline)) long chain_x(void) { return chain_y() + 2; }

__attribute__((noinline)) long chain_r(int depth) { return depth > 0 ? chain_r(depth - 1) + 1 : direct_getppid(); }

volatile unsigned long sink;

__attribute__((noinline)) void spin_hot(double seconds)
{
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		for (int i = 0; i < 1000000; i++)
			sink += (unsigned long)i * 2654435761u;
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 < seconds);
}

int main(int argc, char **argv)
{
	char line[64];
	if (argc == 3 && strcmp(argv[1], "spin") == 0) {
		spin_hot(atof(argv[2]));
		return 0;
	}
	if (argc != 3 && argc != 4)
		return 2;
	long n = atol(argv[1]), m = atol(argv[2]), r = argc == 4 ? atol(argv[3]) : 0;
	if (!fgets(line, sizeof(line), stdin))
		return 3;
	for (long i = 0; i < n; i++)
		sink += chain_a();
	for (long i = 0; i < m; i++)
		sink += chain_x();
	for (long d = 1; d <= r; d++)
		sink += chain_r((int)d);
	printf("done\n");
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin))
		;
	return 0;
}
