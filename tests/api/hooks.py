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
"""
import schemathesis

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
    if (method, path) not in {("PUT", "/v1/probes/{name}"), ("POST", "/v1/probes")}:
        return
    meta = case.meta
    positive = meta is None or meta.generation.mode.is_positive
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
