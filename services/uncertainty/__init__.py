"""Uncertainty-aware reward models: every reward comes with how far to trust it.

A reward model is overconfident away from its training data, and a policy under RL finds exactly those places.
This kind returns, beside the mean reward, the members' disagreement (epistemic), the spread a Gaussian or
quantile head predicts (aleatoric), quantiles, and an out-of-distribution flag from a threshold calibrated on
held-out in-distribution data. ``model_format`` documents the directory format (see also README.md), ``heads``
turns logits into those numbers, ``scorer`` serves them through the shared pipeline.
"""
