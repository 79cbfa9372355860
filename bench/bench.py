#!/usr/bin/env python3
"""TracePlane benchmarks, side by side in one run; writes BENCHMARKS.md.

Run it through bench/run.sh (installs the tools, builds, then calls this). Sections:

1. overhead per traced call (getppid, 1-byte read of /dev/zero): no tracing, empty BPF
   programs on the same hooks (the floor), TracePlane (the mechanism it picks, and each
   forced mechanism), bpftrace, libbpf-tools; and keyed aggregation (`aggregate` in the
   probe spec) against the bpftrace script that keeps the same key, and the cheapest probe
   (no key table, no process table) against the floor;
2. collateral: what an untraced getpid pays meanwhile;
3. scaling: 1, 16 and 64 syscall probes, per-syscall tracepoints vs raw_syscalls;
4. control plane: create/delete latency, capability detection, /metrics, RSS and fds; and
   /metrics with 100 probes of 100 keys each;
6. stacks: a `kstack` count on sched_switch against bpftrace's `@[kstack] = count()` (cost
   per context switch), a 99 Hz profile's host CPU against bpftrace's `profile:hz:99`, and
   `traceplane bench-symbolize` (10,000 distinct stacks). `--sections stacks` runs it alone.
7. events: what `events` adds to a call under its threshold (section 1's rounds, next to the
   same probe without events), and 50,000 events/s streamed to a curl -N subscriber
   (`--sections events-stream` runs that alone).

The machine is shared and noisy, so every comparison is made inside one run: rounds are
interleaved (each round visits every configuration, in a rotated order), every sample is
paired with the no-tracing sample of the same round, and medians are reported with the
min and max over rounds. Every tracer filters on the pid of one long-lived loop process
(bench/syscall_loop serve), and each tracer's own count is checked after each sample.
"""
import argparse
import atexit
import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

# ----------------------------------------------------------------------------- helpers

CHILDREN = []  # every process started here; stopped at exit, so no tracer outlives the run
MAX_TOP = 65536  # the agent's largest ?top=N (a key table's largest max_keys): all the keys


def spawn(args, **kwargs):
    proc = subprocess.Popen(args, **kwargs)
    CHILDREN.append(proc)
    return proc


@atexit.register
def stop_children():
    for proc in CHILDREN:
        if proc.poll() is None:
            proc.terminate()
    for proc in CHILDREN:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def foreign_bpf_links():
    """BPF links on the kernel right now (other users of this machine included)."""
    try:
        out = subprocess.run(["bpftool", "-j", "link", "list"], capture_output=True, text=True, timeout=20).stdout
        return len(json.loads(out or "[]"))
    except Exception:
        return -1


class Loop:
    """One long-lived bench/syscall_loop process; tracers filter on its pid."""

    def __init__(self, binary):
        self.proc = spawn([binary, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.proc.pid

    def measure(self, what, iterations, reps):
        self.proc.stdin.write(f"{what} {iterations} {reps}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if len(line) != 3:
            raise SystemExit(f"syscall_loop failed on {what}: {line}")
        return float(line[0])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


class Agent:
    """A `traceplane serve` on a free loopback port, driven over one keep-alive connection."""

    def __init__(self, binary, extra=()):
        self.extra = tuple(extra)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = spawn([binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--log-level", "error", *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.conn = None
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.call("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                self.conn = None
            time.sleep(0.05)
        raise SystemExit("the agent did not become ready in 30 s")

    def call(self, method, path, body=None, headers=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                data = json.dumps(body).encode() if body is not None else None
                sent = ({"Content-Type": "application/json"} if data else {}) | dict(headers or {})
                self.conn.request(method, path, body=data, headers=sent)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def put_probe(self, name, syscall, mechanism=None, pid=None, aggregate=None, filter_extra=None, events=None):
        """PUT a syscall probe; without `aggregate` the spec is exactly the v0 one (no
        `aggregate` member), so that the rows measured before keys existed keep their meaning.
        `filter_extra`: more members of `filter` (e.g. `cgroup`), next to the pid."""
        spec = {"target": {"type": "syscall", "name": syscall}}
        if mechanism:
            spec["mechanisms"] = [mechanism]
        if pid or filter_extra:
            spec["filter"] = ({"pid": pid} if pid else {}) | dict(filter_extra or {})
        if aggregate is not None:
            spec["aggregate"] = aggregate
        if events is not None:
            spec["events"] = events
        return self.put_spec(name, spec, f"{syscall} via {mechanism or 'default'}")

    def put_spec(self, name, spec, what=""):
        """PUT a probe of any spec; the probe must come back `active`."""
        status, body = self.call("PUT", f"/v1/probes/{name}", spec)
        if status != 201:
            raise SystemExit(f"PUT {name} ({what or spec.get('target')}): HTTP {status} {body[:400]!r}")
        probe = json.loads(body)
        if probe.get("state") != "active":
            raise SystemExit(f"PUT {name}: state {probe.get('state')}")
        return probe

    def delete_probe(self, name):
        status, body = self.call("DELETE", f"/v1/probes/{name}")
        if status != 204:
            raise SystemExit(f"DELETE {name}: HTTP {status} {body[:200]!r}")

    def calls(self, name):
        status, body = self.call("GET", f"/v1/probes/{name}/metrics")
        return json.loads(body)["calls"] if status == 200 else -1

    def metrics(self, name, top=None):
        """The probe's metrics JSON (with `?top=N`: the N busiest keys of its key table)."""
        status, body = self.call("GET", f"/v1/probes/{name}/metrics" + (f"?top={top}" if top else ""))
        if status != 200:
            raise SystemExit(f"GET {name} metrics: HTTP {status} {body[:200]!r}")
        return json.loads(body)

    def memory(self):
        """(VmRSS, VmHWM, RssAnon, RssFile) in MB, open fds, threads."""
        kb = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    kb[key] = int(value.split()[0]) / 1024
        threads = len(os.listdir(f"/proc/{self.pid}/task"))
        return (kb["VmRSS"], kb["VmHWM"], kb["RssAnon"], kb["RssFile"], len(os.listdir(f"/proc/{self.pid}/fd")), threads)

    def stop(self):
        if self.conn:
            self.conn.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class AgentPool:
    """At most one agent at a time, running only while a TracePlane configuration is
    measured: the agent turns kernel BPF stats on for its lifetime, which would otherwise
    slow every other tracer's programs too."""

    def __init__(self, binary):
        self.binary, self.agent, self.agent_binary = binary, None, None

    def get(self, extra=(), binary=None):
        binary = binary or self.binary
        if self.agent and (self.agent.extra != tuple(extra) or self.agent_binary != binary):
            self.stop()
        if not self.agent:
            self.agent, self.agent_binary = Agent(binary, extra), binary
        return self.agent

    def stop(self):
        if self.agent:
            self.agent.stop()
            self.agent = None


def wait_for_line(proc, needle, timeout, what):
    """Reads proc's stdout until a line contains needle (the tracer is attached)."""
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip())
        if needle in line:
            return
    proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    raise RuntimeError(f"{what} did not attach: {' | '.join(seen[-3:])} {err.strip()[-400:]}")


# ------------------------------------------------------------------- tracer configurations
#
# A configuration attaches to one traced syscall (`syscall` is the kernel name: getppid or
# read) and returns a handle; `stop(handle)` detaches and returns the tracer's own count of
# traced calls (None when it has none), so that a tracer that silently traced nothing is
# caught.


class Configuration:
    """What every configuration shares: the traced syscalls it is measured on. A key that
    only one syscall has (read's `count`) makes a configuration measured on that one."""

    syscalls = ("getppid", "read")


class NoTracing(Configuration):
    label = "no tracing"

    def __init__(self, pool):
        self.pool = pool

    def start(self, syscall):
        self.pool.stop()
        return None

    def stop(self, handle):
        return None


class Floor(Configuration):
    """Empty BPF programs on the hooks of one mechanism (traceplane bench-hook)."""

    def __init__(self, binary, hook, pool, stats=False):
        self.binary, self.hook, self.pool, self.stats = binary, hook, pool, stats
        self.label = f"floor: empty programs, {hook}" + (" + BPF stats" if stats else "")

    def start(self, syscall, extra=()):
        self.pool.stop()
        args = [self.binary, "bench-hook", "--hook", self.hook, "--syscall", syscall] + (["--bpf-stats"] if self.stats else [])
        for name in extra:
            args += ["--syscall", name]
        proc = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_line(proc, "attached", 120, f"bench-hook {self.hook}")
        return proc

    def stop(self, proc):
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        return None


class TracePlaneProbe(Configuration):
    """One TracePlane probe per traced syscall (plus `extra` ones, for scaling).

    With `aggregate` (the spec's member: keys counted in the kernel), the count read back
    is the sum over the probe's key table rather than `calls`: it proves that the kernel
    filled the key table, not only the totals that every probe keeps."""

    def __init__(self, pool, mechanism, pid, agent_args=(), binary=None, aggregate=None, label=None, syscalls=None,
                 filter_extra=None, events=None):
        self.pool, self.mechanism, self.pid, self.agent_args = pool, mechanism, pid, tuple(agent_args)
        self.binary, self.aggregate, self.filter_extra, self.events = binary, aggregate, filter_extra, events
        self.label = label or ((f"TracePlane, {mechanism}" if mechanism else "TracePlane, default") +
                               "".join(f" {a}" for a in agent_args) + (" (baseline build)" if binary else ""))
        if syscalls:
            self.syscalls = tuple(syscalls)
        self.picked = None

    def start(self, syscall, extra=()):
        self.agent = self.pool.get(self.agent_args, self.binary)
        names = []
        for i, target in enumerate((syscall,) + tuple(extra)):
            name = f"bench-{i}"
            probe = self.agent.put_probe(name, target, self.mechanism, self.pid, self.aggregate,
                                         self.filter_extra if i == 0 else None, self.events if i == 0 else None)
            if i == 0:
                self.picked = probe["mechanism"]
            names.append(name)
        return names

    def stop(self, names):
        if self.aggregate is None:
            count = self.agent.calls(names[0])
        else:
            m = self.agent.metrics(names[0], top=MAX_TOP)
            agg = m.get("aggregate") or {}
            count = sum(k["calls"] for k in agg.get("keys", []))
            if count != m["calls"] or agg.get("dropped_keys"):
                log(f"{self.label}: key table sums to {count} calls of {m['calls']} "
                    f"({agg.get('total_keys')} keys, {agg.get('dropped_keys')} dropped)")
        for name in names:
            self.agent.delete_probe(name)
        return count


class Bpftrace(Configuration):
    """bpftrace with the latency histogram TracePlane's default probe keeps (one histogram,
    a count of calls), on the per-syscall tracepoints."""

    label = "bpftrace"

    def __init__(self, pid, pool):
        self.pid, self.pool = pid, pool

    def script(self, syscall):
        return (f"BEGIN {{ printf(\"ready\\n\"); }} "
                f"tracepoint:syscalls:sys_enter_{syscall} /pid == {self.pid}/ {{ @start[tid] = nsecs; }} "
                f"tracepoint:syscalls:sys_exit_{syscall} /@start[tid]/ "
                f"{{ @calls = count(); @h = hist(nsecs - @start[tid]); delete(@start[tid]); }}")

    def start(self, syscall):
        self.pool.stop()
        proc = spawn(["bpftrace", "-B", "line", "-e", self.script(syscall)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_line(proc, "ready", 120, "bpftrace")
        return proc

    def stop(self, proc):
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return self.count(out)

    def count(self, out):
        m = re.search(r"@calls:\s*(\d+)", out)
        return int(m.group(1)) if m else 0


class BpftraceByComm(Bpftrace):
    """bpftrace keeping what `"aggregate": {"by": ["comm"]}` keeps: a latency histogram per
    process name, with the same pid filter and sys_enter/sys_exit structure as `Bpftrace`.
    Its count is the sum of the histograms' buckets: a separate `count()` map would make
    bpftrace pay for a map that TracePlane's key table does not need."""

    label = "bpftrace, @[comm] = hist()"

    def script(self, syscall):
        return (f"BEGIN {{ printf(\"ready\\n\"); }} "
                f"tracepoint:syscalls:sys_enter_{syscall} /pid == {self.pid}/ {{ @s[tid] = nsecs; }} "
                f"tracepoint:syscalls:sys_exit_{syscall} /@s[tid]/ "
                f"{{ @[comm] = hist(nsecs - @s[tid]); delete(@s[tid]); }}")

    def count(self, out):
        # Bucket lines of a printed hist(): "[64, 128)    1234 |@@@@   |"
        return sum(int(m.group(1)) for m in re.finditer(r"^\[[^\]\n]*[\])]\s+(\d+)\s+\|", out, re.M))


class BpftraceByCgroup(BpftraceByComm):
    """bpftrace keeping what `"aggregate": {"by": ["cgroup"]}` keeps: a latency histogram per
    cgroup v2 id (bpftrace's `cgroup` builtin, bpf_get_current_cgroup_id), with the same
    pid filter and entry/exit pair as `BpftraceByComm`; counted the same way."""

    label = "bpftrace, @[cgroup] = hist()"

    def script(self, syscall):
        return (f"BEGIN {{ printf(\"ready\\n\"); }} "
                f"tracepoint:syscalls:sys_enter_{syscall} /pid == {self.pid}/ {{ @s[tid] = nsecs; }} "
                f"tracepoint:syscalls:sys_exit_{syscall} /@s[tid]/ "
                f"{{ @[cgroup] = hist(nsecs - @s[tid]); delete(@s[tid]); }}")


class BenchCgroup:
    """A cgroup made for the run under the cgroup2 mount (found in /proc/self/mountinfo),
    holding the loop process for the whole run: every configuration measures a loop in the
    same cgroup, the cgroup-filter rows name it (so every call passes the filter), and the
    cgroup-keyed rows have one key, as the by-comm rows do. With no controller enabled in
    it, membership alone changes nothing on the syscall path. Removed at the end (the loop
    moved back to the mount's root cgroup first)."""

    NAME = "tp-bench"

    def __init__(self):
        self.mount = self.find_mount()
        self.path = os.path.join(self.mount, self.NAME)
        if os.path.isdir(self.path):
            self.remove()  # left over by an interrupted run
        os.mkdir(self.path)
        atexit.register(self.remove)

    @staticmethod
    def find_mount():
        """The mount point of a cgroup2 filesystem whose root is the hierarchy's root."""
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[sep + 1] == "cgroup2" and fields[3] == "/":
                    return fields[4]
        raise SystemExit("no cgroup2 mount showing the root of the hierarchy in /proc/self/mountinfo")

    def add(self, pid):
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(f"{pid}\n")

    def remove(self):
        if not os.path.isdir(self.path):
            return
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                pids = f.read().split()
            for pid in pids:
                try:
                    with open(os.path.join(self.mount, "cgroup.procs"), "w") as f:
                        f.write(f"{pid}\n")
                except OSError:
                    pass  # exited meanwhile
            os.rmdir(self.path)
        except OSError as e:
            log(f"could not remove {self.path}: {e}")


class BpftraceReadByCount(Bpftrace):
    """bpftrace keeping what `"aggregate": {"by": ["arg:count"], "value": "none"}` keeps on
    read: a count per read size. It needs no exit program (no latency), TracePlane's probe
    still runs at entry and exit. `args->count`: bpftrace 0.17 has no `args.count` yet."""

    label = "bpftrace, @[args->count] = count()"
    syscalls = ("read",)

    def script(self, syscall):
        return (f"BEGIN {{ printf(\"ready\\n\"); }} "
                f"tracepoint:syscalls:sys_enter_{syscall} /pid == {self.pid}/ {{ @[args->count] = count(); }}")

    def count(self, out):
        return sum(int(m.group(1)) for m in re.finditer(r"^@\[\d+\]:\s*(\d+)\s*$", out, re.M))


class Syscount(Configuration):
    """libbpf-tools syscount -L -p PID: raw_syscalls tracepoints, count + latency of every
    syscall of the process (it cannot select one syscall)."""

    label = "libbpf-tools syscount -L -p"

    def __init__(self, pid, pool):
        self.pid, self.pool = pid, pool

    def start(self, syscall):
        self.pool.stop()
        proc = spawn(["stdbuf", "-oL", "syscount", "-L", "-p", str(self.pid)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_line(proc, "Tracing syscalls", 60, "syscount")
        time.sleep(0.2)  # it prints the line just after attaching
        return proc

    def stop(self, proc):
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        counts = [int(m.group(1)) for m in re.finditer(r"^\s*\w+\s+(\d+)\s", out, re.M)]
        return max(counts) if counts else 0


def try_libbpf_tool(args, timeout=15):
    """Runs a libbpf-tools command briefly; returns (works, what it said)."""
    try:
        proc = spawn(["stdbuf", "-oL"] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(3)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=timeout)
        lines = [l for l in out.splitlines() if l.strip()]
        ok = proc.returncode == 0 and not any("fail" in l.lower() for l in lines)
        return ok, " / ".join(lines[-3:])[:300]
    except Exception as e:  # noqa: BLE001
        return False, str(e)


# ----------------------------------------------------------------------------- sections

# What section 1 measures: per traced syscall, the loop's measurements while it is traced.
SYSCALL_PLAN = (("getppid", ("getppid", "getpid")), ("read", ("read1",)))


def overhead(args, loop, configs, plan=SYSCALL_PLAN, iterations=None, rounds=None, what_done="overhead"):
    """Sections 1 and 2: rounds × configurations × {getppid (+ getpid), read}, with the loop
    pinned to each CPU in turn (some tracers cost more on one CPU than on another). A
    configuration measured on read only (a key that getppid has not) skips getppid and so
    has no collateral sample. `plan` (what is traced → the loop's measurements meanwhile)
    lets section 6 measure context switches the same way."""
    samples = {}  # (config label, measurement) -> [ns per call, mean over CPUs] per round
    by_cpu = {}   # (config label, measurement, cpu) -> [ns per call] per round
    counts = {}   # (config label, syscall) -> [tracer counts]
    n = iterations or args.iterations
    rounds = rounds or args.rounds
    cpus = sorted(os.sched_getaffinity(0))[:args.cpus]
    for r in range(rounds):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for cfg in order:
            for syscall, measurements in plan:
                if syscall not in cfg.syscalls:
                    continue
                handle = cfg.start(syscall)
                per_cpu = {}
                for cpu in (cpus if r % 2 == 0 else cpus[::-1]):
                    os.sched_setaffinity(loop.pid, {cpu})
                    for what in measurements:
                        value = loop.measure(what, n, args.reps)
                        per_cpu.setdefault(what, []).append(value)
                        by_cpu.setdefault((cfg.label, what, str(cpu)), []).append(value)
                os.sched_setaffinity(loop.pid, set(cpus))
                for what, values in per_cpu.items():
                    samples.setdefault((cfg.label, what), []).append(sum(values) / len(values))
                count = cfg.stop(handle)
                if count is not None:
                    counts.setdefault((cfg.label, syscall), []).append(count)
        log(f"{what_done} round {r + 1}/{rounds} done (load {loadavg()})")
    return samples, counts, by_cpu


def scaling(args, loop, pool, binary, fillers):
    """Section 3: traced getppid and untraced getpid with 1, 16, 64 probes per design."""
    designs = []
    for hook in ("tracepoint", "tp_btf", "raw_tracepoint"):
        designs.append(("TracePlane", hook, TracePlaneProbe(pool, hook, loop.pid)))
        designs.append(("floor", hook, Floor(binary, hook, pool)))
    counts = [int(c) for c in args.probes.split(",")]
    samples = {}
    n = args.scaling_iterations
    for r in range(args.scaling_rounds):
        pool.stop()
        base = (loop.measure("getppid", n, args.reps), loop.measure("getpid", n, args.reps))
        samples.setdefault(("none", "-", 0), []).append(base)
        order = designs[r % len(designs):] + designs[:r % len(designs)]
        for kind, hook, cfg in order:
            for count in counts:
                handle = cfg.start("getppid", tuple(fillers[:count - 1]))
                t = loop.measure("getppid", n, args.reps)
                u = loop.measure("getpid", n, args.reps)
                cfg.stop(handle)
                samples.setdefault((kind, hook, count), []).append((t - base[0], u - base[1]))
        log(f"scaling round {r + 1}/{args.scaling_rounds} done (load {loadavg()})")
    return samples


def control_plane(args, binary, fillers):
    """Section 4 on a fresh agent: memory idle/with 100 probes, create/delete latency,
    /metrics latency and throughput, capability detection."""
    out = {}
    agent = Agent(binary)
    time.sleep(1.0)
    out["idle"] = agent.memory()
    creates, deletes, scrape_ms, scrape_bytes, with100, teardown = [], [], [], 0, [], []
    wrk_runs = []
    names = [f"cp-{i}" for i in range(args.cp_probes)]
    targets = (fillers * 4)[:args.cp_probes]
    for cycle in range(args.cp_cycles):
        for name, target in zip(names, targets):
            t0 = time.perf_counter()
            agent.put_probe(name, target)
            creates.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.5)
        with100.append(agent.memory())
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            status, body = agent.call("GET", "/metrics")
            scrape_ms.append((time.perf_counter() - t0) * 1000)
            scrape_bytes = len(body)
            assert status == 200
        wrk_runs.append(run_wrk(agent.port, args.wrk_seconds))
        with100.append(agent.memory())
        t_deleted = time.perf_counter()
        for name in names:
            t0 = time.perf_counter()
            agent.delete_probe(name)
            deletes.append((time.perf_counter() - t0) * 1000)
        # DELETE answers at once; the kernel detaches in the background. Wait until the
        # agent's fds are back to idle before the next cycle, and record how long it took.
        while agent.memory()[4] > out["idle"][4] and time.perf_counter() - t_deleted < 120:
            time.sleep(0.02)
        teardown.append(time.perf_counter() - t_deleted)
        log(f"control-plane cycle {cycle + 1}/{args.cp_cycles} done (load {loadavg()})")
    out["after"] = agent.memory()
    out["creates"], out["deletes"], out["scrape_ms"], out["scrape_bytes"] = creates, deletes, scrape_ms, scrape_bytes
    out["with100"], out["wrk"], out["teardown"] = with100, wrk_runs, teardown
    refresh_wall, refresh_report = [], []
    for _ in range(args.cap_runs):
        t0 = time.perf_counter()
        status, body = agent.call("POST", "/v1/capabilities/refresh")
        refresh_wall.append((time.perf_counter() - t0) * 1000)
        refresh_report.append(json.loads(body)["duration_ms"])
    cli_wall, cli_report = [], []
    for _ in range(args.cap_runs):
        t0 = time.perf_counter()
        res = subprocess.run([binary, "capabilities", "--json"], capture_output=True, text=True, check=True)
        cli_wall.append((time.perf_counter() - t0) * 1000)
        cli_report.append(json.loads(res.stdout)["duration_ms"])
    out["refresh_wall"], out["refresh_report"], out["cli_wall"], out["cli_report"] = refresh_wall, refresh_report, cli_wall, cli_report
    agent.stop()
    return out


# Labels of the keyed TracePlane rows, named once: the report pairs them by these.
KEYED = {"no tables": "TracePlane, no keys, no process table",
         "by comm": "TracePlane, by comm (latency histogram)",
         "by count": "TracePlane, read by arg:count",
         "by cgroup": "TracePlane, by cgroup (latency histogram)"}

# The cgroup-filter rows (filter.cgroup naming the loop's cgroup) and the row each adds to.
CGROUP_FILTER = {"TracePlane, default + filter.cgroup": "TracePlane, default",
                 "TracePlane, tracepoint + filter.cgroup": "TracePlane, tracepoint"}

# The events rows (a threshold no call meets: every call pays only the comparison) and the
# row each adds to.
EVENTS_IDLE = {"TracePlane, default + events (threshold never met)": "TracePlane, default",
               "TracePlane, tracepoint + events (threshold never met)": "TracePlane, tracepoint"}


def events_configs(pool, pid):
    """Section 7's overhead rows: the default and tracepoint probes with `events` whose
    threshold (1 s) no getppid or 1-byte read meets."""
    events = {"min_latency_ns": 1_000_000_000, "max_per_second": 10000}
    return [TracePlaneProbe(pool, None, pid, events=events, label=label) if "default" in label else
            TracePlaneProbe(pool, "tracepoint", pid, events=events, label=label) for label in EVENTS_IDLE]


def events_program_cost(args, loop, pool):
    """Section 7's kernel-side rows: the probe's own BPF run time (kernel BPF stats, on while
    the agent runs) per traced getppid, with and without `events` (threshold 1 s: never met),
    alternating per round. The loop's wall-clock numbers carry the machine's noise (tens of
    ns here); the programs' run time is what `events` can change."""
    out = {}
    for r in range(args.rounds):
        for mech in (None, "tracepoint"):
            for with_events in ((False, True) if r % 2 == 0 else (True, False)):
                agent = pool.get(["--bpf-stats"])
                events = {"min_latency_ns": 1_000_000_000, "max_per_second": 10000} if with_events else None
                agent.put_probe("bench-evcost", "getppid", mech, loop.pid, events=events)
                loop.measure("getppid", args.iterations, 1)
                m = agent.metrics("bench-evcost")
                agent.delete_probe("bench-evcost")
                calls = max(m["calls"], 1)
                out.setdefault(f"{mech or 'default'}|{'events' if with_events else 'plain'}", []).append(
                    m["overhead"]["run_time_ns"] / calls)
        log(f"events program cost round {r + 1}/{args.rounds} done")
    return out


def events_stream(args, binary, sleeper):
    """Section 7's throughput: a fresh agent, a probe on getppid whose every call is an
    event, one curl -N NDJSON subscriber, and tests/events/sleeper.c making
    `--events-rate` getppid calls a second for `--events-seconds`; per round: events the
    subscriber got, the kernel's lost and throttled, gaps, and the agent's CPU."""
    rounds = []
    total = args.events_rate * args.events_seconds
    for r in range(args.events_rounds):
        agent = Agent(binary)
        try:
            agent.put_spec("bench-events", {"target": {"type": "syscall", "name": "getppid"},
                                            "filter": {"comm": "tp-sleeper"},
                                            "events": {"min_latency_ns": 0, "max_per_second": 16777215, "buffer_kib": 16384}})
            out = f".build/bench/events-{r}.ndjson"
            with open(out, "wb") as f:
                curl = spawn(["curl", "-sSN", "--max-time", str(args.events_seconds + 60), "-H", "Accept: application/x-ndjson",
                              f"http://127.0.0.1:{agent.port}/v1/probes/bench-events/events"], stdout=f)
                deadline = time.time() + 10
                while agent.metrics("bench-events")["events"]["subscribers"] < 1 and time.time() < deadline:
                    time.sleep(0.05)
                cpu0, t0 = process_cpu_s(agent.pid), time.time()
                work = spawn([sleeper, "getppid", str(total), str(args.events_rate)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
                work.stdout.readline()
                work.stdin.write("go\n")
                work.stdin.flush()
                work.stdout.readline()
                elapsed = time.time() - t0
                deadline = time.time() + 30
                while agent.metrics("bench-events")["events"]["consumed"] < total and time.time() < deadline:
                    time.sleep(0.05)
                cpu = process_cpu_s(agent.pid) - cpu0
                ev = agent.metrics("bench-events")["events"]
                work.stdin.close()
                work.wait(timeout=10)
                agent.delete_probe("bench-events")
                curl.wait(timeout=30)
            calls = gaps = 0
            with open(out) as f:
                for line in f:
                    if line.startswith('{"event":"call"'):
                        calls += 1
                    elif line.startswith('{"event":"gap"'):
                        gaps += json.loads(line)["missed"]
            os.unlink(out)
            rounds.append({"events": total, "received": calls, "gap_missed": gaps, "emitted": ev["emitted"],
                           "lost": ev["lost"], "throttled": ev["throttled"], "seconds": elapsed,
                           "rate": total / elapsed, "agent_cpu_percent": 100 * cpu / elapsed})
            log(f"events stream round {r + 1}/{args.events_rounds}: {rounds[-1]}")
        finally:
            agent.stop()
    return rounds


def program_cost_rows(cost):
    """(flavour, plain median, with events median, paired median of the differences, min, max)."""
    rows = []
    for mech in ("default", "tracepoint"):
        a, b = cost.get(f"{mech}|plain", []), cost.get(f"{mech}|events", [])
        if a and b:
            d = [y - x for x, y in zip(a, b)]
            rows.append((mech, median(a), median(b), median(d), min(d), max(d)))
    return rows


def write_events(w, args, over, ev, cost=None):
    """Section 7's tables."""
    samples = over[0]
    w("## 7. Events\n")
    if cost:
        w("The probe's own BPF programs, per traced getppid (kernel BPF stats: run time over the probe's calls), "
          f"with and without `events` (threshold 1 s, never met), alternating, {args.rounds} rounds of "
          f"{args.iterations:,} calls. The default probe is the shared raw_syscalls hook, whose programs also run "
          "(cheaply) for every other syscall of the host meanwhile.\n")
        w("| flavour | without events (ns per call) | with events | added (paired median) | min … max over rounds |")
        w("|---|---:|---:|---:|---|")
        for mech, a, b, d, lo, hi in program_cost_rows(cost):
            w(f"| {mech} | {a:.1f} | {b:.1f} | {d:+.1f} | {lo:+.1f} … {hi:+.1f} |")
        w("")
    rows = []
    for label, other in EVENTS_IDLE.items():
        for m in ("getppid", "read1"):
            pd = paired_diff(samples, label, other, m)
            if pd:
                rows.append(f"| {label} − {other} | {m} | {pd[0]:+.1f} | {pd[1]:+.1f} … {pd[2]:+.1f} |")
    if rows:
        w("The same, as the traced loop sees it (wall clock per call, section 1's rounds, paired by round): "
          "this carries the machine's noise, which on a shared VM is far above 10 ns.\n")
        w("| configuration | measurement | added ns per call (median) | min … max over rounds |")
        w("|---|---|---:|---|")
        for row in rows:
            w(row)
        w("")
    if ev:
        w(f"Streaming: every getppid call an event, {args.events_rate:,} calls a second for {args.events_seconds} s "
          "(tests/events/sleeper.c, paced), one `curl -N` NDJSON subscriber, a 16 MiB ring buffer; release build.\n")
        w("| round | events made | received by curl | gap (missed) | lost (ring full) | throttled | achieved rate | agent CPU |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(ev):
            w(f"| {i + 1} | {r['events']:,} | {r['received']:,} | {r['gap_missed']:,} | {r['lost']} | {r['throttled']} | "
              f"{r['rate']:,.0f}/s | {r['agent_cpu_percent']:.1f} % |")
        w("")


def events_targets(over, ev, cost=None):
    """Section 7's rows of the targets table."""
    rows = []
    for mech, a, b, d, lo, hi in program_cost_rows(cost or {}):
        measured = a > 0 and b > 0  # zero: BPF stats were off, nothing was measured
        rows.append((f"events, call under the threshold: ≤ 10 ns added to the probe's BPF programs ({mech}; getppid)",
                     f"{d:+.1f} ns (paired median; {a:.1f} → {b:.1f} ns per call)" if measured else "not measured (BPF stats off)",
                     verdict(measured and d <= 10)))
    if ev:
        ok = all(r["lost"] == 0 and r["received"] == r["events"] and r["rate"] >= 0.95 * 50000 for r in ev)
        rows.append(("50,000 events/s reach a subscriber with lost = 0",
                     "; ".join(f"{r['received']:,}/{r['events']:,} at {r['rate']:,.0f}/s, lost {r['lost']}" for r in ev), verdict(ok)))
    return rows


def keyed_configs(pool, pid):
    """The keyed rows of section 1, in pairs: each TracePlane `aggregate` next to what it
    is compared with (the bpftrace script keeping the same key; for the cheapest probe, the
    empty-program floor, which is measured anyway). The by-comm probe and the probe with
    no tables are measured on getppid and read; arg:count on read only (getppid has no
    arguments)."""
    return [
        TracePlaneProbe(pool, None, pid, aggregate={"by": [], "by_process": False},
                        label=KEYED["no tables"]),
        TracePlaneProbe(pool, None, pid, aggregate={"by": ["comm"]}, label=KEYED["by comm"]),
        BpftraceByComm(pid, pool),
        TracePlaneProbe(pool, None, pid, aggregate={"by": ["arg:count"], "value": "none"},
                        label=KEYED["by count"], syscalls=("read",)),
        BpftraceReadByCount(pid, pool),
    ]


def cgroup_configs(pool, pid, cgroup):
    """The cgroup rows of section 1: `by: ["cgroup"]` next to bpftrace's `@[cgroup] =
    hist()`, and the default and tracepoint probes with `filter.cgroup` naming the loop's
    cgroup (`cgroup` relative to the mount), each compared with the same probe without it."""
    return [
        TracePlaneProbe(pool, None, pid, aggregate={"by": ["cgroup"]}, label=KEYED["by cgroup"]),
        BpftraceByCgroup(pid, pool),
        TracePlaneProbe(pool, None, pid, filter_extra={"cgroup": cgroup}, label="TracePlane, default + filter.cgroup"),
        TracePlaneProbe(pool, "tracepoint", pid, filter_extra={"cgroup": cgroup},
                        label="TracePlane, tracepoint + filter.cgroup"),
    ]


PROTOBUF_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
                   "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


def body_text(agent):
    """A text scrape's body."""
    status, body = agent.call("GET", "/metrics")
    assert status == 200
    return body.decode(errors="replace")


def keyed_control_plane(args, binary, loop_binary):
    """Section 4b: `GET /metrics` and the agent's memory with `--key-probes` probes of
    `--keys` keys each, on a fresh agent.

    The probes are keyed by `tid` on the getter syscalls of `syscall_loop threadsK` (K
    threads, each making every getter once while all K are alive): exactly K keys in each
    probe, from a workload that needs no stray calls filtered out. They are spread over the
    getters because one syscall cannot hold 100 probes: the shared raw_syscalls hook takes
    HUB_PER_NR per syscall (bpf/include/traceplane/syscall_hub.h), a tracepoint at most 64
    BPF programs, and a probe past both is a 422. Every probe's metrics JSON is read first (`total_keys` must be K, and
    `calls` K); the scrapes are measured whatever they find, and the report says what."""
    getters = usable_syscalls(subprocess.run([loop_binary, "getters"], capture_output=True, text=True,
                                             check=True).stdout.split())
    if not getters:
        raise SystemExit("keyed control plane: no getter syscall of syscall_loop has a tracepoint here")
    out = {"keys": args.keys, "probes": args.key_probes, "getters": getters}
    agent = Agent(binary)
    loop = Loop(loop_binary)
    try:
        time.sleep(1.0)
        out["idle"] = agent.memory()
        names = [f"key-{i}" for i in range(args.key_probes)]
        targets = [getters[i % len(getters)] for i in range(args.key_probes)]
        mechanisms = {}
        for name, target in zip(names, targets):
            probe = agent.put_probe(name, target, pid=loop.pid, aggregate={"by": ["tid"], "value": "none"})
            mechanisms[probe["mechanism"]] = mechanisms.get(probe["mechanism"], 0) + 1
        out["mechanisms"] = mechanisms
        out["created"] = agent.memory()
        loop.measure(f"threads{args.keys}", 1, 1)
        keys, calls, json_ms = [], [], []
        for name in names:
            t0 = time.perf_counter()
            m = agent.metrics(name, top=args.keys)
            json_ms.append((time.perf_counter() - t0) * 1000)
            keys.append(m["aggregate"]["total_keys"])
            calls.append(m["calls"])
        out["total_keys"], out["calls"], out["json_ms"] = keys, calls, json_ms
        out["keys_ok"] = all(k == args.keys for k in keys) and all(c == args.keys for c in calls)
        if not out["keys_ok"]:
            log(f"keyed control plane: total_keys {min(keys)}–{max(keys)}, calls {min(calls)}–{max(calls)}, "
                f"expected {args.keys} each: the scrapes below are not of {args.keys} keys per probe")
        out["loaded"] = agent.memory()
        scrape_ms, body = [], b""
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            status, body = agent.call("GET", "/metrics")
            scrape_ms.append((time.perf_counter() - t0) * 1000)
            assert status == 200
        text = body.decode(errors="replace")
        out["scrape_ms"], out["scrape_bytes"] = scrape_ms, len(body)
        # What the exposition says about the keys: series of the traceplane_probe_key_*
        # families, if this build has them (another change adds them).
        out["key_series"] = sum(1 for line in text.splitlines() if line.startswith("traceplane_probe_key_"))
        out["series"] = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        out["scraped"] = agent.memory()
        # The same probes with a latency histogram per key: text and protobuf scrapes
        # alternated, so that both see the same load (issue 20: protobuf costs at most the
        # text scrape and at most a quarter of its bytes, with native histograms).
        for name in names:
            agent.delete_probe(name)
        for name, target in zip(names, targets):
            agent.put_probe(name, target, pid=loop.pid, aggregate={"by": ["tid"]})
        # Each thread makes every getter 50 times: each key's histogram spreads over a few
        # slots, as a real key's does (one call per key would be one bucket each).
        loop.measure(f"threads{args.keys}x50", 1, 1)
        hist = {"text_ms": [], "proto_ms": [], "text_bytes": 0, "proto_bytes": 0}
        for _ in range(args.scrapes):
            for kind, accept in (("text", None), ("proto", PROTOBUF_ACCEPT)):
                t0 = time.perf_counter()
                status, body = agent.call("GET", "/metrics", headers={"Accept": accept} if accept else None)
                hist[f"{kind}_ms"].append((time.perf_counter() - t0) * 1000)
                assert status == 200
                hist[f"{kind}_bytes"] = len(body)
        hist["text_series"] = sum(1 for line in body_text(agent).splitlines() if line and not line.startswith("#"))
        hist["keys"] = [agent.metrics(n, top=1)["aggregate"]["total_keys"] for n in names]
        out["histograms"] = hist
        for name in names:
            agent.delete_probe(name)
        t_deleted = time.perf_counter()
        while agent.memory()[4] > out["idle"][4] and time.perf_counter() - t_deleted < 120:
            time.sleep(0.02)
        out["after"] = agent.memory()
    finally:
        loop.close()
        agent.stop()
    log(f"keyed control plane done: {args.key_probes} probes × {min(out['total_keys'])}–{max(out['total_keys'])} keys, "
        f"/metrics median {median(out['scrape_ms']):.2f} ms (load {loadavg()})")
    return out


def run_wrk(port, seconds):
    res = subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/metrics"],
                         capture_output=True, text=True, timeout=seconds + 60)
    text = res.stdout

    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
    return {"p50": ms("50%"), "p99": ms("99%"), "rps": float(rps.group(1)) if rps else float("nan"),
            "errors": errors.group(0) if errors else ""}


# ----------------------------------------------------------------------------- stacks
#
# Section 6 (issue #16's performance part for stack keys and profiles): a `kstack` count on
# sched_switch against bpftrace's `@[kstack] = count()`, a 99 Hz profile's host CPU against
# bpftrace's `profile:hz:99`, and the symbolizers on 10,000 distinct stacks.

SWITCH_PLAN = (("sched_switch", ("switch",)),)

# Labels of section 6's rows, named once: the report pairs them by these.
STACKS = {"kstack": "TracePlane, sched_switch by kstack",
          "kstack no procs": "TracePlane, sched_switch by kstack, no process table",
          "bpftrace kstack": "bpftrace, sched_switch @[kstack] = count()",
          "profile": "TracePlane, profile 99 Hz (comm, ustack, kstack)",
          "bpftrace profile": "bpftrace, profile:hz:99 @[kstack, ustack, comm] = count()"}


class BPFStats:
    """Kernel BPF run-time stats, on while held: `BPF_ENABLE_STATS` hands out an fd and the
    kernel counts its holders, so closing ours leaves them on for anyone else who asked
    (the sysctl is not touched). They slow every BPF program on the host by about 70 ns per
    run while on, which is why they are on only around the samples that read them."""

    SYS_BPF = {"x86_64": 321, "aarch64": 280}
    BPF_ENABLE_STATS, BPF_STATS_RUN_TIME = 32, 0

    def __enter__(self):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        attr = ctypes.c_uint32(self.BPF_STATS_RUN_TIME)  # union bpf_attr's enable_stats.type
        self.fd = libc.syscall(ctypes.c_long(self.SYS_BPF[platform.machine()]), ctypes.c_int(self.BPF_ENABLE_STATS),
                               ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
        if self.fd < 0:
            raise SystemExit(f"BPF_ENABLE_STATS failed: errno {ctypes.get_errno()}")
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def bpf_programs(pid):
    """{prog id: (run_time_ns, run_cnt)} of the BPF programs process `pid` holds an fd of,
    from /proc/PID/fdinfo (each program once, whatever the number of its fds)."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError:
            continue  # closed meanwhile
        if "prog_id" in fields and "run_time_ns" in fields:
            out[int(fields["prog_id"])] = (int(fields["run_time_ns"]), int(fields["run_cnt"]))
    return out


def bpf_delta(before, after):
    """(run_time_ns, run_cnt) of the programs between two `bpf_programs` readings."""
    t = sum(after[k][0] - before.get(k, (0, 0))[0] for k in after)
    n = sum(after[k][1] - before.get(k, (0, 0))[1] for k in after)
    return t, n


def process_cpu_s(pid):
    """User + system CPU seconds of process `pid` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bpftrace_stack_counts(out):
    """(sum of counts, entries) of a printed bpftrace map with stack keys: an entry ends in
    "]: 123" on a line of its own, or ", comm]: 123" after the stacks of a compound key."""
    counts = [int(m.group(1)) for m in re.finditer(r"\]:\s*(\d+)\s*$", out, re.M)]
    return sum(counts), len(counts)


class SwitchProbe(Configuration):
    """A TracePlane probe on sched:sched_switch keyed by kernel stack (a count per stack),
    on every context switch of the host (no filter, as the bpftrace script)."""

    syscalls = ("sched_switch",)

    def __init__(self, pool, aggregate, label):
        self.pool, self.aggregate, self.label, self.picked, self.mechanism = pool, aggregate, label, None, None

    def start(self, _what):
        self.agent = self.pool.get()
        probe = self.agent.put_spec("stk", {"target": {"type": "tracepoint", "name": "sched:sched_switch"},
                                            "aggregate": self.aggregate})
        self.picked = probe["mechanism"]
        return "stk"

    def tracer_pid(self, _handle):
        return self.agent.pid

    def stop(self, name):
        m = self.agent.metrics(name, top=MAX_TOP)
        count = sum(k["calls"] for k in (m.get("aggregate") or {}).get("keys", []))
        self.agent.delete_probe(name)
        return count


class BpftraceSwitchKstack(Bpftrace):
    """bpftrace's `tracepoint:sched:sched_switch { @[kstack] = count(); }` (issue #16)."""

    label = STACKS["bpftrace kstack"]
    syscalls = ("sched_switch",)

    def script(self, _what):
        return 'BEGIN { printf("ready\\n"); } tracepoint:sched:sched_switch { @[kstack] = count(); }'

    def tracer_pid(self, proc):
        return proc.pid

    def count(self, out):
        return bpftrace_stack_counts(out)[0]


class SwitchNoTracing(NoTracing):
    syscalls = ("sched_switch",)


def switch_configs(pool):
    return [SwitchNoTracing(pool),
            SwitchProbe(pool, {"by": ["kstack"]}, STACKS["kstack"]),
            SwitchProbe(pool, {"by": ["kstack"], "by_process": False}, STACKS["kstack no procs"]),
            BpftraceSwitchKstack(None, pool)]


def switch_program_stats(args, loop, configs):
    """After the rounds, one more sample per tracer with kernel BPF stats on: what its
    programs' runs cost inside BPF (run_time_ns / run_cnt over the sample), next to the
    wall-time cost, which also holds the dispatch and, with stats on, their own cost."""
    out = {}
    cpus = sorted(os.sched_getaffinity(0))[:args.cpus]
    for cfg in configs:
        if not hasattr(cfg, "tracer_pid"):
            continue
        handle = cfg.start("sched_switch")
        with BPFStats():
            before = bpf_programs(cfg.tracer_pid(handle))
            for cpu in cpus:
                os.sched_setaffinity(loop.pid, {cpu})
                loop.measure("switch", args.switch_iterations, 1)
            after = bpf_programs(cfg.tracer_pid(handle))
        os.sched_setaffinity(loop.pid, set(cpus))
        cfg.stop(handle)
        t, n = bpf_delta(before, after)
        out[cfg.label] = {"run_time_ns": t, "run_cnt": n, "programs": len(after)}
    return out


def start_burners(loop_binary, seconds, count=2):
    return [spawn([loop_binary, "burn", str(seconds)]) for _ in range(count)]


def stop_burners(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def folded_samples(text):
    """The sum of the counts of a folded text ("f1;f2;f3 COUNT" lines)."""
    return sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.rsplit(" ", 1)[-1].isdigit())


def profile_agent(args, binary):
    """One agent sample: a fresh `serve` with one 99 Hz profile (default keys), `--profile-seconds`
    measured while the burners run, its stacks scraped as folded text every
    `--profile-scrape-every` s; agent CPU and its BPF programs' run time over the window."""
    agent = Agent(binary)
    try:
        agent.put_spec("prof", {"target": {"type": "profile", "frequency_hz": 99}})
        time.sleep(1.0)
        scrapes = []
        with BPFStats():
            cpu0, bpf0, t0 = process_cpu_s(agent.pid), bpf_programs(agent.pid), time.perf_counter()
            for k in range(1, int(args.profile_seconds // args.profile_scrape_every) + 1):
                time.sleep(max(0.0, t0 + k * args.profile_scrape_every - time.perf_counter()))
                s0 = time.perf_counter()
                status, body = agent.call("GET", "/v1/probes/prof/stacks?format=folded")
                if status != 200:
                    raise SystemExit(f"GET prof stacks: HTTP {status} {body[:200]!r}")
                text = body.decode(errors="replace")
                scrapes.append({"ms": (time.perf_counter() - s0) * 1000, "bytes": len(body),
                                "stacks": len(text.splitlines()), "samples": folded_samples(text)})
            time.sleep(max(0.0, t0 + args.profile_seconds - time.perf_counter()))
            cpu1, bpf1, t1 = process_cpu_s(agent.pid), bpf_programs(agent.pid), time.perf_counter()
        bt, bn = bpf_delta(bpf0, bpf1)
        agent.delete_probe("prof")
        return {"window_s": t1 - t0, "process_cpu_s": cpu1 - cpu0, "bpf_ns": bt, "bpf_runs": bn, "scrapes": scrapes,
                "exit_cpu_s": 0.0, "startup_cpu_s": cpu0, "samples": scrapes[-1]["samples"] if scrapes else 0,
                "stacks": scrapes[-1]["stacks"] if scrapes else 0}
    finally:
        agent.stop()


def profile_bpftrace(args):
    """One bpftrace sample: `profile:hz:99 { @[kstack, ustack, comm] = count(); }` over the
    same window (its CPU and its programs' run time), then SIGINT: the CPU it spends
    printing (and symbolizing) the map at exit is measured from its rusage at reaping."""
    script = 'BEGIN { printf("ready\\n"); } profile:hz:99 { @[kstack, ustack, comm] = count(); }'
    proc = spawn(["bpftrace", "-B", "line", "-e", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wait_for_line(proc, "ready", 120, "bpftrace profile")
    chunks = []
    import threading
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    time.sleep(1.0)
    with BPFStats():
        cpu0, bpf0, t0 = process_cpu_s(proc.pid), bpf_programs(proc.pid), time.perf_counter()
        time.sleep(args.profile_seconds)
        cpu1, bpf1, t1 = process_cpu_s(proc.pid), bpf_programs(proc.pid), time.perf_counter()
    proc.send_signal(signal.SIGINT)
    e0 = time.perf_counter()
    while True:  # it symbolizes every stack while it prints: minutes on a busy host
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - e0 > args.profile_exit_timeout:
            log(f"bpftrace profile still printing after {args.profile_exit_timeout:.0f} s: killed")
            proc.kill()
        time.sleep(0.05)
    exit_wall = time.perf_counter() - e0
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=60)
    out = "".join(chunks)
    total = usage.ru_utime + usage.ru_stime
    bt, bn = bpf_delta(bpf0, bpf1)
    return {"window_s": t1 - t0, "process_cpu_s": cpu1 - cpu0, "bpf_ns": bt, "bpf_runs": bn, "scrapes": [],
            "exit_cpu_s": max(0.0, total - cpu1), "exit_wall_s": exit_wall, "startup_cpu_s": cpu0,
            "samples": bpftrace_stack_counts(out)[0], "stacks": bpftrace_stack_counts(out)[1],
            "killed": proc.returncode == -signal.SIGKILL}


def profile_cost(args, loop_binary, binary):
    """Rounds of the agent's and bpftrace's 99 Hz profiles (order alternating), each over
    its own fixed load: two `syscall_loop burn` processes (one per CPU's worth)."""
    out = {STACKS["profile"]: [], STACKS["bpftrace profile"]: []}
    for r in range(args.profile_rounds):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            burners = start_burners(loop_binary, args.profile_seconds + 30)
            try:
                if which == 0:
                    out[STACKS["profile"]].append(profile_agent(args, binary))
                else:
                    out[STACKS["bpftrace profile"]].append(profile_bpftrace(args))
            finally:
                stop_burners(burners)
        log(f"profile round {r + 1}/{args.profile_rounds} done (load {loadavg()})")
    return out


def symbolize_cost(args, binary):
    """`traceplane bench-symbolize`, each run a fresh process (cold symbolizers)."""
    runs = []
    for _ in range(args.symbolize_rounds):
        res = subprocess.run([binary, "bench-symbolize", "--stacks", str(args.symbolize_stacks)],
                             capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise SystemExit(f"bench-symbolize failed: {res.stderr.strip()[-400:]}")
        runs.append(json.loads(res.stdout))
    log(f"symbolize: {len(runs)} runs (load {loadavg()})")
    return runs


def stacks_section(args, loop, pool, binary, loop_binary):
    configs = switch_configs(pool)
    samples, counts, by_cpu = overhead(args, loop, configs, plan=SWITCH_PLAN, iterations=args.switch_iterations,
                                       rounds=args.switch_rounds, what_done="sched_switch")
    stats = switch_program_stats(args, loop, configs)
    pool.stop()
    mechanisms = {c.label: c.picked for c in configs if isinstance(c, SwitchProbe)}
    mechanisms[BpftraceSwitchKstack.label] = "tracepoint"
    return {"samples": {"|".join(k): v for k, v in samples.items()},
            "counts": {"|".join(k): v for k, v in counts.items()},
            "by_cpu": {"|".join(k): v for k, v in by_cpu.items()},
            "program_stats": stats, "mechanisms": mechanisms,
            "profile": profile_cost(args, loop_binary, binary),
            "symbolize": symbolize_cost(args, binary)}


# ----------------------------------------------------------------------------- report

def fmt(x, digits=0):
    return "n/a" if x != x else f"{x:.{digits}f}"


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return model, os.cpu_count(), platform.release()


def verdict(ok):
    return "**met**" if ok else "**missed**"


def ratio_verdict(results, num, den, measurements, limit, cpus):
    """(ratio text, verdict cell) of configuration `num` against `den`, met when every one
    of `measurements` is at most `limit` times `den`'s; None when one was not measured.

    The verdict is on the samples as defined in the method (the mean over the CPUs, what a
    loop the scheduler places on either CPU pays on average); each pinned CPU is shown too,
    and a CPU that alone misses the target is named in the verdict."""
    if any((label, m) not in results for label in (num, den) for m in measurements):
        return None
    text = " / ".join(f"{results[(num, m)] / results[(den, m)]:.2f}×" for m in measurements) + " (CPU mean)"
    ok = all(results[(num, m)] <= limit * results[(den, m)] for m in measurements)
    misses = []
    for c in cpus:
        pairs = [(results.get((num, m, c)), results.get((den, m, c))) for m in measurements]
        if any(None in p for p in pairs):
            continue
        text += f"; CPU {c}: " + " / ".join(f"{a / b:.2f}×" for a, b in pairs)
        if not all(a <= limit * b for a, b in pairs):
            misses.append(f"CPU {c}")
    return text, verdict(ok) + (f" on the CPU mean; missed pinned to {', '.join(misses)}" if ok and misses else "")


def paired_diff(samples, label, other, m):
    """Median, min and max over rounds of `label`'s sample minus `other`'s of the same
    round (both are paired with the same no-tracing sample, so this is the difference of
    their added ns, round by round); None when either was not measured."""
    if (label, m) not in samples or (other, m) not in samples:
        return None
    xs = [a - b for a, b in zip(samples[(label, m)], samples[(other, m)])]
    return median(xs), min(xs), max(xs)


def keyed_pairs(meta):
    """The keyed rows and what each is compared with: (row, counterpart, target ratio,
    measurements, the target's wording). The cheapest probe is held to the floor of the
    hook it was put on."""
    hook = meta["mechanisms"].get(KEYED["no tables"], "?")
    return [(KEYED["no tables"], f"floor: empty programs, {hook}", 1.4, ("getppid", "read1"),
             f"no keys, no process table: ≤ 1.4× the floor ({hook}; getppid / read)"),
            (KEYED["by comm"], BpftraceByComm.label, 0.35, ("getppid", "read1"),
             "by comm (latency histogram): ≤ 0.35× bpftrace's `@[comm] = hist()` (getppid / read)"),
            (KEYED["by count"], BpftraceReadByCount.label, 0.35, ("read1",),
             "read by arg:count: ≤ 0.35× bpftrace's `@[args->count] = count()` (read)"),
            (KEYED["by cgroup"], BpftraceByCgroup.label, 0.35, ("getppid", "read1"),
             "by cgroup (latency histogram): ≤ 0.35× bpftrace's `@[cgroup] = hist()` (getppid / read)")]


def write_report(path, args, meta, over, scal, cp, kcp, tools, stk=None, ev=None, evc=None):
    samples, counts, by_cpu = over
    lines = []
    w = lines.append
    model, cores, kernel = machine()
    w("# TracePlane benchmarks\n")
    w(f"Generated by `bench/run.sh` on {meta['date']} in {meta['elapsed']:.0f} s. One run on a shared, noisy VM: "
      "compare numbers within this file, not across runs.\n")
    w("## Machine\n")
    w(f"- CPU: {model}, {cores} cores; kernel {kernel}")
    w(f"- load average (1/5/15 min) at start: {meta['load_start']}; at end: {meta['load_end']}")
    w(f"- BPF links on the kernel before the run: {meta['links_start']}, after: {meta['links_end']} "
      "(non-zero: someone else had programs attached, which slows every configuration alike)")
    w(f"- tools: {tools['bpftrace']}; libbpf-tools {tools['libbpf-tools']}; {tools['wrk']}\n")
    w("## Method\n")
    if not samples and stk:
        w("- Only section 6 (stacks) was measured in this run (`--sections stacks`); its method is given there.")
    if samples:
        w(f"- `bench/syscall_loop serve` (C) times tight loops of `syscall(SYS_getppid)`, `syscall(SYS_getpid)` and "
          f"1-byte `read`s of /dev/zero: {args.iterations} calls × {args.reps} repetitions per sample, median of the repetitions.")
        w("- Every tracer filters on the loop's pid (TracePlane `filter.pid`, bpftrace `/pid == X/`, `syscount -p X`) and is "
          "attached to one traced syscall at a time (getppid, then read). The floor is `traceplane bench-hook`: empty programs "
          "(`bpf/bench.bpf.c`) on the same hooks, loaded as the agent loads its probes: one object per probe on "
          "per-syscall tracepoints, one shared pair on raw_syscalls (tp_btf, raw_tracepoint) whatever the number of probes.")
        w("- The agent runs only while a TracePlane configuration is measured. With `--bpf-stats` it turns kernel BPF "
          "run-time stats on for its lifetime (for each probe's `overhead`): that slows every BPF program on the host, "
          "other tracers' too. The `+ BPF stats` floor and the `--bpf-stats` row show that cost.")
        w(f"- {args.rounds} rounds; each round visits every configuration, in an order rotated by one per round. While a "
          f"tracer is attached the loop is pinned to each of CPUs {', '.join(map(str, sorted(os.sched_getaffinity(0))[:args.cpus]))} "
          "in turn (bpftrace costs a different amount on each CPU here; nothing else does), and a sample is the mean over "
          "the CPUs. Each sample is paired with the no-tracing sample of the same round: *added ns* = traced − untraced, "
          "median over rounds [min … max]. Ratios divide medians of added ns; ÷ floor uses the floor of the same hook "
          "without BPF stats.")
        w("- After each sample the tracer's own count is read back (a tracer that traced nothing would look free).")
    if any(label.startswith("bpftrace, ") or label in KEYED.values() for (label, _m) in samples):
        w("- Keyed rows: TracePlane probes with an `aggregate` member (`{\"by\": [], \"by_process\": false}`: no key "
          "table and no process table; `{\"by\": [\"comm\"]}`: a latency histogram per process name; "
          "`{\"by\": [\"arg:count\"], \"value\": \"none\"}` on read: a count per read size), each next to the bpftrace "
          "script that keeps the same thing with the same pid filter (`@[comm] = hist(nsecs - @s[tid])` on "
          "sys_enter/sys_exit; `@[args->count] = count()` on sys_enter_read alone). The arg:count pair is measured on "
          "read only (getppid has no arguments), so it has no collateral sample. A keyed probe's count read back is "
          "the sum over its key table: the keys were counted, not only the totals.")
    if any(label in CGROUP_FILTER or label in (KEYED["by cgroup"], BpftraceByCgroup.label) for (label, _m) in samples):
        cgm = meta.get("cgroup", {})
        w(f"- Cgroup rows: the loop runs in a cgroup made for the run, `{cgm.get('path', '?')}` under the cgroup2 mount "
          f"{cgm.get('mount', '?')} (found in /proc/self/mountinfo; no controller enabled in it; removed at the end), for "
          "every configuration. `{\"by\": [\"cgroup\"]}` (a latency histogram per cgroup: one key here) is next to "
          "bpftrace's `@[cgroup] = hist(nsecs - @s[tid])` (the cgroup v2 id) with the by-comm rows' entry/exit pair. "
          "`filter.cgroup` naming that cgroup is added to the default and to the tracepoint probe (pid filter kept): "
          "every call passes it, and the count read back shows they were all counted.")
    w("")

    results, bt, floors = {}, {}, {}
    if samples:
        base = {m: samples[("no tracing", m)] for m in ("getppid", "getpid", "read1")}

        def added(label, m):
            """Median, min and max added ns; None for a measurement the configuration skips."""
            if (label, m) not in samples:
                return None
            xs = [a - b for a, b in zip(samples[(label, m)], base[m])]
            return median(xs), min(xs), max(xs)

        labels = []
        for (label, _m) in samples:
            if label not in labels:
                labels.append(label)
        w("## 1–2. Overhead per call, and collateral on an untraced syscall\n")
        w("Base (no tracing), ns per call, median [min … max]: " + ", ".join(
            f"{m} {fmt(median(base[m]))} [{fmt(min(base[m]))} … {fmt(max(base[m]))}]" for m in ("getppid", "getpid", "read1")) + "\n")
        w("| configuration | hook | traced getppid: added ns | ÷ bpftrace | ÷ floor | traced read(1): added ns | ÷ bpftrace | ÷ floor | collateral: untraced getpid, added ns | calls counted per sample (getppid / read) |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        if ("bpftrace", "getppid") in samples:
            bt = {m: added("bpftrace", m)[0] for m in ("getppid", "read1")}
        for hook in ("tracepoint", "tp_btf", "raw_tracepoint"):
            if (f"floor: empty programs, {hook}", "getppid") in samples:
                floors[hook] = {m: added(f"floor: empty programs, {hook}", m)[0] for m in ("getppid", "read1", "getpid")}
        for label in labels:
            if label == "no tracing":
                continue
            mech = meta["mechanisms"].get(label, "")
            row = [label, mech]
            for m in ("getppid", "read1"):
                a = added(label, m)
                if a is None:
                    row += ["—", "—", "—"]
                    continue
                results[(label, m)] = a[0]
                row.append(f"{fmt(a[0])} [{fmt(a[1])} … {fmt(a[2])}]")
                row.append(f"{a[0] / bt[m]:.2f}×" if bt and label != "bpftrace" else "—")
                fl = floors.get(mech, {}).get(m)
                row.append(f"{a[0] / fl:.2f}×" if fl and not label.startswith("floor") else "—")
            c = added(label, "getpid")
            if c is None:
                row.append("—")
            else:
                results[(label, "getpid")] = c[0]
                row.append(f"{fmt(c[0])} [{fmt(c[1])} … {fmt(c[2])}]")
            got = [counts.get((label, s)) for s in ("getppid", "read")]
            row.append(" / ".join("—" if g is None else (str(g[0]) if min(g) == max(g) else f"{min(g)}–{max(g)}") for g in got))
            w("| " + " | ".join(row) + " |")
        cpu_ids = sorted({k[2] for k in by_cpu}, key=int)
        if cpu_ids:
            def cpu_added(label, what, cpu):
                if (label, what, cpu) not in by_cpu:
                    return float("nan")
                xs = [a - b for a, b in zip(by_cpu[(label, what, cpu)], by_cpu[("no tracing", what, cpu)])]
                return median(xs)
            w("\nBy CPU (loop pinned), added ns, median over rounds:\n")
            w("| configuration | " + " | ".join(f"CPU {c}: getppid | ÷ bpftrace | read(1) | ÷ bpftrace | getpid (collateral)"
                                             for c in cpu_ids) + " |")
            w("|---|" + "---|---|---|---|---|" * len(cpu_ids))
            for label in labels:
                if label == "no tracing" or not any((label, m, cpu_ids[0]) in by_cpu for m in ("getppid", "read1")):
                    continue
                cells = []
                for c in cpu_ids:
                    g, rd, u = (cpu_added(label, m, c) for m in ("getppid", "read1", "getpid"))
                    bg, br = (cpu_added("bpftrace", m, c) for m in ("getppid", "read1")) if bt else (float("nan"),) * 2
                    by_cpu_ratio = label != "bpftrace" and bool(bt)
                    cells += [fmt(g) if g == g else "—", f"{g / bg:.2f}×" if by_cpu_ratio and g == g else "—",
                              fmt(rd) if rd == rd else "—", f"{rd / br:.2f}×" if by_cpu_ratio and rd == rd else "—",
                              fmt(u) if u == u else "—"]
                    for m, v in (("getppid", g), ("read1", rd)):
                        if v == v:
                            results[(label, m, c)] = v
                w(f"| {label} | " + " | ".join(cells) + " |")
        pairs = [p for p in keyed_pairs(meta) if any((p[0], m) in results for m in p[3])]
        if pairs:
            w("\nKeyed aggregation, side by side (added ns, median over rounds; the ratio is to the row compared with; "
              "\"− default\" is what the aggregate costs over `TracePlane, default` in the same rounds):\n")
            w("| configuration | compared with | traced getppid | compared | ratio | − default | traced read(1) | compared "
              "| ratio | − default | ratios by CPU (getppid / read) |")
            w("|---|---|---|---|---|---|---|---|---|---|---|")
            for label, other, _limit, ms, _target in pairs:
                cells = [label, other]
                for m in ("getppid", "read1"):
                    a, b, d = results.get((label, m)), results.get((other, m)), results.get(("TracePlane, default", m))
                    if m not in ms or a is None:
                        cells += ["—"] * 4
                        continue
                    cells += [fmt(a), fmt(b) if b is not None else "n/a",
                              f"{a / b:.2f}×" if b else "n/a", f"{a - d:+.0f}" if d is not None else "n/a"]
                per_cpu = []
                for c in cpu_ids:
                    rs = [(results.get((label, m, c)), results.get((other, m, c))) for m in ms]
                    if all(x is not None and y for x, y in rs):
                        per_cpu.append(f"CPU {c}: " + " / ".join(f"{x / y:.2f}×" for x, y in rs))
                cells.append("; ".join(per_cpu) or "—")
                w("| " + " | ".join(cells) + " |")
        cg_pairs = [(a, b) for a, b in CGROUP_FILTER.items() if any((a, m) in results for m in ("getppid", "read1"))]
        if cg_pairs:
            cgm = meta.get("cgroup", {})
            how = {True: "`bpf_get_current_ancestor_cgroup_id` compared with the cgroup's id",
                   False: "`bpf_current_task_under_cgroup` on a cgroup array"}.get(cgm.get("ancestor_helper"), "?")
            w(f"\nCgroup filter, side by side: `filter.cgroup` `{cgm.get('path', '?')}` (under {cgm.get('mount', '?')}), "
              "the cgroup the loop runs in, so every traced call passes it and is counted, next to the same probe "
              f"without it (both with the pid filter; kernel check here: {how}). \"+ filter\" is the difference of "
              "the two rows' medians of added ns; \"paired\" the median [min … max] over rounds of the difference "
              "between the two rows' samples of the same round (less of the round-to-round noise):\n")
            w("| configuration | compared with | traced getppid | compared | + filter | paired | traced read(1) | compared "
              "| + filter | paired | + filter by CPU (getppid / read) |")
            w("|---|---|---|---|---|---|---|---|---|---|---|")
            for label, other in cg_pairs:
                cells = [label, other]
                for m in ("getppid", "read1"):
                    a, b = results.get((label, m)), results.get((other, m))
                    d = paired_diff(samples, label, other, m)
                    cells += [fmt(a) if a is not None else "n/a", fmt(b) if b is not None else "n/a",
                              f"{a - b:+.0f}" if None not in (a, b) else "n/a",
                              f"{d[0]:+.0f} [{d[1]:+.0f} … {d[2]:+.0f}]" if d else "n/a"]
                per_cpu = []
                for c in cpu_ids:
                    rs = [(results.get((label, m, c)), results.get((other, m, c))) for m in ("getppid", "read1")]
                    if all(x is not None and y is not None for x, y in rs):
                        per_cpu.append(f"CPU {c}: " + " / ".join(f"{x - y:+.0f}" for x, y in rs))
                cells.append("; ".join(per_cpu) or "—")
                w("| " + " | ".join(cells) + " |")
        entry_only = ("; bpftrace's arg:count script, which counts at entry, also counts the command read still in "
                      "flight when it is detached") if (BpftraceReadByCount.label, "read1") in samples else ""
        w(f"\nEach sample makes {args.iterations * args.reps} traced calls per CPU (a read count is one higher: the "
          f"loop reads its next command{entry_only}). syscount cannot select one syscall: it traces "
          "every syscall of the process (so its collateral is a traced call too), and its count is that of the busiest one.\n")
        w("libbpf-tools here:\n")
        for name, (ok, said) in meta["libbpf_tools"].items():
            w(f"- `{name}`: {'works' if ok else 'fails'} — {said}")
        w("")

    probe_counts = [int(c) for c in args.probes.split(",")]
    if scal:
        w("## 3. Scaling: 1, 16 and 64 syscall probes\n")
        w(f"One probe on getppid plus probes on syscalls the loop never makes; {args.scaling_rounds} interleaved rounds of "
          f"{args.scaling_iterations} calls × {args.reps}, added ns paired with the round's no-tracing sample, "
          "median [min … max].\n")
        w("| design | hook | " + " | ".join(f"{c} probes: traced getppid" for c in probe_counts) + " | "
          + " | ".join(f"{c} probes: untraced getpid" for c in probe_counts) + " |")
        w("|---|---|" + "---|" * (2 * len(probe_counts)))
        for kind in ("TracePlane", "floor"):
            for hook in ("tracepoint", "tp_btf", "raw_tracepoint"):
                cells = []
                for idx in (0, 1):
                    for c in probe_counts:
                        xs = [v[idx] for v in scal.get((kind, hook, c), [])]
                        cells.append(f"{fmt(median(xs))} [{fmt(min(xs))} … {fmt(max(xs))}]" if xs else "n/a")
                w(f"| {kind} | {hook} | " + " | ".join(cells) + " |")
        w("")

    if cp:
        w("## 4. Control plane\n")
        cr, de, sm = cp["creates"], cp["deletes"], cp["scrape_ms"]
        w(f"A fresh agent (default options); {args.cp_cycles} cycles of {args.cp_probes} `PUT /v1/probes/{{name}}` (syscall "
          f"probes on {args.cp_probes} syscalls nobody makes, default mechanism; timed until the 201 whose probe is `active`), "
          f"then the scrapes, then {args.cp_probes} `DELETE`s; one keep-alive loopback connection (Python http.client).\n")
        w("| measurement | median | p99 | min | max | n |")
        w("|---|---|---|---|---|---|")
        w(f"| create → active (ms) | {fmt(median(cr), 1)} | {fmt(pct(cr, 99), 1)} | {fmt(min(cr), 1)} | {fmt(max(cr), 1)} | {len(cr)} |")
        w(f"| delete → 204 (ms) | {fmt(median(de), 2)} | {fmt(pct(de, 99), 2)} | {fmt(min(de), 2)} | {fmt(max(de), 2)} | {len(de)} |")
        td = cp.get("teardown", [])
        if td:
            w(f"| kernel teardown of {args.cp_probes} deleted probes, until the agent's fds are back to idle (s) | "
              f"{fmt(median(td), 2)} | — | {fmt(min(td), 2)} | {fmt(max(td), 2)} | {len(td)} |")
        w(f"| `GET /metrics` with {args.cp_probes} probes, one at a time (ms; {cp['scrape_bytes']} bytes) | {fmt(median(sm), 2)} | {fmt(pct(sm, 99), 2)} | {fmt(min(sm), 2)} | {fmt(max(sm), 2)} | {len(sm)} |")
        for key, label in (("refresh_report", "capability detection: `POST /v1/capabilities/refresh`, its `duration_ms`"),
                           ("refresh_wall", "… the same request, round trip (ms)"),
                           ("cli_report", "capability detection: `traceplane capabilities --json`, its `duration_ms`"),
                           ("cli_wall", "… the same command, whole process (ms)")):
            xs = cp[key]
            w(f"| {label} | {fmt(median(xs), 1)} | — | {fmt(min(xs), 1)} | {fmt(max(xs), 1)} | {len(xs)} |")
        w("")
        w(f"`GET /metrics` with {args.cp_probes} probes under `wrk -t1 -c4 -d{args.wrk_seconds}s --latency` (one run per cycle): "
          + "; ".join(f"{fmt(x['rps'])} requests/s, p50 {fmt(x['p50'], 2)} ms, p99 {fmt(x['p99'], 2)} ms"
                      f"{(' (' + x['errors'] + ')') if x['errors'] else ''}" for x in cp["wrk"]) + "\n")
        w("| agent process | VmRSS (MB) | VmHWM (MB) | RssAnon (MB) | RssFile (MB) | open fds | threads |")
        w("|---|---|---|---|---|---|---|")

        def mem(m):
            return " | ".join(fmt(v, 1) if i < 4 else str(v) for i, v in enumerate(m))
        w(f"| idle (capabilities probed, no probes) | {mem(cp['idle'])} |")
        for i, m in enumerate(cp["with100"]):
            when = "after creating them" if i % 2 == 0 else "after the scrapes and wrk"
            w(f"| {args.cp_probes} probes, cycle {i // 2 + 1}, {when} | {mem(m)} |")
        w(f"| after deleting them all | {mem(cp['after'])} |")
        w("")

    if kcp:
        write_keyed_control(w, kcp)

    # targets
    w("## 5. Targets\n")
    picked = meta["mechanisms"].get("TracePlane, default", "?")

    cpus = sorted({k[2] for k in by_cpu}, key=int)
    rows = []
    if ("TracePlane, default", "getppid") in results:
        tp, tpr = results[("TracePlane, default", "getppid")], results[("TracePlane, default", "read1")]
        fl = floors.get(picked, {})
        if bt:
            text, cell = ratio_verdict(results, "TracePlane, default", "bpftrace", ("getppid", "read1"), 0.35, cpus)
            rows.append(("traced overhead ≤ 0.35× bpftrace's (getppid / read)", text, cell))
        if fl:
            rows.append((f"traced overhead ≤ 2× the floor ({picked}; getppid / read)",
                         f"{tp / fl['getppid']:.2f}× / {tpr / fl['read1']:.2f}×",
                         verdict(tp <= 2 * fl["getppid"] and tpr <= 2 * fl["read1"])))
            col = results[("TracePlane, default", "getpid")]
            rows.append((f"collateral ≤ the floor's ({picked})", f"{fmt(col)} ns vs {fmt(fl['getpid'])} ns",
                         verdict(col <= fl["getpid"] + meta["noise"])))
    for label, other, limit, ms, target in keyed_pairs(meta):
        rv = ratio_verdict(results, label, other, ms, limit, cpus)
        if rv:
            rows.append((target, *rv))
    for label, other in CGROUP_FILTER.items():
        ds = [results[(label, m)] - results[(other, m)] for m in ("getppid", "read1")
              if (label, m) in results and (other, m) in results]
        if len(ds) == 2:
            flavour = meta["mechanisms"].get(label, "?")
            pd = [paired_diff(samples, label, other, m) for m in ("getppid", "read1")]
            text = " / ".join(f"{d:+.0f} ns" for d in ds) + " (CPU mean; paired by round: " + " / ".join(
                f"{p[0]:+.0f}" for p in pd) + ")"
            for c in cpus:
                pc = [(results.get((label, m, c)), results.get((other, m, c))) for m in ("getppid", "read1")]
                if all(None not in p for p in pc):
                    text += f"; CPU {c}: " + " / ".join(f"{a - b:+.0f}" for a, b in pc)
            rows.append((f"cgroup filter ({flavour}): ≤ 15 ns added per traced call (getppid / read)", text,
                         verdict(all(d <= 15 for d in ds))))
    rows += events_targets(over, ev, evc)
    if scal:
        sc = [median([v[1] for v in scal.get(("TracePlane", picked, c), [])]) for c in probe_counts]
        scf = [median([v[1] for v in scal.get(("floor", picked, c), [])]) for c in probe_counts]
        rows.append((f"collateral flat in the number of probes ({picked}; {', '.join(map(str, probe_counts))} probes)",
                     " → ".join(fmt(x) for x in sc) + " ns (floor " + " → ".join(fmt(x) for x in scf) + ")",
                     verdict(max(sc) - min(sc) <= meta["noise"])))
    if cp:
        cr, sm = cp["creates"], cp["scrape_ms"]
        rows.append(("create → active: median ≤ 20 ms", f"{fmt(median(cr), 1)} ms (p99 {fmt(pct(cr, 99), 1)} ms)", verdict(median(cr) <= 20)))
        capm = median(cp["refresh_report"])
        rows.append(("capability detection ≤ 300 ms", f"{fmt(capm)} ms (CLI: {fmt(median(cp['cli_report']))} ms)", verdict(capm <= 300)))
        rows.append((f"`/metrics` with {args.cp_probes} probes: median ≤ 10 ms", f"{fmt(median(sm), 2)} ms", verdict(median(sm) <= 10)))
        maxrss = max(m[0] for m in cp["with100"])
        rows.append((f"RSS ≤ 40 MB with {args.cp_probes} probes", f"{fmt(maxrss, 1)} MB (largest sample)", verdict(maxrss <= 40)))
    if kcp:
        size = f"{kcp['probes']} probes × {kcp['keys']} keys"
        invalid = "" if kcp["keys_ok"] else f" (**not {kcp['keys']} keys per probe**: see 4b)"
        ksm = median(kcp["scrape_ms"])
        rows.append((f"`/metrics` with {size}: median ≤ 20 ms", f"{fmt(ksm, 2)} ms{invalid}", verdict(ksm <= 20 and kcp["keys_ok"])))
        hist = kcp.get("histograms")
        if hist:
            ratio = median(hist["proto_ms"]) / median(hist["text_ms"])
            rows.append((f"protobuf `/metrics` with {size} (latency histograms): cost ≤ the text scrape's",
                         f"{fmt(median(hist['proto_ms']), 2)} ms vs {fmt(median(hist['text_ms']), 2)} ms ({ratio:.2f}×)",
                         verdict(ratio <= 1)))
            share = hist["proto_bytes"] / hist["text_bytes"]
            rows.append((f"protobuf `/metrics` with {size}: ≤ ¼ of the text's bytes",
                         f"{hist['proto_bytes']} vs {hist['text_bytes']} bytes ({share:.3f}×)", verdict(share <= 0.25)))
        krss = max(kcp[k][0] for k in ("created", "loaded", "scraped"))
        rows.append((f"RSS ≤ 60 MB with {size}", f"{fmt(krss, 1)} MB (largest sample){invalid}", verdict(krss <= 60 and kcp["keys_ok"])))
    if stk:
        rows += stacks_targets(stk)
    w("| target | measured | |")
    w("|---|---|---|")
    for r_ in rows:
        w(f"| {r_[0]} | {r_[1]} | {r_[2]} |")
    w(f"\n\"≤ the floor's\" and \"flat\" allow {meta['noise']:.0f} ns of noise.\n")
    program_ratios = []
    for c in sorted({k[2] for k in by_cpu}, key=int):
        try:
            tpc, btc = results[("TracePlane, default", "getppid", c)], results[("bpftrace", "getppid", c)]
            flc = median([a - b for a, b in zip(by_cpu[(f"floor: empty programs, {picked}", "getppid", c)],
                                                 by_cpu[("no tracing", "getppid", c)])])
        except KeyError:
            continue
        program_ratios.append(f"CPU {c}: {fmt(tpc - flc)} ns vs {fmt(btc - flc)} ns, {(tpc - flc) / (btc - flc):.2f}×; "
                              f"the floor alone is {flc / btc:.2f}× bpftrace's total")
    if program_ratios:
        w("Above the empty-program floor (the programs' own cost), TracePlane vs bpftrace on getppid: "
          + "; ".join(program_ratios) + ".")
    w("")
    if stk:
        write_stacks(w, args, stk)
    if ev or evc or any(k[0] in EVENTS_IDLE for k in samples):
        write_events(w, args, over, ev, evc)
    if meta.get("budget"):
        write_budget(w, args, meta["budget"])
    if args.notes and os.path.exists(args.notes):
        with open(args.notes) as f:
            w(f.read())
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def stacks_rows(stk):
    """Section 6's numbers, computed once for its tables and for the targets."""
    samples = {tuple(k.split("|")): v for k, v in stk["samples"].items()}
    by_cpu = {tuple(k.split("|")): v for k, v in stk["by_cpu"].items()}
    base = samples[("no tracing", "switch")]
    sw = {}
    for (label, m), xs in samples.items():
        if label == "no tracing":
            continue
        d = [a - b for a, b in zip(xs, base)]
        cpu = {}
        for (l2, m2, c), ys in by_cpu.items():
            if l2 == label:
                cpu[c] = median([a - b for a, b in zip(ys, by_cpu[("no tracing", m2, c)])])
        sw[label] = {"median": median(d), "min": min(d), "max": max(d), "cpu": cpu}
    prof = {}
    for label, runs in stk["profile"].items():
        if not runs:
            continue
        window = [(r["process_cpu_s"] * 1000 + r["bpf_ns"] / 1e6) / r["window_s"] for r in runs]
        with_exit = [(r["process_cpu_s"] * 1000 + r["bpf_ns"] / 1e6 + r["exit_cpu_s"] * 1000) / r["window_s"] for r in runs]
        prof[label] = {"window": window, "with_exit": with_exit,
                       "process": [r["process_cpu_s"] * 1000 / r["window_s"] for r in runs],
                       "bpf": [r["bpf_ns"] / 1e6 / r["window_s"] for r in runs],
                       "bpf_per_run": [r["bpf_ns"] / r["bpf_runs"] if r["bpf_runs"] else float("nan") for r in runs],
                       "exit_ms": [r["exit_cpu_s"] * 1000 for r in runs],
                       "startup_ms": [r["startup_cpu_s"] * 1000 for r in runs],
                       "samples": [r["samples"] for r in runs], "stacks": [r["stacks"] for r in runs],
                       "scrape_ms": [s["ms"] for r in runs for s in r["scrapes"]],
                       "scrape_bytes": [s["bytes"] for r in runs for s in r["scrapes"]],
                       "window_s": [r["window_s"] for r in runs]}
    return sw, prof


def spread(xs, digits=0, unit=""):
    return f"{fmt(median(xs), digits)}{unit} [{fmt(min(xs), digits)} … {fmt(max(xs), digits)}]"


def write_stacks(w, args, stk):
    """Section 6: stack keys and profiles (issue #16)."""
    sw, prof = stacks_rows(stk)
    base = stk["samples"]["no tracing|switch"]
    bt = sw.get(STACKS["bpftrace kstack"])
    w("## 6. Stacks: kstack keys, 99 Hz profiles, symbolization\n")
    w(f"**kstack on sched_switch.** `syscall_loop switch`: two threads pinned to one CPU hand one byte back and forth "
      f"over two pipes, {args.switch_iterations} round trips × {args.reps} repetitions per sample (median of the "
      "repetitions); the result is ns per context switch (the wall time over both threads' switches from "
      "`getrusage(RUSAGE_THREAD)`), so every hand-over is one `sched_switch`. Pinned to each CPU in turn, a sample "
      f"is the mean over the CPUs; {args.switch_rounds} interleaved rounds, each sample paired with the round's "
      "no-tracing sample (as in section 1). Neither tracer filters: both run on every context switch of the host, "
      "and the count read back (the sum over the key table, or over bpftrace's printed map) is of the whole host, "
      "so it is at least the loop's switches. *BPF ns per run*: one more sample per tracer with kernel BPF stats on, "
      "run_time_ns / run_cnt of the tracer's programs (from /proc/PID/fdinfo): the program alone, without the "
      "tracepoint's dispatch.\n")
    w(f"Base (no tracing), ns per context switch: {spread(base)}\n")
    cpus = sorted({c for v in sw.values() for c in v["cpu"]}, key=int)
    w("| configuration | hook | added ns per context switch | ÷ bpftrace | " +
      " | ".join(f"CPU {c} | ÷ bpftrace" for c in cpus) + " | BPF ns per run (stats on) | events counted per sample |")
    w("|---|---|---|---|" + "---|---|" * len(cpus) + "---|---|")
    for label, v in sw.items():
        ps = stk["program_stats"].get(label, {})
        per_run = f"{ps['run_time_ns'] / ps['run_cnt']:.0f}" if ps.get("run_cnt") else "n/a"
        cells = [label, stk["mechanisms"].get(label) or "?", f"{fmt(v['median'])} [{fmt(v['min'])} … {fmt(v['max'])}]",
                 f"{v['median'] / bt['median']:.2f}×" if bt and label != STACKS["bpftrace kstack"] else "—"]
        for c in cpus:
            x = v["cpu"].get(c)
            b = bt["cpu"].get(c) if bt else None
            cells += [fmt(x) if x is not None else "—",
                      f"{x / b:.2f}×" if x is not None and b and label != STACKS["bpftrace kstack"] else "—"]
        got = stk["counts"].get(f"{label}|sched_switch", [])
        cells += [per_run, f"{min(got)}–{max(got)}" if got else "—"]
        w("| " + " | ".join(cells) + " |")
    w("")
    if prof:
        w(f"**99 Hz profile, host CPU.** {args.profile_rounds} rounds, the tracers alternating; each sample has its own "
          "fixed load, two `syscall_loop burn` processes (call chains 10 to 40 frames deep, a 64 KiB read of /dev/zero "
          "at every 4th leaf), plus whatever else runs on the host (every CPU's current task is sampled). Measured "
          f"over {args.profile_seconds:.0f} s starting 1 s after the tracer is ready: the tracer process's utime + "
          "stime (/proc/PID/stat) plus its BPF programs' run time (kernel BPF stats on over the window, "
          "/proc/PID/fdinfo). TracePlane: a fresh `serve` with `{\"target\": {\"type\": \"profile\", \"frequency_hz\": "
          f"99}}` (keys comm, ustack, kstack), `GET /v1/probes/NAME/stacks?format=folded` every "
          f"{args.profile_scrape_every:.0f} s inside the window (symbolization counted). bpftrace: "
          "`profile:hz:99 { @[kstack, ustack, comm] = count(); }`, its map printed (and symbolized) at exit: "
          "*exit* is the CPU from SIGINT to its end (rusage at reaping); \"with exit\" spreads it over the window. "
          "Startup (bpftrace's compilation, the agent's start and probe creation) is outside the window.\n")
        w("| tracer | host CPU, ms per s | process | BPF programs | BPF ns per run | exit CPU (ms) | with exit, ms per s "
          "| samples counted | distinct stacks | scrapes: ms, median [min … max] | startup CPU (ms) |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for label, p in prof.items():
            scr = f"{spread(p['scrape_ms'], 1)} ({fmt(median(p['scrape_bytes']))} bytes)" if p["scrape_ms"] else "—"
            w(f"| {label} | {spread(p['window'], 1)} | {spread(p['process'], 1)} | {spread(p['bpf'], 2)} | "
              f"{spread(p['bpf_per_run'])} | {spread(p['exit_ms'])} | {spread(p['with_exit'], 1)} | "
              f"{min(p['samples'])}–{max(p['samples'])} | {min(p['stacks'])}–{max(p['stacks'])} | {scr} | "
              f"{spread(p['startup_ms'])} |")
        a, b = prof.get(STACKS["profile"]), prof.get(STACKS["bpftrace profile"])
        if a and b:
            w(f"\nRatio of medians: {median(a['window']) / median(b['with_exit']):.2f}× bpftrace with its exit, "
              f"{median(a['window']) / median(b['window']):.2f}× without it.")
        w("")
    runs = stk.get("symbolize") or []
    if runs:
        r0 = runs[0]
        w(f"**Symbolizing {r0['stacks']} distinct stacks.** `traceplane bench-symbolize` (release build, "
          f"{len(runs)} runs, each a fresh process): {r0['stacks']} distinct stacks of {r0['kernel_frames']} kernel "
          f"frames (text symbols of /proc/kallsyms, {r0['kernel_text_symbols']} here, plus 0–15 bytes) and "
          f"{r0['user_frames']} user frames (random addresses in its own executable mappings of "
          f"{' and '.join('`' + os.path.basename(m) + '`' for m in r0['user_modules'])}), symbolized by fresh "
          "`KernelSymbolizer` and `UserSymbolizer` (kallsyms read and ELF files parsed inside the time), then folded "
          "as the stacks endpoint does (`FlameGraph.folded`); a second pass times the warm symbolizers. RSS is VmRSS "
          "(/proc/self/status) after the stacks were built, after symbolizing (the frames are held), after folding "
          "(the folded text too), with the agent's allocator settings.\n")
        w("| measurement | median | min | max |")
        w("|---|---|---|---|")

        def row(label, xs, digits):
            w(f"| {label} | {fmt(median(xs), digits)} | {fmt(min(xs), digits)} | {fmt(max(xs), digits)} |")
        row("symbolize, cold (s)", [r["symbolize_s"] for r in runs], 3)
        row("fold into folded text (s)", [r["fold_s"] for r in runs], 3)
        row("symbolize + fold (s)", [r["symbolize_s"] + r["fold_s"] for r in runs], 3)
        row("symbolize again, warm (s)", [r["warm_symbolize_s"] for r in runs], 3)
        row("RSS added by symbolizing (MB)", [r["rss_symbolized_mb"] - r["rss_before_mb"] for r in runs], 1)
        row("RSS added by symbolizing and folding (MB)", [r["rss_after_mb"] - r["rss_before_mb"] for r in runs], 1)
        row("VmHWM added (MB)", [r["hwm_after_mb"] - r["hwm_before_mb"] for r in runs], 1)
        row("frames named (%)", [100 * r["named"] / r["frames"] for r in runs], 1)
        w(f"\nFolded text: {fmt(median([r['folded_bytes'] for r in runs]))} bytes; ELF symbol cache "
          f"{fmt(median([r['elf_cache_bytes'] for r in runs]) / 1024)} KiB.\n")


def stacks_targets(stk):
    """Section 5's rows for section 6."""
    sw, prof = stacks_rows(stk)
    rows = []
    a, b = sw.get(STACKS["kstack"]), sw.get(STACKS["bpftrace kstack"])
    if a and b:
        text = f"{a['median'] / b['median']:.2f}× (CPU mean; {fmt(a['median'])} vs {fmt(b['median'])} ns)"
        for c in sorted(a["cpu"], key=int):
            if c in b["cpu"]:
                text += f"; CPU {c}: {a['cpu'][c] / b['cpu'][c]:.2f}×"
        rows.append(("sched_switch by kstack: ≤ 0.6× bpftrace's `@[kstack] = count()` per event", text,
                     verdict(a["median"] <= 0.6 * b["median"])))
    a, b = prof.get(STACKS["profile"]), prof.get(STACKS["bpftrace profile"])
    if a and b:
        rows.append(("99 Hz profile: host CPU ≤ bpftrace's `@[kstack, ustack, comm] = count()`",
                     f"{fmt(median(a['window']), 1)} vs {fmt(median(b['with_exit']), 1)} CPU-ms/s with bpftrace's exit "
                     f"({median(a['window']) / median(b['with_exit']):.2f}×; without its exit "
                     f"{fmt(median(b['window']), 1)}, {median(a['window']) / median(b['window']):.2f}×)",
                     verdict(median(a["window"]) <= median(b["with_exit"]))))
    runs = stk.get("symbolize") or []
    if runs:
        s = median([r["symbolize_s"] for r in runs])
        sf = median([r["symbolize_s"] + r["fold_s"] for r in runs])
        rows.append((f"symbolizing {runs[0]['stacks']} distinct stacks ≤ 1 s",
                     f"{s:.2f} s (cold); with folding, as a scrape: {sf:.2f} s", verdict(s <= 1)))
        m = median([r["rss_symbolized_mb"] - r["rss_before_mb"] for r in runs])
        mf = median([r["rss_after_mb"] - r["rss_before_mb"] for r in runs])
        rows.append((f"… ≤ 50 MB RSS added", f"+{m:.1f} MB; with the folded text: +{mf:.1f} MB", verdict(m <= 50)))
    return rows


def write_keyed_control(w, kcp):
    """Section 4b: what the keyed /metrics measurement found and cost."""
    w("## 4b. Control plane with keys\n")
    keys, calls, sm = kcp["total_keys"], kcp["calls"], kcp["scrape_ms"]

    def span(xs):
        return str(xs[0]) if min(xs) == max(xs) else f"{min(xs)}–{max(xs)}"
    mechs = ", ".join(f"{n} on {m}" for m, n in sorted(kcp["mechanisms"].items()))
    w(f"A fresh agent (default options); {kcp['probes']} probes `{{\"by\": [\"tid\"], \"value\": \"none\"}}` filtered on "
      f"one `syscall_loop serve`, spread over {len(kcp['getters'])} getter syscalls ({', '.join(kcp['getters'])}; "
      f"{mechs}): one syscall cannot hold {kcp['probes']} probes (the shared hook takes a few per syscall, a tracepoint "
      f"64 programs). The loop then starts {kcp['keys']} threads that each make every getter once: {kcp['keys']} keys "
      "per probe. Each probe's metrics JSON was read before the scrapes: "
      f"`total_keys` {span(keys)} (expected {kcp['keys']}), `calls` {span(calls)}"
      + (" — **keys missing: the scrapes below are not of the intended size**." if not kcp["keys_ok"] else ".") + "\n")
    w("| measurement | median | p99 | min | max | n |")
    w("|---|---|---|---|---|---|")
    w(f"| `GET /metrics` ({kcp['scrape_bytes']} bytes, {kcp['series']} samples of which {kcp['key_series']} "
      f"`traceplane_probe_key_*`) (ms) | {fmt(median(sm), 2)} | {fmt(pct(sm, 99), 2)} | {fmt(min(sm), 2)} | "
      f"{fmt(max(sm), 2)} | {len(sm)} |")
    js = kcp["json_ms"]
    w(f"| `GET /v1/probes/{{name}}/metrics?top={kcp['keys']}`, each probe once (ms) | {fmt(median(js), 2)} | "
      f"{fmt(pct(js, 99), 2)} | {fmt(min(js), 2)} | {fmt(max(js), 2)} | {len(js)} |")
    hist = kcp.get("histograms")
    if hist:
        tm, pm = hist["text_ms"], hist["proto_ms"]
        w(f"| the same probes with a latency histogram per key (`{{\"by\": [\"tid\"]}}`, {span(hist['keys'])} keys each, 50 calls per key): "
          f"text `GET /metrics` ({hist['text_bytes']} bytes, {hist['text_series']} samples) (ms) | {fmt(median(tm), 2)} | "
          f"{fmt(pct(tm, 99), 2)} | {fmt(min(tm), 2)} | {fmt(max(tm), 2)} | {len(tm)} |")
        w(f"| the same, protobuf with native histograms (Prometheus' `Accept`; {hist['proto_bytes']} bytes, "
          f"{hist['proto_bytes'] / hist['text_bytes']:.3f}× the text's) (ms) | {fmt(median(pm), 2)} | {fmt(pct(pm, 99), 2)} | "
          f"{fmt(min(pm), 2)} | {fmt(max(pm), 2)} | {len(pm)} |")
    if not kcp["key_series"]:
        w("\nThis build's `/metrics` renders no `traceplane_probe_key_*` series: the time above is that of a scrape "
          "of the per-probe families while these key tables are in the kernel.")
    w("")
    w("| agent process | VmRSS (MB) | VmHWM (MB) | RssAnon (MB) | RssFile (MB) | open fds | threads |")
    w("|---|---|---|---|---|---|---|")
    for key, when in (("idle", "idle"), ("created", "probes created, no keys yet"),
                      ("loaded", f"{kcp['keys']} keys in each, metrics JSON read"), ("scraped", "after the scrapes"),
                      ("after", "after deleting them all")):
        m = kcp[key]
        w(f"| {when} | " + " | ".join(fmt(v, 1) if i < 4 else str(v) for i, v in enumerate(m)) + " |")
    w("")


# ----------------------------------------------------------------------------- main

FILLERS = ["mknod", "chroot", "sethostname", "setdomainname", "acct", "swapon", "swapoff", "reboot",
           "init_module", "delete_module", "quotactl", "remap_file_pages", "kexec_load", "add_key", "request_key",
           "keyctl", "ioprio_set", "ioprio_get", "inotify_init", "migrate_pages", "mbind", "set_mempolicy",
           "get_mempolicy", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
           "kexec_file_load", "userfaultfd", "membarrier", "mlock2", "copy_file_range", "preadv2",
           "pwritev2", "pkey_mprotect", "pkey_alloc", "pkey_free", "io_pgetevents", "pidfd_send_signal",
           "io_uring_setup", "io_uring_register", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
           "fspick", "pidfd_open", "clone3", "close_range", "openat2", "pidfd_getfd", "faccessat2",
           "process_madvise", "epoll_pwait2", "mount_setattr", "landlock_create_ruleset", "landlock_add_rule",
           "landlock_restrict_self", "memfd_secret", "process_mrelease", "futex_waitv", "set_mempolicy_home_node",
           "cachestat", "fchmodat2", "map_shadow_stack", "futex_wake", "futex_wait", "futex_requeue",
           "statmount", "listmount", "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules", "mseal",
           "setxattrat", "getxattrat", "listxattrat", "removexattrat", "vhangup", "pivot_root", "syslog",
           "setfsuid", "setfsgid", "personality", "ustat", "sysfs", "iopl", "ioperm", "modify_ldt", "getcpu",
           "timer_create", "timer_delete", "timerfd_create", "mlockall", "munlockall", "sched_getattr", "sched_setattr",
           "getrandom", "semget", "semctl", "msgget", "msgctl", "shmget", "shmctl"]


# ----------------------------------------------------------------------------- section 8

BUDGET_COMM = "budget_loop"


def budget_loop(args, seconds, spin):
    """Runs tests/budget/syscall_loop.c for `seconds`; its calls per second."""
    out = subprocess.run([args.budget_loop, "--seconds", str(seconds), "--spin", str(spin)],
                         capture_output=True, text=True, timeout=seconds + 60)
    return json.loads(out.stdout)["calls_per_second"]


def budget_section(args):
    """Section 8: what a budget does for a getppid loop of about 1M calls/s (user work
    between calls, --budget-spin): the loop's own throughput untraced, traced without a
    budget and traced with max_cpu_percent 1 once the budget has acted (5 s), in rounds
    that interleave the three; what the agent says the throttled probe costs; and what the
    BPF stats windows cost: a bare loop (8M calls/s) traced with BPF stats on all the time
    (serve --bpf-stats) against off, scaled by the windows' share of time (100 ms every 5 s)."""
    res = {"untraced": [], "traced": [], "budget": [], "states": [], "throttled": [], "throttled_states": [],
           "bare_off": [], "bare_stats": [], "bare_windows": []}
    spin = args.budget_spin
    target = {"type": "syscall", "name": "getppid"}
    flt = {"comm": BUDGET_COMM}
    agent = Agent(args.traceplane)
    try:
        for r in range(args.budget_rounds):
            res["untraced"].append(budget_loop(args, 3, spin))
            agent.put_spec("b-plain", {"target": target, "filter": flt})
            res["traced"].append(budget_loop(args, 3, spin))
            agent.delete_probe("b-plain")
            agent.put_spec("b-budget", {"target": target, "filter": flt, "budget": {"max_cpu_percent": 1}})
            budget_loop(args, 5, spin)  # the budget acts
            status, body = agent.call("GET", "/v1/probes/b-budget")
            probe = json.loads(body)
            res["budget"].append(budget_loop(args, 3, spin))
            status, body = agent.call("GET", "/v1/probes/b-budget")
            after = json.loads(body)
            res["states"].append({"state": probe.get("state"), "cost": probe.get("cost"), "reason": probe.get("state_reason"),
                                  "state_after": after.get("state"), "cost_after": after.get("cost")})
            agent.delete_probe("b-budget")
            # A budget that sampling alone meets: throttled, not suspended.
            agent.put_spec("b-ten", {"target": target, "filter": flt, "budget": {"max_cpu_percent": 10}})
            budget_loop(args, 5, spin)
            status, body = agent.call("GET", "/v1/probes/b-ten")
            ten = json.loads(body)
            res["throttled"].append(budget_loop(args, 3, spin))
            res["throttled_states"].append({"state": ten.get("state"), "cost": ten.get("cost"), "reason": ten.get("state_reason")})
            agent.delete_probe("b-ten")
            log(f"budget round {r + 1}: untraced {res['untraced'][-1]:.0f}/s, traced {res['traced'][-1]:.0f}/s, "
                f"budget 1 % {res['budget'][-1]:.0f}/s ({probe.get('state')}), 10 % {res['throttled'][-1]:.0f}/s ({ten.get('state')})")
        # The stats windows' cost: a bare loop traced by a budgeted probe that never acts.
        for r in range(args.budget_rounds):
            agent.put_spec("b-never", {"target": target, "filter": flt, "budget": {"max_cpu_percent": 100}})
            res["bare_windows"].append(budget_loop(args, 10, 0))
            agent.delete_probe("b-never")
            agent.put_spec("b-bare", {"target": target, "filter": flt})
            res["bare_off"].append(budget_loop(args, 3, 0))
            agent.delete_probe("b-bare")
    finally:
        agent.stop()
    stats_agent = Agent(args.traceplane, ["--bpf-stats"])
    try:
        for r in range(args.budget_rounds):
            stats_agent.put_spec("b-bare", {"target": target, "filter": flt})
            res["bare_stats"].append(budget_loop(args, 3, 0))
            stats_agent.delete_probe("b-bare")
    finally:
        stats_agent.stop()
    return res


def write_budget(w, args, b):
    med = lambda xs: median(xs) if xs else float("nan")  # noqa: E731
    un, tr, bu = med(b["untraced"]), med(b["traced"]), med(b["budget"])
    w("## 8. Budgets: a hot probe held to 1 % of a CPU\n")
    w(f"A getppid loop with user work between calls (`tests/budget/syscall_loop.c --spin {args.budget_spin}`, "
      f"{un / 1e6:.2f}M calls/s untraced) probed on getppid (comm filter, the default mechanism), in "
      f"{len(b['untraced'])} interleaved rounds of 3 s; the budgeted probe is measured after the budget "
      "had 5 s to act. Medians.\n")
    w("| configuration | loop calls/s | vs untraced |")
    w("|---|---:|---:|")
    w(f"| untraced | {un:,.0f} | 1.00 |")
    w(f"| probe, no budget | {tr:,.0f} | {tr / un:.2f} |")
    w(f"| probe, `budget.max_cpu_percent: 1` | {bu:,.0f} | {bu / un:.2f} |")
    if b.get("throttled"):
        th = med(b["throttled"])
        w(f"| probe, `budget.max_cpu_percent: 10` | {th:,.0f} | {th / un:.2f} |")
    w("")

    def state_text(s):
        cost = s.get("cost") or {}
        if cost.get("parked"):
            return f"`{s.get('state')}`, programs detached (0 % of a CPU)"
        return (f"`{s.get('state')}` at 1-in-{cost.get('sample_every')} ({cost.get('events_per_second')} calls/s × "
                f"{cost.get('ns_per_call')} ns = {cost.get('cpu_percent')} % of a CPU, BPF stats)")
    for i, s in enumerate(b["states"]):
        w(f"- 1 %, round {i + 1}: after 5 s {state_text(s)}; reason: {s.get('reason')}; after the measured 3 s: `{s.get('state_after')}`")
    for i, s in enumerate(b.get("throttled_states", [])):
        w(f"- 10 %, round {i + 1}: after 5 s {state_text(s)}; reason: {s.get('reason')}")
    w("")
    w("The measured cost is the BPF programs' run time. What it leaves out is the kernel's dispatch of the hook (the raw_syscalls "
      "tracepoints put every syscall of the host on the slow path, about 130 ns here: section 1's floor rows), which sampling "
      "does not lower; suspension does, by detaching the programs.")
    off, stats, windows = med(b["bare_off"]), med(b["bare_stats"]), med(b["bare_windows"])
    per_call_stats = 1e9 / stats - 1e9 / off
    w("")
    w(f"BPF stats windows: a bare getppid loop traced without a budget runs at {1e9 / off:.1f} ns per call; with BPF stats on all "
      f"the time (serve --bpf-stats) at {1e9 / stats:.1f} ns (+{per_call_stats:.1f} ns per call, two program runs). The budget's "
      f"windows keep them on 100 ms in every 5 s: {per_call_stats * 0.02:.2f} ns per call on average. Measured with a budget that "
      f"never acts (10 s loops, so each holds two windows): {1e9 / windows:.1f} ns per call "
      f"({1e9 / windows - 1e9 / off:+.1f} ns against no budget; the budget's own path, `seen` and the sampling tick, included).")
    w("")


# Every part --skip and --sections name.
PARTS = {"overhead", "keys", "cgroup", "scaling", "control", "keyed-control", "stacks", "events", "events-stream", "budget"}


def usable_fillers():
    """Filler syscalls this kernel has tracepoints for and the agent knows by name."""
    return usable_syscalls(FILLERS)


def usable_syscalls(names):
    """Those of `names` this kernel has tracepoints for and the agent knows by name (its
    table comes from the build machine's uapi headers, which may be older than the kernel)."""
    known = set()
    for header in ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm-generic/unistd.h",
                   "/usr/include/aarch64-linux-gnu/asm/unistd.h"):
        if os.path.exists(header):
            with open(header) as f:
                known |= set(re.findall(r"#define __NR3?2?_?(\w+)\s", f.read()))
    return [f for f in names if os.path.exists(f"/sys/kernel/tracing/events/syscalls/sys_enter_{f}")
            and (not known or f in known)]


def save_raw(args, meta, over, scal, cp, kcp, tools, stk, ev, evc):
    os.makedirs(os.path.dirname(os.path.abspath(args.raw)), exist_ok=True)
    with open(args.raw, "w") as f:
        json.dump({"args": vars(args), "meta": meta, "tools": tools, "control": cp, "keyed_control": kcp, "stacks": stk,
                   "events_stream": ev, "events_program_cost": evc,
                   "samples": {"|".join(k): v for k, v in over[0].items()},
                   "counts": {"|".join(k): v for k, v in over[1].items()},
                   "by_cpu": {"|".join(k): v for k, v in over[2].items()},
                   "scaling": {"|".join(map(str, k)): v for k, v in scal.items()}}, f, indent=1)


def tool_version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traceplane", default=".build/release/traceplane")
    ap.add_argument("--baseline", default=None,
                    help="another traceplane binary (e.g. the previous commit's release build) measured as one more row")
    ap.add_argument("--loop", default=".build/bench/syscall_loop")
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--notes", default="bench/NOTES.md", help="appended to the report (analysis, code changes)")
    ap.add_argument("--iterations", type=int, default=150000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="pin the loop to each of the first N CPUs in turn")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--scaling-rounds", type=int, default=3)
    ap.add_argument("--scaling-iterations", type=int, default=50000,
                    help="fewer: 64 raw_syscalls probes slow every syscall on the host by microseconds")
    ap.add_argument("--probes", default="1,16,64")
    ap.add_argument("--cp-probes", type=int, default=100)
    ap.add_argument("--cp-cycles", type=int, default=2)
    ap.add_argument("--scrapes", type=int, default=100)
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--cap-runs", type=int, default=5)
    ap.add_argument("--noise", type=float, default=15, help="ns tolerated by the ≤-floor and flatness checks")
    ap.add_argument("--key-probes", type=int, default=100, help="probes of the keyed /metrics measurement")
    ap.add_argument("--keys", type=int, default=100, help="keys in each of those probes (threads of the workload)")
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to skip: overhead, scaling, control, stacks (sections); keys (the "
                         "keyed rows of section 1), cgroup (its cgroup-keyed and cgroup-filter rows), keyed-control "
                         "(/metrics with keys)")
    ap.add_argument("--sections", default="",
                    help="comma-separated parts to run, all others skipped (the names of --skip; e.g. `stacks` for "
                         "section 6 alone, about 5 minutes)")
    ap.add_argument("--only", default="", help="regex: measure only the overhead configurations it matches")
    ap.add_argument("--switch-iterations", type=int, default=20000, help="ping-pong round trips per stacks sample")
    ap.add_argument("--switch-rounds", type=int, default=7, help="rounds of the sched_switch kstack rows")
    ap.add_argument("--profile-seconds", type=float, default=20, help="window of each 99 Hz profile sample")
    ap.add_argument("--profile-scrape-every", type=float, default=5, help="s between the agent's stacks scrapes")
    ap.add_argument("--profile-exit-timeout", type=float, default=600, help="s bpftrace may take to print its map")
    ap.add_argument("--profile-rounds", type=int, default=3, help="rounds of the 99 Hz profile rows (each tracer once)")
    ap.add_argument("--symbolize-rounds", type=int, default=5, help="runs of `traceplane bench-symbolize`")
    ap.add_argument("--symbolize-stacks", type=int, default=10000, help="distinct stacks per bench-symbolize run")
    ap.add_argument("--sleeper", default=".build/bench/sleeper", help="tests/events/sleeper.c, built (section 7)")
    ap.add_argument("--events-rate", type=int, default=50000, help="events per second of the streaming rows")
    ap.add_argument("--events-seconds", type=int, default=5, help="seconds of each streaming round")
    ap.add_argument("--events-rounds", type=int, default=3, help="rounds of the streaming rows")
    ap.add_argument("--budget-loop", default=".build/bench/budget_loop", help="tests/budget/syscall_loop.c, built (section 8)")
    ap.add_argument("--budget-spin", type=int, default=500, help="user work per call of the section 8 loop (about 1M calls/s)")
    ap.add_argument("--budget-rounds", type=int, default=3, help="rounds of the section 8 rows")
    ap.add_argument("--raw", default=".build/bench/results.json", help="where the raw samples are saved")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from --raw without measuring")
    args = ap.parse_args()
    if args.report_only:
        with open(args.raw) as f:
            raw = json.load(f)
        for k, v in raw["args"].items():
            if k not in ("out", "notes", "raw", "report_only"):
                setattr(args, k, v)
        over = ({tuple(k.split("|")): v for k, v in raw["samples"].items()},
                {tuple(k.split("|")): v for k, v in raw["counts"].items()},
                {tuple(k.split("|")): v for k, v in raw.get("by_cpu", {}).items()})
        scal = {(k.split("|")[0], k.split("|")[1], int(k.split("|")[2])): v for k, v in raw["scaling"].items()}
        write_report(args.out, args, raw["meta"], over, scal, raw["control"], raw.get("keyed_control", {}), raw["tools"],
                     raw.get("stacks") or None, raw.get("events_stream") or None, raw.get("events_program_cost") or None)
        return
    if os.geteuid() != 0:
        raise SystemExit("bench.py needs root (it loads BPF programs)")
    skip = set(filter(None, args.skip.split(",")))
    if args.sections:
        wanted = set(filter(None, args.sections.split(",")))
        if wanted - PARTS:
            raise SystemExit(f"--sections: unknown {', '.join(sorted(wanted - PARTS))}; known: {', '.join(sorted(PARTS))}")
        skip |= PARTS - wanted
    started = time.time()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "load_start": loadavg(), "links_start": foreign_bpf_links(),
            "noise": args.noise, "mechanisms": {}}
    tools = {"bpftrace": tool_version(["bpftrace", "--version"]),
             "libbpf-tools": tool_version(["dpkg-query", "-W", "-f", "${Version}", "libbpf-tools"]),
             "wrk": tool_version(["sh", "-c", "wrk --version 2>&1 | head -1"])}
    fillers = usable_fillers()
    need = max(int(c) for c in args.probes.split(",")) - 1
    if len(fillers) < need:
        raise SystemExit(f"only {len(fillers)} filler syscalls have tracepoints here; need {need}")
    log(f"start: load {meta['load_start']}, {meta['links_start']} BPF links already on the kernel")

    cp, kcp = {}, {}
    if "control" not in skip:
        cp = control_plane(args, args.traceplane, fillers)
    if "keyed-control" not in skip:
        kcp = keyed_control_plane(args, args.traceplane, args.loop)
    pool = AgentPool(args.traceplane)
    loop = Loop(args.loop)
    cgroup = None
    if "cgroup" not in skip:
        # Before the loop's first measurement: it waits on stdin until then.
        cgroup = BenchCgroup()
        cgroup.add(loop.pid)
        meta["cgroup"] = {"mount": cgroup.mount, "path": "/" + BenchCgroup.NAME}
        try:
            res = subprocess.run([args.traceplane, "capabilities", "--json"], capture_output=True, text=True, timeout=60)
            # The filter's kernel check: one ancestor-id compare where this helper is
            # there (and the mount shows the root), else a cgroup-array membership test.
            features = json.loads(res.stdout).get("features", [])
            meta["cgroup"]["ancestor_helper"] = any(f.get("name") == "cgroup_ancestor" and f.get("status") == "supported"
                                                    for f in features)
        except Exception as e:  # noqa: BLE001
            log(f"capabilities: {e}")
    try:
        # libbpf-tools: funclatency needs fentry or kprobes; syscount uses raw_syscalls tracepoints.
        meta["libbpf_tools"] = {} if "overhead" in skip else {
            f"funclatency -p {loop.pid} __x64_sys_getppid": try_libbpf_tool(["funclatency", "-p", str(loop.pid), "__x64_sys_getppid"]),
            f"syscount -L -p {loop.pid}": try_libbpf_tool(["syscount", "-L", "-p", str(loop.pid)]),
        }
        configs = [NoTracing(pool)]
        configs += [Floor(args.traceplane, h, pool) for h in ("tracepoint", "tp_btf", "raw_tracepoint")]
        configs.append(Floor(args.traceplane, "tracepoint", pool, stats=True))
        tps = [TracePlaneProbe(pool, m, loop.pid) for m in (None, "tracepoint", "tp_btf", "raw_tracepoint")]
        tps.append(TracePlaneProbe(pool, None, loop.pid, agent_args=["--bpf-stats"]))
        if args.baseline:
            # Another build of the agent (e.g. the previous commit, built in a worktree), measured
            # in the same rounds: a change's effect on the default probe, side by side.
            tps.append(TracePlaneProbe(pool, None, loop.pid, binary=args.baseline))
        configs += tps
        configs.append(Bpftrace(loop.pid, pool))
        if meta["libbpf_tools"].get(f"syscount -L -p {loop.pid}", (False,))[0]:
            configs.append(Syscount(loop.pid, pool))
        if "keys" not in skip:
            keyed = keyed_configs(pool, loop.pid)
            tps += [c for c in keyed if isinstance(c, TracePlaneProbe)]
            configs += keyed
        if "events" not in skip:
            event_cfgs = events_configs(pool, loop.pid)
            tps += event_cfgs
            configs += event_cfgs
        if cgroup:
            cg = cgroup_configs(pool, loop.pid, "/" + BenchCgroup.NAME)
            tps += [c for c in cg if isinstance(c, TracePlaneProbe)]
            configs += cg
        if args.only:
            configs = [c for c in configs if c.label == "no tracing" or re.search(args.only, c.label)]
        over = ({}, {}, {})
        if "overhead" not in skip:
            over = overhead(args, loop, configs)
        for cfg in tps:
            meta["mechanisms"][cfg.label] = cfg.picked or cfg.mechanism
        for h in ("tracepoint", "tp_btf", "raw_tracepoint"):
            meta["mechanisms"][f"floor: empty programs, {h}"] = h
            meta["mechanisms"][f"floor: empty programs, {h} + BPF stats"] = h
        for label in ("bpftrace", BpftraceByComm.label, BpftraceReadByCount.label, BpftraceByCgroup.label):
            meta["mechanisms"][label] = "tracepoint"
        meta["mechanisms"]["libbpf-tools syscount -L -p"] = "tracepoint (raw_syscalls)"
        scal = {}
        if "scaling" not in skip:
            scal = scaling(args, loop, pool, args.traceplane, fillers)
        stk = {}
        if "stacks" not in skip:
            stk = stacks_section(args, loop, pool, args.traceplane, args.loop)
        evc = {}
        if "events" not in skip:
            pool.stop()
            evc = events_program_cost(args, loop, pool)
        ev = []
        if "events-stream" not in skip:
            pool.stop()
            ev = events_stream(args, args.traceplane, args.sleeper)
        if "budget" not in skip:
            pool.stop()
            meta["budget"] = budget_section(args)
    finally:
        loop.close()
        pool.stop()
        if cgroup:
            cgroup.remove()
    meta["load_end"] = loadavg()
    meta["links_end"] = foreign_bpf_links()
    meta["elapsed"] = time.time() - started
    save_raw(args, meta, over, scal, cp, kcp, tools, stk, ev, evc)
    write_report(args.out, args, meta, over, scal, cp, kcp, tools, stk, ev, evc)
    log(f"wrote {args.out} in {meta['elapsed']:.0f} s (load at end {meta['load_end']})")


if __name__ == "__main__":
    main()
