// SPDX-License-Identifier: GPL-2.0
/*
 * Empty programs on the hooks TracePlane's syscall probes use: the floor of what any
 * BPF program on that hook costs (the kernel's dispatch alone). Only `bench/` loads them,
 * through the hidden `traceplane bench-hook` command.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* syscalls:sys_enter_X / sys_exit_X (perf tracepoints). */
SEC("tracepoint")
int bench_sys_enter(void *ctx) { return 0; }

SEC("tracepoint")
int bench_sys_exit(void *ctx) { return 0; }

/* raw_syscalls sys_enter / sys_exit via BTF tracepoints. */
SEC("tp_btf")
int bench_btf_sys_enter(void *ctx) { return 0; }

SEC("tp_btf")
int bench_btf_sys_exit(void *ctx) { return 0; }

/* raw_syscalls sys_enter / sys_exit via raw tracepoints. */
SEC("raw_tracepoint")
int bench_raw_sys_enter(void *ctx) { return 0; }

SEC("raw_tracepoint")
int bench_raw_sys_exit(void *ctx) { return 0; }

char LICENSE[] SEC("license") = "GPL";
