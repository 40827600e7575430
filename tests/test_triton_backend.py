"""The ``triton`` backend against a real tritonserver (nvidia-pytriton's, on loopback, started with
``rewardline triton start`` on a repository from ``rewardline triton build-repo``).

The service starts first, while Triton is down, and must come up NOT_SERVING and turn SERVING by itself once
Triton's model is ready; the last test stops Triton and restarts it on the same port under the same service.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import assert_close, samples, short_pairs

from rewardline.services.api import pb, pb_grpc
from rewardline.services.backends.triton import TritonClassifier, TritonSampleError
from rewardline.services.client import AsyncRewardClient, RewardClient
from rewardline.services.errors import ServiceError
from rewardline.services.process import ServiceProcess, wait_serving

MAX_LENGTH = 128


def health(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def wait_health(target: str, wanted: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if health(target) == wanted:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{target} did not become {wanted} in {timeout:.0f}s")


def raw_score(target: str, items: list[pb.Sample]) -> pb.ScoreResponse:
    """Score without the client's retries, so that the status the server answers is what comes back."""
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.RewardServiceStub(channel).Score(pb.ScoreRequest(samples=items), timeout=60)


@pytest.fixture(scope="module")
def stack(reward_dir, triton, tmp_path_factory):
    """Our service on the triton backend, started while Triton is down; then Triton. Yields what was seen
    before Triton came up, and the service."""
    triton.stop()
    args = [
        "--model",
        str(reward_dir),
        "--backend",
        "triton",
        "--triton-url",
        triton.url,
        "--triton-model",
        "reward",
        "--max-length",
        str(MAX_LENGTH),
        "--max-batch-size",
        "16",
        "--triton-concurrency",
        "3",
        "--triton-timeout-s",
        "60",
    ]
    service = ServiceProcess("reward", args, log_path=tmp_path_factory.mktemp("svc") / "service.log")
    log = open(service.log_path, "ab")
    service.process = subprocess.Popen(
        service.command(), env=service.env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        before = {}
        deadline = time.monotonic() + 120
        while True:  # loaded (GetInfo answers) while Triton is still down
            assert service.process.poll() is None, "the service died while Triton was down"
            try:
                with RewardClient(service.target, timeout=5) as c:
                    before["info"] = c.info()
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the service did not load its model"
                time.sleep(0.2)
        before["health"] = health(service.target)
        with pytest.raises(grpc.RpcError) as err:
            raw_score(service.target, [pb.Sample(id="a", prompt="What is 1 + 1?", response="2")])
        before["score"] = (err.value.code(), err.value.details())
        triton.start()
        wait_serving(service.target, 120, service.process)
        yield before, service
    finally:
        service.stop()
        service.kill()
        log.close()


@pytest.fixture(scope="module")
def target(stack):
    return stack[1].target


def test_service_starts_while_triton_is_down_and_serves_once_it_is_up(stack, reward_dir):
    before, service = stack
    assert before["info"].backend == "triton" and before["info"].model_name == "reward"
    assert before["health"] == "NOT_SERVING"
    code, details = before["score"]
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "Triton" in details
    assert health(service.target) == "SERVING"


def test_rewards_equal_the_hf_backends(target, triton, reward_dir, reference):
    """Same samples through Triton and through the hf backend's own forward pass on the same tokens."""
    from rewardline.services.backends.hf import HFClassifier
    from rewardline.services.config import ServeConfig
    from rewardline.services.modeling import load_tokenizer
    from rewardline.services.rendering import renderer_for

    pairs = short_pairs(reference, 24, MAX_LENGTH)
    with RewardClient(target, timeout=60) as client:
        rewards = client.score(samples(pairs))
        info = client.info()
    tokenizer = load_tokenizer(reward_dir)
    renderer = renderer_for(ServeConfig(model=reward_dir, max_length=MAX_LENGTH), tokenizer, reward_dir)
    token_ids = [r.token_ids for r in renderer.render(samples(pairs))]
    hf = HFClassifier(reward_dir, tokenizer, "cpu", "float32")
    hf_scores = [float(row[0]) for row in hf.forward(token_ids)]
    triton_scores = [r.score for r in rewards]
    worst = max(abs(a - b) for a, b in zip(triton_scores, hf_scores))
    print(f"triton vs hf backend: max |difference| over {len(pairs)} samples = {worst:.3g}")
    assert_close(triton_scores, hf_scores, tol=1e-4)
    assert_close(triton_scores, [reference.score(*p) for p in pairs], tol=1e-4)
    assert [r.num_tokens for r in rewards] == [len(ids) for ids in token_ids]
    assert all(r.model_revision == info.revision for r in rewards)
    assert info.device == f"triton://{triton.url}/reward"


def test_concurrent_requests_and_streams_get_their_own_rewards(target, reference):
    """Many clients at once: the service batches (up to 16, split into Triton's max of 8) with 3 calls in
    flight, Triton batches again; every sample still gets its own reward."""
    pairs = short_pairs(reference, 40, MAX_LENGTH, seed=1)
    expected = [reference.score(*p) for p in pairs]

    async def main() -> tuple[list[float], dict[str, float]]:
        async with AsyncRewardClient(target, timeout=120) as client:
            unary = await asyncio.gather(*(client.score(samples([p], prefix=f"u{i}-")) for i, p in enumerate(pairs)))
            streamed = {r.id: r.score async for r in client.score_stream(samples(pairs, prefix="st"))}
        return [r[0].score for r in unary], streamed

    unary, streamed = asyncio.run(main())
    assert_close(unary, expected)
    assert_close([streamed[f"st{i}"] for i in range(len(pairs))], expected)


BAD_REQUESTS = [
    ("empty batch", [], "no samples"),
    (
        "response that cannot fit",
        [pb.Sample(id="huge", prompt="p", response="seven " * 400)],
        "'huge': the response alone is",
    ),
]


@pytest.mark.parametrize("name,request_samples,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_invalid_argument_and_harmless(target, name, request_samples, message):
    with pytest.raises(grpc.RpcError) as err:
        raw_score(target, request_samples)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert health(target) == "SERVING"
    assert len(raw_score(target, [pb.Sample(id="ok", prompt="What is 1 + 1?", response="2")]).rewards) == 1


def run_classifier(reward_dir: Path, url: str, model: str, work):  # type: ignore[no-untyped-def]
    """Runs ``work(classifier)`` against Triton in a fresh event loop, then closes the classifier."""
    from rewardline.services.modeling import load_tokenizer

    async def main():  # type: ignore[no-untyped-def]
        classifier = TritonClassifier(reward_dir, load_tokenizer(reward_dir), url, model, timeout_s=60)
        try:
            return await work(classifier)
        finally:
            await classifier.close()

    return asyncio.run(main())


def test_triton_refusals_map_to_statuses_and_spare_the_neighbours(stack, triton, reward_dir, reference):
    """Token ids outside the vocabulary reach Triton only through a broken caller; Triton's INVALID_ARG
    must come back as INVALID_ARGUMENT for that sample, and a batch holding it is retried sample by sample."""
    good = reference.token_ids("What is 2 + 2?", "4")

    async def work(classifier: TritonClassifier):  # type: ignore[no-untyped-def]
        assert await classifier.ready()
        assert classifier.max_batch_size == 8
        alone = await classifier.classify([good])
        with pytest.raises(ServiceError) as single:
            await classifier.classify([[1, 2, 10**6]])
        with pytest.raises(TritonSampleError):
            await classifier.classify([good, [1, 2, 10**6]])
        many = await classifier.classify([good] * 19)  # 19 rows: three calls of at most 8
        return alone, single.value, many

    alone, single, many = run_classifier(reward_dir, triton.url, "reward", work)
    assert single.code == grpc.StatusCode.INVALID_ARGUMENT and "vocabulary" in single.message
    assert alone.shape == (1, 1) and abs(float(alone[0, 0]) - reference.score("What is 2 + 2?", "4")) < 1e-4
    assert many.shape == (19, 1) and np.allclose(many, alone[0, 0], atol=1e-4)


def test_unknown_model_is_not_ready_and_unavailable(stack, triton, reward_dir):
    async def work(classifier: TritonClassifier):  # type: ignore[no-untyped-def]
        ready = await classifier.ready()
        with pytest.raises(ServiceError) as err:
            await classifier.classify([[1, 2, 3]])
        return ready, err.value

    ready, error = run_classifier(reward_dir, triton.url, "no-such-model", work)
    assert ready is False
    assert error.code == grpc.StatusCode.UNAVAILABLE and "no-such-model" in error.message


def test_other_weights_in_triton_keep_the_backend_not_ready(stack, triton, reward_dir, tmp_path):
    """A model directory whose weights differ from the ones Triton serves: rewards would carry a false
    revision, so the backend refuses to be ready."""
    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "reward-other"
    shutil.copytree(reward_dir, other)
    weights = load_file(other / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + torch.ones_like(weights[name])
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})

    async def work(classifier: TritonClassifier):  # type: ignore[no-untyped-def]
        return await classifier.ready(), await classifier._triton().is_model_ready("reward")

    ready, triton_ready = run_classifier(other, triton.url, "reward", work)
    assert triton_ready is True and ready is False


def test_uncertainty_kind_runs_on_triton_unchanged(stack, triton, local_models, reference):
    """The uncertainty kind post-processes a plain checkpoint's logits (here a 5-head ensemble), so it runs on
    the triton backend as it is: its scorer on triton gives the rewards it gives on hf. (In-process scorers:
    the serving pipeline around them is the one the reward tests above run.)"""
    from rewardline.services.config import ServeConfig
    from rewardline.services.uncertainty.scorer import UncertaintyScorer

    model_dir = local_models / "uncertainty"
    pairs = short_pairs(reference, 10, MAX_LENGTH, seed=4)

    async def rewards(**backend: object) -> tuple[list[pb.Reward], pb.GetInfoResponse]:
        config = ServeConfig(kind="uncertainty", model=model_dir, max_length=MAX_LENGTH, device="cpu", **backend)
        scorer = UncertaintyScorer.load(config)
        try:
            assert await scorer.ready()
            return await scorer.score_batch(scorer.render(samples(pairs))), scorer.info()  # type: ignore[arg-type]
        finally:
            await scorer.close()

    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(triton.url) as control:
        control.load_model("uncertainty")  # the session's Triton starts with `reward` only
        try:
            served, info = asyncio.run(rewards(backend="triton", triton_url=triton.url, triton_model="uncertainty"))
        finally:
            control.unload_model("uncertainty")
    expected, _ = asyncio.run(rewards(backend="hf"))
    assert info.backend == "triton" and info.num_members == 5
    assert_close([r.score for r in served], [r.score for r in expected])
    assert_close([r.uncertainty.std for r in served], [r.uncertainty.std for r in expected])
    for got, want in zip(served, expected):
        assert_close(list(got.uncertainty.member_scores), list(want.uncertainty.member_scores))
        assert got.uncertainty.out_of_distribution == want.uncertainty.out_of_distribution
        assert got.model_revision == want.model_revision == info.revision


def test_stopped_triton_turns_health_not_serving_and_a_restart_brings_it_back(stack, triton, local_models, reference):
    """Runs last: Triton goes away under a running service, and under a trainer's Triton reward source, and
    comes back on the same port. The service turns NOT_SERVING and answers UNAVAILABLE, then serves again
    without a restart; the source reports the outage, holds its samples and resends them."""
    from test_triton_reward_source import arithmetic, source_config

    from rewardline.trainer.observability import TrainerMetrics
    from rewardline.trainer.rewards import make_source
    from rewardline.trainer.rewards.hub import RewardHub, RewardWaitTimeout

    _, service = stack
    pid = service.process.pid
    metrics = TrainerMetrics()
    source = make_source(source_config(triton, local_models))
    hub = RewardHub([source], metrics)
    hub.start()
    try:
        first = arithmetic("a", 4)
        hub.submit(first)
        hub.wait([s.id for s in first], timeout=120)

        assert triton.stop() == 0  # the launcher forwarded SIGTERM; tritonserver drained and exited cleanly
        second = arithmetic("b", 9)
        hub.submit(second)
        wait_health(service.target, "NOT_SERVING", timeout=60)
        with pytest.raises(grpc.RpcError) as err:
            raw_score(service.target, [pb.Sample(id="down", prompt="What is 3 + 3?", response="6")])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(RewardWaitTimeout):
            hub.wait([s.id for s in second], timeout=2)
        assert hub.waiting_for == ["rm"]

        triton.start()
        wait_health(service.target, "SERVING", timeout=120)
        reply = raw_score(service.target, [pb.Sample(id="back", prompt="What is 3 + 3?", response="6")])
        got = hub.wait([s.id for s in second], timeout=120)
        assert hub.waiting_for == []
    finally:
        hub.close()
    assert abs(reply.rewards[0].score - reference.score("What is 3 + 3?", "6")) < 1e-4
    assert service.process.pid == pid and service.process.poll() is None
    assert_close([got[s.id]["rm"].score for s in second], [reference.score(s.prompt, s.completion) for s in second])
    assert all(got[s.id]["rm"].error is None for s in second)
    assert source.outages == 1 and metrics.source_outages.labels("rm")._value.get() == 1
    assert metrics.duplicate_rewards.labels("rm")._value.get() == 0
