#!/usr/bin/env python3
"""Reads `traceplane selftest` output (a serial console log or plain stdout), asserts what a
kernel must show, and renders docs/kernel-matrix.md.

  check_selftest.py check --profile fentry-kprobe|host LOG [--vm]
  check_selftest.py matrix OUT.md LABEL=LOG ...
"""
import json
import sys

BEGIN, END, EXIT = "TRACEPLANE-SELFTEST-BEGIN", "TRACEPLANE-SELFTEST-END", "TRACEPLANE-SELFTEST-EXIT="
TRACEPOINT_FLAVOURS = {"tracepoint", "tp_btf", "raw_tracepoint"}


def load(path, vm=False):
    lines = [l.rstrip("\r") for l in open(path, encoding="utf-8", errors="replace").read().split("\n")]
    if BEGIN not in lines or END not in lines:
        sys.exit(f"FAIL {path}: no {BEGIN}/{END} block: the self-test did not finish (see the log)")
    doc = json.loads("\n".join(lines[lines.index(BEGIN) + 1:lines.index(END)]))
    if vm:
        codes = [l.split("=", 1)[1] for l in lines if l.startswith(EXIT)]
        if codes != ["0"]:
            sys.exit(f"FAIL {path}: selftest exit code {codes or 'missing'} in the VM")
    return doc


def check(doc, profile):
    errors = []
    checks = {c["name"]: c for c in doc["checks"]}
    mech = {m["name"]: m for m in doc["mechanisms"]}

    def expect(cond, what):
        if not cond:
            errors.append(what)

    def chose(name, mechanisms):
        c = checks.get(name)
        expect(c is not None, f"check '{name}' missing")
        if c:
            expect(c["pass"] is True, f"'{name}' did not pass: {c['status']} {c['actual']} {c['notes']}")
            expect(c["mechanism"] in mechanisms, f"'{name}' chose {c['mechanism']}, expected one of {sorted(mechanisms)}")
        return c

    def cgroups(mechanism):
        # Exact per-cgroup counts and identities are the check's own pass; the totals are
        # asserted again here so a weakened check cannot pass unnoticed.
        c = chose(f"cgroups: syscall getppid by cgroup and filter.pod_uid, mechanisms [{mechanism}]", {mechanism})
        if c and c["actual"]:
            a = c["actual"]
            expect(a["calls"] == 1550 and len(a.get("cgroups") or {}) == 6,
                   f"cgroup check [{mechanism}]: {a['calls']} calls in {len(a.get('cgroups') or {})} cgroups, expected 1550 in 6")
            expect((a.get("pod_filter") or {}).get("calls") == 350, f"cgroup check [{mechanism}]: pod filter calls {(a.get('pod_filter') or {}).get('calls')}, expected 350")

    def stacks(name, mechanism, frames):
        # Every call under a stack through `frames` is the check's own pass; the count, the
        # lost stacks and the frames are asserted again here.
        c = chose(name, {mechanism})
        if c and c["actual"]:
            a, n = c["actual"], doc["calls_per_check"]
            expect(a["calls"] == n and a.get("stack_full") == 0,
                   f"'{name}': {a['calls']} calls, stack_full {a.get('stack_full')}; expected {n} and 0")
            through = sum(k["calls"] for text, k in (a.get("keys") or {}).items() if all(f in text.split(";") for f in frames))
            expect(through == n, f"'{name}': {through} of {n} calls under stacks with {frames}: {list(a.get('keys') or {})[:3]}")

    def events(name, mechanism):
        # Every call one event, from the check's thread, none throttled or lost: the
        # check's own pass; the counts are asserted again here.
        c = chose(name, {mechanism})
        if c and c["actual"]:
            e, n = c["actual"].get("events") or {}, doc["calls_per_check"]
            expect(e.get("received") == n and e.get("emitted") == n and e.get("throttled") == 0 and e.get("lost") == 0,
                   f"'{name}': events {e}, expected {n} received and emitted, none throttled or lost")

    def budget(name, mechanism):
        # Every call seen and recorded through the budget path: the check's own pass; the
        # sampling counts are asserted again here.
        c = chose(name, {mechanism})
        if c and c["actual"]:
            s, n = c["actual"].get("sampling") or {}, doc["calls_per_check"]
            expect(c["actual"]["calls"] == n and s.get("seen_calls") == n and s.get("estimated_calls") == 0 and s.get("sampled") == 1,
                   f"'{name}': calls {c['actual']['calls']}, sampling {s}; expected {n} seen and recorded, none estimated")

    def not_applicable(name, why):
        c = checks.get(name)
        expect(c is not None, f"check '{name}' missing")
        if c:
            expect(c["pass"] is None and c["status"] == "unsupported here" and any(why in note for note in c["notes"]),
                   f"'{name}' should be n/a for '{why}': {c['status']} {c['notes']}")

    sys_getpgid = f"{doc['kernel'].get('syscall_prefix') or ''}sys_getpgid"
    kstack = lambda m: f"stacks: function {sys_getpgid} by kstack, mechanisms [{m}]"
    sys_events = lambda m: f"events: syscall getpgid, every call an event, mechanisms [{m}]"
    fn_events = lambda m: f"events: function {sys_getpgid}, every call an event, mechanisms [{m}]"
    sys_budget = lambda m: f"budget: syscall getpgid, every call seen and recorded, mechanisms [{m}]"
    fn_budget = lambda m: f"budget: function {sys_getpgid}, every call seen and recorded, mechanisms [{m}]"
    cg = doc["kernel"].get("cgroup2") or {}
    expect(doc["pass"] is True, f"selftest reports failures: {[c['name'] for c in doc['checks'] if c['pass'] is False]}")
    if profile == "fentry-kprobe":
        for m in ("fentry", "fexit", "kprobe", "kretprobe"):
            expect(mech[m]["status"] == "supported", f"{m} is {mech[m]['status']}: {mech[m]['message']}")
        chose("syscall getpgid, default chain", {"fentry"})
        chose("syscall getpgid, mechanisms [fentry]", {"fentry"})
        chose("function __x64_sys_getpgid, default chain", {"fentry"})
        chose("syscall getppid, mechanisms [kprobe]", {"kprobe"})
        chose("function __x64_sys_getpgid, mechanisms [kprobe]", {"kprobe"})
        # __x64_sys_getppid is a BTF-less alias; the planner binds fentry to __do_sys_getppid.
        chose("syscall getppid, default chain", {"fentry"})
        chose("syscall getppid, mechanisms [fentry]", {"fentry"})
        f = chose("function fallback fentry→kprobe", {"kprobe"})
        if f:
            first = f["attempts"][0] if f["attempts"] else {}
            expect(first.get("mechanism") == "fentry" and first.get("outcome") != "attached",
                   f"fallback check lacks the failed fentry attempt: {f['attempts']}")
        expect(doc["fallback"]["function"] is not None, "no function demonstrated the fentry→kprobe fallback")
        # Keys × values through fentry and kprobe: a syscall's arguments (its pt_regs) and a
        # function's (BTF-typed context, registers), each key and bucket exact.
        for m in ("fentry", "kprobe", "tp_btf", "raw_tracepoint", "tracepoint"):
            chose(f"keys: syscall read by arg:fd, value arg:count, mechanisms [{m}]", {m})
        for m in ("fentry", "kprobe"):
            chose(f"keys: function vfs_read by arg:count, value arg:count, mechanisms [{m}]", {m})
        # The initramfs mounts only cgroup2, at /sys/fs/cgroup: a pure v2 host.
        expect(cg.get("layout") == "unified" and cg.get("path") == "/sys/fs/cgroup" and cg.get("whole_hierarchy") is True,
               f"cgroup2 should be unified at /sys/fs/cgroup showing the whole hierarchy: {cg}")
        for m in ("fentry", "kprobe", "tp_btf", "raw_tracepoint", "tracepoint"):
            cgroups(m)
        # Kernel stacks through a probe's own fentry and kprobe programs, from the syscall entry.
        for m in ("fentry", "kprobe"):
            stacks(kstack(m), m, ["do_syscall_64", sys_getpgid])
        # Events through every ring buffer: a probe's own (fentry, kprobe, tracepoint) and
        # the shared hook's per-slot ones (tp_btf, raw_tracepoint).
        for m in ("fentry", "kprobe", "tp_btf", "raw_tracepoint", "tracepoint"):
            events(sys_events(m), m)
        for m in ("fentry", "kprobe"):
            events(fn_events(m), m)
        # The budget path (sampling tick, seen, control map) through every flavour.
        for m in ("fentry", "kprobe", "tp_btf", "raw_tracepoint", "tracepoint"):
            budget(sys_budget(m), m)
        for m in ("fentry", "kprobe"):
            budget(fn_budget(m), m)
    elif profile == "host":
        # The development kernel denies fentry and has no kprobes: syscalls go to the shared
        # raw_syscalls hook via tp_btf (vmlinux BTF is there).
        chose("syscall getppid, default chain", {"tp_btf"})
        chose("syscall getpgid, default chain", {"tp_btf"})
        chose("tracepoint sched:sched_switch, default chain", TRACEPOINT_FLAVOURS)
        for m in ("tp_btf", "raw_tracepoint", "tracepoint"):
            chose(f"keys: syscall read by arg:fd, value arg:count, mechanisms [{m}]", {m})
        # This host is hybrid (cgroup2 at /sys/fs/cgroup/unified beside v1 hierarchies).
        expect(cg.get("layout") in ("hybrid", "unified") and cg.get("path"), f"no cgroup2 mount on this host: {cg}")
        for m in ("tp_btf", "raw_tracepoint", "tracepoint"):
            cgroups(m)
        not_applicable(kstack("fentry"), "fentry: capability report says fentry denied")
        not_applicable(kstack("kprobe"), "kprobe: capability report says kprobe unsupported")
        for m in ("tp_btf", "raw_tracepoint", "tracepoint"):
            events(sys_events(m), m)
        not_applicable(fn_events("fentry"), "fentry: capability report says fentry denied")
        not_applicable(fn_events("kprobe"), "kprobe: capability report says kprobe unsupported")
        for m in ("tp_btf", "raw_tracepoint", "tracepoint"):
            budget(sys_budget(m), m)
        not_applicable(fn_budget("fentry"), "fentry: capability report says fentry denied")
    else:
        sys.exit(f"unknown profile {profile}")
    chose("uprobe traceplane_uprobe_target, default chain", {"uprobe"})
    stacks("stacks: syscall getppid by ustack, mechanisms [tracepoint]", "tracepoint",
           ["tp_selftest_chain_a", "tp_selftest_chain_b", "tp_selftest_chain_c", "tp_selftest_direct_getppid"])
    p = chose("profile: 99 Hz for 1 s by cpu, mechanisms [perf_event]", {"perf_event"})
    if p and p["actual"]:
        fds = p["actual"].get("perf_fds") or {}
        cpus = p["actual"].get("samples_by_cpu") or {}
        expect(cpus and all(v > 0 for v in cpus.values()), f"profile: samples by cpu {cpus}")
        expect(fds.get("after") == fds.get("before") and fds.get("attached") == fds.get("before", 0) + len(cpus),
               f"profile: perf fds {fds} for {len(cpus)} CPUs")
    return errors


def cell(m):
    if m["status"] == "supported":
        return "✅ supported"
    return f"❌ {m['status']}" + (f" ({m['errno']})" if m.get("errno") else "")


def matrix(out, columns):
    docs = [(label, load(path)) for label, path in columns]
    head = "| | " + " | ".join(f"{label}<br>`{d['kernel']['release']}`" for label, d in docs) + " |"
    rule = "|---" * (len(docs) + 1) + "|"
    text = [
        "# Kernel matrix",
        "",
        "Generated by `tests/qemu/run-matrix.sh` from `traceplane selftest` (do not edit by hand).",
        "Every mechanism is tried by loading, attaching and firing a real BPF program; every probe",
        "check makes its events itself (filtered to its own pid) and compares exact counts.",
        "Debian kernels boot under `qemu-system-x86_64` without KVM from an initramfs.",
        "",
        "## Mechanisms",
        "",
        head, rule,
    ]
    names = [m["name"] for m in docs[0][1]["mechanisms"]] + [f["name"] for f in docs[0][1]["features"]]
    for name in names:
        row = []
        for _, d in docs:
            m = next((x for x in d["mechanisms"] + d["features"] if x["name"] == name), None)
            row.append(cell(m) if m else "—")
        text.append(f"| {name} | " + " | ".join(row) + " |")
    text += ["", "## Probes: mechanism chosen, and result", "",
             "`—` means nothing in the chain can attach on that kernel (recorded with every attempt).", "",
             head, rule]
    for c in docs[0][1]["checks"]:
        row = []
        for _, d in docs:
            x = next((y for y in d["checks"] if y["name"] == c["name"]), None)
            if x is None:
                row.append("—")
            elif x["mechanism"] is None:
                row.append("— " + x["status"])
            else:
                # At-least checks show their bound, profiles the CPUs they sampled, so the table
                # only changes when a result does.
                cpus = (x["actual"] or {}).get("samples_by_cpu")
                calls = x["expected"].split(">=")[1].strip() if ">=" in x["expected"] else (x["actual"] or {}).get("calls")
                bound = "≥" if ">=" in x["expected"] else ""
                if cpus is not None:
                    what = f"{len(cpus)} CPU{'' if len(cpus) == 1 else 's'} sampled"
                else:
                    what = f"{bound}{calls}" if calls is not None else None
                row.append(f"{x['mechanism']}: {x['status']}" + (f" ({what})" if what else ""))
        text.append(f"| {c['name']} | " + " | ".join(row) + " |")
    text += ["", "## fentry → kprobe fallback", ""]
    for label, d in docs:
        fb = d["fallback"]
        if fb["function"]:
            text.append(f"- **{label}**: `{fb['function']}` — {fb['why']}")
        else:
            tried = "; ".join(f"`{c['function']}`: {c['result']}" for c in fb["candidates"])
            text.append(f"- **{label}**: not demonstrable here ({tried})")
    text += ["",
             "Zero-argument syscalls (`SYSCALL_DEFINE0`) get an x86 entry `__x64_sys_X` that is an alias of",
             "`__do_sys_X` (same address in kallsyms; ftrace lists only `__do_sys_X`): it has no BTF of its own,",
             "so fentry cannot bind to it by that name, while a kprobe attaches by address. Syscalls with",
             "arguments (`__x64_sys_getpgid`) have BTF. For `syscall` targets the planner therefore tries",
             "`__do_sys_X` when `__x64_sys_X` is not in BTF; a `function` target is taken literally."]
    fell_back = [label for label, d in docs
                 if next((c for c in d["checks"] if c["name"] == "syscall getppid, default chain"), {}).get("mechanism") == "kprobe"]
    if fell_back:
        text.append("That is why `syscall getppid, default chain` attaches kprobe on " + " and ".join(fell_back)
                    + ", while `syscall getpgid` gets fentry there.")
    text.append("")
    open(out, "w", encoding="utf-8").write("\n".join(text))


def main(argv):
    if len(argv) >= 4 and argv[1] == "check" and argv[2] == "--profile":
        profile, path = argv[3], argv[4]
        doc = load(path, vm="--vm" in argv[5:])
        errors = check(doc, profile)
        k = doc["kernel"]["release"]
        if errors:
            print(f"FAIL kernel {k} ({profile}):", *errors, sep="\n  ")
            return 1
        s = doc["summary"]
        print(f"ok   kernel {k} ({profile}): {s['passed']} passed, {s['failed']} failed, "
              f"{s['not_applicable']} not applicable here; fallback via {doc['fallback']['function']}")
        return 0
    if len(argv) >= 4 and argv[1] == "matrix":
        matrix(argv[2], [a.split("=", 1) for a in argv[3:]])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
