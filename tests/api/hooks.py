"""schemathesis hooks for the TracePlane agent (loaded through SCHEMATHESIS_HOOKS).

One rule of the contract is beyond JSON Schema: on PUT /v1/probes/{name}, a `name` in the
body must equal the path's (else 400). For schema-valid cases we make it so; negative
cases keep whatever was generated.
"""
import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    # Right before sending, so that values the stateful phase fills in are covered too.
    if case.method.upper() != "PUT" or case.operation.path != "/v1/probes/{name}":
        return
    meta = case.meta
    positive = meta is None or meta.generation.mode.is_positive
    body, path = case.body, (case.path_parameters or {}).get("name")
    if positive and isinstance(body, dict) and isinstance(body.get("name"), str) and isinstance(path, str):
        body["name"] = path
