"""The build steps, in order: each reads what earlier steps wrote under the build root and writes one directory.

A step's cache key (see build.py) covers its name, its part of the config, the source of its `run` function and
of every project module that function reaches through imports (found by build.py, not listed here), and the keys
of the steps before it that it `needs`; so a step is rebuilt exactly when something it depends on changed. Adding
a model is one function here and one `BuildStep` entry in `STEPS`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from transformers import AutoTokenizer

from rewardline.trainer.fitting import final_loss
from rewardline.trainer.local_models import architectures, datasets, judge, sft, tokenizer
from rewardline.trainer.local_models.config import ModelsBuildConfig
from rewardline.trainer.reward_modeling import pairs, rm_eval, rm_train

Metrics = dict[str, object]


@dataclass(frozen=True)
class BuildStep:
    name: str
    run: Callable[[Path, ModelsBuildConfig, int], Metrics]  # (build root, config, seed) -> measured figures
    settings: Callable[[ModelsBuildConfig], list[BaseModel]]  # the parts of the config its output depends on
    needs: tuple[str, ...] = ()
    light: bool = False  # takes less than starting a step process would: run in the build's own process

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
        "final_loss": final_loss(losses),
        "prompts_test_accuracy": test.accuracy,
        "prompts_test_format_rate": test.format_rate,
    }


def make_reward(root: Path, config: ModelsBuildConfig, seed: int) -> Metrics:
    """`rm train --kind scalar` on prefs_train from the policy's weights (a fresh scalar head), then `rm eval` on
    prefs_test."""
    train_config = rm_train.RMTrainConfig(
        **config.reward.model_copy(update={"seed": seed}).model_dump(),
        data=root / "data" / "prefs_train.jsonl",
        base=root / "policy",
        out=root / "reward",
        device="cpu",
    )
    trained = rm_train.train_model(train_config)
    report = rm_train.save_and_calibrate(trained, train_config)
    test = rm_eval.evaluate_model(
        rm_eval.RMEvalConfig(model=root / "reward", data=root / "data" / "prefs_test.jsonl", device="cpu")
    )
    return {
        "parameters": architectures.parameter_count(trained.model),
        "steps": report["steps"],
        "final_loss": report["final_loss"],
        "prefs_test_accuracy": test.accuracy,
        "prefs_test_accuracy_by_kind": test.accuracy_by_category,
        "prefs_test_mean_margin": test.mean_margin,
        "prefs_test_ece": test.ece,
    }


def make_uncertainty(root: Path, config: ModelsBuildConfig, seed: int) -> Metrics:
    """`rm train --kind ensemble` on the reward model's backbone (calibrated on a held-out tenth of prefs_train),
    then `rm eval` on prefs_test and the OOD set."""
    recipe = config.uncertainty.model_copy(update={"seed": seed})
    report = rm_train.train_rm(
        rm_train.RMTrainConfig(
            **recipe.model_dump(),
            data=root / "data" / "prefs_train.jsonl",
            base=root / "reward",
            out=root / "uncertainty",
            device="cpu",
        )
    )
    evaluation = rm_eval.evaluate_model(
        rm_eval.RMEvalConfig(
            model=root / "uncertainty",
            data=root / "data" / "prefs_test.jsonl",
            ood=root / "data" / "ood.jsonl",
            device="cpu",
        )
    )
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
    """A causal LM from a fresh initialisation taught the comparison with a reference, then to answer the judge
    service's `verify` template (judge.py). It needs no other model, so it trains beside the policy."""
    tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    model = architectures.causal_lm(config.model_size, tok, seed)
    judge_config = config.judge.model_copy(update={"seed": seed})
    encoder = judge.ExampleEncoder(tok, root / "judge")
    train_pairs = pairs.read_pairs(root / "data" / "prefs_train.jsonl")
    comparison = judge.comparison_examples(train_pairs, judge_config, random.Random(seed))
    comparison_losses = judge.train_comparison(model, tok, encoder, comparison, judge_config)
    train = judge.make_examples(train_pairs, judge_config, random.Random(seed))
    losses = judge.train_judge(model, tok, encoder, train, judge_config)
    test = pairs.read_pairs(root / "data" / "prefs_test.jsonl")[: judge_config.eval_pairs]
    plain = judge.evaluate_judge(model, tok, encoder.verdict, test, with_reference=False)
    referenced = judge.evaluate_judge(model, tok, encoder.verdict, test, with_reference=True)
    architectures.save_model(model, tok, root / "judge")
    return {
        "parameters": architectures.parameter_count(model),
        "comparison_steps": len(comparison_losses),
        "comparison_final_loss": final_loss(comparison_losses),
        "steps": len(losses),
        "final_loss": final_loss(losses),
        "prefs_test_auroc": plain.auroc,
        "prefs_test_auroc_by_kind": plain.auroc_by_kind,
        "prefs_test_accuracy_at_half": plain.accuracy_at_half,
        "prefs_test_auroc_with_reference": referenced.auroc,
        "prefs_test_auroc_with_reference_by_kind": referenced.auroc_by_kind,
    }


STEPS: tuple[BuildStep, ...] = (
    BuildStep("tokenizer", make_tokenizer, lambda c: [c.tokenizer], light=True),
    BuildStep("data", make_data, lambda c: [c.data], light=True),
    BuildStep("policy", make_policy, lambda c: [c.model_size, c.policy], needs=("tokenizer", "data")),
    BuildStep("reward", make_reward, lambda c: [c.reward], needs=("data", "policy")),
    BuildStep("uncertainty", make_uncertainty, lambda c: [c.uncertainty], needs=("data", "reward")),
    BuildStep("judge", make_judge, lambda c: [c.model_size, c.judge], needs=("tokenizer", "data")),
)


def describe(config: ModelsBuildConfig, step: BuildStep) -> str:
    """The settings a step's key covers, as canonical JSON."""
    return json.dumps([s.model_dump(mode="json") for s in step.settings(config)], sort_keys=True)
