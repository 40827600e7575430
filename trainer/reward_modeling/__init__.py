"""Reward-model training on preference pairs.

The local-model builder's scalar reward model: `losses` (pure functions of scores), `data` (pairs rendered with the
chat template, right-padded batches), `train` (the loop and its config), `evaluate` (pairwise accuracy).

`rewardline rm ...` (`cli`), for scalar and uncertainty-aware models: `rm_train` (ensembles of heads, Gaussian and
quantile heads; calibration of the OOD threshold), `heads` (the score layer and its prior), `features` (pooled
features of a frozen backbone), `predict` (in-process rewards computed as the service computes them),
`calibration`, `metrics` (ECE, AUROC), `rm_eval`, `assemble` (ensembles of separately trained checkpoints).
"""
