// SPDX-License-Identifier: GPL-2.0
/*
 * Feature probes that need a program of their own (the mechanism probes are in
 * capability.bpf.c). feat_kfunc_calls detects BPF kfunc calls: kernel functions a BPF
 * program may call (5.15+), the capability report's `bpf_kfunc_calls`. That is not the
 * "kfunc" of bpftrace and bcc, which is fentry. The program loads only if the verifier
 * resolves and allows the kfunc call.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;

SEC("tp_btf/sys_enter")
int feat_kfunc_calls(void *ctx)
{
	bpf_rcu_read_lock();
	bpf_rcu_read_unlock();
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
