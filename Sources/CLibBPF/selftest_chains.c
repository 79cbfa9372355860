// SPDX-License-Identifier: Apache-2.0
// The self-test's known user call chain: tp_selftest_getppid_chain -> tp_selftest_chain_a ->
// tp_selftest_chain_b -> tp_selftest_chain_c -> tp_selftest_direct_getppid, which makes the
// getppid syscall itself (through libc's syscall() the unwinder would skip a frame: it is a
// leaf without one). The kernel walks user stacks by frame pointers; release builds omit
// them, so every function here takes its own frame's address, which makes the compiler keep
// a frame pointer in it whatever the flags. Each call is followed by an addition, so none
// is a tail call, and none is inlined. Also the profile check's busy loop, one per CPU.
#define _GNU_SOURCE 1
#include "clibbpf.h"

#include <errno.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TP_KEEP_FRAME() __asm__ volatile("" : : "r"(__builtin_frame_address(0)) : "memory")

volatile long tp_selftest_sink;

__attribute__((noinline, used, visibility("default")))
long tp_selftest_direct_getppid(void)
{
    TP_KEEP_FRAME();
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

__attribute__((noinline, used, visibility("default")))
long tp_selftest_chain_c(void)
{
    TP_KEEP_FRAME();
    return tp_selftest_direct_getppid() + 3;
}

__attribute__((noinline, used, visibility("default")))
long tp_selftest_chain_b(void)
{
    TP_KEEP_FRAME();
    return tp_selftest_chain_c() + 2;
}

__attribute__((noinline, used, visibility("default")))
long tp_selftest_chain_a(void)
{
    TP_KEEP_FRAME();
    return tp_selftest_chain_b() + 1;
}

__attribute__((noinline, used, visibility("default")))
void tp_selftest_getppid_chain(long calls)
{
    TP_KEEP_FRAME();
    for (long i = 0; i < calls; i++)
        tp_selftest_sink += tp_selftest_chain_a();
}

int tp_selftest_spin_on_cpu(int cpu, long milliseconds)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0)
        return -errno;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        for (int i = 0; i < 100000; i++)
            tp_selftest_sink += i;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < milliseconds);
    return 0;
}
