"""Checks the kubernetes_sd_configs of a Prometheus config for a promtool built without
Kubernetes service discovery (Debian's), and writes a copy where each of them is a static
target, for promtool to check everything else.

Usage: check_sd.py PROMETHEUS_YML STATIC_COPY_OUT CREDENTIALS_FILE
"""
import sys

import yaml

# https://prometheus.io/docs/prometheus/latest/configuration/configuration/#kubernetes_sd_config
SD_FIELDS = {
    "api_server", "role", "kubeconfig_file", "namespaces", "selectors", "attach_metadata",
    # HTTP client settings allowed in every SD config
    "basic_auth", "authorization", "oauth2", "follow_redirects", "enable_http2", "tls_config",
    "proxy_url", "no_proxy", "proxy_from_environment", "proxy_connect_header",
}
NAMESPACE_FIELDS = {"own_namespace", "names"}
# The meta labels each role sets (prefixes), from the same page.
META = {
    "node": ["__meta_kubernetes_node_"],
    "service": ["__meta_kubernetes_namespace", "__meta_kubernetes_service_"],
    "pod": ["__meta_kubernetes_namespace", "__meta_kubernetes_pod_"],
    "endpoints": ["__meta_kubernetes_namespace", "__meta_kubernetes_endpoints_", "__meta_kubernetes_endpoint_",
                  "__meta_kubernetes_service_", "__meta_kubernetes_pod_"],
    "endpointslice": ["__meta_kubernetes_namespace", "__meta_kubernetes_endpointslice_",
                      "__meta_kubernetes_service_", "__meta_kubernetes_pod_"],
    "ingress": ["__meta_kubernetes_namespace", "__meta_kubernetes_ingress_"],
}


def main(source, out, credentials):
    with open(source) as f:
        config = yaml.safe_load(f)
    problems = []
    for job in config.get("scrape_configs", []):
        name = job.get("job_name", "?")
        sds = job.pop("kubernetes_sd_configs", None)
        if sds is None:
            continue
        roles = set()
        for i, sd in enumerate(sds):
            where = f"job {name}: kubernetes_sd_configs[{i}]"
            for key in sorted(set(sd) - SD_FIELDS):
                problems.append(f"{where}: unknown field {key}")
            role = sd.get("role")
            if role not in META:
                problems.append(f"{where}: role must be one of {', '.join(META)}, not {role!r}")
            else:
                roles.add(role)
            namespaces = sd.get("namespaces", {})
            for key in sorted(set(namespaces) - NAMESPACE_FIELDS):
                problems.append(f"{where}: namespaces: unknown field {key}")
            names = namespaces.get("names", [])
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                problems.append(f"{where}: namespaces.names must be a list of namespace names")
        for j, rule in enumerate(job.get("relabel_configs", [])):
            for label in rule.get("source_labels", []):
                if label.startswith("__meta_kubernetes") and not any(
                        label.startswith(p) for r in roles for p in META[r]):
                    problems.append(f"job {name}: relabel_configs[{j}]: {label} is not set by role {', '.join(sorted(roles))}")
        job["static_configs"] = [{"targets": ["127.0.0.1:9480"]}]
        auth = job.get("authorization")
        if auth and "credentials_file" in auth:
            auth["credentials_file"] = credentials
    for problem in problems:
        print(f"{source}: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    with open(out, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    print(f"{source}: kubernetes_sd_configs fields, roles and meta labels are valid")


if __name__ == "__main__":
    main(*sys.argv[1:4])
