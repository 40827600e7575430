"""How a reward model's outputs become a Reward: attribute names, and their combination into ``score``.

Multi-attribute models (ArmoRM-style, HelpSteer attributes) emit one logit per attribute. The trainer wants
one number, and which combination is right is the user's decision, so it is configuration: by default the
first attribute, or a weight vector given by name or in output order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def attribute_names(id2label: Mapping[int, str] | None, num_outputs: int) -> list[str]:
    """Names from the config's id2label; transformers' placeholder ``LABEL_i`` names are kept as they are."""
    if num_outputs == 1:
        label = (id2label or {}).get(0, "score")
        return ["score" if label in ("LABEL_0", "") else label]
    # A config read from JSON may key id2label by strings; transformers' own keys it by ints.
    labels = {str(k): v for k, v in (id2label or {}).items()}
    return [str(labels.get(str(i), f"LABEL_{i}")) for i in range(num_outputs)]


def combination_weights(names: Sequence[str], weights: Sequence[float] | Mapping[str, float] | None) -> np.ndarray:
    """The weight of each output in ``score``; raises ValueError naming the mismatch."""
    out = np.zeros(len(names), dtype=np.float32)
    if weights is None or len(weights) == 0:
        out[0] = 1.0
        return out
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(
                f"score weights name unknown attributes {unknown}; the model's attributes are {list(names)}"
            )
        for i, name in enumerate(names):
            out[i] = float(weights.get(name, 0.0))
        return out
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} score weights given for {len(names)} attributes {list(names)}")
    return np.asarray(weights, dtype=np.float32)
