"""The local models and data: what the build writes, that it loads the way a user's checkpoint loads, that the
trained models carry real signal, and that the builder caches, rebuilds and fails the way it says."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rewardline.trainer.local_models import architectures, build, steps, task
from rewardline.trainer.local_models.config import ModelsBuildConfig, TokenizerConfig
from rewardline.trainer.local_models.datasets import DatasetsConfig, read_prompts
from rewardline.trainer.local_models.judge import JudgeTrainConfig
from rewardline.trainer.local_models.sft import SFTConfig, task_accuracy
from rewardline.trainer.reward_modeling.pairs import chat_ids
from rewardline.trainer.reward_modeling.preference_losses import bradley_terry_loss
from rewardline.trainer.reward_modeling.rm_eval import RMEvalConfig, evaluate_model

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
DATA_FILES = ("prefs_train", "prefs_test", "prompts_train", "prompts_test", "prompts_val", "sft_train", "ood")


# --- the task ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("response", "answer", "correct"),
    [
        ("The answer is 71.", 71, True),
        ("The answer is 71.", "71", True),
        ("71", 71, True),
        ("I first got 70, but it is 71", 71, True),  # the last number counts
        ("The answer is 17.", 71, False),
        ("The answer is 71. Or 72.", 71, False),
        ("The answer is", 71, False),
        ("", 0, False),
        ("The answer is 0.", 0, True),
        ("The answer is -3.", -3, True),
    ],
)
def test_is_correct_reads_the_last_number(response, answer, correct):
    assert task.is_correct(response, answer) is correct


def test_format_check_accepts_only_the_canonical_sentence():
    assert task.follows_format("The answer is 71.")
    assert task.follows_format(" The answer is 5.\n")
    assert not task.follows_format("71")
    assert not task.follows_format("The answer is 71")
    assert not task.follows_format("The answer is 71. Sure!")


def test_problems_render_and_answer():
    assert task.Problem(23, "+", 48).prompt == "What is 23 + 48?"
    assert task.Problem(23, "+", 48).answer == 71
    assert task.Problem(48, "-", 23, template=2).prompt == "48 - 23 = ?"
    assert task.Problem(48, "-", 23).answer == 25
    assert task.canonical_response(71) == "The answer is 71."
    assert all(task.Problem(*o).answer >= 0 for o in task.all_operands())


@pytest.mark.parametrize("kind", task.WRONG_KINDS)
def test_wrong_responses_are_wrong(kind):
    rng = random.Random(0)
    for operands in rng.sample(task.all_operands(), 300):
        answer = task.Problem(*operands).answer
        response = task.wrong_response(answer, kind, rng)
        assert not task.is_correct(response, answer), (operands, response)
        if kind != "malformed":
            assert task.follows_format(response)
            assert task.extract_answer(response) >= 0


def test_near_misses_are_near():
    rng = random.Random(0)
    assert {task.wrong_number(50, "off_by_one", rng) for _ in range(50)} == {49, 51}
    assert {task.wrong_number(50, "off_by_ten", rng) for _ in range(50)} == {40, 60}
    assert task.wrong_number(0, "off_by_one", rng) == 1  # never below zero


# --- reward-model pieces -------------------------------------------------------------------------------------
def test_bradley_terry_loss():
    zero = torch.zeros(3)
    assert bradley_terry_loss(zero, zero).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert bradley_terry_loss(torch.tensor([20.0]), torch.tensor([0.0])).item() < 1e-6
    assert bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([0.0])).item() == pytest.approx(100.0)
    chosen = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(chosen, torch.tensor([1.0])).backward()
    assert chosen.grad is not None and chosen.grad.item() < 0  # descending the loss raises the chosen reward


# --- architectures -------------------------------------------------------------------------------------------
def test_benchmark_reward_model_size(local_models):
    tokenizer = AutoTokenizer.from_pretrained(local_models / "reward")
    model = architectures.benchmark_reward_model(tokenizer)
    assert 3.3e6 < architectures.parameter_count(model) < 3.5e6
    assert model.config.head_dim == 32 and model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_untrained_classifier_names_its_outputs(local_models, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(local_models / "reward")
    labels = ["helpfulness", "correctness", "verbosity"]
    architectures.save_model(architectures.untrained_classifier(tokenizer, labels), tokenizer, tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert model.config.num_labels == 3
    assert [model.config.id2label[i] for i in range(3)] == labels
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_head_sizes_vllm_cannot_run_are_refused(local_models):
    tokenizer = AutoTokenizer.from_pretrained(local_models / "reward")
    size = architectures.ModelSize(hidden_size=128, num_layers=1, num_heads=8, intermediate_size=256)
    with pytest.raises(ValueError, match="head size"):
        architectures.causal_lm(size, tokenizer, seed=0)


# --- the built directory -------------------------------------------------------------------------------------
def test_build_writes_every_file(local_models):
    for model in ("policy", "reward"):
        for name in MODEL_FILES:
            assert (local_models / model / name).is_file(), f"{model}/{name}"
    assert (local_models / "policy" / "generation_config.json").is_file()
    fields = {
        "prefs_train": {"prompt", "chosen", "rejected"},
        "prefs_test": {"prompt", "chosen", "rejected"},
        "prompts_train": {"prompt", "answer"},
        "prompts_test": {"prompt", "answer"},
        "prompts_val": {"prompt", "answer"},
        "sft_train": {"prompt", "response"},
        "ood": {"prompt", "response"},
    }
    for name in DATA_FILES:
        rows = [json.loads(line) for line in (local_models / "data" / f"{name}.jsonl").read_text().splitlines()]
        assert rows and all(fields[name] <= row.keys() for row in rows), name
    manifest = json.loads((local_models / "build.json").read_text())
    assert manifest["key"] == build.build_key(ModelsBuildConfig())
    assert set(manifest["steps"]) >= {"tokenizer", "data", "policy", "reward"}
    assert manifest["steps"]["reward"]["metrics"]["prefs_test_accuracy"] > 0.5


def test_test_problems_never_appear_in_training_data(local_models):
    def operands(name: str) -> set[tuple[str, str, str]]:
        text = (local_models / "data" / f"{name}.jsonl").read_text()
        return {tuple(m) for m in re.findall(r'"prompt": "[^"]*?(\d+) ([+-]) (\d+)', text)}

    held_out = operands("prompts_test") | operands("prefs_test") | operands("prompts_val")
    for name in ("sft_train", "prefs_train", "prompts_train"):
        assert not held_out & operands(name), name
    assert not operands("sft_train") & operands("prompts_train")


def test_ood_covers_several_kinds(local_models):
    rows = [json.loads(line) for line in (local_models / "data" / "ood.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert {"other_topic", "random_words", "symbol_noise", "other_format", "shifted_arithmetic"} <= kinds


def test_models_load_like_hub_checkpoints(local_models):
    reward = AutoModelForSequenceClassification.from_pretrained(local_models / "reward")
    policy = AutoModelForCausalLM.from_pretrained(local_models / "policy")
    assert type(reward).__name__ == "LlamaForSequenceClassification" and reward.config.num_labels == 1
    assert type(policy).__name__ == "LlamaForCausalLM"
    for model in (reward, policy):
        assert model.dtype == torch.float32
        assert model.config.head_dim in architectures.VLLM_CPU_HEAD_SIZES
    tokenizer = AutoTokenizer.from_pretrained(local_models / "reward")
    assert reward.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert policy.generation_config.eos_token_id == tokenizer.eos_token_id
    assert 1000 <= len(tokenizer) <= 1024


def test_chat_template_renders(local_models):
    tokenizer = AutoTokenizer.from_pretrained(local_models / "policy")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "The answer is 5."},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|bos|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\nThe answer is 5.<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|><|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    ids = chat_ids(tokenizer, messages)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.eos_token_id) == 3  # the end-of-turn token closes every turn
    with pytest.raises(Exception, match="unknown role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_tokenizer_splits_digits_and_round_trips_any_text(local_models):
    tokenizer = AutoTokenizer.from_pretrained(local_models / "policy")
    pieces = [tokenizer.decode([i]) for i in tokenizer("The answer is 1234.")["input_ids"]]
    assert pieces[-5:] == [" 1", "2", "3", "4", "."]
    tokens: dict[str, int] = {}
    size: dict[str, int] = {}
    for line in (local_models / "data" / "ood.jsonl").read_text().splitlines():
        record = json.loads(line)
        for text in (record["prompt"], record["response"]):
            ids = tokenizer(text)["input_ids"]
            assert tokenizer.decode(ids) == text
            tokens[record["kind"]] = tokens.get(record["kind"], 0) + len(ids)
            size[record["kind"]] = size.get(record["kind"], 0) + len(text.encode())
    # Text unlike the task still gets merges (about 0.2-0.35 tokens per byte here), not one token per byte.
    for kind in ("other_topic", "random_words", "other_format", "prose"):
        assert tokens[kind] / size[kind] < 0.5, kind


def test_reward_model_prefers_correct_answers(local_models):
    result = evaluate_model(
        RMEvalConfig(model=local_models / "reward", data=local_models / "data" / "prefs_test.jsonl", device="cpu")
    )
    # Spotting malformed answers alone scores 0.6 on this mix (one pair in five); measured 0.74-0.81 over seeds.
    assert result.accuracy >= 0.68
    assert result.accuracy_by_category["malformed"] >= 0.9
    assert result.accuracy_by_category["random_number"] >= 0.6


def test_policy_is_partly_right(local_models):
    model = AutoModelForCausalLM.from_pretrained(local_models / "policy")
    tokenizer = AutoTokenizer.from_pretrained(local_models / "policy")
    result = task_accuracy(model, tokenizer, *read_prompts(local_models / "data" / "prompts_test.jsonl"))
    assert 0.05 < result.accuracy < 0.9  # measured 0.26-0.30 over seeds: room for RL to show
    assert result.format_rate > 0.9


# --- the builder: caching, determinism, atomic writes (on a build small enough to run in seconds) -----------
def tiny_config(**update: object) -> ModelsBuildConfig:
    config = ModelsBuildConfig(
        tokenizer=TokenizerConfig(vocab_size=400, task_texts=200, generic_texts=100),
        data=DatasetsConfig(
            prompts_test=16, prefs_test=16, prompts_train=16, prompts_val=16, prefs_train=32, ood_per_kind=2
        ),
        policy=SFTConfig(steps=2, batch_size=8, eval_every=1000),
        reward=ModelsBuildConfig().reward.model_copy(update={"steps": 2, "batch_size": 8}),
        judge=JudgeTrainConfig(comparison_steps=2, steps=2, batch_size=4, eval_pairs=8),
        workers=1,
    )
    return config.model_copy(update=update)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "build.json"
    }


def test_build_is_deterministic_and_cached(tmp_path):
    first = build.build_models(tmp_path / "a", tiny_config())
    assert not any(s["reused"] for s in first["steps"].values())
    build.build_models(tmp_path / "b", tiny_config())
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")

    mtime = (tmp_path / "a" / "build.json").stat().st_mtime_ns
    build.ensure_models(tmp_path / "a", tiny_config())
    assert (tmp_path / "a" / "build.json").stat().st_mtime_ns == mtime  # current: nothing rebuilt

    changed = tiny_config(reward=tiny_config().reward.model_copy(update={"steps": 3}))
    build.ensure_models(tmp_path / "a", changed)
    reused = {name: s["reused"] for name, s in build.read_manifest(tmp_path / "a")["steps"].items()}
    assert reused == {
        "tokenizer": True,
        "data": True,
        "policy": True,
        "reward": False,
        "uncertainty": False,
        "judge": True,
    }
    assert build.is_current(tmp_path / "a", changed)
    assert build.build_key(changed) != build.build_key(tiny_config())
    assert build.build_key(tiny_config(seed=1)) != build.build_key(tiny_config())


def test_steps_built_in_worker_processes_are_the_same_as_built_in_one(tmp_path):
    build.build_models(tmp_path / "serial", tiny_config())
    parallel = build.build_models(tmp_path / "parallel", tiny_config(workers=2))
    assert tree_digest(tmp_path / "parallel") == tree_digest(tmp_path / "serial")
    assert list(parallel["steps"]) == [s.name for s in steps.STEPS]
    assert build.build_key(tiny_config(workers=2)) == build.build_key(tiny_config())  # the same models


def test_a_failing_step_in_a_worker_fails_the_build_and_leaves_nothing(tmp_path):
    no_pairs_to_judge = JudgeTrainConfig(comparison_steps=2, steps=2, batch_size=4, eval_pairs=0)
    config = tiny_config(workers=2, judge=no_pairs_to_judge)
    with pytest.raises(RuntimeError, match="build step judge failed with exit code 1"):
        build.build_models(tmp_path / "models", config)
    assert not (tmp_path / "models").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_interrupted_build_leaves_nothing_that_looks_built(tmp_path, monkeypatch):
    def broken(root: Path, config: ModelsBuildConfig, seed: int) -> dict:
        raise RuntimeError("killed mid-build")

    out = tmp_path / "models"
    failing = tuple(steps.BuildStep(**{**s.__dict__, "run": broken}) if s.name == "reward" else s for s in steps.STEPS)
    monkeypatch.setattr(build, "STEPS", failing)
    with pytest.raises(RuntimeError, match="killed"):
        build.build_models(out, tiny_config())
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_a_directory_that_is_not_a_build_is_not_replaced(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build.build_models(tmp_path, tiny_config())
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# --- the builder's keys: what a step's code reaches, however indirectly, is part of its key -----------------------
@pytest.mark.parametrize(
    ("edited", "step"),
    [
        ("trainer/fitting.py", "policy"),  # make_policy -> sft -> fitting
        ("trainer/fitting.py", "reward"),  # make_reward -> rm_train -> fitting
        ("services/modeling.py", "reward"),  # make_reward -> rm_train -> services.modeling
        ("services/uncertainty/outputs.py", "uncertainty"),  # make_uncertainty -> rm_eval -> predict -> outputs
        ("services/judge/templating.py", "judge"),  # make_judge -> judge -> services.judge.prompting -> templating
        ("services/judge/templates/verify.jinja", "judge"),  # read by templating through importlib.resources
        ("services/config.py", "judge"),  # ServeConfig's judge defaults shape the prompts the judge learns
    ],
)
def test_a_step_key_covers_what_its_code_reaches_only_indirectly(monkeypatch, edited, step):
    before = build.step_keys(ModelsBuildConfig())
    read = build._read
    monkeypatch.setattr(
        build, "_read", lambda path: read(path) + ("\n# edited" if path.as_posix().endswith(edited) else "")
    )
    after = build.step_keys(ModelsBuildConfig())
    assert after[step] != before[step], f"editing {edited} leaves the {step} step's key unchanged"
    assert after["tokenizer"] == before["tokenizer"]  # which reaches none of these: keys are per step
    if "judge" in edited:
        assert {n for n in after if after[n] != before[n]} == {"judge"}


def test_step_keys_cover_every_project_module_the_code_loads():
    """What importing the judge step's modules loads in a fresh interpreter (packages above them included) is what
    its key's import walk found, or less (the walk also follows imports inside functions)."""
    step = next(s for s in steps.STEPS if s.name == "judge")
    _, roots = build.entry_points(step.run)
    script = "import importlib, sys\n" + "".join(f"importlib.import_module({r!r})\n" for r in sorted(roots))
    script += "print('\\n'.join(m for m in sys.modules if m.startswith('rewardline.')))"
    loaded = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout.split()
    covered, modules = build.step_sources(step.run), build.ModuleIndex()
    assert "rewardline.services.judge.templating" in loaded
    assert {m for m in loaded if modules.path(m) is not None} <= set(covered)
