"""Adapters for the training frameworks teams already run: thin callers of ``rewardline.services.client``.

    trl.py       a reward function for TRL's GRPOTrainer / RLOOTrainer ``reward_funcs`` (sync or async)
    openrlhf.py  a ``reward_func(queries, prompts, labels)`` file for OpenRLHF's ``--reward.remote_url path.py``
                 (the HTTP face's /get_reward is the other way in, with no code at all)
    verl.py      ``compute_score`` (sync, async) and ``compute_score_batch`` for verl's ``custom_reward_function``
    nemo_rl.py   a NeMo-RL environment that scores the last assistant turn

Each imports without its framework installed (none of them imports one at module level), and each file names the
framework source it was matched against. Nothing here re-implements scoring: samples go to a rewardline service,
and whatever the service knows (uncertainty, attributes, the out-of-distribution flag, a judge's verdict and
rationale) comes back in the framework's own place for extra values.
"""
