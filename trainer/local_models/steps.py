"""The build steps, in order: each reads what earlier steps wrote under the build root and writes one directory.

A step's cache key (see build.py) covers its name, its part of the config, the source of its `run` function and
of the `modules` it lists, and the keys of the steps before it that it `needs`; so a step is rebuilt exactly when
something it depends on changed. Adding a model (say `uncertainty`) is one function here and one `BuildStep`
entry in `STEPS`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewardline.trainer.local_models import architectures, datasets, generic_text, judge, sft, task, tokenizer
from rewardline.trainer.local_models.config import ModelsBuildConfig
from rewardline.trainer.reward_modeling import pairs as rm_data
from rewardline.trainer.reward_modeling import evaluate as rm_evaluate
from rewardline.trainer.reward_modeling import preference_losses as rm_losses
from rewardline.trainer.reward_modeling import train as rm_train
from rewardline.trainer.reward_modeling import calibration as rm_calibration
from rewardline.trainer.reward_modeling import features as rm_features
from rewardline.trainer.reward_modeling import score_layer as rm_heads
from rewardline.trainer.reward_modeling import quality as rm_metrics
from rewardline.trainer.reward_modeling import predict as rm_predict
from rewardline.trainer.reward_modeling import rm_eval as rm_cmd_eval
from rewardline.trainer.reward_modeling import rm_train as rm_cmd_train
from rewardline.services.judge import labels as judge_labels
from rewardline.services.judge import prompting as judge_prompting
from rewardline.services.judge import templating as judge_templating
from rewardline.services.uncertainty import outputs as uncertainty_heads
from rewardline.services.uncertainty import model_format as uncertainty_format

Metrics = dict[str, object]


@dataclass(frozen=True)
class BuildStep:
    name: str
    run: Callable[[Path, ModelsBuildConfig, int], Metrics]  # (build root, config, seed) -> measured figures
    settings: Callable[[ModelsBuildConfig], list[BaseModel]]  # the parts of the config its output depends on
    modules: tuple[ModuleType, ...]
    needs: tuple[str, ...] = ()

    @property
    def output(self) -> str:
        """The directory under the build root that this step writes, and the only one."""
        return self.name


def make_tokenizer(root: Path, config: ModelsBuildConfig, seed: int) -> Metrics:
    c = config.tokenizer
    texts = tokenizer.tokenizer_corpus(random.Random(seed), c.task_texts, c.generic_texts)
    tok = tokenizer.train_tokenizer(texts, c.vocab_size, c.model_max_length)
    tok.save_pretrained(root / "tokenizer")
    return {"vocab_size": len(tok), "training_texts": len(texts)}


def make_data(root: Path, config: ModelsBuildConfig, seed: int) -> Metrics:
    return {"records": datasets.write_datasets(root / "data", config.data, random.Random(seed))}


def make_policy(root: Path, config: ModelsBuildConfig, seed: int) -> Metrics:
    tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    examples = datasets.read_examples(root / "data" / "sft_train.jsonl")
    model = architectures.causal_lm(config.model_size, tok, seed)
    sft_config = config.policy.model_copy(update={"seed": seed})
    losses = sft.train_sft(model, tok, examples, datasets.read_prompts(root / "data" / "prompts_val.jsonl"), sft_config)
    test = sft.task_accuracy(model, tok, *datasets.read_prompts(root / "data" / "prompts_test.jsonl"))
    architectures.save_model(model, tok, root / "policy")
    return {
        "parameters": architectures.parameter_count(model),
        "steps": len(losses),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "prompts_test_accuracy": test.accuracy,
        "prompts_test_format_rate": test.format_rate,
    }


def make_reward(root: Path, config: ModelsBuildConfig, seed: int) -> Metrics:
    """Bradley–Terry on prefs_train, starting from the policy's transformer with a fresh scalar head."""
    tok = AutoTokenizer.from_pretrained(root / "policy")
    policy = AutoModelForCausalLM.from_pretrained(root / "policy")
    model = architectures.sequence_classifier(config.model_size, tok, seed)
    model.model.load_state_dict(policy.model.state_dict())
    train_pairs = rm_data.read_pairs(root / "data" / "prefs_train.jsonl")
    losses = rm_train.train_reward_model(model, tok, train_pairs, config.reward.model_copy(update={"seed": seed}))
    test = rm_evaluate.evaluate_pairs(model, tok, rm_data.read_pairs(root / "data" / "prefs_test.jsonl"))
    architectures.save_model(model, tok, root / "reward")
    return {
        "parameters": architectures.parameter_count(model),
        "steps": len(losses),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "prefs_test_accuracy": test.accuracy,
        "prefs_test_accuracy_by_kind": test.by_category,
        "prefs_test_mean_margin": test.mean_margin,
    }


def make_uncertainty(root: Path, config: ModelsBuildConfig, seed: int) -> Metrics:
    """`rm train --kind ensemble` on the reward model's backbone (calibrated on a held-out tenth of prefs_train),
    then `rm eval` on prefs_test and the OOD set."""
    recipe = config.uncertainty.model_copy(update={"seed": seed})
    report = rm_cmd_train.train_rm(rm_cmd_train.RMTrainConfig(
        **recipe.model_dump(), data=root / "data" / "prefs_train.jsonl", base=root / "reward", out=root / "uncertainty",
        device="cpu",
    ))
    evaluation = rm_cmd_eval.evaluate_model(rm_cmd_eval.RMEvalConfig(
        model=root / "uncertainty", data=root / "data" / "prefs_test.jsonl", ood=root / "data" / "ood.jsonl", device="cpu",
    ))
    assert evaluation.ood is not None
    return {
        "members": report["members"],
        "steps": report["steps"],
        "final_loss": report["final_loss"],
        "ood_threshold": report["ood_threshold"],
        "prefs_test_accuracy": evaluation.accuracy,
        "prefs_test_accuracy_by_kind": evaluation.accuracy_by_category,
        "prefs_test_ece": evaluation.ece,
        "ood_auroc": evaluation.ood.auroc,
        "ood_auroc_by_kind": evaluation.ood.auroc_by_kind,
        "ood_flagged": evaluation.ood.flagged,
        "in_distribution_flagged": evaluation.ood.flagged_in_distribution,
    }


def make_judge(root: Path, config: ModelsBuildConfig, seed: int) -> Metrics:
    """A causal LM from the policy's weights taught to answer the judge service's `verify` template (judge.py)."""
    tok = AutoTokenizer.from_pretrained(root / "policy")
    model = AutoModelForCausalLM.from_pretrained(root / "policy")
    judge_config = config.judge.model_copy(update={"seed": seed})
    encoder = judge.ExampleEncoder(tok, root / "judge")
    pairs = judge.make_examples(rm_data.read_pairs(root / "data" / "prefs_train.jsonl"), judge_config, random.Random(seed))
    losses = judge.train_judge(model, tok, encoder, pairs, judge_config)
    test = rm_data.read_pairs(root / "data" / "prefs_test.jsonl")[: judge_config.eval_pairs]
    plain = judge.evaluate_judge(model, tok, encoder.verdict, test, with_reference=False)
    referenced = judge.evaluate_judge(model, tok, encoder.verdict, test, with_reference=True)
    architectures.save_model(model, tok, root / "judge")
    return {
        "parameters": architectures.parameter_count(model),
        "steps": len(losses),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "prefs_test_auroc": plain.auroc,
        "prefs_test_auroc_by_kind": plain.auroc_by_kind,
        "prefs_test_accuracy_at_half": plain.accuracy_at_half,
        "prefs_test_auroc_with_reference": referenced.auroc,
        "prefs_test_auroc_with_reference_by_kind": referenced.auroc_by_kind,
    }


STEPS: tuple[BuildStep, ...] = (
    BuildStep(
        "tokenizer",
        make_tokenizer,
        lambda c: [c.tokenizer],
        (tokenizer, generic_text, task),
    ),
    BuildStep(
        "data",
        make_data,
        lambda c: [c.data],
        (datasets, generic_text, task, rm_data, sft),
    ),
    BuildStep(
        "policy",
        make_policy,
        lambda c: [c.model_size, c.policy],
        (architectures, datasets, sft, task, rm_data, rm_train),
        needs=("tokenizer", "data"),
    ),
    BuildStep(
        "reward",
        make_reward,
        lambda c: [c.model_size, c.reward],
        (architectures, rm_data, rm_train, rm_losses, rm_evaluate),
        needs=("data", "policy"),
    ),
    BuildStep(
        "uncertainty",
        make_uncertainty,
        lambda c: [c.uncertainty],
        (rm_cmd_train, rm_cmd_eval, rm_heads, rm_features, rm_predict, rm_calibration, rm_metrics, rm_losses, rm_data,
         uncertainty_heads, uncertainty_format),
        needs=("data", "reward"),
    ),
    BuildStep(
        "judge",
        make_judge,
        lambda c: [c.model_size, c.judge, judge.PromptSettings.current()],
        (architectures, judge, rm_data, rm_train, task, judge_labels, judge_prompting, judge_templating),
        needs=("data", "policy"),
    ),
)


def describe(config: ModelsBuildConfig, step: BuildStep) -> str:
    """The settings a step's key covers, as canonical JSON."""
    return json.dumps([s.model_dump(mode="json") for s in step.settings(config)], sort_keys=True)
