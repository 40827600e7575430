"""The data sets written to `DIR/data/`, drawn from the arithmetic task and from generic text.

Test and validation problems never appear in any training file in any phrasing: the splits are disjoint on the
operands (`23 + 48` is one problem however it is asked). The policy's supervised start and the RL prompts are disjoint
too, so RL improves the policy on problems it has not memorised.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from rewardline.trainer.local_models import generic_text, task
from rewardline.trainer.local_models.sft import Example
from rewardline.trainer.reward_modeling.pairs import PreferencePair, write_jsonl


class DatasetsConfig(BaseModel):
    prompts_test: int = 500
    prefs_test: int = 1000
    prompts_train: int = 2000
    prompts_val: int = 300  # held out from training; the policy's supervised start stops on its accuracy
    prefs_train: int = 8000
    ood_per_kind: int = 60
    # Relative frequency of each kind of rejected response in the preference sets.
    rejected_kinds: dict[task.WrongKind, float] = {kind: 1.0 for kind in task.WRONG_KINDS}


class PromptRecord(BaseModel):
    prompt: str
    answer: str  # a string, as verifiable-reward data sets usually carry answers; `task.is_correct` takes both


class OODRecord(BaseModel):
    prompt: str
    response: str
    kind: str


Operands = tuple[int, task.Operation, int]
FILES = ("prefs_train", "prefs_test", "prompts_train", "prompts_test", "prompts_val", "sft_train", "ood")


def split_operands(rng: random.Random, config: DatasetsConfig) -> dict[str, list[Operands]]:
    """Disjoint sets of problems; the supervised start gets every problem no other split took."""
    operands = task.all_operands()
    rng.shuffle(operands)
    sizes = {
        "prompts_test": config.prompts_test,
        "prefs_test": config.prefs_test,
        "prompts_train": config.prompts_train,
        "prompts_val": config.prompts_val,
    }
    splits: dict[str, list[Operands]] = {}
    start = 0
    for name, size in sizes.items():
        splits[name] = operands[start : start + size]
        start += size
    splits["sft_train"] = operands[start:]
    if not splits["sft_train"]:
        raise ValueError("the test and RL splits take every problem; none is left to train on")
    return splits


def prompt_records(operands: Sequence[Operands], rng: random.Random) -> list[PromptRecord]:
    problems = [task.with_random_template(o, rng) for o in operands]
    return [PromptRecord(prompt=p.prompt, answer=str(p.answer)) for p in problems]


def preference_pairs(
    operands: Sequence[Operands], count: int, kinds: dict[task.WrongKind, float], rng: random.Random
) -> list[PreferencePair]:
    """`count` pairs over `operands` (with repeats when asked for more), the canonical answer always chosen."""
    names, weights = list(kinds), list(kinds.values())
    pairs = []
    for i in range(count):
        problem = task.with_random_template(operands[i % len(operands)], rng)
        kind = rng.choices(names, weights)[0]
        rejected = task.wrong_response(problem.answer, kind, rng)
        pairs.append(
            PreferencePair(
                prompt=problem.prompt, chosen=task.canonical_response(problem.answer), rejected=rejected, category=kind
            )
        )
    rng.shuffle(pairs)
    return pairs


def ood_records(rng: random.Random, per_kind: int) -> list[OODRecord]:
    """Inputs unlike the task's, from far (symbol noise) to near (arithmetic the models were not taught)."""

    def shifted_arithmetic() -> tuple[str, str]:
        a, b = rng.randrange(100, 10000), rng.randrange(2, 100)
        return f"What is {a} * {b}?", task.canonical_response(a * b)

    makers = {
        "other_topic": lambda: generic_text.fact(rng),
        "random_words": lambda: (generic_text.random_words(rng), generic_text.random_words(rng)),
        "symbol_noise": lambda: (generic_text.symbol_noise(rng), generic_text.symbol_noise(rng)),
        "other_format": lambda: (
            f"Write this as {rng.choice(['JSON', 'code', 'a list'])}: {generic_text.sentence(rng)}",
            rng.choice([generic_text.json_record, generic_text.code_snippet, generic_text.markdown_list])(rng),
        ),
        "foreign_language": lambda: (generic_text.foreign(rng), generic_text.foreign(rng)),
        "prose": lambda: (generic_text.sentence(rng), generic_text.paragraph(rng)),
        "shifted_arithmetic": shifted_arithmetic,
    }
    records = []
    for kind, make in makers.items():
        for _ in range(per_kind):
            prompt, response = make()
            records.append(OODRecord(prompt=prompt, response=response, kind=kind))
    return records


def read_prompts(path: Path) -> tuple[list[str], list[str]]:
    """(prompts, answers) of a prompts_*.jsonl file, the shape `sft.task_accuracy` takes."""
    with path.open(encoding="utf-8") as f:
        records = [PromptRecord.model_validate_json(line) for line in f if line.strip()]
    return [r.prompt for r in records], [r.answer for r in records]


def read_examples(path: Path) -> list[Example]:
    with path.open(encoding="utf-8") as f:
        return [Example.model_validate_json(line) for line in f if line.strip()]


def write_datasets(out: Path, config: DatasetsConfig, rng: random.Random) -> dict[str, int]:
    """Writes every file of `FILES` as `out/<name>.jsonl`; returns the number of records in each."""
    splits = split_operands(rng, config)
    train_pool = splits["sft_train"] + splits["prompts_train"]
    datasets: dict[str, Sequence[BaseModel]] = {
        "prompts_test": prompt_records(splits["prompts_test"], rng),
        "prompts_train": prompt_records(splits["prompts_train"], rng),
        "prompts_val": prompt_records(splits["prompts_val"], rng),
        "prefs_test": preference_pairs(splits["prefs_test"], config.prefs_test, config.rejected_kinds, rng),
        "prefs_train": preference_pairs(train_pool, config.prefs_train, config.rejected_kinds, rng),
        "sft_train": [
            Example(prompt=r.prompt, response=task.canonical_response(int(r.answer)))
            for r in prompt_records(splits["sft_train"], rng)
        ],
        "ood": ood_records(rng, config.ood_per_kind),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        write_jsonl(out / f"{name}.jsonl", datasets[name])
    return {name: len(datasets[name]) for name in FILES}
