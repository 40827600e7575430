"""One training step of GRPO, RLOO, REINFORCE++ (plain or with a group baseline) or PPO, top to bottom.

1. rollouts: this rank's prompt groups, n samples each, from the rollout pipeline (trainer/rollout/pipeline.py):
   generated now by the policy this step updates (synchronous), or earlier — while the previous steps updated —
   by a policy at most rollout.max_staleness updates older (asynchronous). Every sample went to the reward
   sources the moment it finished;
2. rewards: wait until every source answered every sample, combine them into one reward per sample (weights,
   normalisation, running normalisation, clipping). With DAPO's dynamic sampling, groups whose rewards are all
   equal are dropped and more prompts are drawn until the step has its groups (in a bounded number of rounds);
3. tensors, and what the update compares against: the reference's log-probabilities (KL), the behaviour
   policy's (recorded by the engine at generation), the proximal policy's (this step's policy before its update:
   the current ones, detached, on the first pass over the batch; computed once when a batch is used for several
   epochs) and PPO's values;
4. advantages: group-normalised (GRPO), leave-one-out (RLOO), REINFORCE++'s whitened returns or whitened
   group-centred rewards, or GAE on the final-token reward (PPO); the KL to the reference is either a per-token
   reward here or a loss term below;
5. the update: the off-policy clipped surrogate (PPO's ratio against the proximal policy, weighted by truncated
   importance weights π_prox/μ: trainer/algorithms/losses.py) + β·KL(k3) − c·entropy (+ PPO's clipped value
   loss), aggregated per token or per sequence over the whole global batch; one optimizer step per epoch;
6. the new weights go into the rollout engine, which then generates a later step's batch.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rewardline.trainer.algorithms.advantages import (
    discounted_returns,
    gae,
    group_normalized,
    informative_groups,
    leave_one_out,
    whiten,
)
from rewardline.trainer.algorithms.losses import (
    aggregate,
    k1_kl,
    k2_kl,
    k3_kl,
    logprobs_and_entropy,
    off_policy_surrogate,
    token_logprobs,
    value_loss,
)
from rewardline.trainer.batch import Batch, build_batch
from rewardline.trainer.config import TrainConfig
from rewardline.trainer.distributed import (
    World,
    all_reduce_max,
    all_reduce_sum,
    all_reduce_sums,
    global_moments,
    gradient_sync,
)
from rewardline.trainer.policy import PolicyModule, adapters_disabled, policy_weights
from rewardline.trainer.prompts import PromptRecord
from rewardline.trainer.rewards.base import SourceReward
from rewardline.trainer.rewards.combine import CombinedRewards, RunningMoments, combine, normalize_and_clip
from rewardline.trainer.rewards.hub import RewardHub
from rewardline.trainer.rollout.base import Completion
from rewardline.trainer.rollout.pipeline import RolloutBatch, RolloutPipeline


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
    rollouts: RolloutPipeline
    hub: RewardHub
    should_stop: Callable[[], bool]
    device: torch.device
    reward_moments: RunningMoments | None = None  # rewards.running_norm: the run's reward statistics so far


@dataclass
class Collected:
    """Steps 1-2: the samples the step trains on, their rewards, and what it took to get them."""

    completions: list[Completion]
    versions: list[int]  # the policy version that generated each sample
    rewards: CombinedRewards
    records: list[PromptRecord]  # every prompt the step drew, trained on or dropped
    sums: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))


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
def proximal_outputs(ctx: StepContext, batch: Batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities and values of this step's policy before its update (the proximal policy)."""
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
    """Per-token rewards of a sequence reward: the reward on the sequence's last generated token, 0 elsewhere."""
    out = torch.zeros_like(mask)
    lengths = mask.sum(dim=1).long()
    rows = torch.nonzero(lengths > 0).squeeze(-1)
    out[rows, lengths[rows] - 1] = rewards[rows].to(out.dtype)
    return out


def global_whiten(values: torch.Tensor, mask: torch.Tensor, world: World) -> torch.Tensor:
    """`whiten` with the mean and std over the masked entries of every rank (the global batch)."""
    count, total, squares = all_reduce_sum(
        [float(mask.sum()), float((values * mask).sum()), float((values**2 * mask).sum())], world
    )
    mean = total / max(count, 1)
    std = max(squares / max(count, 1) - mean**2, 0.0) ** 0.5
    return whiten(values, mask, torch.tensor(mean), torch.tensor(std))


KL = {"k1": k1_kl, "k2": k2_kl, "k3": k3_kl}  # algorithm.kl_estimator: the KL term of the loss
COLLECTED = (
    "ahead",
    "rollout_generate_s",
    "stale_samples",
    "dynamic_sampling_dropped",
    "dynamic_sampling_surplus",
    "groups_generated",
    "extra_rounds",
    "groups_trained",
    "truncated_masked",
    "is_weight",
    "is_truncated",
    "behaviour_kl",
)


def keep_first_groups(
    kept: list[Completion],
    versions: list[int],
    answers: list[dict[str, SourceReward]],
    target: int,
    n: int,
    world: World,
) -> tuple[list[Completion], list[int], list[dict[str, SourceReward]], tuple[list[Completion], list]]:
    """The first ``target`` kept groups over all ranks, in rank order (as verl keeps the first train_batch_size of
    what its rounds found); returns this rank's share and the first group it gave up (empty when none)."""
    counts = all_reduce_sum([float(len(kept) // n) if r == world.rank else 0.0 for r in range(world.size)], world)
    before = int(sum(counts[: world.rank]))
    mine = max(0, min(len(kept) // n, target - before))
    surplus = (kept[mine * n : (mine + 1) * n], answers[mine * n : (mine + 1) * n])
    return kept[: mine * n], versions[: mine * n], answers[: mine * n], surplus


def collect(ctx: StepContext, step: int) -> Collected:
    """Steps 1-2: the step's batch from the pipeline; its rewards; groups dropped (too stale, or without signal
    under dynamic sampling) and replaced by extra rounds drawn from the prompt stream."""
    cfg, world, n = ctx.config, ctx.world, ctx.config.rollout.n
    target, sources = cfg.rollout.prompts_per_step, cfg.rewards.sources
    kept: list[Completion] = []
    versions: list[int] = []
    answers: list[dict[str, SourceReward]] = []
    dropped: list[tuple[list[Completion], list[dict[str, SourceReward]]]] = []  # the last dropped group
    records: list[PromptRecord] = []
    # every rank names the same figures (they are reduced by name), so each starts at 0
    sums: defaultdict[str, float] = defaultdict(float, dict.fromkeys(COLLECTED, 0.0))
    seconds: defaultdict[str, float] = defaultdict(float)
    sums["ahead"] = float(ctx.rollouts.ahead(step))

    started = time.perf_counter()
    batch: RolloutBatch | None = ctx.rollouts.next(step)
    seconds["generate_s"] += time.perf_counter() - started
    kept_groups, extra_rounds = 0.0, 0
    while batch is not None:
        records += batch.records
        sums["rollout_generate_s"] += batch.generate_s
        waited = time.perf_counter()
        got = ctx.hub.wait(batch.sample_ids, cfg.rewards.max_wait_s, ctx.should_stop)
        seconds["reward_wait_s"] += time.perf_counter() - waited
        round_answers = [got[i] for i in batch.sample_ids]
        groups = len(batch.completions) // n
        stale = step - 1 - batch.version > cfg.rollout.max_staleness
        if stale:
            keep = np.zeros(groups, dtype=bool)
            sums["stale_samples"] += len(batch.completions)
        elif cfg.algorithm.dynamic_sampling and groups:
            scored = combine(round_answers, sources, "sum")
            metric = cfg.algorithm.dynamic_sampling_metric
            deciding = [s.name for s in sources if metric is None or s.name == metric]
            scores = torch.tensor(np.stack([np.nan_to_num(scored.per_source[name]) for name in deciding]))
            informative = informative_groups(
                scores.view(len(deciding), groups, n), torch.tensor(scored.valid).view(groups, n)
            )
            keep = informative.numpy()
            sums["dynamic_sampling_dropped"] += float((~keep).sum())
        else:
            keep = np.ones(groups, dtype=bool)
        sums["groups_generated"] += groups
        for g in range(groups):
            part = slice(g * n, (g + 1) * n)
            if keep[g]:
                kept += batch.completions[part]
                versions += [batch.version] * n
                answers += round_answers[part]
            else:
                dropped = [(batch.completions[part], round_answers[part])]
        (new,) = all_reduce_sum([float(keep.sum())], world)
        kept_groups += new
        missing = target - int(kept_groups)
        more = stale or (cfg.algorithm.dynamic_sampling and extra_rounds < cfg.algorithm.dynamic_sampling_max_rounds)
        if missing <= 0 or not more:
            break
        extra_rounds += 1
        draw = math.ceil(missing * cfg.algorithm.dynamic_sampling_oversample) if not stale else missing
        started = time.perf_counter()
        batch = ctx.rollouts.extra_round(step, extra_rounds, draw)
        seconds["generate_s"] += time.perf_counter() - started
    if kept_groups > target:  # an oversampled round found more than the step needs: the batch stays its size
        kept, versions, answers, surplus = keep_first_groups(kept, versions, answers, target, n, world)
        if not kept and surplus[0]:
            dropped = [surplus]
        sums["dynamic_sampling_surplus"] = kept_groups - target
        kept_groups = float(target)
    sums["extra_rounds"] = float(extra_rounds)
    sums["groups_trained"] = kept_groups
    valid_override = None
    if not kept and dropped:
        # Every rank runs a forward and backward (DDP reduces gradients in them): a rank left without any group
        # trains on a dropped one with its loss masked out, which adds nothing to the update.
        group, group_answers = dropped[0]
        kept, answers, versions = list(group), list(group_answers), [step - 1] * len(group)
        valid_override = np.zeros(len(group), dtype=bool)

    # Rewards of the samples trained on: combined, normalised over the run, clipped.
    rewards = combine(answers, sources, cfg.rewards.combine, global_moments(world))
    if valid_override is not None:
        rewards.valid &= valid_override
        rewards.training = np.where(rewards.valid, rewards.training, 0.0)
        rewards.reported = np.where(rewards.valid, rewards.reported, np.nan)
    if ctx.reward_moments is not None:
        values = rewards.training[rewards.valid]
        ctx.reward_moments.update(
            *all_reduce_sum([float(values.size), float(values.sum()), float((values**2).sum())], world)
        )
    rewards.training = normalize_and_clip(rewards.training, rewards.valid, ctx.reward_moments, cfg.rewards.clip)
    return Collected(kept, versions, rewards, records, sums, seconds)


def run_step(ctx: StepContext, step: int) -> tuple[dict[str, float], list[PromptRecord]]:
    """One step; returns its figures (over the global batch) and every prompt it drew."""
    cfg, world, algo = ctx.config, ctx.world, ctx.config.algorithm
    n, temperature = cfg.rollout.n, cfg.rollout.temperature
    started = time.perf_counter()

    # 1-2. Rollouts (from the pipeline) and their rewards.
    got = collect(ctx, step)
    completions, rewards, sums = got.completions, got.rewards, got.sums
    collected = time.perf_counter()
    (trained_groups,) = all_reduce_sum([float(bool(rewards.valid.any()))], world)

    # 3. Tensors; the behaviour, reference and (several epochs, PPO) proximal log-probabilities and values.
    batch = build_batch(completions, rewards.valid.tolist(), ctx.tokenizer.pad_token_id).to(ctx.device)
    mask = batch.completion_mask
    if algo.mask_truncated:  # DAPO's overlong filtering: a completion cut short is no evidence either way
        finished = torch.tensor([c.finished for c in completions], device=ctx.device)
        sums["truncated_masked"] += float((~finished & torch.tensor(rewards.valid, device=ctx.device)).sum())
        mask = mask * finished[:, None].to(mask.dtype)
    behaviour = batch.behaviour_logprobs
    needs_prox = algo.epochs > 1 or algo.name == "ppo"
    prox_logp, old_values = proximal_outputs(ctx, batch, temperature) if needs_prox else (None, None)
    ref_logp = reference_logprobs(ctx, batch, temperature) if cfg.reference_kind != "none" else None

    # 4. Advantages, one per completion token.
    training_rewards = torch.tensor(rewards.training, dtype=torch.float32, device=ctx.device)
    valid = torch.tensor(rewards.valid, device=ctx.device)
    kl_reward = torch.zeros_like(mask)
    if cfg.kl_in_reward:
        assert ref_logp is not None
        kl_reward = -algo.kl_coef * k1_kl(behaviour, ref_logp) * batch.completion_mask  # k1 on tokens μ sampled
    returns = None
    if algo.name in ("grpo", "rloo", "reinforce_plus_plus_baseline"):
        sequence_rewards = training_rewards + kl_reward.sum(dim=1)
        groups, group_valid = sequence_rewards.view(-1, n), valid.view(-1, n)
        if algo.name == "grpo":
            per_sample = group_normalized(groups, group_valid, scale=algo.scale_rewards).reshape(-1)
        elif algo.name == "rloo":
            per_sample = leave_one_out(groups, group_valid).reshape(-1)
        else:
            per_sample = group_normalized(groups, group_valid, scale=False).reshape(-1)
        advantages = per_sample[:, None] * mask
        if algo.name == "reinforce_plus_plus_baseline":
            advantages = global_whiten(advantages, mask, world)
    elif algo.name == "reinforce_plus_plus":
        token_rewards = final_token_rewards(training_rewards, mask) + kl_reward
        advantages = global_whiten(discounted_returns(token_rewards, mask, algo.gamma), mask, world)
    else:
        assert old_values is not None
        token_rewards = final_token_rewards(training_rewards, mask) + kl_reward
        advantages, returns = gae(token_rewards, old_values, mask, algo.gamma, algo.lam)
        if algo.whiten_advantages:
            advantages = global_whiten(advantages, mask, world)
    prepared = time.perf_counter()

    # 5. The update. Every piece's loss is divided by the count over the whole global batch and multiplied by
    #    world_size, so that summing over micro-batches and averaging over ranks (DDP) gives the loss of
    #    the whole batch at once.
    rows = float((mask.sum(dim=1) > 0).sum())
    tokens, global_rows = all_reduce_sum([float(mask.sum()), rows], world)
    normalizer = max(
        {"token": tokens, "sequence": global_rows, "constant": global_rows * cfg.rollout.max_new_tokens}[
            algo.loss_aggregation
        ],
        1.0,
    )
    kl_in_loss = ref_logp is not None and not cfg.kl_in_reward
    parts = micro_batches(batch.input_ids.shape[0], cfg.optim.micro_batch_size)
    grad_norm = 0.0
    for epoch in range(algo.epochs if trained_groups else 0):  # no update when no group had a signal anywhere
        ctx.optimizer.zero_grad(set_to_none=True)
        for i, part in enumerate(parts):
            b, m = batch.rows(part), mask[part]
            with gradient_sync(ctx.module, enabled=i == len(parts) - 1 or not world.distributed):
                logits, values = ctx.module(b.input_ids, b.attention_mask, b.position_ids, b.completion_width)
                if temperature != 1:
                    logits = logits / temperature
                logp, entropy = logprobs_and_entropy(logits, b.completion_ids, entropy_grad=bool(algo.entropy_coef))
                prox = prox_logp[part] if prox_logp is not None else logp.detach()
                per_token, clipped, is_weight, truncated = off_policy_surrogate(
                    logp, prox, b.behaviour_logprobs, advantages[part], algo.clip_eps, algo.clip_eps_high, algo.tis_cap
                )
                kl = k3_kl(logp, ref_logp[part]) if ref_logp is not None else torch.zeros_like(logp)
                if kl_in_loss:
                    assert ref_logp is not None
                    penalty = kl if algo.kl_estimator == "k3" else KL[algo.kl_estimator](logp, ref_logp[part])
                    per_token = per_token + algo.kl_coef * penalty
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
                if epoch == 0:  # how far the behaviour policy is from this step's (staleness and numerics)
                    add(
                        sums,
                        {
                            "is_weight": float((is_weight * m).sum()),
                            "is_truncated": float((truncated * m).sum()),
                            "behaviour_kl": float((k3_kl(prox, b.behaviour_logprobs) * m).sum()),
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

    # 6. The new weights into the rollout engine (in place; nothing to copy for the transformers engine when it
    #    samples from the training module itself), once it has generated what the older weights were due to.
    waited = ctx.rollouts.sync(step, lambda: policy_weights(ctx.policy_module))
    finished_at = time.perf_counter()
    seconds = got.seconds
    seconds["generate_s"] += waited  # the engine finishing rollouts due to the older weights

    # Figures of the whole global batch: this rank's sums, reduced across ranks by name.
    reported = np.nan_to_num(rewards.reported)
    adv = per_sample_advantages(advantages, mask)
    staleness = np.array([step - 1 - v for v in got.versions], dtype=float)[rewards.valid]
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
            "staleness": float(staleness.sum()),
        },
    )
    for source in cfg.rewards.sources:
        scores = rewards.per_source[source.name]
        sums[f"reward/{source.name}"] = float(np.nansum(scores))
        sums[f"scored/{source.name}"] = float(np.isfinite(scores).sum())
        sums[f"errors/{source.name}"] = float(rewards.errors[source.name])
    reduced = all_reduce_sums(sums, world)
    (staleness_max,) = all_reduce_max([float(staleness.max()) if staleness.size else 0.0], world)
    token_count = max(tokens, 1)
    adv_mean = reduced["advantage"] / max(reduced["advantage_count"], 1)
    step_s = finished_at - started
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
        # off-policy: how old the samples were (in updates), how far their behaviour policy was from this step's
        "staleness_mean": reduced["staleness"] / max(reduced["valid"], 1),
        "staleness_max": staleness_max,
        "stale_samples_dropped": reduced["stale_samples"],
        "rollouts_ahead": reduced["ahead"] / world.size,
        "is_weight_mean": reduced["is_weight"] / token_count,
        "is_truncated_fraction": reduced["is_truncated"] / token_count,
        "behaviour_kl": reduced["behaviour_kl"] / token_count,
        # where the step's time went (this process's wall clock); rollout_generate_s is the engine's time on the
        # step's batches, which in asynchronous mode overlapped earlier steps
        "step_s": step_s,
        "generate_s": seconds["generate_s"],
        "reward_wait_s": seconds["reward_wait_s"],
        "prepare_s": prepared - collected,
        "update_s": updated - prepared,
        "weight_sync_s": finished_at - updated - waited,
        "overhead_s": max(
            step_s
            - seconds["generate_s"]
            - seconds["reward_wait_s"]
            - (prepared - collected)
            - (updated - prepared)
            - (finished_at - updated - waited),
            0.0,
        ),
        "rollout_generate_s": reduced["rollout_generate_s"] / world.size,
    }
    if algo.dynamic_sampling:
        out["dynamic_sampling_dropped_fraction"] = reduced["dynamic_sampling_dropped"] / max(
            reduced["groups_generated"] / world.size, 1
        )
        out["dynamic_sampling_extra_rounds"] = reduced["extra_rounds"] / world.size
        out["groups_trained"] = reduced["groups_trained"] / world.size
        out["dynamic_sampling_surplus_groups"] = reduced["dynamic_sampling_surplus"] / world.size
    if algo.mask_truncated:
        out["truncated_masked"] = reduced["truncated_masked"]
    if algo.name == "ppo":
        out["value_loss"] = reduced["value_loss"] / token_count
        out["value_clip_fraction"] = reduced["value_clipped"] / token_count
    for source in cfg.rewards.sources:
        scored_count = reduced[f"scored/{source.name}"]
        out[f"reward/{source.name}"] = reduced[f"reward/{source.name}"] / scored_count if scored_count else float("nan")
        out[f"errors/{source.name}"] = reduced[f"errors/{source.name}"]
    ctx.rollouts.finish(step)
    return out, got.records


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
