"""Data-parallel training under torchrun: the process group, the reductions the trainer needs, and DDP.

Design: every rank reads the same prompt stream and takes every world_size-th prompt group of each step
(a group never straddles ranks, so GRPO/RLOO's group statistics stay local); it generates its groups and
streams them to the reward sources itself. What must be global is reduced explicitly: batch-level
reward normalisation, PPO's advantage whitening, the loss normalisers (tokens or sequences in the whole
global batch) and the reported metrics. Every rank's loss is the sum of its pieces divided by the global
count, times world_size, so that DDP's gradient average equals the gradient of the single-process loss on
the same global batch. Rank 0 alone writes checkpoints, metrics.jsonl and plots and serves the control API;
its control decisions reach the others at each step boundary.

FSDP (``distributed.strategy: fsdp``, FSDP2's ``fully_shard`` per decoder layer and on the whole module)
shards parameters, gradients and optimizer state. Every forward then all-gathers, so every rank must run the
same number of forwards: the prompts of a step must divide evenly over the ranks (checked at start), and the
transformers rollout engine samples from its own full copy of the policy (refreshed after each update)
rather than from the sharded module, whose generation length differs between ranks. Full weights are
gathered (a collective) for the rollout engine and for checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from rewardline.services.modeling import resolve_device

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def training_device(device: str) -> torch.device:
    """The device this process trains on (``modeling.resolve_device`` with this process's LOCAL_RANK under
    torchrun), made the current CUDA device when it is one."""
    try:
        chosen = torch.device(resolve_device(device, local_rank=int(os.environ.get("LOCAL_RANK", "0"))))
    except ValueError as e:
        raise ValueError(f"policy.device: {e}") from None
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    return chosen


def init(backend: str, device: torch.device | None = None) -> World:
    """Joins the process group torchrun describes in the environment; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if backend == "auto":
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return World(dist.get_rank(), dist.get_world_size())


def shutdown() -> None:
    if dist.is_initialized():
        try:
            dist.barrier()  # no rank tears its connections down while another still uses them
        finally:
            dist.destroy_process_group()


def _all_reduce(values: list[float], op: dist.ReduceOp.RedOpType) -> list[float]:
    # NCCL reduces only GPU tensors; gloo only CPU ones
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def all_reduce_sum(values: list[float], world: World) -> list[float]:
    return _all_reduce(values, dist.ReduceOp.SUM) if world.distributed else list(values)


def all_reduce_sums(sums: Mapping[str, float], world: World) -> dict[str, float]:
    """Sums reduced across ranks by name: every rank names the same figures, and the names' sorted order is the
    one order all ranks put them in."""
    names = sorted(sums)
    return dict(zip(names, all_reduce_sum([float(sums[n]) for n in names], world)))


def all_reduce_max(values: list[float], world: World) -> list[float]:
    return _all_reduce(values, dist.ReduceOp.MAX) if world.distributed else list(values)


def global_moments(world: World):
    """(values, valid) -> (mean, std) over the valid values of every rank: for batch normalisation."""

    def moments(values: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
        kept = values[valid]
        count, total, squares = all_reduce_sum([float(kept.size), float(kept.sum()), float((kept**2).sum())], world)
        if count == 0:
            return 0.0, 1.0
        mean = total / count
        return mean, max(squares / count - mean**2, 0.0) ** 0.5

    return moments


def shard(module: torch.nn.Module, layers: list[torch.nn.Module]) -> None:
    """FSDP2: each decoder layer its own unit (gathered just for its forward), the rest in the root unit."""
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(module)


def gradient_sync(module: torch.nn.Module, enabled: bool):
    """DDP's ``no_sync`` / FSDP's ``set_requires_gradient_sync``: skip the reduction on all but the last
    micro-batch (the gradients accumulate locally, and the last backward reduces their sum)."""
    if enabled:
        return contextlib.nullcontext()
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return module.no_sync()
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        return _unsynced(module)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _unsynced(module: FSDPModule) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def is_sharded(module: torch.nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in module.parameters())


def full_state_dict(module: torch.nn.Module) -> dict[str, Any]:
    """Every parameter whole on every rank (a collective under FSDP; the plain state dict otherwise)."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict
) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(module, model_state, options=options)
    set_optimizer_state_dict(module, optimizer, optim_state_dict=optimizer_state, options=options)
