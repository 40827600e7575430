"""Fault injection, short: a training against two replicas of the reward service, one replica SIGKILLed while the
trainer streams to it, the trainer SIGKILLed and resumed, then one replica SIGTERMed (bench/chaos.py's engine with
its short schedule; the benchmark runs the long one over two services). All processes are real: `rewardline serve`
replicas on loopback ports and `rewardline train` / `--resume`.

Faults fire on the steps the trainer has logged, and every check is on what the run recorded (metrics.jsonl, the
trainer's counters), never on timing, so a slow machine makes the test longer, not different.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.chaos import Chaos, short_schedule  # noqa: E402

STEPS = 8  # steps after the last fault: it lands mid-run


def test_killed_replicas_and_a_killed_trainer_lose_nothing_and_keep_the_data_order(local_models, tmp_path):
    chaos = Chaos(
        tmp_path,
        models=local_models,
        kinds=["reward"],
        steps=STEPS,
        schedule=short_schedule("reward"),
        prompts_per_step=2,
        n=3,
        reference=False,
        timeout_s=420,
        log=False,
    )
    report = chaos.run()

    assert len(report.fired) == 3, report.fired
    assert report.steps_logged == list(range(1, STEPS + 1)), "every step once, in order, after the resume"
    assert report.lost() == {"reward": 0}, "every sample of every step scored by the service"
    assert report.duplicates == 0, "no answer reached the trainer twice"
    # The trainer: SIGKILLed once (after step 3, its last checkpoint at step 2), then resumed to the end.
    first, last = report.lives
    assert first.exit_code == -signal.SIGKILL and first.steps_at_end >= 3
    assert last.resumed and last.resume_from == first.steps_at_end // 2 * 2 and last.exit_code == 0
    assert report.executions == STEPS + first.steps_at_end - last.resume_from  # the steps after it, run again
    # What was logged before the kill is what the resumed run logged for the same steps: the same prompts.
    assert report.order_checked == first.steps_at_end and report.order_mismatches == []
    # One replica ended by SIGKILL and started again; one drained on SIGTERM and exited cleanly.
    assert sorted(code for codes in report.replica_exits.values() for code in codes) == [-signal.SIGKILL, 0]
    assert sum(report.replica_lives.values()) >= 3, report.replica_lives
