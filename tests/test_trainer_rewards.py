"""Reward sources and their combination: the real reward service over ScoreStream, Python functions, outages."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from rewardline.services.client import RewardClient
from rewardline.services.process import ServiceProcess, free_port
from rewardline.trainer.config import GrpcSourceConfig, PythonSourceConfig
from rewardline.trainer.observability import TrainerMetrics
from rewardline.trainer.rewards import make_source
from rewardline.trainer.rewards.base import ScoringSample, SourceReward
from rewardline.trainer.rewards.combine import RunningMoments, combine, normalize_and_clip
from rewardline.trainer.rewards.hub import RewardHub, RewardWaitTimeout
from rewardline.trainer.rewards.verifiable import exact_answer, format_reward


def answers(scores: dict[str, list], std=None, ood=None, errors=None):
    n = len(next(iter(scores.values())))
    out = []
    for i in range(n):
        row = {}
        for name, values in scores.items():
            row[name] = SourceReward(
                str(i),
                name,
                score=values[i],
                std=(std or {}).get(name, [None] * n)[i],
                out_of_distribution=(ood or {}).get(name, [False] * n)[i],
                error=(errors or {}).get(name, [None] * n)[i],
            )
        out.append(row)
    return out


def py(name, **kw):
    return PythonSourceConfig(name=name, function="rewardline.trainer.rewards.verifiable:exact_answer", **kw)


def test_weighted_sum_with_uncertainty_penalty_and_ood_mask():
    a, b = py("a", weight=2.0), py("b", weight=0.5, uncertainty_penalty=1.5, mask_out_of_distribution=True)
    got = combine(
        answers(
            {"a": [1.0, 0.0, 1.0], "b": [4.0, 2.0, 0.0]}, std={"b": [1.0, 0.0, 2.0]}, ood={"b": [False, False, True]}
        ),
        [a, b],
        "sum",
    )
    # b adjusted: 4 − 1.5·1 = 2.5, 2 − 0 = 2, masked
    np.testing.assert_allclose(got.reported[:2], [2 * 1 + 0.5 * 2.5, 2 * 0 + 0.5 * 2.0])
    assert got.valid.tolist() == [True, True, False] and math.isnan(got.reported[2]) and got.training[2] == 0
    assert got.out_of_distribution == {"a": 0, "b": 1}


def test_errors_are_masked_or_given_the_error_score():
    masked, scored = py("m"), py("s", error_score=-1.0)
    rows = answers(
        {"m": [1.0, 0.0], "s": [0.5, 0.0]}, errors={"m": [None, "INVALID_ARGUMENT: empty"], "s": [None, "x"]}
    )
    got = combine(rows, [masked, scored], "sum")
    assert got.valid.tolist() == [True, False] and got.errors == {"m": 1, "s": 1}
    got = combine(rows, [scored], "sum")
    assert got.valid.tolist() == [True, True] and got.reported.tolist() == [0.5, -1.0]


def test_normalize_then_sum_and_sum_then_normalize():
    a, b = py("a", weight=1.0), py("b", weight=3.0)
    xa, xb = np.array([1.0, 2.0, 3.0, 6.0]), np.array([100.0, 300.0, 200.0, 400.0])
    rows = answers({"a": xa.tolist(), "b": xb.tolist()})

    def z(x):
        return (x - x.mean()) / (x.std() + 1e-6)

    np.testing.assert_allclose(combine(rows, [a, b], "normalize_then_sum").training, z(xa) + 3 * z(xb), rtol=1e-9)
    np.testing.assert_allclose(combine(rows, [a, b], "sum_then_normalize").training, z(xa + 3 * xb), rtol=1e-9)
    np.testing.assert_allclose(combine(rows, [a, b], "sum_then_normalize").reported, xa + 3 * xb)


def test_running_normalisation_and_clipping():
    """rewards.running_norm: the moments of every reward seen so far, merged batch by batch, equal numpy's over all
    of them; rewards.clip then bounds the normalised reward."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size) for size in (5, 1, 12)]
    running = RunningMoments()
    for batch in batches:
        running.update(batch.size, float(batch.sum()), float((batch**2).sum()))
    everything = np.concatenate(batches)
    assert running.count == everything.size
    assert abs(running.mean - everything.mean()) < 1e-12 and abs(running.std - everything.std()) < 1e-12
    restored = RunningMoments(**running.state_dict())  # what a checkpoint restores
    values, valid = np.array([10.0, 3.0, -20.0, 4.0]), np.array([True, True, True, False])
    expected = np.clip((values - everything.mean()) / (everything.std() + 1e-6), -2.5, 2.5)
    got = normalize_and_clip(values, valid, restored, 2.5)
    np.testing.assert_allclose(got[:3], expected[:3], atol=1e-12)
    assert got[3] == 0.0 and got[0] == 2.5 and got[2] == -2.5
    np.testing.assert_array_equal(normalize_and_clip(values, valid, None, 4.0), [4.0, 3.0, -4.0, 0.0])


def test_verifiable_rewards():
    completions = ["The answer is 12.", "It is 12", "The answer is 13.", ""]
    assert exact_answer([""] * 4, completions, answer=["12", "12", "12", "12"]) == [1.0, 1.0, 0.0, 0.0]
    assert format_reward([""] * 4, completions) == [1.0, 0.0, 1.0, 0.0]
    assert exact_answer([""], ["The answer is 3."], answer=[None]) == [None]


def samples(prefix, n, correct=True):
    out = []
    for i in range(n):
        a, b = 10 + i, 3 * i
        response = f"The answer is {a + b if correct or i % 2 else a + b + 1}."
        out.append(ScoringSample(f"{prefix}{i}", f"What is {a} + {b}?", response, answer=str(a + b)))
    return out


def test_python_source_through_the_hub():
    metrics = TrainerMetrics()
    broken = PythonSourceConfig(name="broken", function="math:sqrt", error_score=None)
    hub = RewardHub([make_source(py("exact")), make_source(broken)], metrics)
    hub.start()
    try:
        batch = samples("p", 6, correct=False)
        hub.submit(batch)
        got = hub.wait([s.id for s in batch], timeout=60)
        assert [got[s.id]["exact"].score for s in batch] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
        assert all(
            got[s.id]["broken"].error for s in batch
        )  # a failing function refuses its samples, nothing else breaks
        # a late, repeated answer is dropped, not counted into anything
        hub.deliver(SourceReward("p0", "exact", score=5.0))
        assert metrics.duplicate_rewards.labels("exact")._value.get() == 1
    finally:
        hub.close()


def test_bad_import_path_is_a_clear_error():
    with pytest.raises(ValueError, match="no attribute 'nope'"):
        make_source(PythonSourceConfig(name="x", function="rewardline.trainer.rewards.verifiable:nope"))


@pytest.fixture(scope="module")
def reward_service(local_models, tmp_path_factory):
    log = tmp_path_factory.mktemp("svc") / "reward.log"
    with ServiceProcess("reward", ["--model", str(local_models / "reward")], log_path=log) as service:
        yield service


def test_grpc_source_scores_equal_the_services_unary_scores(reward_service):
    metrics = TrainerMetrics()
    hub = RewardHub(
        [make_source(GrpcSourceConfig(name="rm", target=reward_service.target, max_samples_per_request=3))], metrics
    )
    hub.start()
    try:
        # a response the service refuses (an empty one is a sample like any other since empty_response=score)
        batch = samples("g", 10, correct=False) + [ScoringSample("huge", "What is 1 + 1?", "1 " * 400_000, answer="2")]
        long_id = ScoringSample("x" * 300, "What is 1 + 1?", "2", answer="2")  # over the service's id limit
        for sample in [*batch, long_id]:  # one at a time, as a rollout engine finishes them
            hub.submit([sample])
        got = hub.wait([s.id for s in [*batch, long_id]], timeout=120)
    finally:
        hub.close()
    with RewardClient(reward_service.target) as client:
        reference = client.score([{"id": s.id, "prompt": s.prompt, "response": s.completion} for s in batch[:-1]])
    np.testing.assert_allclose([got[s.id]["rm"].score for s in batch[:-1]], [r.score for r in reference], atol=1e-5)
    assert got["huge"]["rm"].error.startswith("INVALID_ARGUMENT")  # the service refuses it in-band; the stream goes on
    # an id the service would cut: answered with an error at once (it waited out the reward timeout before)
    assert got[long_id.id]["rm"].error.startswith("INVALID_ARGUMENT") and "id is longer" in got[long_id.id]["rm"].error
    assert metrics.reward_errors.labels("rm")._value.get() == 2


def test_outage_pauses_then_resends_exactly_the_unanswered_samples(local_models, tmp_path, caplog):
    port = free_port()
    args = ["--model", str(local_models / "reward")]
    service = ServiceProcess("reward", args, port=port, log_path=tmp_path / "reward.log").start()
    metrics = TrainerMetrics()
    source = make_source(GrpcSourceConfig(name="rm", target=service.target, reconnect_max_backoff_s=0.5))
    hub = RewardHub([source], metrics)
    hub.start()
    caplog.set_level(logging.WARNING, logger="rewardline.trainer.rewards.hub")
    try:
        first = samples("a", 4)
        hub.submit(first)
        hub.wait([s.id for s in first], timeout=120)
        second = samples("b", 12, correct=False)
        hub.submit(second[:6])
        service.kill()  # SIGKILL: the stream breaks with samples possibly in flight
        hub.submit(second[6:])
        with pytest.raises(RewardWaitTimeout):
            hub.wait([s.id for s in second], timeout=3)
        assert hub.waiting_for == ["rm"]
        assert metrics.waiting_for_source.labels("rm")._value.get() == 1
        service = ServiceProcess("reward", args, port=port, log_path=tmp_path / "reward.log").start()
        got = hub.wait([s.id for s in second], timeout=120)
        assert hub.waiting_for == [] and metrics.waiting_for_source.labels("rm")._value.get() == 0
        with RewardClient(service.target) as client:
            reference = client.score([{"id": s.id, "prompt": s.prompt, "response": s.completion} for s in second])
        np.testing.assert_allclose([got[s.id]["rm"].score for s in second], [r.score for r in reference], atol=1e-5)
        assert all(got[s.id]["rm"].error is None for s in second)
        assert metrics.duplicate_rewards.labels("rm")._value.get() == 0
        assert metrics.source_outages.labels("rm")._value.get() == 1 and source.streams_opened >= 2
        messages = [r.getMessage() for r in caplog.records]
        assert any("'rm' is unavailable" in m and "pauses" in m for m in messages)
        assert any("'rm' is back" in m for m in messages)
    finally:
        hub.close()
        service.stop()
