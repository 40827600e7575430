"""The out-of-distribution threshold: a percentile of `std` over held-out in-distribution responses.

Held out, because on the pairs a model was fitted to its members agree more than they will on new inputs from
the same distribution, and a threshold set there would flag ordinary inputs. Both sides of each pair count: the
service scores rejected-looking responses as often as chosen-looking ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rewardline.services.uncertainty.model_format import Calibration
from rewardline.trainer.reward_modeling.pairs import PreferencePair
from rewardline.trainer.reward_modeling.predict import Predictor


def pair_responses(pairs: Sequence[PreferencePair]) -> list[tuple[str, str]]:
    """Every response of the pairs as (prompt, response): chosen sides, then rejected sides."""
    return [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]


def threshold_from(stds: np.ndarray, percentile: float, data: str) -> Calibration:
    stds = np.asarray(stds, dtype=np.float64)
    if len(stds) == 0:
        raise ValueError("calibration needs held-out in-distribution responses; none were given")
    return Calibration(percentile=percentile, threshold=float(np.percentile(stds, percentile)), n=len(stds), data=data)


def calibrate(predictor: Predictor, pairs: Sequence[PreferencePair], percentile: float, data: str) -> Calibration:
    return threshold_from(predictor.predict(pair_responses(pairs)).std, percentile, data)
