"""The local judge `rewardline models build` trains: its P("Yes") separates correct from incorrect answers on
held-out problems (scored here by the direct reference, independently of the training code), as the build reported."""

from __future__ import annotations

import json

from rewardline.trainer.local_models.build import read_manifest
from rewardline.trainer.reward_modeling.quality import auroc


def test_p_yes_separates_correct_from_incorrect_answers(local_models, direct_judge):
    with (local_models / "data" / "prefs_test.jsonl").open() as f:
        pairs = [json.loads(line) for line in f][:200]
    right = [direct_judge.verdict(p["prompt"], p["chosen"]) for p in pairs]
    wrong = [direct_judge.verdict(p["prompt"], p["rejected"]) for p in pairs]
    malformed = [w for w, p in zip(wrong, pairs) if p["category"] == "malformed"]
    # weak on wrong numbers (0.53-0.6 over CPUs and seeds; 200 pairs keep the sampling noise near 0.03)
    assert auroc(right, wrong) > 0.52
    assert auroc(right, malformed) > 0.95  # what it learnt best: an answer that is no answer
    reported = read_manifest(local_models)["steps"]["judge"]["metrics"]
    assert reported["prefs_test_auroc"] > 0.55 and reported["prefs_test_auroc_by_kind"]["malformed"] > 0.95
