"""Small real checkpoints and data, built locally because nothing can be downloaded here or in CI.

`build.ensure_models(DIR)` / `build.build_models(DIR, config)` are the entry points (the CLI:
`rewardline models build --out DIR`). The pieces, one job each: `task` (the checkable arithmetic task),
`generic_text` (text unlike the task), `tokenizer`, `architectures` (Llama configs and model builders), `data`
(the JSONL sets), `sft` (the policy's supervised start), `steps` (what each build step makes), `config`.
Nothing is imported here, so `rewardline.trainer.local_models.task` stays cheap to import for reward functions.
"""
