"""Checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint is a directory ``run_dir/checkpoints/step-00000042``: ``policy/`` (a Hugging Face directory in
safetensors — the full model, or the LoRA adapter), ``value.safetensors`` (PPO), ``trainer_state.pt``
(optimizer, scheduler, the RNG states of python/numpy/torch, step, data cursor, config hash, running reward
moments), ``rollouts.json`` (asynchronous mode: the in-flight rollouts made by older policy versions, with the
rewards received for them; trainer/rollout/pipeline.py) and ``state.json`` (the same facts, readable). It is
written under a temporary name and renamed when complete, so the latest checkpoint is always whole, even after a
SIGKILL in the middle of writing one.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from rewardline.trainer.distributed import is_sharded, load_full_state
from rewardline.trainer.policy import PolicyModule
from rewardline.trainer.prompts import Cursor

log = logging.getLogger(__name__)
PREFIX = "step-"


@dataclass
class TrainingState:
    step: int
    cursor: Cursor
    config_hash: str
    world_size: int = 1
    strategy: str = "single"  # single, ddp or fsdp: how the run that wrote it was laid out
    rollouts: list[dict[str, Any]] = field(default_factory=list)  # in-flight batches (asynchronous mode)
    reward_moments: dict[str, float] | None = None  # rewards.running_norm's statistics


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest(run_dir: Path) -> Path | None:
    done = [p for p in checkpoints_dir(run_dir).glob(f"{PREFIX}*") if (p / "state.json").exists()]
    return max(done, key=lambda p: int(p.name[len(PREFIX) :]), default=None)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    run_dir: Path,
    module: PolicyModule,
    tokenizer: PreTrainedTokenizerBase,
    optimizer_state: dict,
    scheduler: Any,
    state: TrainingState,
    keep: int,
    module_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """``optimizer_state`` keyed by parameter name (torch.distributed.checkpoint's full form, which loads into
    any world size or strategy); ``module_state`` the PolicyModule's full state when it is sharded (FSDP)."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{state.step:08d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if module_state is None:
        module.policy.save_pretrained(tmp / "policy", safe_serialization=True)
        value_state = module.value.state_dict() if module.value is not None else None
    else:
        policy_state = {k.removeprefix("policy."): v for k, v in module_state.items() if k.startswith("policy.")}
        module.policy.save_pretrained(tmp / "policy", state_dict=policy_state, safe_serialization=True)
        value_state = {k.removeprefix("value."): v for k, v in module_state.items() if k.startswith("value.")} or None
    tokenizer.save_pretrained(tmp / "policy")
    if value_state is not None:
        save_file({k: v.contiguous() for k, v in value_state.items()}, tmp / "value.safetensors")
    torch.save(
        {
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "step": state.step,
            "cursor": state.cursor.model_dump(),
            "config_hash": state.config_hash,
            "reward_moments": state.reward_moments,
        },
        tmp / "trainer_state.pt",
    )
    if state.rollouts:
        (tmp / "rollouts.json").write_text(json.dumps(state.rollouts))
    (tmp / "state.json").write_text(
        json.dumps(
            {
                "step": state.step,
                "cursor": state.cursor.model_dump(),
                "config_hash": state.config_hash,
                "world_size": state.world_size,
                "strategy": state.strategy,
                "in_flight_batches": [{"step": b["step"], "version": b["version"]} for b in state.rollouts],
                "time": time.time(),
            },
            indent=2,
        )
        + "\n"
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob(f"{PREFIX}*"), key=lambda p: int(p.name[len(PREFIX) :]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint written", extra={"step": state.step, "path": str(final)})
    return final


def load(path: Path, module: PolicyModule, optimizer: torch.optim.Optimizer, scheduler: Any) -> TrainingState:
    """Restores weights, optimizer, scheduler and RNG states in place; returns step, cursor and config hash.
    Under FSDP every rank calls it (it scatters the full state onto the shards)."""
    state = torch.load(path / "trainer_state.pt", weights_only=False, map_location="cpu")
    if is_sharded(module):
        dtype = next(module.policy.parameters()).dtype
        saved = AutoModelForCausalLM.from_pretrained(path / "policy", dtype=dtype).state_dict()
        full = {f"policy.{k}": v for k, v in saved.items()}
        if module.value is not None:
            full.update({f"value.{k}": v for k, v in load_file(path / "value.safetensors").items()})
        load_full_state(module, optimizer, full, state["optimizer"])
    else:
        _load_unsharded(path, module)
        set_optimizer_state_dict(
            module, optimizer, optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    rollouts = json.loads((path / "rollouts.json").read_text()) if (path / "rollouts.json").exists() else []
    return TrainingState(
        state["step"],
        Cursor(**state["cursor"]),
        state["config_hash"],
        rollouts=rollouts,
        reward_moments=state.get("reward_moments"),
    )


def _load_unsharded(path: Path, module: PolicyModule) -> None:
    if hasattr(module.policy, "get_base_model"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(module.policy, load_file(path / "policy" / "adapter_model.safetensors"))
    else:
        saved = AutoModelForCausalLM.from_pretrained(path / "policy", dtype=next(module.policy.parameters()).dtype)
        module.policy.load_state_dict(saved.state_dict())
    if module.value is not None:
        module.value.load_state_dict(load_file(path / "value.safetensors"))
