"""One training step of GRPO, RLOO or PPO, top to bottom.

1. rollouts: this rank's prompt groups, n samples each; every sample goes to the reward sources the moment
   it finishes;
2. rewards: wait until every source answered every sample, combine them into one reward per sample;
3. tensors, and what the update compares against: the reference's log-probabilities (KL), the sampling
   policy's (the ratio; equal to the current ones when each batch is used once) and PPO's values;
4. advantages: group-normalised (GRPO), leave-one-out (RLOO) or GAE on the final-token reward (PPO);
5. the update: clipped surrogate + β·KL(k3) − c·entropy (+ PPO's clipped value loss), aggregated per token or
   per sequence over the whole global batch; one optimizer step per epoch;
6. the new weights go into the rollout engine.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rewardline.trainer.algorithms.advantages import gae, group_normalized, leave_one_out, whiten
from rewardline.trainer.algorithms.losses import (
    aggregate,
    clipped_surrogate,
    entropy_from_logits,
    k3_kl,
    token_logprobs,
    value_loss,
)
from rewardline.trainer.batch import Batch, build_batch
from rewardline.trainer.config import TrainConfig
from rewardline.trainer.distributed import World, all_reduce_sum, all_reduce_sums, global_moments, gradient_sync
from rewardline.trainer.policy import PolicyModule, adapters_disabled, policy_weights
from rewardline.trainer.prompts import PromptRecord
from rewardline.trainer.rewards.base import ScoringSample
from rewardline.trainer.rewards.combine import combine
from rewardline.trainer.rewards.hub import RewardHub
from rewardline.trainer.rollout.base import Completion, RolloutEngine, RolloutRequest, derive_seed, encode_prompt


@dataclass
class StepContext:
    """What every step uses; built once by the Trainer."""

    config: TrainConfig
    world: World
    tokenizer: PreTrainedTokenizerBase
    module: nn.Module  # the PolicyModule, DDP-wrapped when distributed
    policy_module: PolicyModule  # the same, unwrapped
    reference: nn.Module | None  # None: no KL, or (LoRA) the policy with adapters off
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    engine: RolloutEngine
    hub: RewardHub
    should_stop: Callable[[], bool]
    device: torch.device


def rollout_requests(ctx: StepContext, step: int, records: Sequence[PromptRecord]) -> list[RolloutRequest]:
    """This rank's share of the step's prompts: every world_size-th group, each with its own seed."""
    out = []
    for index, record in enumerate(records):
        if index % ctx.world.size != ctx.world.rank:
            continue
        ids = encode_prompt(ctx.tokenizer, record.prompt, ctx.config.rollout)
        seed = derive_seed(ctx.config.seed, step, index)
        out.append(
            RolloutRequest(f"s{step}-g{index}", index, record.prompt, tuple(ids), seed, record.answer, record.metadata)
        )
    return out


def scoring_sample(c: Completion) -> ScoringSample:
    return ScoringSample(c.sample_id, c.request.prompt, c.text, c.token_ids, c.request.answer, c.request.metadata)


def micro_batches(size: int, micro: int | None) -> list[slice]:
    step = micro or size
    return [slice(i, min(i + step, size)) for i in range(0, size, step)]


def completion_logprobs(model: nn.Module, batch: Batch, temperature: float) -> torch.Tensor:
    """log π(token) of each completion token under a plain causal LM (the reference)."""
    width = batch.completion_width
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=width + 1,
    )
    return token_logprobs(out.logits[:, :-1] / temperature, batch.completion_ids)


@torch.no_grad()
def sampling_policy_outputs(
    ctx: StepContext, batch: Batch, temperature: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities and values of the policy that generated the batch (before this step's update)."""
    logps, values = [], []
    for part in micro_batches(batch.input_ids.shape[0], ctx.config.optim.micro_batch_size):
        b = batch.rows(part)
        logits, v = ctx.policy_module(b.input_ids, b.attention_mask, b.position_ids, b.completion_width)
        logps.append(token_logprobs(logits / temperature, b.completion_ids))
        values.append(v)
    return torch.cat(logps), (torch.cat(values) if values[0] is not None else None)


@torch.no_grad()
def reference_logprobs(ctx: StepContext, batch: Batch, temperature: float) -> torch.Tensor:
    out = []
    for part in micro_batches(batch.input_ids.shape[0], ctx.config.optim.micro_batch_size):
        if ctx.reference is not None:
            out.append(completion_logprobs(ctx.reference, batch.rows(part), temperature))
        else:  # LoRA: the base model is the policy with its adapters switched off
            with adapters_disabled(ctx.policy_module.policy):
                out.append(completion_logprobs(ctx.policy_module.policy, batch.rows(part), temperature))
    return torch.cat(out)


def final_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PPO's per-token rewards: the sequence's reward on its last generated token, 0 elsewhere."""
    out = torch.zeros_like(mask)
    lengths = mask.sum(dim=1).long()
    rows = torch.nonzero(lengths > 0).squeeze(-1)
    out[rows, lengths[rows] - 1] = rewards[rows].to(out.dtype)
    return out


def run_step(ctx: StepContext, step: int, records: Sequence[PromptRecord]) -> dict[str, float]:
    cfg, world, algo = ctx.config, ctx.world, ctx.config.algorithm
    n, temperature = cfg.rollout.n, cfg.rollout.temperature
    started = time.perf_counter()

    # 1. Rollouts, each finished sample streamed to every reward source.
    requests = rollout_requests(ctx, step, records)
    completions = ctx.engine.generate(requests, n, lambda done: ctx.hub.submit([scoring_sample(c) for c in done]))
    generated = time.perf_counter()

    # 2. Rewards from every source, combined.
    sample_ids = [c.sample_id for c in completions]
    try:
        answers = ctx.hub.wait(sample_ids, cfg.rewards.max_wait_s, ctx.should_stop)
    except BaseException:
        ctx.hub.forget(sample_ids)
        raise
    rewards = combine([answers[i] for i in sample_ids], cfg.rewards.sources, cfg.rewards.combine, global_moments(world))
    scored = time.perf_counter()

    # 3. Tensors; the sampling policy's log-probabilities and values; the reference's log-probabilities.
    batch = build_batch(completions, rewards.valid.tolist(), ctx.tokenizer.pad_token_id).to(ctx.device)
    mask = batch.completion_mask
    needs_old = algo.epochs > 1 or algo.name == "ppo"
    old_logp, old_values = sampling_policy_outputs(ctx, batch, temperature) if needs_old else (None, None)
    ref_logp = reference_logprobs(ctx, batch, temperature) if cfg.reference_kind != "none" else None

    # 4. Advantages, one per completion token.
    training_rewards = torch.tensor(rewards.training, dtype=torch.float32, device=ctx.device)
    valid = torch.tensor(rewards.valid, device=ctx.device)
    returns = None
    if algo.name == "grpo":
        per_sample = group_normalized(
            training_rewards.view(-1, n), valid.view(-1, n), scale=algo.scale_rewards
        ).reshape(-1)
        advantages = per_sample[:, None] * mask
    elif algo.name == "rloo":
        per_sample = leave_one_out(training_rewards.view(-1, n), valid.view(-1, n)).reshape(-1)
        advantages = per_sample[:, None] * mask
    else:
        assert old_values is not None
        advantages, returns = gae(final_token_rewards(training_rewards, mask), old_values, mask, algo.gamma, algo.lam)
        if algo.whiten_advantages:
            count, total, squares = all_reduce_sum(
                [float(mask.sum()), float((advantages * mask).sum()), float((advantages**2 * mask).sum())], world
            )
            mean = total / max(count, 1)
            std = max(squares / max(count, 1) - mean**2, 0.0) ** 0.5
            advantages = whiten(advantages, mask, torch.tensor(mean), torch.tensor(std))

    # 5. The update. Every piece's loss is divided by the count over the whole global batch and multiplied by
    #    world_size, so that summing over micro-batches and averaging over ranks (DDP) gives the loss of
    #    the whole batch at once.
    rows = float((mask.sum(dim=1) > 0).sum())
    tokens, global_rows = all_reduce_sum([float(mask.sum()), rows], world)
    normalizer = max(tokens if algo.loss_aggregation == "token" else global_rows, 1.0)
    sums: defaultdict[str, float] = defaultdict(float)  # over this rank's tokens (the loss: its micro-batches)
    parts = micro_batches(batch.input_ids.shape[0], cfg.optim.micro_batch_size)
    grad_norm = 0.0
    for _ in range(algo.epochs):
        ctx.optimizer.zero_grad(set_to_none=True)
        for i, part in enumerate(parts):
            b, m = batch.rows(part), mask[part]
            with gradient_sync(ctx.module, enabled=i == len(parts) - 1 or not world.distributed):
                logits, values = ctx.module(b.input_ids, b.attention_mask, b.position_ids, b.completion_width)
                logits = logits / temperature
                logp = token_logprobs(logits, b.completion_ids)
                old = old_logp[part] if old_logp is not None else logp.detach()
                per_token, clipped = clipped_surrogate(logp, old, advantages[part], algo.clip_eps, algo.clip_eps_high)
                kl = k3_kl(logp, ref_logp[part]) if ref_logp is not None else torch.zeros_like(logp)
                per_token = per_token + algo.kl_coef * kl
                entropy = entropy_from_logits(logits) if algo.entropy_coef else entropy_from_logits(logits.detach())
                per_token = per_token - algo.entropy_coef * entropy
                v_loss = v_clipped = torch.zeros_like(logp)
                if values is not None and returns is not None and old_values is not None:
                    v_loss, v_clipped = value_loss(values, old_values[part], returns[part], algo.value_clip)
                    per_token = per_token + algo.value_coef * v_loss
                loss = aggregate(per_token, m, algo.loss_aggregation, normalizer) * world.size
                loss.backward()
            with torch.no_grad():
                add(
                    sums,
                    {
                        "kl": float((kl * m).sum()) / algo.epochs,
                        "entropy": float((entropy * m).sum()) / algo.epochs,
                        "clipped": float((clipped * m).sum()) / algo.epochs,
                        "value_loss": float((v_loss * m).sum()) / algo.epochs,
                        "value_clipped": float((v_clipped * m).sum()) / algo.epochs,
                        "loss": float(loss) / world.size / algo.epochs,
                    },
                )
        params = [p for p in ctx.module.parameters() if p.requires_grad]
        if cfg.optim.max_grad_norm is not None:
            grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)))
        else:
            norms = [full_tensor(p.grad.norm()) for p in params if p.grad is not None]
            grad_norm = float(full_tensor(torch.linalg.vector_norm(torch.stack(norms))))
        ctx.optimizer.step()
    ctx.scheduler.step()
    updated = time.perf_counter()

    # 6. The new weights into the rollout engine (in place; a no-op for the transformers engine).
    ctx.engine.load_weights(policy_weights(ctx.policy_module))
    finished = time.perf_counter()

    # Figures of the whole global batch: this rank's sums, reduced across ranks by name.
    reported = np.nan_to_num(rewards.reported)
    adv = per_sample_advantages(advantages, mask)
    add(
        sums,
        {
            "valid": float(rewards.valid.sum()),
            "reward": float(reported[rewards.valid].sum()),
            "samples": float(len(completions)),
            "completion_tokens": float(sum(len(c.token_ids) for c in completions)),
            "advantage": float(adv.sum()),
            "advantage_squared": float((adv**2).sum()),
            "advantage_count": float(adv.size),
        },
    )
    for source in cfg.rewards.sources:
        scores = rewards.per_source[source.name]
        sums[f"reward/{source.name}"] = float(np.nansum(scores))
        sums[f"scored/{source.name}"] = float(np.isfinite(scores).sum())
        sums[f"errors/{source.name}"] = float(rewards.errors[source.name])
    reduced = all_reduce_sums(sums, world)
    token_count = max(tokens, 1)
    adv_mean = reduced["advantage"] / max(reduced["advantage_count"], 1)
    step_s = finished - started
    out: dict[str, float] = {
        "step": step,
        "reward": reduced["reward"] / reduced["valid"] if reduced["valid"] else float("nan"),
        "kl": reduced["kl"] / token_count if ref_logp is not None else float("nan"),
        "entropy": reduced["entropy"] / token_count,
        "clip_fraction": reduced["clipped"] / token_count,
        "loss": reduced["loss"],
        "advantage_mean": adv_mean,
        "advantage_std": max(reduced["advantage_squared"] / max(reduced["advantage_count"], 1) - adv_mean**2, 0.0)
        ** 0.5,
        "grad_norm": grad_norm,
        "lr": float(ctx.scheduler.get_last_lr()[0]),
        "samples": reduced["samples"],
        "valid_samples": reduced["valid"],
        "completion_tokens": reduced["completion_tokens"],
        "completion_length": reduced["completion_tokens"] / max(reduced["samples"], 1),
        "tokens_per_s": reduced["completion_tokens"] / step_s,
        "step_s": step_s,
        "generate_s": generated - started,
        "reward_wait_s": scored - generated,
        "update_s": updated - scored,
        "weight_sync_s": finished - updated,
    }
    if algo.name == "ppo":
        out["value_loss"] = reduced["value_loss"] / token_count
        out["value_clip_fraction"] = reduced["value_clipped"] / token_count
    for source in cfg.rewards.sources:
        scored_count = reduced[f"scored/{source.name}"]
        out[f"reward/{source.name}"] = reduced[f"reward/{source.name}"] / scored_count if scored_count else float("nan")
        out[f"errors/{source.name}"] = reduced[f"errors/{source.name}"]
    return out


def add(sums: defaultdict[str, float], figures: dict[str, float]) -> None:
    """Adds figures into running sums by name (a metric is one line where it is measured)."""
    for name, value in figures.items():
        sums[name] += value


def full_tensor(x: torch.Tensor) -> torch.Tensor:
    """A (possibly FSDP-sharded DTensor) value as a plain tensor."""
    full = getattr(x, "full_tensor", None)
    return full() if full is not None else x


def per_sample_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """One advantage per sample that counted (the mean over its tokens; for GRPO/RLOO every token's)."""
    lengths = mask.sum(dim=1)
    keep = lengths > 0
    return ((advantages * mask).sum(dim=1)[keep] / lengths[keep]).cpu().numpy()
