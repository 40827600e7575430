"""The judge's rating and rationale-first modes, served for real and used through gRPC: rating on transformers,
rationale-first on vLLM's CPU engine (verdict mode on both is in test_judge_service.py)."""

from __future__ import annotations

import json

import pytest

from rewardline.services.client import RewardClient
from rewardline.services.process import ServiceProcess

TOLERANCE = 1e-4
RATIONALE_TOKENS = 24


def held_out(local_models, n: int) -> list[tuple[str, str]]:
    with (local_models / "data" / "prefs_test.jsonl").open() as f:
        pairs = [json.loads(line) for line in f][:n]
    return [(p["prompt"], r) for p in pairs for r in (p["chosen"], p["rejected"])]


@pytest.fixture(scope="module")
def mode_judges(judge_dir, start_together, stop_together):
    rating = ServiceProcess(
        "judge", ["--model", str(judge_dir), "--backend", "hf", "--judge-mode", "rating", "--judge-rating-range=-1,1"]
    )
    rationale = ServiceProcess(
        "judge",
        [
            "--model",
            str(judge_dir),
            "--backend",
            "vllm",
            "--judge-mode",
            "rationale_verdict",
            "--judge-max-rationale-tokens",
            str(RATIONALE_TOKENS),
        ],
    )
    services = start_together(rating, rationale)
    try:
        with RewardClient(rating.target, timeout=120) as r, RewardClient(rationale.target, timeout=120) as c:
            yield {"rating": (rating, r), "rationale": (rationale, c)}
    finally:
        stop_together(*services)


@pytest.fixture(scope="module")
def rating_judge(mode_judges):
    return mode_judges["rating"]


@pytest.fixture(scope="module")
def rationale_judge(mode_judges):
    return mode_judges["rationale"]


def test_rating_is_the_expected_rating_computed_directly(rating_judge, direct_judge, local_models):
    _, client = rating_judge
    items = held_out(local_models, 4)
    rewards = client.score([{"id": f"r{i}", "prompt": q, "response": r} for i, (q, r) in enumerate(items)])
    for reward, (q, r) in zip(rewards, items):
        expected, most_likely = direct_judge.rating(q, r)
        assert reward.judgement.mode == "rating"
        assert abs(reward.judgement.expected_rating - expected) <= TOLERANCE
        assert reward.judgement.most_likely_rating == most_likely
        # [1, 5] mapped linearly onto the configured [-1, 1]
        assert abs(reward.score - (-1 + 2 * (expected - 1) / 4)) <= TOLERANCE
    info = client.info()
    assert (info.judge_template, info.judge_mode) == ("rubric", "rating")


def test_rationale_comes_back_and_the_verdict_is_read_after_it(rationale_judge, direct_judge, local_models):
    _, client = rationale_judge
    items = held_out(local_models, 3)
    rewards = client.score([{"id": f"c{i}", "prompt": q, "response": r} for i, (q, r) in enumerate(items)])
    for reward, (q, r) in zip(rewards, items):
        j = reward.judgement
        assert j.mode == "rationale_verdict" and j.num_rationales == 1 and not j.unparsed
        assert j.rationale and "Verdict" not in j.rationale
        assert abs(reward.score - direct_judge.verdict_after_rationale(q, r, j.rationale)) <= TOLERANCE
        assert j.verdict_probability == reward.score


def in_process_scores(judge_dir, samples, **fields):  # type: ignore[no-untyped-def]
    """The judge's scorer in this process on the hf engine: score_batch, then observe, as the servicer calls them."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from rewardline.services.config import ServeConfig
    from rewardline.services.judge.scorer import JudgeScorer
    from rewardline.services.metrics import ServiceMetrics

    scorer = JudgeScorer.load(ServeConfig(kind="judge", model=judge_dir, backend="hf", **fields))
    registry = CollectorRegistry()
    service_metrics = ServiceMetrics(registry)

    async def run():  # type: ignore[no-untyped-def]
        try:
            return await scorer.score_batch(scorer.render(samples))
        finally:
            await scorer.close()

    rewards = asyncio.run(run())
    for reward in rewards:
        scorer.observe(reward, service_metrics)
    return rewards, registry


def test_sampled_rationales_are_averaged_and_seeded(judge_dir):
    from rewardline.services.api import pb

    samples = [pb.Sample(id=str(i), prompt=f"What is {i} + 7?", response=f"The answer is {i + 7}.") for i in range(3)]
    fields = dict(
        judge_mode="rationale_verdict", judge_rationales=3, judge_temperature=1.0, judge_max_rationale_tokens=16
    )
    first, _ = in_process_scores(judge_dir, samples, **fields)
    again, _ = in_process_scores(judge_dir, samples, **fields)
    for reward in first:
        assert reward.judgement.num_rationales == 3 and 0.0 <= reward.score <= 1.0
    assert [r.score for r in first] == [r.score for r in again]  # the seed makes sampled rationales repeatable


def test_a_rationale_without_a_verdict_is_flagged_and_counted(judge_dir):
    """A rationale cut off by the token limit before the marker has no readable verdict: a flagged reward of 0 and
    a count in rewardline_judge_unparsed, not an error. Run on the judge's scorer in-process with the real model on
    the hf engine (a limit of 2 tokens makes every rationale too short to end; a service would serve only that),
    through the same score_batch and observe the servicer calls."""
    from rewardline.services.api import pb

    sample = pb.Sample(id="a", prompt="What is 23 + 48?", response="The answer is 71.")
    (reward,), registry = in_process_scores(
        judge_dir, [sample], judge_mode="rationale_verdict", judge_max_rationale_tokens=2
    )
    assert reward.judgement.unparsed and reward.score == 0.0 and reward.judgement.num_rationales == 1
    assert reward.judgement.rationale  # what the judge wrote before it was cut off
    assert registry.get_sample_value("rewardline_judge_unparsed_total") == 1
    assert registry.get_sample_value("rewardline_judge_generated_tokens_total") == 2
