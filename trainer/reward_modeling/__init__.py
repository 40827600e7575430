"""Reward-model training on preference pairs: `rewardline rm ...` (`cli`), for scalar and uncertainty-aware models.

`rm_train` (scalar models, ensembles of heads, Gaussian and quantile heads; calibration of the OOD threshold; the
local-model build's `reward` and `uncertainty` steps train through it too), `score_layer` (the score layer and its
prior), `features` (pooled features of a frozen backbone), `preference_losses` (pure functions of scores), `pairs`
(pairs rendered with the chat template, right-padded batches), `predict` (in-process rewards computed as the
service computes them), `calibration`, `quality` (pairwise accuracy, ECE, AUROC), `rm_eval`, `assemble` (ensembles
of separately trained checkpoints). The loop itself is the project's one supervised loop, trainer/fitting.py.
"""
