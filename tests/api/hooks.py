"""schemathesis hooks for the TracePlane agent (loaded through SCHEMATHESIS_HOOKS).

Some rules of the contract are beyond JSON Schema, and openapi.yaml states them in words
(each is a 400 naming the field). For schema-valid cases we make the body obey them;
negative cases keep whatever was generated.

- PUT /v1/probes/{name}: a `name` in the body must equal the path's.
- `aggregate` (PUT and POST): which `arg:NAME`/`argN`/`field:NAME` a target has depends
  on the target (its tracepoint format or BTF prototype), so those keys and values are
  left out; a `histogram` needs a value to bucket (none for `value: none`, or for a
  tracepoint without a field value); a linear histogram needs max > min and at most 512
  buckets of `step` between them; a key table (preallocated on every CPU) may take at most
  64 MiB per CPU: `max_keys` × (key + 32 bytes + 8 per histogram slot); a stack map at
  most 64 MiB: `max_keys` × stack keys × 1080 bytes (a profile without `by` has two stack
  keys, `ustack` and `kstack`).
- `target` (profile): `frequency_hz` is lowered to at most 100, so that the profiles
  schemathesis leaves attached (up to 64, on every CPU) stay cheap for a shared machine;
  the bounds 1 and 1000 are checked by the Swift tests and by negative cases here.
- `filter`: at most one of `cgroup`, `container_id` and `pod_uid` (the first kept), and a
  cgroup path without `.` or `..` components. Whether the cgroup exists is the host's
  business (422 when not), as for a missing function or binary.

GET /v1/probes/{name}/events is a stream that, with `follow` absent or true, lasts as long
as its probe: schemathesis would wait for each one until its request timeout (30 s for a
quiet Server-Sent Events stream; an NDJSON one would fail). So every case asks for
`follow=false` instead (the stream ends once the replay is sent), except a negative case
whose invalid value is `follow` itself, which stays as drawn. Following is tested by the
Swift real-kernel tests (Tests/AgentIntegrationTests/EventsAPITests.swift). And so that real
events are checked, not only the empty streams of the random probes schemathesis creates:

- Every other positive case outside the stateful phase is sent to one of the probes with
  events that run-schemathesis.sh creates first (TP_EVENT_PROBES: a syscall and a
  tracepoint, both busy), from the oldest event kept (`last_event_id=0`) unless the case has
  an id of its own.
- schemathesis sends no `Accept` preference, so it gets Server-Sent Events, and checks each
  event's `data` against `Event` itself (openapi.yaml's ServerSentEvent). The
  `event_streams` check below checks their framing (`retry` first, `id` = `seq`, `event` =
  the JSON's `event`, ascending `seq`, `end` last and only last), asks for the same stream
  again as NDJSON (an `Accept` of our own would make schemathesis count the case as
  negative: Accept cannot be a parameter) and checks every line against `Event` and the
  same rules, and at the end of the run fails unless events of both kinds arrived in both
  media types (when TP_EVENT_PROBES is set; what arrived goes to TP_EVENTS_SUMMARY).
"""
import itertools
import json
import os
import pathlib
import threading
import urllib.parse

import jsonschema_rs
import requests
import schemathesis
import yaml

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_LINEAR_BUCKETS = 512
MAX_TABLE_BYTES = 64 << 20
MAX_KEY_BYTES = 128   # TP_KEY_MAX: no valid key is larger
LOG2_SLOTS = 65
MAX_STACK_BYTES = 64 << 20
STACK_ENTRY_BYTES = 8 * 127 + 64   # TP_STACK_DEPTH frames, the key and the hash table's head
STACK_KEYS = ("kstack", "ustack")
PROFILE_KEYS = ["comm", "ustack", "kstack"]
MAX_PROFILE_HZ = 100


def target_dependent(name):
    return isinstance(name, str) and (name.startswith("arg") or name.startswith("field:"))


def integer(value):
    """The value as an int when JSON Schema counts it an integer (1281 or 1281.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def fit_linear(histogram):
    """Moves `max` (and `min` if need be) so that 1 to 512 buckets of `step` fit."""
    lo, hi, step = (integer(histogram.get(name)) for name in ("min", "max", "step"))
    if lo is None or hi is None or step is None or step < 1:
        return
    buckets = -(-(hi - lo) // step)
    if hi > lo and buckets <= MAX_LINEAR_BUCKETS:
        return
    count = min(max(buckets, 1), MAX_LINEAR_BUCKETS)
    while count > 1 and lo + step * count > INT64_MAX:
        count -= 1
    if lo + step * count > INT64_MAX:
        lo = INT64_MAX - step * count
    histogram["min"], histogram["max"] = lo, lo + step * count


def fit_aggregate(aggregate, tracepoint, profile=False):
    if isinstance(aggregate.get("by"), list):
        aggregate["by"] = [key for key in aggregate["by"] if not target_dependent(key)]
    if target_dependent(aggregate.get("value")):
        del aggregate["value"]
    histogram = aggregate.get("histogram")
    if histogram is not None:
        if aggregate.get("value") == "none" or (tracepoint and aggregate.get("value") is None):
            del aggregate["histogram"]
        elif isinstance(histogram, dict) and histogram.get("kind") == "linear":
            fit_linear(histogram)
    fit_table(aggregate, profile)


def fit_table(aggregate, profile=False):
    """Lowers `max_keys` so that the key table fits 64 MiB per CPU (counted for the largest
    key, so that whatever else the case holds it fits), and the stack map 64 MiB."""
    keys = integer(aggregate.get("max_keys"))
    if keys is None or keys < 1:
        return
    by = aggregate.get("by")
    if by is None and profile:
        by = PROFILE_KEYS
    stacks = len({key for key in by if key in STACK_KEYS}) if isinstance(by, list) else 0
    if stacks and keys * stacks * STACK_ENTRY_BYTES > MAX_STACK_BYTES:
        keys = aggregate["max_keys"] = max(1, MAX_STACK_BYTES // (stacks * STACK_ENTRY_BYTES))
    histogram = aggregate.get("histogram")
    slots = LOG2_SLOTS
    if isinstance(histogram, dict) and histogram.get("kind") == "linear":
        lo, hi, step = (integer(histogram.get(name)) for name in ("min", "max", "step"))
        if lo is not None and hi is not None and step:
            slots = -(-(hi - lo) // step) + 2
    entry = MAX_KEY_BYTES + 32 + 8 * slots
    if keys * entry > MAX_TABLE_BYTES:
        aggregate["max_keys"] = max(1, MAX_TABLE_BYTES // entry)


@schemathesis.hook
def before_call(context, case, kwargs):
    # Right before sending, so that values the stateful phase fills in are covered too.
    method, path = case.method.upper(), case.operation.path
    meta = case.meta
    positive = meta is None or meta.generation.mode.is_positive
    if (method, path) == ("GET", EVENTS_PATH):
        fit_events_request(case, positive)
        return
    if (method, path) not in {("PUT", "/v1/probes/{name}"), ("POST", "/v1/probes")}:
        return
    body = case.body
    if not positive or not isinstance(body, dict):
        return
    name = (case.path_parameters or {}).get("name")
    if method == "PUT" and isinstance(body.get("name"), str) and isinstance(name, str):
        body["name"] = name
    if isinstance(body.get("filter"), dict):
        fit_filter(body["filter"])
    target = body.get("target")
    kind = target.get("type") if isinstance(target, dict) else None
    if kind == "profile":
        fit_profile(target)
    aggregate = body.get("aggregate")
    if isinstance(aggregate, dict):
        fit_aggregate(aggregate, kind == "tracepoint", kind == "profile")


def fit_profile(target):
    hz = integer(target.get("frequency_hz"))
    if hz is not None and hz > MAX_PROFILE_HZ:
        target["frequency_hz"] = MAX_PROFILE_HZ


CGROUP_FILTERS = ("cgroup", "container_id", "pod_uid")


def fit_filter(filter_):
    given = [name for name in CGROUP_FILTERS if filter_.get(name) is not None]
    for name in given[1:]:
        del filter_[name]
    path = filter_.get("cgroup")
    if isinstance(path, str) and path != "/":
        parts = [p if p not in (".", "..") else "x" for p in path.split("/")[1:]]
        filter_["cgroup"] = "/" + "/".join(parts)


# ---- GET /v1/probes/{name}/events ----------------------------------------------------------
EVENTS_PATH = "/v1/probes/{name}/events"
EVENT_PROBES = [name for name in os.environ.get("TP_EVENT_PROBES", "").split(",") if name]
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
_turns = itertools.count()
_turns_lock = threading.Lock()


def turn():
    with _turns_lock:
        return next(_turns)


def fit_events_request(case, positive):
    query = case.query if isinstance(case.query, dict) else {}
    if query.get("follow") in (None, "true"):
        query["follow"] = "false"
    case.query = query
    stateful = case.meta is not None and case.meta.phase.name == "stateful"
    if not positive or stateful or not EVENT_PROBES:
        return
    n = turn()
    if n % 2 == 0:
        case.path_parameters = {**(case.path_parameters or {}), "name": EVENT_PROBES[(n // 2) % len(EVENT_PROBES)]}
        if "last_event_id" not in query and not any(k.lower() == "last-event-id" for k in case.headers or {}):
            query["last_event_id"] = 0


def _event_validator():
    spec = yaml.safe_load((pathlib.Path(__file__).parents[2] / "openapi" / "openapi.yaml").read_text())
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": "#/components/schemas/Event",
            "components": spec["components"]}
    return jsonschema_rs.validator_for(root, validate_formats=True)


EVENT_VALIDATOR = _event_validator()


def ndjson_records(text):
    """The `Event` of each line; raises unless each line is one."""
    if text and not text.endswith("\n"):
        raise AssertionError(f"an NDJSON body ends with a newline: ...{text[-80:]!r}")
    records = []
    for number, line in enumerate(text.split("\n")[:-1], 1):
        record = json.loads(line)
        errors = [e.message for e in EVENT_VALIDATOR.iter_errors(record)]
        if errors:
            raise AssertionError(f"NDJSON line {number} is not an Event ({'; '.join(errors[:3])}): {line[:300]}")
        records.append((None, record))
    return records


def sse_records(text):
    """(fields, data) of each record after the leading `retry`; a comment is a keep-alive."""
    if not text.startswith("retry: 2000\n\n"):
        raise AssertionError(f"a Server-Sent Events body starts with `retry: 2000` and a blank line, not {text[:40]!r}")
    body = text[len("retry: 2000\n\n"):]
    if body and not body.endswith("\n\n"):
        raise AssertionError(f"a record is not ended by a blank line: ...{body[-120:]!r}")
    records = []
    for block in body.split("\n\n")[:-1]:
        if block == ": keep-alive":
            records.append(({}, {"event": "keep-alive"}))
            continue
        fields = {}
        for line in block.split("\n"):
            name, sep, value = line.partition(": ")
            if not sep or name not in ("id", "event", "data") or name in fields:
                raise AssertionError(f"unexpected line {line[:120]!r} in record {block[:300]!r}")
            fields[name] = value
        if list(fields) not in (["id", "event", "data"], ["event", "data"]):
            raise AssertionError(f"a record is `id`, `event`, `data` (or `event`, `data`): {block[:300]!r}")
        records.append((fields, json.loads(fields["data"])))
    return records


@schemathesis.check
class event_streams:
    """The framing of GET /v1/probes/{name}/events in both media types; and at the end of
    the run, that real events of both kinds arrived in both."""

    def __init__(self):
        self.seen = set()   # (media, kind, probe, seq)
        self.ended = set()  # (media, reason)

    def after_response(self, ctx, response, case):
        if case.operation.path != EVENTS_PATH or case.method.upper() != "GET" or response.status_code != 200:
            return None
        name = (case.path_parameters or {}).get("name")
        self.check(SSE, response.headers, response.text, name, complete=not response.stream_cut_short)
        request = response.request
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)
        if query.get("follow") != ["false"]:
            return None  # never follow: that stream would not end
        again = requests.get(request.url, headers={**request.headers, "Accept": NDJSON}, timeout=30)
        if again.status_code != 200:
            raise AssertionError(f"the same request with Accept: {NDJSON} answered {again.status_code}: {again.text[:300]}")
        headers = {key.lower(): [value] for key, value in again.headers.items()}
        self.check(NDJSON, headers, again.text, name, complete=True)
        return None

    def check(self, expected, headers, text, name, complete):
        media = (headers.get("content-type") or [""])[0].split(";")[0].strip()
        if media != expected:
            raise AssertionError(f"expected {expected}, got Content-Type {media!r}")
        for header, value in (("cache-control", "no-store"), ("vary", "Accept")):
            if headers.get(header) != [value]:
                raise AssertionError(f"{expected}: {header} is {headers.get(header)}, not {value!r}")
        records = ndjson_records(text) if media == NDJSON else sse_records(text)
        last = 0
        for i, (fields, record) in enumerate(records):
            kind = record.get("event")
            if fields and fields["event"] != kind:
                raise AssertionError(f"record {i}: `event: {fields['event']}` but its data says {kind!r}")
            if kind in ("call", "tracepoint"):
                seq = record["seq"]
                if fields is not None and fields.get("id") != str(seq):
                    raise AssertionError(f"record {i}: `id: {fields.get('id')}` for the event with seq {seq}")
                if seq <= last:
                    raise AssertionError(f"{media} record {i}: seq {seq} after {last}")
                last = seq
                self.seen.add((media, kind, name, seq))
            elif fields and "id" in fields:
                raise AssertionError(f"record {i}: a {kind!r} record has an `id`")
            if kind == "end":
                if i != len(records) - 1:
                    raise AssertionError(f"{media} record {i}: `end` is not the last record ({len(records)} records)")
                self.ended.add((media, record["reason"]))
        if complete and (not records or records[-1][1].get("event") != "end"):
            raise AssertionError(f"a follow=false {media} stream ended without `end` ({len(records)} records)")

    def after_run(self, ctx):
        kinds = {}
        for media, kind, _, _ in self.seen:
            kinds[f"{media} {kind}"] = kinds.get(f"{media} {kind}", 0) + 1
        summary = {"distinct events": kinds, "ends": sorted(f"{media} {reason}" for media, reason in self.ended)}
        if os.environ.get("TP_EVENTS_SUMMARY"):
            pathlib.Path(os.environ["TP_EVENTS_SUMMARY"]).write_text(json.dumps(summary, sort_keys=True))
        if EVENT_PROBES:
            wanted = [f"{media} {kind}" for media in (SSE, NDJSON) for kind in ("call", "tracepoint")]
            missing = [name for name in wanted if not kinds.get(name)]
            if missing:
                raise AssertionError(f"no events of {', '.join(missing)} arrived from {EVENT_PROBES}: {summary}")
