"""The one supervised loop every model of this project is trained with (policy SFT, judge, reward models).

A caller says how to compute the loss of one batch (given the indices of its examples) and which parameters learn
at which rate; the loop does the rest the same way for everyone: AdamW, a cosine schedule after a linear warm-up,
gradient clipping, seeded batch order, a progress bar with the loss, and the loss of every step returned. One loop
means one place where a schedule or clipping bug can live, and models that differ only where they mean to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from pydantic import BaseModel, Field
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

log = logging.getLogger(__name__)

BatchLoss = Callable[[list[int]], torch.Tensor]  # indices of a batch's examples -> its loss
AfterStep = Callable[[int], bool]  # step number (from 1) -> stop training now
ParamGroup = tuple[list[torch.nn.Parameter], float]  # parameters and their peak learning rate


class FitConfig(BaseModel):
    """The settings every supervised loop shares; a model's own config adds what is particular to it."""

    steps: int = Field(600, gt=0, description="optimizer steps (the cosine schedule decays over this many)")
    batch_size: int = Field(32, gt=0, description="examples (for preference models: pairs) per step")
    learning_rate: float = Field(
        1e-4, gt=0, description="peak learning rate (of the backbone, where a head has its own)"
    )
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(30, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0


def batch_indices(size: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[list[int]]:
    """`steps` batches, reshuffling at each pass over the data; a short last batch of a pass is dropped, so every
    step sees a full batch and the loss scale does not jump once per pass."""
    per_pass = max(size // batch_size, 1)
    for step in range(steps):
        if step % per_pass == 0:
            order = torch.randperm(size, generator=generator).tolist()
        i = (step % per_pass) * batch_size
        yield order[i : i + batch_size]


def final_loss(losses: Sequence[float], last: int = 20) -> float:
    """The mean of the last steps' losses: one step's loss is too noisy to report."""
    tail = losses[-last:]
    return sum(tail) / max(len(tail), 1)


def optimizer_and_schedule(
    groups: Sequence[ParamGroup], config: FitConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": lr} for params, lr in groups],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    return optimizer, get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)


def fit(
    model: torch.nn.Module,
    batch_loss: BatchLoss,
    examples: int,
    config: FitConfig,
    *,
    name: str,
    groups: Sequence[ParamGroup] | None = None,
    generator: torch.Generator | None = None,
    after_step: AfterStep | None = None,
) -> list[float]:
    """Trains `model` in place on batches of `examples` examples; returns the loss of every step taken.

    `groups` default to every parameter at `config.learning_rate`. `generator` orders the batches; a caller that
    drew from it already (a prior, a bootstrap) passes it on so one seed fixes everything, else it is seeded from
    `config.seed`. `after_step` runs after each update (with the model in training mode again afterwards) and ends
    training early by returning True. The model is left in eval mode.
    """
    groups = groups or [(list(model.parameters()), config.learning_rate)]
    optimizer, scheduler = optimizer_and_schedule(groups, config)
    trainable = [p for params, _ in groups for p in params]
    generator = generator or torch.Generator().manual_seed(config.seed)
    batches = batch_indices(examples, config.batch_size, config.steps, generator)
    losses: list[float] = []
    model.train()
    progress = tqdm(batches, total=config.steps, desc=name, disable=None)
    for step, indices in enumerate(progress, start=1):
        loss = batch_loss(indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if after_step is not None:
            stop = after_step(step)
            model.train()
            if stop:
                break
    model.eval()
    log.info(
        "%s: %d steps, final loss %.3f", name, len(losses), final_loss(losses), extra={"final_loss": final_loss(losses)}
    )
    return losses
