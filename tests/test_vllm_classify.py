"""`rewardline serve reward --backend vllm`: the reward kind on vLLM's pooling runner (the real CPU engine),
started for real and used through gRPC. Rewards must equal transformers' own forward pass on the same tokens."""

from __future__ import annotations

import pytest
from support import InProcessRewardModel, assert_close, samples, short_pairs

from rewardline.services.api import pb
from rewardline.services.client import RewardClient
from rewardline.services.process import ServiceProcess

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def services(local_models, reward_dir, start_together, stop_together):
    """The reward kind and the uncertainty kind, both on vLLM, started together."""
    reward = ServiceProcess(
        "reward",
        ["--model", str(reward_dir), "--backend", "vllm", "--max-length", str(MAX_LENGTH), "--max-batch-size", "16"],
    )
    uncertainty = ServiceProcess(
        "uncertainty",
        ["--model", str(local_models / "uncertainty"), "--backend", "vllm", "--max-length", str(MAX_LENGTH)],
    )
    start_together(reward, uncertainty)
    yield {"reward": reward, "uncertainty": uncertainty}
    assert stop_together(reward, uncertainty) == [0, 0]


@pytest.fixture(scope="module")
def client(services):
    with RewardClient(services["reward"].target, timeout=120) as c:
        yield c


def test_vllm_rewards_equal_the_transformers_forward(client, reference):
    """Mixed lengths in one request: vLLM packs them without padding, and no score may depend on that."""
    pairs = short_pairs(reference, 20, MAX_LENGTH, seed=3)
    rewards = client.score(samples(pairs))
    assert_close([r.score for r in rewards], [reference.score(*p) for p in pairs], tol=1e-4)
    assert [r.num_tokens for r in rewards] == [len(reference.token_ids(*p)) for p in pairs]
    streamed = {r.id: r.score for r in client.score_stream(samples(pairs, prefix="st"))}
    assert_close([streamed[f"st{i}"] for i in range(len(pairs))], [r.score for r in rewards], tol=1e-5)


def test_get_info_says_vllm(client):
    info = client.info()
    assert info.kind == pb.MODEL_KIND_REWARD
    assert (info.backend, info.device, info.dtype) == ("vllm", "cpu", "float32")
    assert info.max_length == MAX_LENGTH


def test_a_long_prompt_is_cut_and_the_service_goes_on(client, reference):
    (cut,) = client.score(
        [{"id": "long", "prompt": "What is 3 + 4? " + "seven plus three is ten " * 60, "response": "7"}]
    )
    assert cut.truncated and cut.num_tokens == MAX_LENGTH
    pair = short_pairs(reference, 1, MAX_LENGTH, seed=4)[0]
    (again,) = client.score(samples([pair]))
    assert abs(again.score - reference.score(*pair)) <= 1e-4


def test_the_uncertainty_kind_runs_on_vllm_too(local_models, services):
    """`serve uncertainty --backend vllm`: a shared-backbone ensemble is one classifier with a head per member,
    so its member scores are the checkpoint's raw logits, which vLLM must reproduce."""
    reference = InProcessRewardModel(local_models / "uncertainty")
    pairs = short_pairs(reference, 6, MAX_LENGTH, seed=5)
    with RewardClient(services["uncertainty"].target, timeout=120) as client:
        rewards = client.score(samples(pairs))
        assert client.info().backend == "vllm"
    for reward, pair in zip(rewards, pairs):
        members = reference.logits(*pair)
        assert len(reward.uncertainty.member_scores) == len(members) == 5
        assert_close(list(reward.uncertainty.member_scores), members, tol=1e-4)
        assert abs(reward.score - sum(members) / len(members)) <= 1e-4
