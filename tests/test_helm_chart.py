"""The Helm chart, rendered by the real helm v3 binary and validated against Kubernetes' schemas.

Every values set in ``helm/values/`` (and the defaults) must pass ``helm lint --strict``, and every
object it renders must validate strictly against the Kubernetes 1.29 and newest schemas that
kubernetes-validate carries offline. CRD kinds (ServiceMonitor, ScaledObject) have no schema
there: they are listed explicitly and checked by hand. No cluster is needed.
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "smartedit"
VALUES = ROOT / "helm" / "values"
ADAPTER_VALUES = ROOT / "helm" / "prometheus-adapter-values.yaml"
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}
VALUE_SETS = ["defaults"] + sorted(path.stem for path in VALUES.glob("*.yaml"))
GPU = "nvidia.com/gpu"


@functools.lru_cache(maxsize=None)
def helm_binary() -> str:
    """A helm v3 binary: the pinned one the test set-up installs (scripts/install-test-tools.sh), or
    SMARTEDIT_HELM's, or one on PATH. The tests fetch nothing themselves: they run offline."""
    for candidate in (os.environ.get("SMARTEDIT_HELM"), ROOT / ".tools" / "bin" / "helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("no helm binary: run `bash scripts/install-test-tools.sh` (or set SMARTEDIT_HELM to a helm v3 "
                "binary)", pytrace=False)


def helm(command: str, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess:
    """``helm lint <chart> ...`` or ``helm template t <chart> ...`` (release name "t")."""
    target = ["t", str(chart)] if command == "template" else [str(chart)]
    return subprocess.run([helm_binary(), command, *target, *args], capture_output=True, text=True, timeout=120)


def values_args(value_set: str) -> list[str]:
    return [] if value_set == "defaults" else ["-f", str(VALUES / f"{value_set}.yaml")]


def render(value_set: str = "defaults", *sets: str, chart: Path = CHART) -> list[dict]:
    args = ["template", "--namespace", "edit", *values_args(value_set)]
    for assignment in sets:
        args += ["--set", assignment]
    completed = helm(*args, chart=chart)
    assert completed.returncode == 0, completed.stderr
    return [doc for doc in yaml.safe_load_all(completed.stdout) if doc]


def only(objects: list[dict], kind: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def server_deployment(objects: list[dict]) -> dict:
    """The server's Deployment (the gateway, when enabled, has its own)."""
    matches = [o for o in objects if o["kind"] == "Deployment"
               and o["metadata"]["labels"]["app.kubernetes.io/component"] == "server"]
    assert len(matches) == 1, f"expected one server Deployment, got {len(matches)}"
    return matches[0]


def pod_spec(objects: list[dict]) -> dict:
    return server_deployment(objects)["spec"]["template"]["spec"]


def server_container(objects: list[dict]) -> dict:
    return next(c for c in pod_spec(objects)["containers"] if c["name"] == "tritonserver")


def arg_value(container: dict, flag: str) -> str:
    return next(a.split("=", 1)[1] for a in container["args"] if a.startswith(f"--{flag}="))


# --- every values set: lint, render, validate ---------------------------------------------------

@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict_passes(value_set):
    completed = helm("lint", "--strict", *values_args(value_set))
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_object_validates_strictly(value_set):
    for obj in render(value_set):
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_KINDS:
            # No schema ships for CRDs: prove that, so that a future schema is not ignored.
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[0], strict=True)
            assert obj["metadata"]["name"] and isinstance(obj["spec"], dict)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is invalid for Kubernetes {version}: "
                            f"{error.message} at {list(error.path)}")


def test_no_removed_or_beta_api_versions_in_the_chart():
    removed = ("autoscaling/v2beta", "policy/v1beta1", "networking.k8s.io/v1beta1", "extensions/v1beta1")
    for template in (CHART / "templates").rglob("*"):
        if template.is_file():
            text = template.read_text()
            assert not any(api in text for api in removed), template
    for value_set in VALUE_SETS:
        assert not any(o["apiVersion"].startswith(removed) for o in render(value_set))


# --- the pod --------------------------------------------------------------------------------------

def test_gpu_profiles_request_and_limit_the_gpus_asked_for():
    for value_set, sets in (("defaults", ()), ("s3", ()), ("defaults", ("gpu.count=2",))):
        resources = server_container(render(value_set, *sets))["resources"]
        expected = 2 if sets else 1
        assert resources["limits"][GPU] == expected and resources["requests"][GPU] == expected


def test_cpu_profile_asks_for_no_gpu_anywhere():
    objects = render("cpu")
    spec = pod_spec(objects)
    for container in spec["containers"] + spec["initContainers"]:
        assert GPU not in container["resources"].get("limits", {})
        assert GPU not in container["resources"].get("requests", {})


def test_probes_use_triton_health_endpoints_and_check_every_model_process():
    from smartedit.ops.health import main as health_main

    container = server_container(render())
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    readiness = container["readinessProbe"]["exec"]["command"]
    assert readiness == ["python3", "-m", "smartedit.ops.health", "--ready", "--http-port", "8000"]
    # A dead model process is smartedit serve's to replace: liveness asks only whether Triton answers.
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    with pytest.raises(SystemExit) as shown:  # the module's own parser takes these arguments
        health_main([*readiness[3:], "--help"])
    assert shown.value.code == 0
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model loading takes minutes
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8001, "http": 8000, "metrics": 8002}


@pytest.mark.parametrize("value_set", ["defaults", "cpu"])
def test_pods_run_non_root_with_a_read_only_root_filesystem(value_set):
    spec = pod_spec(render(value_set))
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts  # the only writable scratch space
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"  # Python backend tensors


def test_the_pod_drains_before_it_stops_and_the_grace_period_covers_the_drain():
    from smartedit.cli.main import parser

    objects = render()
    spec, container = pod_spec(objects), server_container(objects)
    assert container["command"] == ["smartedit", "serve"]  # drains on SIGTERM, replaces dead model processes
    drain_timeout = int(arg_value(container, "drain-timeout"))
    assert drain_timeout == 300
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[:2] == ["smartedit", "drain"]
    drain = parser().parse_args(prestop[1:])  # the command's own parser takes it
    assert drain.func.__name__ == "cmd_drain" and drain.wait > drain_timeout
    # The drain (its timeout, then 15 s for the answers of the edits it stopped) and the stop must fit.
    assert spec["terminationGracePeriodSeconds"] > drain_timeout + 45
    longer = server_container(render("defaults", "triton.exitTimeoutSeconds=600", "terminationGracePeriodSeconds=700"))
    assert arg_value(longer, "drain-timeout") == "600"


def test_rolling_updates_never_take_a_serving_pod_away_first():
    strategy = only(render(), "Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_replicas_spread_over_nodes_and_tolerate_gpu_taints_by_default():
    spec = pod_spec(render())
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert pod_spec(render("gpu-cluster"))["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


# --- model repository sources --------------------------------------------------------------------

def test_pvc_source_mounts_the_claim_read_only():
    objects = render("gpu-cluster")
    container = server_container(objects)
    assert arg_value(container, "model-repository") == "/models/model_repository"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model-repository")
    assert mount["readOnly"] is True and mount["subPath"] == "sd15-inpaint-trt-h100/model_repository"
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "model-repository")
    assert volume["persistentVolumeClaim"]["claimName"] == "smartedit-models"
    claim = only(render("pvc"), "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "80Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_s3_source_lets_triton_read_the_bucket_with_credentials_from_a_secret():
    container = server_container(render("s3"))
    assert arg_value(container, "model-repository") == "s3://smartedit-models/sd15-inpaint-onnx/model_repository"
    assert container["envFrom"] == [{"secretRef": {"name": "smartedit-s3-credentials"}}]
    assert all(m["name"] != "model-repository" for m in container["volumeMounts"])


def test_gcs_source_mounts_the_credentials_file():
    objects = render("gcs")
    container = server_container(objects)
    assert arg_value(container, "model-repository").startswith("gs://")
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "object-storage-credentials")
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == mount["mountPath"] + "/credentials.json"
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "object-storage-credentials")
    assert volume["secret"]["secretName"] == "smartedit-gcs-credentials"


def test_build_source_exports_in_an_init_container_into_the_served_volume():
    objects = render("cpu")
    (init,) = pod_spec(objects)["initContainers"]
    assert init["command"] == ["smartedit", "export"]
    assert "--profile=onnx-cpu" in init["args"] and "--out=/models/model_repository" in init["args"]
    assert not any(a.startswith("--model=") for a in init["args"])  # empty: the embedded tiny model
    served = next(m for m in server_container(objects)["volumeMounts"] if m["name"] == "model-repository")
    assert served["subPath"] == "model_repository"


def test_build_source_exports_every_pipeline_of_a_model_list_into_one_repository():
    """README "Several pipelines in one server": one export, one repository, the first pipeline plain."""
    from smartedit.cli.main import parser as smartedit_parser

    listed = render("cpu", "modelRepository.build.model={sd15=runwayml/stable-diffusion-inpainting,dreamshaper=a/b}")
    (init,) = pod_spec(listed)["initContainers"]
    models = [a for a in init["args"] if a.startswith("--model=")]
    assert models == ["--model=sd15=runwayml/stable-diffusion-inpainting", "--model=dreamshaper=a/b"]
    assert smartedit_parser().parse_args(["export", *init["args"]]).model == [
        "sd15=runwayml/stable-diffusion-inpainting", "dreamshaper=a/b"]
    (one,) = pod_spec(render("cpu", "modelRepository.build.model=a/b"))["initContainers"]
    assert [a for a in one["args"] if a.startswith("--model=")] == ["--model=a/b"]


# --- services, ingress, monitoring, scaling, policies --------------------------------------------

def test_admin_apis_are_restricted_by_default_with_a_key_from_a_generated_secret():
    from smartedit.ops.server import ADMIN_KEY_HEADER, RESTRICTED_APIS

    from smartedit.cli.main import ADMIN_KEY_ENV, _admin_key, parser

    objects = render()
    container = server_container(objects)
    # smartedit serve restricts the admin APIs with the key it finds in $SMARTEDIT_ADMIN_KEY.
    serve = parser().parse_args(container["command"][1:] + container["args"])
    assert not serve.no_restrict and serve.admin_key_file is None
    env = next(e for e in container["env"] if e["name"] == ADMIN_KEY_ENV)
    assert env["valueFrom"]["secretKeyRef"] == {"name": "t-smartedit-admin-key", "key": "admin-key"}
    secret = only(objects, "Secret")
    assert secret["metadata"]["name"] == "t-smartedit-admin-key"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = base64.b64decode(secret["data"]["admin-key"]).decode()
    assert len(key) == 40
    os.environ[ADMIN_KEY_ENV] = key
    try:
        assert _admin_key(serve, Path("/nonexistent")) == key  # read, not written anywhere
    finally:
        del os.environ[ADMIN_KEY_ENV]
    from smartedit.ops.server import restriction_args

    assert restriction_args(key) == [f"--grpc-restricted-protocol={','.join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}={key}",
                                     f"--http-restricted-api={','.join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}={key}"]


def test_admin_key_from_an_existing_secret_or_no_restriction_when_asked():
    objects = render("defaults", "triton.adminKey.existingSecret=ops-keys")
    env = next(e for e in server_container(objects)["env"] if e["name"] == "SMARTEDIT_ADMIN_KEY")
    assert env["valueFrom"]["secretKeyRef"]["name"] == "ops-keys"
    assert not [o for o in objects if o["kind"] == "Secret"]  # the chart makes none of its own
    open_objects = render("defaults", "triton.adminKey.restrict=false")
    container = server_container(open_objects)
    assert "--no-restrict" in container["args"]
    assert all(e["name"] != "SMARTEDIT_ADMIN_KEY" for e in container["env"])


def test_services_expose_grpc_http_and_metrics_separately():
    services = {s["metadata"]["name"]: s for s in render() if s["kind"] == "Service"}
    main, metrics = services["t-smartedit"], services["t-smartedit-metrics"]
    assert {p["name"]: p["port"] for p in main["spec"]["ports"]} == {"grpc": 8001, "http": 8000}
    assert {p["name"]: p["port"] for p in metrics["spec"]["ports"]} == {"metrics": 8002}


def test_grpc_ingress_uses_tls_and_the_grpc_backend_protocol():
    ingress = only(render("gpu-cluster"), "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert ingress["spec"]["tls"][0]["hosts"] == ["smartedit.example.com"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "t-smartedit", "port": {"name": "grpc"}}
    assert not any(o["kind"] == "Ingress" for o in render())


def test_servicemonitor_scrapes_the_metrics_service():
    objects = render("autoscaling")
    monitor = only(objects, "ServiceMonitor")
    metrics_service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-metrics"))
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_hpa_is_autoscaling_v2_on_the_metric_the_adapter_rule_produces():
    objects = render("autoscaling")
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert rule["seriesQuery"].startswith("smartedit_scheduler_queue_wait_seconds_count")
    assert "smartedit_scheduler_queue_wait_seconds_sum" in rule["metricsQuery"]
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "250"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 6)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    assert "replicas" not in only(objects, "Deployment")["spec"]  # the HPA owns the count


def test_keda_scales_on_the_same_queue_time_without_an_hpa_of_ours():
    objects = render("keda")
    assert not any(o["kind"] == "HorizontalPodAutoscaler" for o in objects)
    (trigger,) = only(objects, "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "smartedit_scheduler_queue_wait_seconds_sum" in trigger["metadata"]["query"]
    assert 'namespace="edit"' in trigger["metadata"]["query"]


def test_pdb_keeps_all_but_one_server_pod():
    objects = render()
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == only(objects, "Deployment")["spec"]["selector"]["matchLabels"]


def test_network_policy_admits_clients_and_scrapers_on_their_ports_only():
    policy = only(render("gpu-cluster"), "NetworkPolicy")
    clients, scrapers = policy["spec"]["ingress"]
    assert {p["port"] for p in clients["ports"]} == {"grpc", "http"}
    assert {p["port"] for p in scrapers["ports"]} == {"metrics"}
    assert clients["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}


def test_resource_quota_example_renders_and_validates():
    quota = only(render("defaults", "resourceQuota.enabled=true"), "ResourceQuota")
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "8"
    kubernetes_validate.validate(quota, KUBERNETES_VERSIONS[0], strict=True)


def test_notes_say_how_to_call_the_service(tmp_path):
    # helm renders NOTES.txt only on install (which needs a cluster): render it through tpl in a copy.
    chart = tmp_path / "smartedit"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-under-test.txt")
    (chart / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '{{ tpl (.Files.Get "notes-under-test.txt") . | indent 4 }}\n')
    notes = only(render("gpu-cluster", chart=chart), "ConfigMap")["data"]["notes"]
    assert "t-smartedit-pods.edit.svc:8001" in notes and "balance=True" in notes
    assert "kubectl -n edit port-forward svc/t-smartedit 8001:8001" in notes
    assert "smartedit-edit --url smartedit.example.com:443 --ssl" in notes
    assert "smartedit_scheduler_queue_time_ms" in notes


# --- bad values are refused, readably ------------------------------------------------------------

@pytest.mark.parametrize("bad_file,fragment", [
    ("replicas-zero", "replicaCount: Must be greater than or equal to 1"),
    ("unknown-profile", 'runtimeProfile: runtimeProfile must be one of the following: "tensorrt", "onnx-gpu", "onnx-cpu"'),
    ("bad-storage-uri", "modelRepository.objectStorage.uri: Does not match pattern"),
    ("typo-key", "Additional property autoscalling is not allowed"),
    ("grace-too-short", "terminationGracePeriodSeconds (60) must exceed triton.exitTimeoutSeconds + 45 (345)"),
])
def test_bad_values_are_rejected_with_a_message_naming_the_value(bad_file, fragment):
    path = VALUES / "invalid" / f"{bad_file}.yaml"
    completed = helm("template", "-f", str(path))  # what `helm install` renders
    assert completed.returncode != 0, f"helm template accepted {path.name}"
    assert fragment in completed.stderr, completed.stderr
    linted = helm("lint", "--strict", "-f", str(path))
    assert fragment in linted.stdout + linted.stderr
    # lint fails on schema violations; it only reports the template's own `fail` checks (helm's rule).
    if not bad_file.startswith("grace"):
        assert linted.returncode != 0


@pytest.mark.parametrize("assignment,fragment", [
    ("modelRepository.source=objectStorage", "modelRepository.objectStorage.uri is required"),
    ("autoscaling.enabled=true,autoscaling.minReplicas=5,autoscaling.maxReplicas=2",
     "autoscaling.minReplicas (5) must not exceed autoscaling.maxReplicas (2)"),
    ("gpu.count=0", "gpu.count: Must be greater than or equal to 1"),
])
def test_inconsistent_settings_are_rejected(assignment, fragment):
    completed = helm("template", "--set", assignment)
    assert completed.returncode != 0 and fragment in completed.stderr, completed.stderr


# --- the REST gateway -------------------------------------------------------------------------

def _gateway_objects(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objects if o["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"}


def test_the_gateway_is_off_by_default():
    assert not _gateway_objects(render())


def test_the_gateway_balances_over_every_ready_server_pod_and_is_ready_only_while_triton_is():
    from smartedit_gateway.__main__ import parser as gateway_parser

    objects = render("gateway")
    gateway = _gateway_objects(objects)
    assert set(gateway) == {"Deployment", "Service", "Ingress"}
    container = gateway["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    # The headless Service: one address per ready pod, none for a pod that is not ready.
    pods = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "t-smartedit-pods")
    assert pods["spec"]["clusterIP"] == "None" and pods["spec"]["publishNotReadyAddresses"] is False
    assert pods["spec"]["selector"] == server_deployment(objects)["spec"]["selector"]["matchLabels"]
    grpc_port = next(p["port"] for p in pods["spec"]["ports"] if p["name"] == "grpc")
    args = gateway_parser().parse_args(container["args"])
    assert args.triton == f"t-smartedit-pods.edit.svc:{grpc_port}" and args.balance is True
    # The servers close connections now and then, so that balancing clients find pods added since.
    assert int(arg_value(server_container(objects), "max-connection-age")) > 0
    assert "--cors-origin=https://editor.example.com" in container["args"] and "--max-request-mb=32" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "tcpSocket" in container["livenessProbe"]  # a Triton outage must not restart gateways
    assert container["securityContext"]["readOnlyRootFilesystem"] and not container.get("resources", {}).get(
        "limits", {}).get(GPU)
    ingress = gateway["Ingress"]
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"].startswith("/api") and path["backend"]["service"]["name"] == "t-smartedit-gateway"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "32m"
    assert "backend-protocol" not in str(ingress["metadata"]["annotations"])  # plain HTTP, unlike the gRPC one
    policy = only(objects, "NetworkPolicy")
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": gateway["Deployment"]["spec"]["selector"]["matchLabels"]}} in sources
