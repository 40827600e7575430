"""The trainer's Triton reward source (KServe v2 directly, no rewardline service) against the real tritonserver.

Its behaviour through a Triton outage is checked in tests/test_triton_backend.py's restart test, during the
same stop and restart as the service's (one restart for both keeps the Triton tests within their time budget).
"""

from __future__ import annotations

import numpy as np
import pytest

from rewardline.trainer.config import TritonSourceConfig
from rewardline.trainer.observability import TrainerMetrics
from rewardline.trainer.rewards import make_source
from rewardline.trainer.rewards.base import ScoringSample
from rewardline.trainer.rewards.hub import RewardHub


@pytest.fixture(scope="module")
def running_triton(triton):
    return triton.start()


def arithmetic(prefix: str, n: int) -> list[ScoringSample]:
    """Prompt/completion pairs, every other one wrong."""
    out = []
    for i in range(n):
        a, b = 10 + i, 3 * i
        out.append(
            ScoringSample(f"{prefix}{i}", f"What is {a} + {b}?", f"The answer is {a + b + i % 2}.", answer=str(a + b))
        )
    return out


def source_config(triton, local_models, **kw) -> TritonSourceConfig:
    return TritonSourceConfig(
        name="rm",
        url=triton.url,
        model="reward",
        model_dir=local_models / "reward",
        max_length=128,
        max_batch_size=5,
        reconnect_max_backoff_s=0.5,
        **kw,
    )


def test_triton_source_rewards_equal_the_reference_and_bad_samples_are_refused(running_triton, local_models, reference):
    metrics = TrainerMetrics()
    hub = RewardHub([make_source(source_config(running_triton, local_models))], metrics)
    hub.start()
    try:
        batch = arithmetic("t", 12)
        bad = [ScoringSample("empty", "What is 1 + 1?", "  "), ScoringSample("huge", "p", "seven " * 400)]
        for sample in batch[:6]:  # one at a time, as a rollout engine finishes them
            hub.submit([sample])
        hub.submit(batch[6:] + bad)
        got = hub.wait([s.id for s in batch + bad], timeout=120)
    finally:
        hub.close()
    np.testing.assert_allclose(
        [got[s.id]["rm"].score for s in batch], [reference.score(s.prompt, s.completion) for s in batch], atol=1e-4
    )
    assert got["empty"]["rm"].error.startswith("INVALID_ARGUMENT") and "empty response" in got["empty"]["rm"].error
    assert got["huge"]["rm"].error.startswith("INVALID_ARGUMENT")
    assert metrics.reward_errors.labels("rm")._value.get() == 2
