"""The math of the trainer: advantage estimators and losses as small pure functions on tensors.

Nothing here knows about models, engines or services, so each function can be checked against the papers'
formulas on fixed numbers (tests/test_trainer_losses.py, tests/test_trainer_advantages.py).
"""
