"""The batcher's choices, on its own: which samples go together, and what admission refuses."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rewardline.services.batching import Batcher, batch_cost, padding_limit, select_batch
from rewardline.services.errors import ServiceError


def test_batch_cost_padded_and_packed():
    assert batch_cost([10, 30, 20], "padded") == 90
    assert batch_cost([10, 30, 20], "packed") == 60
    assert batch_cost([], "padded") == 0


def test_oldest_sample_always_goes_and_neighbours_are_closest_in_length():
    costs = [100, 5, 98, 300, 101, 7]
    chosen = select_batch(costs, max_tokens=10_000, max_size=3, cost_model="padded")
    assert chosen[0] == 0
    assert sorted(costs[i] for i in chosen) == [98, 100, 101]


def test_token_budget_bounds_the_padded_batch():
    costs = [50, 60, 70, 80, 90]
    chosen = select_batch(costs, max_tokens=200, max_size=10, cost_model="padded")
    assert batch_cost([costs[i] for i in chosen], "padded") <= 200
    assert sorted(chosen) == [0, 1]  # 60 x 2 fits, 70 x 3 would not


def test_a_sample_over_budget_still_runs_alone():
    assert select_batch([500, 10], max_tokens=100, max_size=8, cost_model="padded") == [0]


def test_packed_budget_counts_real_tokens():
    chosen = select_batch([40, 40, 40, 40], max_tokens=120, max_size=10, cost_model="packed")
    assert len(chosen) == 3


def test_padding_limit_keeps_far_lengths_for_a_later_batch():
    costs = [100, 104, 180, 96, 250, 110]
    chosen = select_batch(costs, max_tokens=10_000, max_size=10, cost_model="padded", max_padding=0.1)
    picked = [costs[i] for i in chosen]
    assert chosen[0] == 0 and sorted(picked) == [96, 100, 104, 110]
    assert batch_cost(picked, "padded") <= 1.1 * sum(picked)
    # without the limit everything that fits the budget goes; packed batches have no padding to limit
    assert len(select_batch(costs, max_tokens=10_000, max_size=10, cost_model="padded")) == len(costs)
    assert len(select_batch(costs, max_tokens=10_000, max_size=10, cost_model="packed", max_padding=0.1)) == len(costs)
    # the oldest sample goes even when nothing else is close to it
    assert select_batch([250, 100, 104], max_tokens=10_000, max_size=10, cost_model="padded", max_padding=0.1) == [0]


def test_padding_limit_auto_is_the_backends_choice():
    assert padding_limit("auto", 0.1) == 0.1 and padding_limit("auto", None) is None
    assert padding_limit("off", 0.1) is None and padding_limit(0.3, None) == 0.3


def run(coro):
    return asyncio.run(coro)


def test_admission_is_all_or_nothing_when_the_queue_is_full():
    async def scenario():
        gate = asyncio.Event()

        async def slow(batch):
            await gate.wait()
            return [x * 2 for x in batch]

        b = Batcher(slow, max_batch_tokens=1000, max_batch_size=2, max_wait_s=0, max_queue=4)
        b.start()
        first = b.submit([(1, 1), (2, 1)])
        await asyncio.sleep(0.01)  # the first batch is taken and blocks
        queued = b.submit([(3, 1), (4, 1), (5, 1)])
        with pytest.raises(ServiceError) as err:
            b.submit([(6, 1), (7, 1)])
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        results = await asyncio.gather(*first, *queued)
        await b.close()
        return results

    assert run(scenario()) == [2, 4, 6, 8, 10]


def test_cancelled_samples_never_reach_the_backend():
    async def scenario():
        seen = []
        gate = asyncio.Event()

        async def record(batch):
            await gate.wait()
            seen.extend(batch)
            return batch

        b = Batcher(record, max_batch_tokens=1000, max_batch_size=1, max_wait_s=0, max_queue=100)
        b.start()
        blocker = b.submit([("blocker", 1)])
        await asyncio.sleep(0.01)
        doomed = b.submit([("doomed", 1)])
        kept = b.submit([("kept", 1)])
        doomed[0].cancel()
        gate.set()
        await asyncio.gather(*blocker, *kept)
        await b.close()
        return seen

    assert run(scenario()) == ["blocker", "kept"]


def test_a_full_queue_makes_room_from_cancelled_and_expired_samples_and_walks_it_only_then():
    """A refusal looks through the waiting samples only when some were cancelled or one's deadline has passed: a
    full queue refuses every request that comes, and walking all of it each time made a refusal cost O(queue)."""

    class CountingBatcher(Batcher):
        purges = 0

        def _purge(self) -> None:
            CountingBatcher.purges += 1
            super()._purge()

    async def scenario():
        gate = asyncio.Event()

        async def slow(batch):
            await gate.wait()
            return batch

        b = CountingBatcher(slow, max_batch_tokens=1000, max_batch_size=1, max_wait_s=0, max_queue=3)
        b.start()
        running = b.submit([("running", 1)])
        await asyncio.sleep(0.01)  # taken by the backend, which blocks
        soon = asyncio.get_running_loop().time() + 0.05  # asyncio's clock is time.monotonic
        expiring = b.submit([("expiring", 1)], deadline=soon)
        doomed = b.submit([("doomed", 1)])
        waiting = b.submit([("waiting", 1)])
        before = CountingBatcher.purges
        for _ in range(50):
            with pytest.raises(ServiceError) as err:
                b.submit([("refused", 1)])
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        refusals_walked = CountingBatcher.purges - before
        doomed[0].cancel()
        await asyncio.sleep(0)  # the cancellation's callbacks run
        after_cancel = b.submit([("after cancel", 1)])  # the cancelled sample's room
        with pytest.raises(ServiceError):
            b.submit([("refused", 1)])
        await asyncio.sleep(0.06)
        after_deadline = b.submit([("after deadline", 1)])  # the expired sample's room
        gate.set()
        results = await asyncio.gather(*running, *waiting, *after_cancel, *after_deadline)
        expired = await asyncio.gather(*expiring, return_exceptions=True)
        await b.close()
        return refusals_walked, results, expired[0]

    refusals_walked, results, expired = run(scenario())
    assert refusals_walked == 0
    assert results == ["running", "waiting", "after cancel", "after deadline"]
    assert isinstance(expired, ServiceError) and expired.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_failing_sample_fails_alone():
    async def scenario():
        async def picky(batch):
            if "poison" in batch:
                raise RuntimeError("cannot run poison")
            return [s.upper() for s in batch]

        b = Batcher(picky, max_batch_tokens=1000, max_batch_size=8, max_wait_s=0.05, max_queue=100)
        b.start()
        futures = b.submit([("a", 1), ("poison", 1), ("b", 1)])
        results = await asyncio.gather(*futures, return_exceptions=True)
        await b.close()
        return results

    a, poison, b_ = run(scenario())
    assert (a, b_) == ("A", "B")
    assert isinstance(poison, ServiceError) and poison.code == grpc.StatusCode.INTERNAL


def test_max_wait_gathers_a_fuller_batch():
    async def scenario():
        sizes = []

        async def record(batch):
            sizes.append(len(batch))
            return batch

        b = Batcher(record, max_batch_tokens=1000, max_batch_size=8, max_wait_s=0.5, max_queue=100)
        b.start()
        futures = b.submit([(0, 1)])
        await asyncio.sleep(0.05)
        futures += b.submit([(1, 1), (2, 1)])
        await asyncio.gather(*futures)
        await b.close()
        return sizes

    assert run(scenario()) == [3]
