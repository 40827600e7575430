"""TLS, mutual TLS and scoped tokens on a real service process (`rewardline serve reward --tls-cert ... --auth-tokens
...`), on both faces, and on the trainer's reward source and control API.

One service for the module: mutual TLS on gRPC and HTTP, tokens, a plaintext health-only port. Its certificate is
rotated and its token file edited while it runs (each test that does so leaves the others' tokens and a certificate
from the same CA in force), so what a test sees never depends on another's order. Reloads are waited for with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from certs import CertificateAuthority, Issued
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rewardline.services import cli
from rewardline.services.api import REWARD_SERVICE, pb, pb_grpc
from rewardline.services.auth import hashed_entries
from rewardline.services.client import AsyncRewardClient, ChannelSettings, RewardClient, open_channel
from rewardline.services.config import beyond_loopback
from rewardline.services.metrics import scrape
from rewardline.services.process import ServiceProcess, free_port
from rewardline.services.security import warn_if_exposed
from rewardline.services.tls import ClientTLS, client_ssl_context

# The tokens in clear: what clients hold. The service's file has their hashes only.
SCORER = "tok-scorer-7c1e9a"  # score
OPS = "tok-ops-52bd03"  # score, admin
ADMIN_ONLY = "tok-admin-only-e44f10"  # admin: not enough to score
TEMP = "tok-temp-90aa71"  # score, revoked by test_a_token_removed_from_the_file_is_refused_without_a_restart
TOKENS = {"scorer": (SCORER, ["score"]), "ops": (OPS, ["score", "admin"]), "admin-only": (ADMIN_ONLY, ["admin"])}
SAMPLE = {"id": "a", "prompt": "What is 2 + 3?", "response": "The answer is 5."}
DEADLINE_S = 60.0


@dataclass
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority  # signs nothing the service trusts
    live_cert: Path  # what the service reads (rotated in place by the tests)
    live_key: Path
    first: Issued
    second: Issued
    client: Issued  # signed by ca: accepted for mutual TLS
    stranger: Issued  # signed by other_ca
    token_files: dict[str, Path]  # token name -> a file holding it (what clients are given)
    tokens_yaml: Path


def write_token_file(path: Path, with_temp: bool) -> None:
    entries = [(name, token, scopes) for name, (token, scopes) in TOKENS.items()]
    if with_temp:
        entries.append(("temp", TEMP, ["score"]))
    path.write_text(yaml.safe_dump(hashed_entries(entries)))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(root / "ca")
    other_ca = CertificateAuthority.create(root / "other", "another CA")
    first, second = ca.issue(root / "first", "localhost"), ca.issue(root / "second", "localhost")
    live_cert, live_key = root / "live" / "tls.crt", root / "live" / "tls.key"
    live_cert.parent.mkdir()
    shutil.copy(first.cert, live_cert)
    shutil.copy(first.key, live_key)
    token_files = {}
    for name, token in {**{n: t for n, (t, _) in TOKENS.items()}, "temp": TEMP}.items():
        token_files[name] = root / "client" / f"{name}.token"
        token_files[name].parent.mkdir(exist_ok=True)
        token_files[name].write_text(token + "\n")  # a trailing newline, as `echo` and editors leave it
    tokens_yaml = root / "tokens.yaml"
    write_token_file(tokens_yaml, with_temp=True)
    return Pki(
        ca=ca,
        other_ca=other_ca,
        live_cert=live_cert,
        live_key=live_key,
        first=first,
        second=second,
        client=ca.issue(root / "client", "trainer", server=False),
        stranger=other_ca.issue(root / "stranger", "stranger", server=False),
        token_files=token_files,
        tokens_yaml=tokens_yaml,
    )


@pytest.fixture(scope="module")
def service(pki, reward_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("service") / "service.log"
    svc = ServiceProcess(
        "reward",
        [
            "--model",
            str(reward_dir),
            "--tls-cert",
            str(pki.live_cert),
            "--tls-key",
            str(pki.live_key),
            "--tls-client-ca",
            str(pki.ca.path),
            "--auth-tokens",
            str(pki.tokens_yaml),
            "--health-port",
            str(free_port()),
            "--log-level",
            "info",
        ],
        http_port=free_port(),
        log_path=log_path,
        tls=ClientTLS(ca=pki.ca.path, cert=pki.client.cert, key=pki.client.key),  # health needs no token
    )
    with svc:
        yield svc


def health_port(svc: ServiceProcess) -> int:
    return int(svc.args[svc.args.index("--health-port") + 1])


def trusted(pki: Pki, token: str | None = "scorer", client: Issued | None = None) -> ChannelSettings:
    """Settings of a client that trusts the CA and presents ``client`` (the CA's client certificate by default)."""
    client = client or pki.client
    tls = ClientTLS(ca=pki.ca.path, cert=client.cert, key=client.key)
    return ChannelSettings(retry=None, tls=tls, token_file=pki.token_files[token] if token else None)


def score_code(svc: ServiceProcess, settings: ChannelSettings) -> grpc.StatusCode:
    """The status of one Score call with these settings (OK when it scored)."""
    with RewardClient(svc.target, timeout=30, settings=settings) as client:
        try:
            (reward,) = client.stub.Score(
                pb.ScoreRequest(samples=[pb.Sample(**SAMPLE)]), timeout=30, metadata=client._metadata()
            ).rewards
        except grpc.RpcError as e:
            return e.code()
    assert reward.id == "a"
    return grpc.StatusCode.OK


def https(
    svc: ServiceProcess,
    pki: Pki,
    path: str,
    body: object = None,
    token: str | None = "scorer",
    client: Issued | None = None,
    trust: Path | None = None,
) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one HTTPS request with the standard library's client."""
    client = client or pki.client
    context = client_ssl_context(ClientTLS(ca=trust or pki.ca.path, cert=client.cert, key=client.key))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {pki.token_files[token].read_text().strip()}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(svc.http_url + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


def served_certificate(port: int, pki: Pki, alpn: str) -> str:
    """The PEM certificate a new handshake on ``port`` gets (with the client certificate, as mutual TLS asks)."""
    context = client_ssl_context(ClientTLS(ca=pki.ca.path, cert=pki.client.cert, key=pki.client.key))
    context.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).strip()


def until(predicate: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.2)


# --- TLS and mutual TLS -------------------------------------------------------------------------------------------
def test_grpc_takes_only_clients_that_trust_its_ca_and_present_a_certificate_it_signed(service, pki):
    assert score_code(service, trusted(pki)) == grpc.StatusCode.OK
    refused = {
        "plaintext": ChannelSettings(retry=None, token_file=pki.token_files["scorer"]),
        "system CAs only": ChannelSettings(
            retry=None,
            tls=ClientTLS(cert=pki.client.cert, key=pki.client.key),
            token_file=pki.token_files["scorer"],
        ),
        "no client certificate": ChannelSettings(
            retry=None, tls=ClientTLS(ca=pki.ca.path), token_file=pki.token_files["scorer"]
        ),
        "a certificate of another CA": trusted(pki, client=pki.stranger),
    }
    for case, settings in refused.items():
        assert score_code(service, settings) == grpc.StatusCode.UNAVAILABLE, case  # no handshake, no call


def test_http_takes_the_same_clients(service, pki):
    status, _, body = https(service, pki, "/v1/score", {"samples": [SAMPLE]})
    assert status == 200 and body["rewards"][0]["id"] == "a"
    with pytest.raises(urllib.error.URLError):
        https(service, pki, "/health", token=None, trust=pki.other_ca.path)  # the server's certificate is not trusted
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        https(service, pki, "/health", token=None, client=pki.stranger)
    plain = urllib.request.Request(f"http://127.0.0.1:{service.http_port}/health")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(plain, timeout=10)


def test_health_is_open_and_the_health_port_serves_nothing_else(service, pki):
    with RewardClient(service.target, settings=trusted(pki, token=None)) as client:
        assert client.health() == "SERVING"  # over TLS, without a token
    assert https(service, pki, "/health", token=None)[0] == 200
    assert https(service, pki, "/ready", token=None)[0] == 200
    # The probes' port: plaintext, health only (what kubelet's native gRPC probes can reach).
    with grpc.insecure_channel(f"127.0.0.1:{health_port(service)}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        assert check(health_pb2.HealthCheckRequest(service=REWARD_SERVICE), timeout=10).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.RewardServiceStub(channel).Score(
                pb.ScoreRequest(samples=[pb.Sample(**SAMPLE)]),
                timeout=10,
                metadata=[("authorization", f"Bearer {OPS}")],
            )
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as e:
            list(
                reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
            )
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- tokens -------------------------------------------------------------------------------------------------------
def test_grpc_tokens_and_scopes(service, pki):
    assert score_code(service, trusted(pki, "ops")) == grpc.StatusCode.OK
    assert score_code(service, trusted(pki, None)) == grpc.StatusCode.UNAUTHENTICATED
    assert score_code(service, trusted(pki, "admin-only")) == grpc.StatusCode.PERMISSION_DENIED
    with open_channel(service.target, trusted(pki, None)) as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetInfo(pb.GetInfoRequest(), timeout=10, metadata=[("authorization", "Bearer not-a-token")])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "not-a-token" not in e.value.details()
        # Streams are refused before anything is read from them.
        with pytest.raises(grpc.RpcError) as e:
            list(stub.ScoreStream(iter([pb.ScoreRequest(samples=[pb.Sample(**SAMPLE)])]), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as e:
            list(reflect(iter([request]), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED  # reflection follows auth
        (listed,) = reflect(iter([request]), timeout=10, metadata=[("authorization", f"Bearer {SCORER}")])
        assert REWARD_SERVICE in {s.name for s in listed.list_services_response.service}


def test_the_clients_send_the_token_on_every_call(service, pki):
    settings = trusted(pki, "scorer")
    with RewardClient(service.target, settings=settings) as client:
        assert client.info().max_samples_per_request > 0
        assert [r.id for r in client.score([{**SAMPLE, "id": f"s{i}"} for i in range(3)])] == ["s0", "s1", "s2"]
        assert [r.id for r in client.score_stream([SAMPLE])] == ["a"]
        assert client.health() == "SERVING"

    async def asynchronously() -> None:
        async with AsyncRewardClient(service.target, settings=settings) as client:
            assert (await client.info()).max_samples_per_request > 0
            assert len(await client.score([SAMPLE])) == 1
            assert [r.id async for r in client.score_stream([SAMPLE])] == ["a"]
            assert await client.health() == "SERVING"

    asyncio.run(asynchronously())


def test_http_tokens_and_scopes(service, pki):
    assert https(service, pki, "/v1/info", token="scorer")[0] == 200
    status, headers, body = https(service, pki, "/v1/score", {"samples": [SAMPLE]}, token=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and body["error"]["code"] == 401
    status, _, body = https(service, pki, "/v1/score", {"samples": [SAMPLE]}, token="admin-only")
    assert status == 403 and body["error"]["type"] == "PERMISSION_DENIED" and "admin-only" in body["error"]["message"]
    assert https(service, pki, "/get_reward", {"query": ["x"], "prompts": ["x"]}, token=None)[0] == 401
    assert https(service, pki, "/classify", {"input": "x"}, token=None)[0] == 401
    assert https(service, pki, "/no/such/route", token=None)[0] == 401  # closed by default, not a 404 to map routes
    assert https(service, pki, "/no/such/route", token="scorer")[0] == 404


def test_a_token_removed_from_the_file_is_refused_without_a_restart(service, pki):
    assert score_code(service, trusted(pki, "temp")) == grpc.StatusCode.OK
    assert https(service, pki, "/v1/info", token="temp")[0] == 200
    write_token_file(pki.tokens_yaml, with_temp=False)
    until(
        lambda: score_code(service, trusted(pki, "temp")) == grpc.StatusCode.UNAUTHENTICATED,
        "the revoked token refused on gRPC",
    )
    until(lambda: https(service, pki, "/v1/info", token="temp")[0] == 401, "the revoked token refused over HTTP")
    assert score_code(service, trusted(pki, "scorer")) == grpc.StatusCode.OK  # the others still work


# --- rotation -------------------------------------------------------------------------------------------------------
def test_a_rotated_certificate_is_served_on_both_faces_without_a_restart(service, pki):
    first, second = pki.first.cert.read_text().strip(), pki.second.cert.read_text().strip()
    live = pki.live_cert.read_text().strip()
    new = pki.second if live == first else pki.first  # rotate to whichever is not in force
    assert served_certificate(service.port, pki, "h2") == live
    assert served_certificate(service.http_port, pki, "http/1.1") == live
    shutil.copy(new.key, pki.live_key)  # as cert-manager's kubelet update does: both files, one after the other
    shutil.copy(new.cert, pki.live_cert)
    expected = new.cert.read_text().strip()
    until(lambda: served_certificate(service.port, pki, "h2") == expected, "gRPC serves the new certificate")
    until(lambda: served_certificate(service.http_port, pki, "http/1.1") == expected, "HTTP serves it")
    assert {first, second} >= {expected}
    assert score_code(service, trusted(pki)) == grpc.StatusCode.OK
    assert service.process is not None and service.process.poll() is None  # the same process throughout


# --- what is counted and logged ----------------------------------------------------------------------------------
def test_refusals_are_counted_by_token_name_and_no_token_is_ever_shown(service, pki):
    score_code(service, trusted(pki, "admin-only"))
    score_code(service, trusted(pki, None))
    https(service, pki, "/v1/score", {"samples": [SAMPLE]}, token="admin-only")
    page = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).read().decode()
    metrics = scrape(service.metrics_port)
    refused = {
        dict(labels)["token"]: value
        for (name, labels), value in metrics.items()
        if name == "rewardline_auth_refusals_total" and dict(labels)["code"] == "PERMISSION_DENIED"
    }
    assert refused.get("admin-only", 0) >= 2  # gRPC and HTTP
    unauthenticated = metrics[("rewardline_auth_refusals_total", (("code", "UNAUTHENTICATED"), ("token", "(none)")))]
    assert unauthenticated >= 1
    log = service.log_path.read_text()
    assert '"token_name": "admin-only"' in log and "call refused" in log
    for token in (SCORER, OPS, ADMIN_ONLY, TEMP):
        assert token not in page and token not in log


def test_a_server_beyond_loopback_with_neither_tls_nor_tokens_warns(caplog):
    assert beyond_loopback("0.0.0.0") and beyond_loopback("10.1.2.3") and beyond_loopback("reward.internal")
    assert not beyond_loopback("127.0.0.1") and not beyond_loopback("localhost") and not beyond_loopback("::1")
    with caplog.at_level(logging.WARNING, logger="rewardline.services.security"):
        warn_if_exposed("rewardline serve reward", "0.0.0.0", 50051, tls=False, tokens=False)
        warned = len(caplog.records)
        warn_if_exposed("rewardline serve reward", "0.0.0.0", 50051, tls=True, tokens=False)
        warn_if_exposed("rewardline serve reward", "0.0.0.0", 50051, tls=False, tokens=True)
        warn_if_exposed("rewardline serve reward", "127.0.0.1", 50051, tls=False, tokens=False)
    assert warned == 1 and len(caplog.records) == 1 and "neither TLS nor tokens" in caplog.records[0].getMessage()


# --- the command-line client ------------------------------------------------------------------------------------
def test_score_and_info_commands_speak_tls_and_send_the_token(service, pki, capsys):
    security = [
        "--target",
        service.target,
        "--tls-ca",
        str(pki.ca.path),
        "--tls-cert",
        str(pki.client.cert),
        "--tls-key",
        str(pki.client.key),
    ]
    token = ["--token-file", str(pki.token_files["scorer"])]
    assert cli.main(["score", *security, *token, "--prompt", "What is 2 + 3?", "--response", "5"]) == 0
    assert "score" in json.loads(capsys.readouterr().out.splitlines()[-1])
    assert cli.main(["info", *security, *token]) == 0
    assert json.loads(capsys.readouterr().out)["max_samples_per_request"] > 0
    assert cli.main(["info", *security]) == 1  # no token
    assert "UNAUTHENTICATED" in capsys.readouterr().err


# --- the framework adapters ---------------------------------------------------------------------------------------
def test_the_adapters_speak_mutual_tls_and_send_the_token(service, pki, local_models, monkeypatch):
    """Each adapter, called as its framework calls it, with the TLS files and the token as keyword arguments (verl's
    reward_kwargs, NeMo-RL's config) or from $REWARDLINE_* (OpenRLHF loads the file and passes nothing): the scores
    equal the Python client's over the same secured channel, and without the token the call is refused."""
    from support import openrlhf_payload
    from transformers import AutoTokenizer

    from rewardline.services.integrations import common, nemo_rl, openrlhf, trl, verl

    files = {
        "tls_ca": str(pki.ca.path),
        "tls_cert": str(pki.client.cert),
        "tls_key": str(pki.client.key),
        "token_file": str(pki.token_files["scorer"]),
    }
    prompts = ["What is 2 + 3?", "What is 4 + 4?"]
    responses = ["The answer is 5.", "The answer is 9."]
    with RewardClient(service.target, timeout=30, settings=trusted(pki)) as client:
        expected = [
            r.score
            for r in client.score(
                [{"id": str(i), "prompt": p, "response": r} for i, (p, r) in enumerate(zip(prompts, responses))]
            )
        ]
    tolerance = 1e-5

    for asynchronous in (False, True):
        function = trl.reward_function(service.target, asynchronous=asynchronous, **files)
        got = function(prompts=prompts, completions=responses)
        got = asyncio.run(got) if asynchronous else got
        assert got == pytest.approx(expected, abs=tolerance), f"trl, asynchronous={asynchronous}"

    one = [
        verl.compute_score("math", r, "", {"prompt": p}, target=service.target, **files)
        for p, r in zip(prompts, responses)
    ]

    async def awaited() -> list[dict]:
        return await asyncio.gather(
            *[
                verl.compute_score_async("math", r, "", {"prompt": p}, target=service.target, **files)
                for p, r in zip(prompts, responses)
            ]
        )

    batch = verl.compute_score_batch(
        ["math"] * 2, responses, ["", ""], [{"prompt": p} for p in prompts], target=service.target, **files
    )
    for results in (one, asyncio.run(awaited()), batch):
        assert [r["score"] for r in results] == pytest.approx(expected, abs=tolerance), "verl"

    env = nemo_rl.RewardlineEnvironment({"target": service.target, **files})
    logs = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in zip(prompts, responses)]
    assert env.step(logs, [{}, {}]).rewards.tolist() == pytest.approx(expected, abs=tolerance), "nemo_rl"

    # OpenRLHF's file: everything from the environment.
    policy = local_models / "policy"
    queries, rendered = openrlhf_payload(AutoTokenizer.from_pretrained(policy), list(zip(prompts, responses)))
    monkeypatch.setenv("REWARDLINE_TARGET", service.target)
    monkeypatch.setenv("REWARDLINE_TOKENIZER", str(policy))
    for name, value in files.items():
        monkeypatch.setenv(common.SECURITY_ENV[name], value)
    monkeypatch.setattr(openrlhf, "_default", None)
    assert openrlhf.reward_func(queries, rendered, ["", ""])["rewards"] == pytest.approx(expected, abs=tolerance)

    # An argument wins over its variable: the admin-only token is refused for scoring, and with no token at all (the
    # variables gone) the call is unauthenticated; neither is retried into a score.
    admin_only = {**files, "token_file": str(pki.token_files["admin-only"])}
    with pytest.raises(grpc.RpcError) as e:
        verl.compute_score("math", responses[0], "", {"prompt": prompts[0]}, target=service.target, **admin_only)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    monkeypatch.delenv(common.SECURITY_ENV["token_file"])
    with pytest.raises(grpc.RpcError) as e:
        trl.reward_function(service.target, asynchronous=False)(prompts=prompts, completions=responses)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for variable in common.SECURITY_ENV.values():
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        common.resolve_settings(tls_cert=pki.client.cert)
