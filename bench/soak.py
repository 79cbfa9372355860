#!/usr/bin/env python3
"""TracePlane soak: one agent driven for M minutes, then a verdict (bench/soak.sh runs it).

What runs at once, all against one `traceplane serve --listen 127.0.0.1:0` on loopback:

- 8 churn clients: POST / PUT (create, replace with a changed spec, renew the same spec) /
  DELETE / GET on probe names, every answer's status recorded. Names are partitioned: each
  client owns 4 names (no one else touches them), and 4 names are shared by all clients,
  so concurrent operations on one name happen.
- 5 long-lived probes: two with events, each followed by an SSE subscriber (replaced every
  ~20 s by a replacer, the subscriber resuming with Last-Event-ID), a kernel-stack probe, a
  49 Hz profile and a cgroup-keyed probe.
- a scraper: /metrics every second (text and protobuf in turn), a probe's metrics and a
  stack probe's folded stacks now and then.
- a workload: bench/soak_load (a bounded syscall loop) in each of 3 cgroups made under the
  cgroup2 mount.
- a sampler: every 10 s the agent's RSS, fds, BPF programs/maps/links it holds (fdinfo),
  the memlock of its maps, and the host's BPF objects (bpftool).

How the final state is checked (the model). The agent applies the operations on one name
one at a time in arrival order. The driver cannot see arrival order for concurrent
requests, only each request's interval [sent, answered] on one monotonic clock. Every PUT
and POST carries a label `soak_op` unique to the operation, so the final probe names the
operation that set it. An operation *sets* the state when it is acknowledged: PUT 2xx and
POST 201 (present, with its label), POST 200 (present, with the label in the answer),
DELETE 204 or 404 (absent). Anything else (409, 422, 429, 503, ...) changes nothing. In
any serialization that respects real time, the last setter S is one that no other setter
follows entirely (no setter P sent after S was answered): if P started after S ended, P
comes after S. So the final state must be the result of one such "maximal" setter (absent
if there was none). Operations whose answer was lost (timeout, reset) may or may not have
happened: their possible results are accepted too, and they are counted. For an owned name
the operations are sequential, the maximal setter is the last acknowledged one, and the
check is exact; in addition each answer there must agree with the model (a POST on an
absent name is 201, a DELETE on a present one 204, ...): a disagreement is a violation.
"""

import argparse
import collections
import csv
import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

CGROUP_ROOT = "/sys/fs/cgroup/unified"
PROTO_ACCEPT = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
CLIENTS = 8
OWNED_PER_CLIENT = 4
SHARED = 4


def log(*parts):
    print(time.strftime("%H:%M:%S"), "soak:", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- HTTP

def sigterm_with_parent():
    """In the child before exec: SIGTERM when the driver dies (PR_SET_PDEATHSIG), so a killed
    driver leaves no agent behind (SIGTERM detaches every probe)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class Agent:
    def __init__(self, binary, state_dir, log_path):
        self.log_path = log_path
        self.logf = open(log_path, "wb")
        self.proc = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--state-dir", state_dir],
                                     stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=sigterm_with_parent)
        self.pid = self.proc.pid
        self.port = None
        deadline = time.time() + 60
        while time.time() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise SystemExit(f"the agent exited at start-up with {self.proc.returncode}; see {log_path}")
            with open(log_path, "rb") as f:
                for line in f.read().decode(errors="replace").splitlines():
                    if "listening on 127.0.0.1:" in line:
                        self.port = int(line.rsplit(":", 1)[1].split()[0])
            time.sleep(0.05)
        if self.port is None:
            raise SystemExit(f"the agent did not say where it listens in 60 s; see {log_path}")
        while time.time() < deadline:
            try:
                if self.request("GET", "/readyz", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("the agent did not become ready in 60 s")

    def request(self, method, path, body=None, headers=None, timeout=60):
        """One request on a fresh connection: (status, headers dict lower-cased, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            sent = ({"Content-Type": "application/json"} if data is not None else {}) | dict(headers or {})
            conn.request(method, path, body=data, headers=sent)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def alive(self):
        return self.proc.poll() is None


class Record:
    """Every HTTP answer of the run: counts by kind and status, 5xx, latencies."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()       # (kind, status or error) -> n
        self.outcomes = collections.Counter()     # (kind, Probe-Outcome) -> n
        self.latency = collections.defaultdict(list)
        self.server_errors = []                   # (kind, path, status, retry-after, excerpt)
        self.retry_503 = 0
        self.retry_examples = []
        self.transport_errors = collections.Counter()

    def add(self, kind, path, status, headers, body, seconds):
        with self.lock:
            self.counts[(kind, status)] += 1
            self.latency[kind].append(seconds)
            if headers and "probe-outcome" in headers:
                self.outcomes[(kind, headers["probe-outcome"])] += 1
            if status >= 500:
                if status == 503 and headers.get("retry-after"):
                    self.retry_503 += 1
                    if len(self.retry_examples) < 5:
                        self.retry_examples.append((kind, path, body[:300].decode(errors="replace")))
                else:
                    self.server_errors.append((kind, path, status, headers.get("retry-after"), body[:300].decode(errors="replace")))

    def error(self, kind, path, exc):
        with self.lock:
            self.counts[(kind, type(exc).__name__)] += 1
            self.transport_errors[f"{kind} `{path.split('?')[0]}`: {type(exc).__name__}: {str(exc)[:120]}"] += 1


def timed(agent, rec, kind, method, path, body=None, headers=None, timeout=60):
    """A request, recorded; returns (status, headers, body, t0, t1) or (None, ..., t0, t1) on a transport error."""
    t0 = time.monotonic()
    try:
        status, hdrs, data = agent.request(method, path, body, headers, timeout)
    except (OSError, http.client.HTTPException) as exc:
        t1 = time.monotonic()
        rec.error(kind, path, exc)
        return None, {}, b"", t0, t1
    t1 = time.monotonic()
    rec.add(kind, path, status, hdrs, data, t1 - t0)
    return status, hdrs, data, t0, t1


# ---------------------------------------------------------------------------- specs

def spec_templates(cgroups):
    """Spec makers for churned names, each `f(variant) -> spec`: the variant changes
    something that attaches anew (a filter, a key table's size), so a PUT with another
    variant is a real replace."""
    cg = "/" + os.path.basename(cgroups[0])
    return [
        ("read-by-comm", lambda v: {"target": {"type": "syscall", "name": "read"},
                                    "filter": {"min_latency_ns": v * 100},
                                    "aggregate": {"by": ["comm"], "max_keys": 256}}),
        ("read-by-fd", lambda v: {"target": {"type": "syscall", "name": "read"},
                                  "aggregate": {"by": ["arg:fd"], "value": "arg:count", "max_keys": 128 + 64 * v}}),
        ("write-events", lambda v: {"target": {"type": "syscall", "name": "write"},
                                    "filter": {"min_latency_ns": v * 100},
                                    "events": {"min_latency_ns": 0, "max_per_second": 200}}),
        ("read-by-cgroup", lambda v: {"target": {"type": "syscall", "name": "read"},
                                      "aggregate": {"by": ["cgroup"], "max_keys": 64 + 64 * v}}),
        ("openat-in-cgroup", lambda v: {"target": {"type": "syscall", "name": "openat"},
                                        "filter": {"cgroup": cg, "min_latency_ns": v * 100},
                                        "aggregate": {"by": ["arg:filename"], "value": "none", "max_keys": 64}}),
        ("switch-kstack", lambda v: {"target": {"type": "tracepoint", "name": "sched:sched_switch"},
                                     "aggregate": {"by": ["kstack"], "max_keys": 128 + 64 * v}}),
        ("nanosleep-ustack", lambda v: {"target": {"type": "syscall", "name": "nanosleep"},
                                        "filter": {"comm": "soak_load"},
                                        "aggregate": {"by": ["ustack"], "max_keys": 64 + 64 * v}}),
        ("profile", lambda v: {"target": {"type": "profile", "frequency_hz": 49},
                               "aggregate": {"by": ["comm", "kstack"], "max_keys": 128 + 64 * v}}),
        ("getpid-plain", lambda v: {"target": {"type": "syscall", "name": "getpid"},
                                    "filter": {"min_latency_ns": v * 100}}),
    ]


def long_lived_specs(cgroups):
    """The long-lived probes' syscalls (close, getppid, nanosleep) are none that a churned
    probe joins the shared hook for (read, write, openat, getpid; nanosleep only by ustack,
    which the hook cannot key): at most six probes share a syscall on the hook, and a
    replacement attaches before the old one goes, so a long-lived probe replaced while the
    churn holds six would land on the next mechanism (the raw_tracepoint hook) and the
    checkpoints would not be equivalent states."""
    return {
        "ll-sse-close": lambda v: {"target": {"type": "syscall", "name": "close"},
                                  "filter": {"comm": "soak_load", "min_latency_ns": v},
                                  "aggregate": {"by": ["comm", "arg:fd"]},
                                  "events": {"min_latency_ns": 0, "max_per_second": 1000}},
        "ll-sse-getppid": lambda v: {"target": {"type": "syscall", "name": "getppid"},
                                     "filter": {"min_latency_ns": v},
                                     "aggregate": {"by": ["cgroup"]},
                                     "events": {"min_latency_ns": 0, "max_per_second": 1000}},
        "ll-kstack": lambda v: {"target": {"type": "tracepoint", "name": "sched:sched_switch"},
                                "aggregate": {"by": ["comm", "kstack"], "max_keys": 512}},
        "ll-profile": lambda v: {"target": {"type": "profile", "frequency_hz": 49}},
        "ll-cgroup": lambda v: {"target": {"type": "syscall", "name": "nanosleep"},
                                "aggregate": {"by": ["cgroup", "comm"], "max_keys": 256}},
    }


# ---------------------------------------------------------------------------- the model

class Model:
    """Every operation on every name, with its interval; the final check (see the module doc)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ops = collections.defaultdict(list)  # name -> [op dict]
        self.violations = []
        self.unknown = 0

    def add(self, name, op):
        with self.lock:
            self.ops[name].append(op)
            if op["effect"] == "unknown":
                self.unknown += 1

    def violation(self, text):
        with self.lock:
            self.violations.append(text)

    @staticmethod
    def effect(method, status, label_in_answer):
        """What an answer says about the state after the operation: ('present', label),
        ('absent', None), None (no change) or 'unknown'."""
        if status is None:
            return "unknown"
        if method == "PUT" and status in (200, 201):
            return ("present", label_in_answer)
        if method == "POST" and status in (200, 201):
            return ("present", label_in_answer)
        if method == "DELETE" and status in (204, 404):
            return ("absent", None)
        return None

    def check(self, final):
        """`final`: name -> label of the probe (None when the probe has no soak_op label) for
        every probe GET /v1/probes lists. Returns a list of mismatches."""
        mismatches = []
        with self.lock:
            names = set(self.ops) | set(final)
            for name in sorted(names):
                ops = self.ops.get(name, [])
                setters = [o for o in ops if isinstance(o["effect"], tuple)]
                unknown = [o for o in ops if o["effect"] == "unknown"]
                maximal = [s for s in setters if not any(p["t0"] > s["t1"] for p in setters)]
                allowed = {s["effect"] for s in maximal}
                if not setters:
                    allowed.add(("absent", None))
                for u in unknown:   # a lost answer may or may not have happened
                    allowed.add(("absent", None) if u["method"] == "DELETE" else ("present", u["label"]))
                    allowed |= {s["effect"] for s in setters}
                    allowed.add(("absent", None))
                actual = ("present", final[name]) if name in final else ("absent", None)
                if actual not in allowed:
                    last = sorted(ops, key=lambda o: o["t0"])[-3:]
                    mismatches.append(f"{name}: final state {actual}, allowed {sorted(allowed, key=str)}; "
                                      f"last operations {[(o['method'], o['status'], o['label'], round(o['t0'], 3), round(o['t1'], 3)) for o in last]}")
        return mismatches


def label_of(body):
    try:
        return (json.loads(body).get("spec", {}).get("labels") or {}).get("soak_op")
    except (ValueError, AttributeError):
        return None


class Pause:
    """Checkpoints: the coordinator asks every churn thread to park; each deletes what it
    owns, parks, and waits until released."""

    def __init__(self):
        self.cond = threading.Condition()
        self.requested = False
        self.parked = 0
        self.epoch = 0

    def request(self):
        with self.cond:
            self.requested = True

    def wait_parked(self, n, timeout):
        with self.cond:
            return self.cond.wait_for(lambda: self.parked >= n, timeout)

    def release(self):
        with self.cond:
            self.requested = False
            self.parked = 0
            self.epoch += 1
            self.cond.notify_all()

    def park(self, stop):
        with self.cond:
            self.parked += 1
            self.cond.notify_all()
            epoch = self.epoch
            while self.epoch == epoch and not stop.is_set():
                self.cond.wait(1)


def recorded_delete(agent, rec, model, name, kind, client):
    status, _, _, t0, t1 = timed(agent, rec, kind, "DELETE", f"/v1/probes/{name}", timeout=120)
    model.add(name, {"method": "DELETE", "status": status, "label": None,
                     "effect": Model.effect("DELETE", status, None), "t0": t0, "t1": t1, "client": client})
    return status


class ChurnClient(threading.Thread):
    def __init__(self, index, agent, rec, model, templates, shared, stop, interval, seed, pause):
        super().__init__(name=f"churn-{index}", daemon=True)
        self.pause = pause
        self.index, self.agent, self.rec, self.model = index, agent, rec, model
        self.templates, self.shared, self.stop, self.interval = templates, shared, stop, interval
        self.rng = random.Random(seed)
        self.owned = [f"c{index}-{k}" for k in range(OWNED_PER_CLIENT)]
        # Owned names only: what this client knows the state is (None: absent), or
        # "unknown" after a lost answer, until an acknowledged setter tells again.
        self.state = {n: None for n in self.owned}
        self.template_of = {}   # name -> template index (a name keeps one target kind for a while)
        self.last_spec = {}     # name -> the last spec this client sent (for a same-spec renew)
        self.seq = 0
        self.ops = 0

    def spec_for(self, name, renew=False):
        if renew and name in self.last_spec:
            return self.last_spec[name]
        if name not in self.template_of or self.rng.random() < 0.2:
            self.template_of[name] = self.rng.randrange(len(self.templates))
        _, make = self.templates[self.template_of[name]]
        self.seq += 1
        spec = make(self.rng.randrange(3))
        spec["labels"] = {"soak_op": f"c{self.index}-{self.seq}", "soak_client": str(self.index)}
        self.last_spec[name] = spec
        return spec

    def run(self):
        while not self.stop.is_set():
            if self.pause.requested:
                for name in self.owned:   # a checkpoint: back to no churned probe at all
                    self.do(name, "DELETE", "delete (checkpoint)", False)
                self.pause.park(self.stop)
                continue
            self.one()
            self.ops += 1
            self.stop.wait(self.rng.uniform(0.5, 1.5) * self.interval)

    def one(self):
        shared = self.rng.random() < 0.3
        name = self.rng.choice(self.shared if shared else self.owned)
        r = self.rng.random()
        if r < 0.15:
            method, kind = "POST", "create (POST)"
        elif r < 0.55:
            method, kind = "PUT", "put (create/replace)"
        elif r < 0.65:
            method, kind = "PUT", "put (same spec)"
        elif r < 0.9:
            method, kind = "DELETE", "delete"
        else:
            method, kind = "GET", "get probe"
        self.do(name, method, kind, shared)

    def do(self, name, method, kind, shared):
        spec = None
        if method == "POST":
            spec = dict(self.spec_for(name), name=name)
            path = "/v1/probes"
        else:
            path = f"/v1/probes/{name}"
            if method == "PUT":
                spec = self.spec_for(name, renew=kind == "put (same spec)")
        status, hdrs, body, t0, t1 = timed(self.agent, self.rec, kind, method, path, spec, timeout=120)
        if method == "GET":
            if not shared and status is not None:
                self.check_get(name, status, body)
            return
        sent_label = spec["labels"]["soak_op"] if spec else None
        answer_label = label_of(body) if status in (200, 201) and method != "DELETE" else None
        effect = Model.effect(method, status, answer_label)
        if isinstance(effect, tuple) and effect[0] == "present" and method == "PUT" and answer_label != sent_label:
            self.model.violation(f"{name}: PUT {status} answered label {answer_label}, sent {sent_label}")
        self.model.add(name, {"method": method, "status": status, "label": sent_label, "effect": effect,
                              "t0": t0, "t1": t1, "client": self.index})
        if not shared:
            self.check_owned(name, method, kind, status, hdrs, answer_label, sent_label, effect)

    def check_owned(self, name, method, kind, status, hdrs, answer_label, sent_label, effect):
        before = self.state[name]
        if before != "unknown" and status is not None:
            expected = None
            if method == "DELETE":
                expected = {204} if before is not None else {404}
            elif method == "PUT":
                expected = {201} if before is None else {200}
            elif method == "POST":
                expected = {201} if before is None else ({200} if before == sent_label else {409})
            transient = status in (429, 503, 507) or status == 422
            if expected and status not in expected and not transient:
                self.model.violation(f"{name}: {method} answered {status} with the name {'absent' if before is None else 'present as ' + str(before)}, expected {sorted(expected)}")
            outcome = hdrs.get("probe-outcome")
            if method == "PUT" and status in (200, 201):
                want = "created" if before is None else ("unchanged" if kind == "put (same spec)" and before == sent_label else "replaced")
                if outcome != want:
                    self.model.violation(f"{name}: PUT Probe-Outcome {outcome}, expected {want} (before: {before})")
        if effect == "unknown":
            self.state[name] = "unknown"
        elif isinstance(effect, tuple):
            self.state[name] = effect[1] if effect[0] == "present" else None

    def check_get(self, name, status, body):
        known = self.state[name]
        if known == "unknown" or status >= 500:
            return
        if known is None and status != 404:
            self.model.violation(f"{name}: GET {status} while the name should be absent")
        elif known is not None and (status != 200 or label_of(body) != known):
            self.model.violation(f"{name}: GET {status} label {label_of(body) if status == 200 else None}, expected {known}")


# ---------------------------------------------------------------------------- SSE

class Subscriber(threading.Thread):
    """Follows one probe's events; on `end: replaced` (or a dropped connection) reconnects
    with Last-Event-ID; stops on `end: deleted`/`shutdown` or when told to."""

    def __init__(self, agent, name, stop):
        super().__init__(name=f"sse-{name}", daemon=True)
        self.agent, self.probe, self.stop = agent, name, stop
        self.events = 0
        self.connects = 0
        self.ends = collections.Counter()
        self.gaps = 0
        self.missed = 0
        self.order_errors = 0
        self.resumes = collections.Counter()  # how a resumed stream's first id relates to the Last-Event-ID
        self.errors = collections.Counter()
        self.last_id = None
        self.statuses = collections.Counter()
        self.after_replace = False
        self.skipped_after_replace = 0  # events of a replacement's feed never delivered (ids before the first one seen)

    def run(self):
        while not self.stop.is_set():
            reason = self.stream()
            if reason in ("deleted", "shutdown"):
                return
            self.stop.wait(0.2 if reason == "replaced" else 1.0)

    def stream(self):
        headers = {"Accept": "text/event-stream"}
        resume_from = self.last_id
        if resume_from is not None:
            headers["Last-Event-ID"] = str(resume_from)
        conn = http.client.HTTPConnection("127.0.0.1", self.agent.port, timeout=40)
        try:
            conn.request("GET", f"/v1/probes/{self.probe}/events", headers=headers)
            r = conn.getresponse()
            self.statuses[r.status] += 1
            if r.status != 200:
                r.read()
                return None
            self.connects += 1
            first = True
            event, data, ident = None, [], None
            prev = None
            while not self.stop.is_set():
                line = r.readline()
                if not line:
                    self.errors["stream closed without end"] += 1
                    return None
                line = line.decode(errors="replace").rstrip("\r\n")
                if line == "":
                    if event == "end":
                        reason = json.loads("\n".join(data)).get("reason") if data else None
                        self.ends[reason] += 1
                        self.after_replace = reason == "replaced"
                        return reason
                    if event == "gap":
                        first = False
                        self.after_replace = False
                        self.gaps += 1
                        try:
                            self.missed += json.loads("\n".join(data)).get("missed", 0)
                        except ValueError:
                            self.errors["bad gap"] += 1
                    elif event in ("call", "tracepoint") and ident is not None:
                        self.events += 1
                        if prev is not None and ident <= prev:
                            self.order_errors += 1
                        if first and self.after_replace:
                            # A replacement has a feed of its own, numbered from 1.
                            self.skipped_after_replace += ident - 1
                        if first:
                            self.after_replace = False
                        if first and resume_from is not None:
                            self.resumes["next id" if ident == resume_from + 1 else
                                         "ids restarted (new feed)" if ident <= resume_from else "skipped ahead"] += 1
                        first = False
                        prev = ident
                        self.last_id = ident
                    event, data, ident = None, [], None
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)
                    elif field == "id":
                        try:
                            ident = int(value)
                        except ValueError:
                            self.errors["bad id"] += 1
            return "stopped"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not self.stop.is_set():
                self.errors[type(exc).__name__] += 1
            return None
        finally:
            conn.close()


class Replacer(threading.Thread):
    """Replaces the long-lived SSE probes every ~20 s (a changed filter), so the subscribers
    see `end: replaced` and resume."""

    def __init__(self, agent, rec, model, specs, names, stop, period, pause):
        super().__init__(name="replacer", daemon=True)
        self.pause = pause
        self.agent, self.rec, self.model, self.specs, self.names = agent, rec, model, specs, names
        self.stop, self.period = stop, period
        self.variant = 0
        self.replaced = 0

    def run(self):
        next_at = time.monotonic() + self.period
        while not self.stop.wait(0.5):
            if self.pause.requested:
                self.pause.park(self.stop)
                continue
            if time.monotonic() < next_at:
                continue
            next_at += self.period
            self.variant += 1
            for name in self.names:
                if self.stop.is_set():
                    return
                spec = self.specs[name](self.variant % 2)
                spec["labels"] = {"soak_op": f"{name}-{self.variant}"}
                status, hdrs, body, t0, t1 = timed(self.agent, self.rec, "put (replace long-lived)", "PUT",
                                                   f"/v1/probes/{name}", spec, timeout=120)
                self.model.add(name, {"method": "PUT", "status": status, "label": spec["labels"]["soak_op"],
                                      "effect": Model.effect("PUT", status, label_of(body)), "t0": t0, "t1": t1,
                                      "client": "replacer"})
                if status in (200, 201):
                    self.replaced += 1


# ---------------------------------------------------------------------------- scrapes

def check_delimited(body):
    """The protobuf exposition is varint-length-delimited MetricFamily messages: the frames
    must tile the body exactly. Returns the number of families, or None when they do not."""
    i, n = 0, 0
    while i < len(body):
        length, shift = 0, 0
        while True:
            if i >= len(body) or shift > 63:
                return None
            b = body[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        i += length
        n += 1
    return n if i == len(body) else None


class Scraper(threading.Thread):
    def __init__(self, agent, rec, stop, stack_names, probe_names):
        super().__init__(name="scraper", daemon=True)
        self.agent, self.rec, self.stop = agent, rec, stop
        self.stack_names, self.probe_names = stack_names, probe_names
        self.bad = collections.Counter()
        self.n = 0
        self.rng = random.Random(7)

    def run(self):
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.n += 1
            if self.n % 2:
                status, hdrs, body, _, _ = timed(self.agent, self.rec, "scrape /metrics (text)", "GET", "/metrics", timeout=30)
                if status == 200 and b"traceplane_build_info" not in body:
                    self.bad["text exposition without traceplane_build_info"] += 1
            else:
                status, hdrs, body, _, _ = timed(self.agent, self.rec, "scrape /metrics (protobuf)", "GET", "/metrics",
                                                 headers={"Accept": PROTO_ACCEPT}, timeout=30)
                if status == 200:
                    if not hdrs.get("content-type", "").startswith("application/vnd.google.protobuf"):
                        self.bad[f"protobuf asked, got {hdrs.get('content-type')}"] += 1
                    elif check_delimited(body) is None:
                        self.bad["protobuf frames do not tile the body"] += 1
            if status is not None and status != 200:
                self.bad[f"/metrics answered {status}"] += 1
            if self.n % 3 == 0:
                name = self.rng.choice(self.probe_names())
                timed(self.agent, self.rec, "scrape probe metrics", "GET", f"/v1/probes/{name}/metrics?top=20", timeout=30)
            if self.n % 5 == 0:
                name = self.rng.choice(self.stack_names)
                status, _, body, _, _ = timed(self.agent, self.rec, "scrape stacks (folded)", "GET",
                                              f"/v1/probes/{name}/stacks?format=folded", timeout=30)
                if status != 200:
                    self.bad[f"/stacks of {name} answered {status}"] += 1
            next_at += 1.0
            self.stop.wait(max(0.0, next_at - time.monotonic()))


# ---------------------------------------------------------------------------- samples

def fd_census(pid):
    """(fds, progs, maps, links, perf events, memlock of maps in bytes) the agent holds."""
    fds = progs = maps = links = perf = 0
    memlock = {}
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        fds += 1
        try:
            target = os.readlink(f"{base}/{fd}")
        except OSError:
            continue
        if not target.startswith("anon_inode:"):
            continue
        if "perf_event" in target:
            perf += 1
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "link_id" in fields:
            links += 1
        elif "prog_id" in fields and "map_id" not in fields:
            progs += 1
        elif "map_id" in fields:
            maps += 1
            try:
                memlock[fields["map_id"]] = int(fields.get("memlock", "0"))
            except ValueError:
                pass
    return fds, progs, maps, links, perf, sum(memlock.values())


def agent_prog_names(pid):
    """Names of the BPF programs the agent holds (fds and links' programs), as a Counter."""
    ids = []
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                fields = {k.strip(): v.strip() for k, v in (l.split(":", 1) for l in f.read().splitlines() if ":" in l)}
        except OSError:
            continue
        if "prog_id" in fields and "link_id" not in fields and "map_id" not in fields:
            ids.append(int(fields["prog_id"]))
    try:
        r = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True, timeout=30)
        names = {i["id"]: i.get("name", "?") for i in json.loads(r.stdout or "[]")}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        names = {}
    return collections.Counter(names.get(i, f"id {i}") for i in ids)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def host_bpf():
    """The host's BPF objects: {kind: {id: name}} from bpftool (None when bpftool fails)."""
    out = {}
    for kind in ("prog", "map", "link"):
        try:
            r = subprocess.run(["bpftool", "-j", kind, "list"], capture_output=True, text=True, timeout=30)
            items = json.loads(r.stdout or "[]")
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None
        out[kind] = {i["id"]: str(i.get("name", i.get("type", ""))) for i in items if "id" in i}
    return out


def not_ours(name):
    """systemd's own cgroup programs and maps (sd_fw_egress, sd_devices, ...) come and go with
    units; they are not the agent's."""
    return name.startswith("sd_")


class Sampler(threading.Thread):
    FIELDS = ["t_s", "phase", "rss_kib", "fds", "bpf_progs", "bpf_maps", "bpf_links", "perf_events",
              "map_memlock_bytes", "host_progs", "host_maps", "host_links", "probes", "operations", "load1"]

    def __init__(self, agent, start, period, counter):
        super().__init__(name="sampler", daemon=True)
        self.agent, self.t_start, self.period, self.counter = agent, start, period, counter
        self.rows = []
        self.phase = "run"
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def sample(self):
        try:
            fds, progs, maps, links, perf, memlock = fd_census(self.agent.pid)
            rss = rss_kib(self.agent.pid)
        except OSError:
            return None
        host = host_bpf() or {}
        try:
            status, _, body = self.agent.request("GET", "/v1/probes", timeout=30)
            probes = len(json.loads(body)["probes"]) if status == 200 else ""
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            probes = ""
        row = {"t_s": round(time.monotonic() - self.t_start, 1), "phase": self.phase, "rss_kib": rss, "fds": fds,
               "bpf_progs": progs, "bpf_maps": maps, "bpf_links": links, "perf_events": perf,
               "map_memlock_bytes": memlock, "host_progs": len(host.get("prog", {})),
               "host_maps": len(host.get("map", {})), "host_links": len(host.get("link", {})),
               "probes": probes, "operations": self.counter(), "load1": os.getloadavg()[0]}
        with self.lock:
            self.rows.append(row)
        return row

    def run(self):
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.sample()
            next_at += self.period
            self.stop.wait(max(0.0, next_at - time.monotonic()))


# ---------------------------------------------------------------------------- cgroups and workload

class Workload:
    def __init__(self, binary, count, rate, seconds):
        self.cgroups = [f"{CGROUP_ROOT}/traceplane-soak-{i}" for i in range(count)]
        self.procs = []
        for cg in self.cgroups:
            if os.path.isdir(cg):
                self.empty(cg)
                os.rmdir(cg)
            os.mkdir(cg)
        for cg in self.cgroups:
            # The shell moves itself into the cgroup, then execs the loop (so the loop's comm is soak_load).
            self.procs.append(subprocess.Popen(
                ["/bin/sh", "-c", f'echo $$ > "{cg}/cgroup.procs" && exec "$0" "$1" "$2"', binary, str(rate), str(seconds)]))
        time.sleep(0.3)
        for p, cg in zip(self.procs, self.cgroups):
            if p.poll() is not None:
                raise SystemExit(f"the workload in {cg} exited at once with {p.returncode}")

    @staticmethod
    def empty(cg):
        try:
            with open(f"{cg}/cgroup.procs") as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
        except OSError:
            pass

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        removed = 0
        for cg in self.cgroups:
            for _ in range(50):
                try:
                    os.rmdir(cg)
                    removed += 1
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    self.empty(cg)
                    time.sleep(0.1)
        return removed


# ---------------------------------------------------------------------------- analysis

def pct(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def flatness(rows, key, warmup_s, limit, phase="checkpoint"):
    """Median of the last third of the post-warm-up samples (of one phase) against the first third."""
    vals = [r[key] for r in rows if r["phase"] == phase and r["t_s"] >= warmup_s]
    if len(vals) < 3:
        return None, None, None, False
    third = max(1, len(vals) // 3)
    first, last = statistics.median(vals[:third]), statistics.median(vals[-third:])
    growth = (last - first) / first if first else 0.0
    return first, last, growth, growth <= limit


def plot(rows, warmup_s, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return False
    t = [r["t_s"] / 60 for r in rows]
    fig, (a, b) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    a.plot(t, [r["rss_kib"] / 1024 for r in rows], color="tab:blue", label="RSS")
    a.set_ylabel("agent RSS (MiB)")
    b.plot(t, [r["fds"] for r in rows], color="tab:orange", label="all fds")
    b.plot(t, [r["bpf_progs"] + r["bpf_maps"] + r["bpf_links"] for r in rows], color="tab:green", label="BPF progs+maps+links")
    b.set_ylabel("agent fds")
    b.set_xlabel("minutes")
    b.legend(loc="upper left", fontsize="small")
    cps = [r for r in rows if r["phase"] == "checkpoint"]
    a.plot([r["t_s"] / 60 for r in cps], [r["rss_kib"] / 1024 for r in cps], "k.", label="checkpoint")
    b.plot([r["t_s"] / 60 for r in cps], [r["fds"] for r in cps], "k.", label="checkpoint (only the long-lived probes)")
    for ax in (a, b):
        ax.axvspan(0, warmup_s / 60, color="0.9", label="warm-up")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    a.legend(loc="lower right", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def mechanisms(agent):
    """name -> mechanism of every probe listed."""
    status, _, body = agent.request("GET", "/v1/probes", timeout=30)
    return {p["name"]: p.get("mechanism") for p in json.loads(body)["probes"]} if status == 200 else {}


def checkpoint(agent, rec, model, pause, shared, long_names, sampler, start, parties, stop, reference):
    """Parks the churn, deletes the shared names (the clients delete their own), waits until
    only the long-lived probes are listed and the agent's BPF census is back to `reference`
    (what it held with only them, before the churn began; the reaper detaches in the
    background) for at most 60 s, takes a sample, and lets the churn go on.
    Returns (t, paused s, settle s, settled, what was left when it did not settle)."""
    t0 = time.monotonic()
    pause.request()
    if not pause.wait_parked(parties, 300):
        log("checkpoint: the churn did not park within 300 s")
    for name in shared:
        recorded_delete(agent, rec, model, name, "delete (checkpoint)", "checkpoint")
    t1 = time.monotonic()
    settled = False
    left = None
    while not stop.is_set():
        try:
            status, _, body = agent.request("GET", "/v1/probes", timeout=30)
            names = {p["name"] for p in json.loads(body)["probes"]} if status == 200 else None
            census = fd_census(agent.pid)[1:5]
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            break
        if names == long_names and census == reference[0]:
            settled = True
            break
        if time.monotonic() - t1 > 60:
            extra = agent_prog_names(agent.pid) - reference[1]
            mech = mechanisms(agent)
            moved = {n: (reference[2].get(n), m) for n, m in mech.items() if reference[2].get(n) != m}
            left = (f"listed {sorted(names - long_names) if names else names}, (progs, maps, links, perf) {census} "
                    f"against {reference[0]}, programs beyond the reference {dict(extra)}"
                    + (f", long-lived probes on other mechanisms than at the start {moved}" if moved else ""))
            break
        time.sleep(0.5)
    phase = sampler.phase
    sampler.phase = "checkpoint"
    row = sampler.sample()
    sampler.phase = phase
    pause.release()
    t2 = time.monotonic()
    if row:
        log(f"checkpoint at {row['t_s']:.0f} s: RSS {row['rss_kib'] / 1024:.1f} MiB, {row['fds']} fds, "
            f"{row['bpf_progs']}/{row['bpf_maps']}/{row['bpf_links']} progs/maps/links, paused {t2 - t0:.1f} s, "
            f"settled in {t2 - t1:.1f} s" + ("" if settled else f": NOT SETTLED in 60 s: {left}"))
    return (t0 - start, t2 - t0, t2 - t1, settled, left)


# ---------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", required=True)
    ap.add_argument("--workload", required=True, help="the soak_load binary")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--out", default=".build/soak")
    ap.add_argument("--ci", action="store_true", help="CI run: same checks; the plot only when matplotlib is there")
    ap.add_argument("--op-interval", type=float, default=1.0, help="mean seconds between one client's operations")
    ap.add_argument("--sample-seconds", type=float, default=10)
    ap.add_argument("--rate", type=int, default=2000, help="workload rounds of syscalls per second, per cgroup")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--limit", type=float, default=0.05, help="allowed growth of RSS and fds after warm-up")
    args = ap.parse_args()
    # A SIGTERM (a CI timeout) unwinds like Ctrl-C, so the cleanup below runs: the agent
    # stopped, the workload killed, the cgroups removed.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    os.makedirs(args.out, exist_ok=True)
    duration = args.minutes * 60
    # Warm-up: the first 20 % of the run (6 of 30 minutes; 36 s of 3): caches that fill
    # once (kallsyms, ELF symbol tables, malloc arenas, the hub) are allowed to grow there.
    warmup = 0.2 * duration
    # Checkpoints: the churn pauses, every churned probe is deleted, the agent settles and
    # one sample is taken with only the long-lived probes: equivalent states, compared for
    # flatness (between checkpoints the number of probes alive, hence fds, moves with the churn).
    checkpoint_period = min(120.0, max(20.0, duration / 8))
    log(f"{args.minutes:g} minutes, seed {args.seed}, out {args.out}")

    host_before = host_bpf()
    if host_before is None:
        raise SystemExit("bpftool failed: it counts the host's BPF objects")
    state_dir = os.path.join(args.out, "state")
    shutil.rmtree(state_dir, ignore_errors=True)
    os.makedirs(state_dir)

    workload = Workload(args.workload, 3, args.rate, int(duration + 900))
    agent = None
    rec, model = Record(), Model()
    stop_churn, stop_bg = threading.Event(), threading.Event()
    verdict = []
    crash = None
    try:
        agent = Agent(args.agent, state_dir, os.path.join(args.out, "agent.log"))
        log(f"agent pid {agent.pid} on 127.0.0.1:{agent.port}")
        _, idle_progs, idle_maps, idle_links, idle_perf, _ = fd_census(agent.pid)
        start = time.monotonic()

        long_specs = long_lived_specs(workload.cgroups)
        for name, make in long_specs.items():
            spec = make(0)
            spec["labels"] = {"soak_op": f"{name}-0"}
            status, _, body, t0, t1 = timed(agent, rec, "put (long-lived)", "PUT", f"/v1/probes/{name}", spec)
            if status != 201:
                raise SystemExit(f"PUT {name}: {status} {body[:400]!r}")
            model.add(name, {"method": "PUT", "status": status, "label": f"{name}-0",
                             "effect": Model.effect("PUT", status, label_of(body)), "t0": t0, "t1": t1, "client": "setup"})

        # What the agent holds with only the long-lived probes: what every checkpoint settles back to.
        time.sleep(1)
        reference = (fd_census(agent.pid)[1:5], agent_prog_names(agent.pid), mechanisms(agent))
        templates = spec_templates(workload.cgroups)
        shared = [f"shared-{j}" for j in range(SHARED)]
        pause = Pause()
        clients = [ChurnClient(i, agent, rec, model, templates, shared, stop_churn, args.op_interval, args.seed * 100 + i, pause)
                   for i in range(CLIENTS)]
        churn_names = shared + [n for c in clients for n in c.owned]
        sse_names = ["ll-sse-close", "ll-sse-getppid"]
        subscribers = [Subscriber(agent, n, stop_bg) for n in sse_names]
        replacer = Replacer(agent, rec, model, long_specs, sse_names, stop_churn, 20, pause)
        stop_scrape = threading.Event()
        scraper = Scraper(agent, rec, stop_scrape, ["ll-kstack", "ll-profile"], lambda: list(long_specs) + churn_names)
        sampler = Sampler(agent, start, args.sample_seconds, lambda: sum(c.ops for c in clients))
        threads = [sampler, scraper, *subscribers, replacer, *clients]
        for t in threads:
            t.start()

        end = start + duration
        last_note = 0
        next_checkpoint = start + checkpoint_period
        checkpoints = []   # (t, seconds paused, seconds to settle, settled)
        while time.monotonic() < end:
            if time.monotonic() >= next_checkpoint and next_checkpoint <= end - 5 and agent.alive():
                next_checkpoint += checkpoint_period
                checkpoints.append(checkpoint(agent, rec, model, pause, shared, set(long_specs), sampler, start,
                                              len(clients) + 1, stop_churn, reference))
                continue
            if not agent.alive():
                crash = f"the agent exited with {agent.proc.returncode} at {time.monotonic() - start:.0f} s"
                log(crash)
                break
            if time.monotonic() - last_note >= 60:
                last_note = time.monotonic()
                row = sampler.rows[-1] if sampler.rows else {}
                log(f"{(last_note - start) / 60:.1f} min: {sum(c.ops for c in clients)} operations, "
                    f"RSS {row.get('rss_kib', 0) / 1024:.1f} MiB, {row.get('fds')} fds, {row.get('probes')} probes, "
                    f"SSE events {[s.events for s in subscribers]}")
            time.sleep(0.5)

        # ---- the end: stop the churn, check the final state, delete everything
        sampler.phase = "teardown"
        stop_churn.set()
        pause.release()
        for t in [*clients, replacer]:
            t.join(timeout=180)
        stop_scrape.set()   # its probe-metrics and stacks scrapes would 404 once everything goes
        scraper.join(timeout=40)
        final_probes = None
        mismatches = []
        if crash is None:
            status, _, body = agent.request("GET", "/v1/probes")
            if status != 200:
                mismatches.append(f"GET /v1/probes answered {status}")
            else:
                final_probes = json.loads(body)["probes"]
                final = {p["name"]: (p["spec"].get("labels") or {}).get("soak_op") for p in final_probes}
                mismatches = model.check(final)
                not_active = [f"{p['name']}: {p['state']}" for p in final_probes if p["state"] not in ("active", "throttled")]
                if not_active:
                    log(f"probes not active at the end: {not_active}")
            for p in final_probes or []:
                timed(agent, rec, "delete (final)", "DELETE", f"/v1/probes/{p['name']}")
        # The subscribers end on `deleted`; give them a moment.
        for s in subscribers:
            s.join(timeout=10)
        stop_bg.set()
        sampler.stop.set()
        sampler.join(timeout=60)

        # ---- our BPF objects back to what the idle agent held (the reaper detaches in the background)
        settled_agent = None
        agent_left = None
        if agent.alive():
            deadline = time.monotonic() + 60
            while True:
                _, progs, maps, links, perf, memlock = fd_census(agent.pid)
                agent_left = (progs - idle_progs, maps - idle_maps, links - idle_links, perf - idle_perf)
                if agent_left == (0, 0, 0, 0):
                    settled_agent = time.monotonic() - (deadline - 60)
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(1)
            sampler.phase = "deleted"
            sampler.sample()
            status, _, body = agent.request("GET", "/v1/probes")
            left_probes = len(json.loads(body)["probes"]) if status == 200 else None
        else:
            left_probes = None

        # ---- SIGTERM
        exit_code = None
        if agent.alive():
            agent.proc.send_signal(signal.SIGTERM)
            try:
                exit_code = agent.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                crash = crash or "the agent did not exit within 60 s of SIGTERM"
                agent.proc.kill()
                agent.proc.wait()
            if exit_code not in (0, None):
                crash = crash or f"the agent exited with {exit_code} after SIGTERM"
        elif crash is None:
            crash = f"the agent exited with {agent.proc.returncode}"

        # ---- the host's BPF objects back to what they were before the agent started
        deadline = time.monotonic() + 60
        host_left = {}
        settled_host = None
        while True:
            now_objs = host_bpf() or {}
            host_left = {k: {i: n for i, n in now_objs.get(k, {}).items()
                             if i not in host_before[k] and not not_ours(n)} for k in ("prog", "map", "link")}
            if not any(host_left.values()):
                settled_host = time.monotonic() - (deadline - 60)
                break
            if time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        stop_churn.set()
        stop_bg.set()
        if "stop_scrape" in locals():
            stop_scrape.set()
        if agent is not None and agent.alive():
            agent.proc.kill()
        removed = workload.stop()

    rows = sampler.rows
    elapsed = rows[-1]["t_s"] if rows else 0

    # ---- the verdict
    rss = flatness(rows, "rss_kib", warmup, args.limit)
    fds = flatness(rows, "fds", warmup, args.limit)
    rss_all = flatness(rows, "rss_kib", warmup, args.limit, phase="run")
    fds_all = flatness(rows, "fds", warmup, args.limit, phase="run")
    n_cp = len([r for r in rows if r["phase"] == "checkpoint" and r["t_s"] >= warmup])

    def fmt_flat(res, unit, scale=1):
        first, last, growth, _ = res
        if first is None:
            return "too few samples after warm-up"
        return f"{first / scale:.1f} → {last / scale:.1f} {unit} ({growth * 100:+.1f} %)"

    verdict.append((f"agent RSS flat after warm-up (≤ +{args.limit * 100:g} %, {n_cp} checkpoints)", rss[3], fmt_flat(rss, "MiB", 1024)))
    verdict.append((f"agent fds flat after warm-up (≤ +{args.limit * 100:g} %, {n_cp} checkpoints)", fds[3], fmt_flat(fds, "fds")))
    unsettled = [c for c in checkpoints if not c[3]]
    slowest = max((c[2] for c in checkpoints), default=0)
    verdict.append(("every checkpoint back to the long-lived probes' BPF objects within 60 s", not unsettled,
                    f"{len(checkpoints) - len(unsettled)} of {len(checkpoints)}, slowest {slowest:.1f} s"
                    + "".join(f"; at {c[0]:.0f} s: {c[4]}" for c in unsettled[:3])))
    verdict.append(("agent holds no BPF program/map/link/perf event after the final delete", agent_left == (0, 0, 0, 0),
                    f"left (progs, maps, links, perf) {agent_left}" + (f", settled in {settled_agent:.0f} s" if settled_agent is not None else "")))
    host_text = ", ".join(f"{k}s {len(v)}" for k, v in host_left.items())
    if any(host_left.values()):
        host_text += ": " + "; ".join(f"{k} {i} {n}" for k, v in host_left.items() for i, n in list(v.items())[:10])
    verdict.append(("host BPF programs/maps/links back to before the start (bpftool, ≤ 60 s after exit)",
                    not any(host_left.values()), host_text + (f", settled in {settled_host:.0f} s" if settled_host is not None else "")))
    verdict.append(("every acknowledged operation reflected in GET /v1/probes", crash is None and not mismatches and final_probes is not None,
                    f"{len(mismatches)} mismatches over {sum(len(v) for v in model.ops.values())} operations on {len(model.ops)} names"
                    f" ({model.unknown} with a lost answer)"))
    verdict.append(("answers agree with each owned name's model", not model.violations, f"{len(model.violations)} violations"))
    verdict.append(("nothing left after deleting everything", left_probes == 0, f"{left_probes} probes listed"))
    verdict.append(("no 5xx but 503 with Retry-After", not rec.server_errors,
                    f"{len(rec.server_errors)} other 5xx; {rec.retry_503} 503 with Retry-After"))
    scrape_bad = sum(scraper.bad.values())
    verdict.append(("scrapes answered and well-formed", scrape_bad == 0, f"{scrape_bad} bad: {dict(scraper.bad)}" if scrape_bad else "all good"))
    sse_ok = all(s.events > 0 and s.order_errors == 0 and s.connects > 1 for s in subscribers)
    verdict.append(("SSE subscribers got events in order across replaces", sse_ok,
                    "; ".join(f"{s.probe}: {s.events} events, {s.connects} connections, {s.order_errors} out of order" for s in subscribers)))
    verdict.append(("no crash; SIGTERM exits 0", crash is None, crash or f"exit {exit_code}"))
    verdict.append(("cgroups removed", removed == len(workload.cgroups), f"{removed} of {len(workload.cgroups)}"))
    passed = all(ok for _, ok, _ in verdict)

    # ---- the files
    with open(os.path.join(args.out, "soak.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=Sampler.FIELDS)
        w.writeheader()
        w.writerows(rows)
    png = plot(rows, warmup, os.path.join(args.out, "soak.png"),
               f"TracePlane soak, {args.minutes:g} min: {'PASS' if passed else 'FAIL'}")

    md = []
    md.append(f"# TracePlane soak: {'PASS' if passed else 'FAIL'}\n")
    md.append(f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.minutes:g} minutes "
              f"({elapsed:.0f} s sampled), seed {args.seed}{', CI' if args.ci else ''}; kernel {os.uname().release}, "
              f"{os.cpu_count()} CPUs; agent `{args.agent}`")
    md.append(f"- {CLIENTS} churn clients (one operation every {0.5 * args.op_interval:g}–{1.5 * args.op_interval:g} s each) on "
              f"{CLIENTS * OWNED_PER_CLIENT} owned names ({OWNED_PER_CLIENT} each) and {SHARED} shared ones; "
              f"{len(templates)} spec kinds ({', '.join(n for n, _ in templates)}); "
              f"{len(long_specs)} long-lived probes ({', '.join(long_specs)}), the two SSE ones replaced every 20 s "
              f"({replacer.replaced} replaces)")
    md.append(f"- scrapes: /metrics every second (text and protobuf in turn), a probe's metrics every 3 s, folded stacks every 5 s")
    md.append(f"- workload: `soak_load {args.rate}` in each of {', '.join(workload.cgroups)}")
    md.append(f"- samples every {args.sample_seconds:g} s; warm-up: the first 20 % ({warmup:.0f} s); a checkpoint every "
              f"{checkpoint_period:g} s (churn paused, every churned probe deleted, the agent settled, one sample with only "
              f"the long-lived probes: {len(checkpoints)} checkpoints, paused {sum(c[1] for c in checkpoints):.0f} s in all, "
              f"{sum(1 for c in checkpoints if not c[3])} not settled in 60 s). Flatness compares the median of the last third "
              f"of the post-warm-up checkpoints with the median of the first third; only growth fails\n")
    md.append("| check | result | numbers |\n|---|---|---|")
    for what, ok, numbers in verdict:
        md.append(f"| {what} | {'pass' if ok else '**FAIL**'} | {numbers} |")
    md.append(f"\nAll samples between checkpoints (not part of the verdict, the churn moves them): RSS {fmt_flat(rss_all, 'MiB', 1024)}, "
              f"fds {fmt_flat(fds_all, 'fds')}.")
    mem = [r["map_memlock_bytes"] for r in rows if r["phase"] == "run"]
    if mem:
        md.append(f"\nKernel memory of the agent's maps (memlock): median {statistics.median(mem) / 2**20:.1f} MiB, "
                  f"max {max(mem) / 2**20:.1f} MiB; probes listed: median "
                  f"{statistics.median([r['probes'] for r in rows if r['phase'] == 'run' and r['probes'] != ''] or [0]):g}, "
                  f"max {max([r['probes'] for r in rows if r['probes'] != ''] or [0])}.")
    md.append("\n## Operations by kind and status\n\n| kind | status | count |\n|---|---|---|")
    for (kind, status), n in sorted(rec.counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        md.append(f"| {kind} | {status} | {n} |")
    if rec.outcomes:
        md.append("\nProbe-Outcome of PUTs: " + ", ".join(f"{k} {o}: {n}" for (k, o), n in sorted(rec.outcomes.items())))
    md.append("\n## Latencies (ms)\n\n| request | n | median | p99 | max |\n|---|---|---|---|---|")
    for kind in sorted(rec.latency):
        v = rec.latency[kind]
        md.append(f"| {kind} | {len(v)} | {statistics.median(v) * 1e3:.1f} | {pct(v, 0.99) * 1e3:.1f} | {max(v) * 1e3:.1f} |")
    md.append("\n## SSE\n")
    for s in subscribers:
        md.append(f"- `{s.probe}`: {s.events} events over {s.connects} connections, ends {dict(s.ends)}, "
                  f"{s.gaps} gaps ({s.missed} missed), resumes {dict(s.resumes)}, {s.skipped_after_replace} events of "
                  f"replacements' feeds never delivered (resumed with the old stream's Last-Event-ID), statuses {dict(s.statuses)}, "
                  f"errors {dict(s.errors)}")
    if rec.retry_examples:
        md.append("\n## 503 with Retry-After (first few)\n")
        for e in rec.retry_examples:
            md.append(f"- {e[0]} `{e[1]}`: `{e[2]}`")
    if rec.server_errors:
        md.append("\n## 5xx other than 503 with Retry-After\n")
        for e in rec.server_errors[:20]:
            md.append(f"- {e[0]} `{e[1]}`: {e[2]} (Retry-After {e[3]}) `{e[4]}`")
    if rec.transport_errors:
        md.append("\n## Transport errors\n")
        for e, n in rec.transport_errors.most_common(20):
            md.append(f"- {n} × {e}")
    if mismatches or model.violations:
        md.append("\n## Final-state mismatches and model violations\n")
        for m in (mismatches + model.violations)[:40]:
            md.append(f"- {m}")
    if png:
        md.append("\n![RSS and fds over time](soak.png)")
    text = "\n".join(md) + "\n"
    with open(os.path.join(args.out, "soak.md"), "w") as f:
        f.write(text)

    print(f"\nVERDICT: {'PASS' if passed else 'FAIL'} ({args.minutes:g} min, out {args.out})")
    for what, ok, numbers in verdict:
        print(f"  [{'pass' if ok else 'FAIL'}] {what}: {numbers}")
    for m in (mismatches + model.violations)[:10]:
        print(f"    {m}")
    for e in rec.server_errors[:10]:
        print(f"    5xx: {e}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
