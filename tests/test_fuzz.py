"""Property-based requests (hypothesis) over every RewardService RPC and message field, and raw bytes sent to each
method, against real reward and judge services: never UNKNOWN or INTERNAL, never a crash, SERVING after.

A few examples per property here (the whole file stays under a minute on a 2-core machine); bench/fuzz.py runs
the same strategies (tests/fuzzing.py) for as long as it is given and prints the counts of every status.
"""

from __future__ import annotations

import grpc
import pytest
from fuzzing import RAW, Prober, compare_requests, score_requests, stream_raw, stream_requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rewardline.services.api import pb
from rewardline.services.process import ServiceProcess, start_all

# deadline=None: a call's latency on a busy machine is no property of the input
CI = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SERVICE_ARGS = ["--max-samples-per-request", "4", "--max-queue-samples", "16"]


@pytest.fixture(scope="module")
def services(local_models):
    """A reward service and a judge (the kind that serves Compare), small limits so that inputs reach them."""
    reward = ServiceProcess("reward", ["--model", str(local_models / "reward"), "--max-length", "128", *SERVICE_ARGS])
    judge = ServiceProcess("judge", ["--model", str(local_models / "judge"), "--backend", "hf", *SERVICE_ARGS])
    start_all([reward, judge])
    yield {"reward": reward, "judge": judge}
    for svc in (reward, judge):
        assert svc.process is not None and svc.process.poll() is None, f"the {svc.kind} service died"
        with grpc.insecure_channel(svc.target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert svc.stop() == 0
        svc.kill()


@pytest.fixture(scope="module", params=["reward", "judge"])
def prober(request, services):
    with grpc.insecure_channel(services[request.param].target) as channel:
        yield Prober(channel)


@CI
@given(request=score_requests)
# found by bench/fuzz.py: a conversation of a long assistant message alone, which must be cut, was INTERNAL
@example(
    request=pb.ScoreRequest(samples=[pb.Sample(id="a", messages=[pb.Message(role="assistant", content="x " * 600)])])
)
def test_score(prober, request):
    prober.score(request)


@CI
@given(requests=stream_requests)
def test_score_stream(prober, requests):
    prober.score_stream(requests)


@CI
@given(request=compare_requests)
def test_compare(prober, request):
    prober.compare(request)


def test_get_info(prober):
    prober.info()


@CI
@given(method=st.sampled_from(sorted(RAW)), data=st.data())
def test_raw_bytes_to_each_unary_method(prober, method, data):
    prober.call(method, data.draw(RAW[method]))


@CI
@given(messages=stream_raw)
def test_raw_bytes_on_a_stream(prober, messages):
    prober.stream_raw(messages)


def test_every_method_was_answered(prober):
    """The properties above reached every method (a typo in a method name would show as UNIMPLEMENTED only)."""
    assert prober.call("GetInfo", pb.GetInfoRequest().SerializeToString()) is not None
    methods = {key.split(":")[0] for key in prober.counts}
    assert {"Score", "ScoreStream", "Compare", "GetInfo"} <= methods, prober.counts
