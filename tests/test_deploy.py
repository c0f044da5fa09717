"""deploy/: the Kubernetes manifests against the Kubernetes JSON schemas (offline, strict) and their
invariants against the server's own facts; deploy/haproxy.cfg's invariants and ``haproxy -c``."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the test extra kubernetes-validate")
import yaml  # noqa: E402  (PyYAML comes with kubernetes-validate)

from client.options import ConnectionOptions  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from streaming import cli, http  # noqa: E402
from streaming.config import Config, ServerOptions  # noqa: E402
from streaming.metrics import ServerMetrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
HAPROXY_CFG = DEPLOY / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)
"""Debian puts it in /usr/sbin, which a non-root PATH may lack."""
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
"""The oldest Kubernetes these manifests promise (deploy/README.md) and the newest schema shipped."""


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d]


def the(kind: str) -> dict:
    """The one manifest of ``kind`` in deploy/kubernetes."""
    found = [d for name in MANIFESTS for d in documents(name) if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} manifests"
    return found[0]


def container() -> dict:
    (server,) = the("Deployment")["spec"]["template"]["spec"]["containers"]
    return server


def served_config() -> Config:
    """The config the Deployment's serve command gives, through the real CLI parser."""
    spec = container()
    assert spec["command"][:4] == ["python", "-m", "streaming", "serve"]
    return cli.config_from_args(cli.build_parser().parse_args(["serve", *spec["command"][4:], *spec["args"]]))


# --- the schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_each_manifest_is_valid_against_the_kubernetes_schema(name: str, version: str) -> None:
    docs = documents(name)
    assert docs, f"{name} holds no manifest"
    for doc in docs:
        # strict: an unknown or misspelt field is an error, not silently ignored as kubectl would
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_what_kubernetes_would() -> None:
    """The schemas are really applied: a misspelt field and a wrong type both fail."""
    misspelt = copy.deepcopy(the("Deployment"))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    wrong_type = copy.deepcopy(the("Service"))
    wrong_type["spec"]["ports"][0]["port"] = "eighty"
    for doc in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_kustomization_applies_every_manifest() -> None:
    (kustomization,) = yaml.safe_load_all((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == MANIFESTS


# --- invariants against the server's facts ---------------------------------------------------------------


def test_probes_ask_the_servers_own_endpoints_on_its_port() -> None:
    spec = container()
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    expected = {"readinessProbe": "readyz", "livenessProbe": "healthz", "startupProbe": "healthz"}
    for probe, endpoint in expected.items():
        get = spec[probe]["httpGet"]
        assert http.ENDPOINTS.get(get["path"]) == endpoint, (probe, get["path"])
        assert ports[get["port"]] == served_config().server.port == 8765


def test_serve_command_listens_on_all_addresses_with_keys_from_the_secret() -> None:
    config = served_config()
    assert config.server.host == "0.0.0.0" and config.server.port == 8765
    pod = the("Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    keys_dir = str(Path(config.server.api_keys_file).parent)
    assert [name for name, path in mounts.items() if path == keys_dir] == ["api-keys"]
    assert secrets["api-keys"] == "streaming-asr-keys"
    # a non-loopback host without keys refuses to start: the keys file is what lets this pod serve
    assert config.server.api_keys_file and not config.server.allow_unauthenticated


def test_torch_threads_match_the_cpu_request() -> None:
    cpu = container()["resources"]["requests"]["cpu"]
    assert served_config().model.threads == int(cpu)


def test_grace_period_outlasts_the_drain_and_the_close() -> None:
    server = served_config().server
    grace_s = the("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_s > server.drain_timeout_s + server.close_timeout_s, (grace_s, server.drain_timeout_s)
    hook = " ".join(container()["lifecycle"]["preStop"]["exec"]["command"])
    assert "kill -TERM 1" in hook  # the drain starts in the hook, python being PID 1 (exec-form command)


def test_service_selects_the_pods_on_the_named_port() -> None:
    service, deployment = the("Service"), the("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container()["ports"]}
    assert the("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()


def server_gauges() -> set[str]:
    text = ServerMetrics(lambda: 0, lambda: 0.0, model="m").render().decode()
    return {f.name for f in text_string_to_metric_families(text) if f.type == "gauge"}


def test_hpa_scales_the_deployment_on_the_servers_sessions_gauge() -> None:
    hpa, deployment = the("HorizontalPodAutoscaler"), the("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] in server_gauges()
    per_pod = float(metric["pods"]["target"]["averageValue"])
    assert 0 < per_pod < served_config().server.max_sessions  # scale before pods refuse sessions
    assert hpa["spec"]["minReplicas"] >= 2  # one pod may drain while another serves


# --- HAProxy --------------------------------------------------------------------------------------------


def haproxy_seconds(value: str) -> float:
    """An HAProxy time (``500``, ``10s``, ``2m``; milliseconds without a unit) in seconds."""
    number, unit = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value).groups()
    return int(number) * {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def haproxy_lines() -> list[list[str]]:
    """The config's directives, comments stripped, split into words."""
    lines = (line.split("#", 1)[0].split() for line in HAPROXY_CFG.read_text(encoding="utf-8").splitlines())
    return [words for words in lines if words]


@pytest.mark.parametrize("value, seconds", [("500", 0.5), ("3s", 3), ("2m", 120), ("1h", 3600), ("250ms", 0.25)])
def test_haproxy_times_are_read_as_haproxy_reads_them(value: str, seconds: float) -> None:
    assert haproxy_seconds(value) == pytest.approx(seconds)


def test_haproxy_checks_readiness_and_balances_open_sessions() -> None:
    lines = haproxy_lines()
    (send,) = [w for w in lines if w[:2] == ["http-check", "send"]]
    uri = send[send.index("uri") + 1]
    assert http.ENDPOINTS.get(uri) == "readyz"
    assert send[send.index("ver") + 1] == "HTTP/1.1" and "Host" in send  # the server speaks HTTP/1.1 only
    assert ["http-check", "expect", "status", "200"] in lines
    assert ["balance", "leastconn"] in lines
    assert not any("shutdown-sessions" in w for w in lines)  # a draining replica keeps its sessions


def test_haproxy_tunnel_outlasts_the_servers_idle_timeout_and_the_clients_pings() -> None:
    timeouts = {w[1]: haproxy_seconds(w[2]) for w in haproxy_lines() if w[0] == "timeout"}
    assert timeouts["tunnel"] > ServerOptions().idle_timeout_s
    assert timeouts["tunnel"] > (ConnectionOptions().ping_interval_s or 0)
    assert timeouts["client-fin"] >= ServerOptions().close_timeout_s
    assert timeouts["http-request"] >= ServerOptions().request_head_timeout_s


def haproxy_check(servers: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")}
    env.update({f"ASR_SERVER_{i}": f"127.0.0.1:{9000 + i}" for i in range(1, servers + 1)})
    return subprocess.run([HAPROXY, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (scripts/setup.sh test)")
def test_haproxy_accepts_the_config_for_one_to_eight_replicas() -> None:
    for servers in (1, 3, 8):
        checked = haproxy_check(servers)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    missing = haproxy_check(0)
    assert missing.returncode != 0 and "'server' expects" in missing.stderr  # no replica at all: refused
