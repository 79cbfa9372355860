// SPDX-License-Identifier: Apache-2.0
/*
 * The fault suite's workload (FaultMountTests, FaultProcessTests), built by the tests with
 * gcc into a temporary directory. Its comm is its file name (the tests name it
 * tp-faultwork). It prints "ready" and then reads commands from stdin, one a line, and
 * answers each with "ok":
 *   g N   N getppid syscalls, each one syscall (through syscall(2))
 *   u N   N calls of fault_target(), the uprobe tests' function
 *   q     exit
 * As `fault_workload reader` it prints "ready", waits with poll(2) (not read) for stdin to
 * become readable, then reads stdin one byte per read(2) and echoes each byte on stdout:
 * every byte the test writes is exactly one completed read, and between bytes the
 * process is blocked in read(2) on the pipe. It exits when stdin closes (a read of 0).
 * Built with -DFAULT_PAD, a padding function before fault_target moves its offset (the
 * "replaced binary" test).
 */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile unsigned long sink;

#ifdef FAULT_PAD
__attribute__((noinline, used)) unsigned long fault_padding(unsigned long x)
{
	for (int i = 0; i < 64; i++)
		x = x * 2654435761u + (unsigned long)i;
	sink += x;
	return x * 3 + 17 + sink * 5 + (x >> 3) + (x << 7) + (sink ^ x);
}
#endif

__attribute__((noinline)) int fault_target(int x)
{
	sink += (unsigned long)x;
	__asm__ volatile("" ::: "memory");
	return x + 1;
}

static int reader(void)
{
	struct pollfd p = {.fd = 0, .events = POLLIN};
	printf("ready\n");
	fflush(stdout);
	while (poll(&p, 1, -1) < 0)
		;
	char c;
	for (;;) {
		ssize_t n = read(0, &c, 1);
		if (n <= 0)
			return 0;
		if (write(1, &c, 1) != 1)
			return 1;
	}
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "reader") == 0)
		return reader();
	char line[128];
	printf("ready\n");
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {
		long n = 0;
		if (line[0] == 'q')
			break;
		if (sscanf(line + 1, "%ld", &n) != 1)
			n = 0;
		if (line[0] == 'g')
			for (long i = 0; i < n; i++)
				syscall(SYS_getppid);
		else if (line[0] == 'u')
			for (long i = 0; i < n; i++)
				fault_target((int)i);
		printf("ok\n");
		fflush(stdout);
	}
	return 0;
}
