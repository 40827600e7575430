"""Reward-model training on preference pairs: `losses` (pure functions of scores), `data` (pairs rendered with
the chat template, right-padded batches), `train` (the loop and its config), `evaluate` (pairwise accuracy).
"""
