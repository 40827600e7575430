"""The choices the CUDA path makes, checked where they can be: on the CPU, and again on a GPU where there is one.

- where ``auto`` puts a model and in which dtype (modeling.resolve_device / resolve_dtype), and that asking for
  CUDA where there is none is refused with a message rather than failing later inside torch;
- that the transformers rollout engine's per-group seeding leaves the global random generators as it found
  them, the CPU's and, on a GPU, the GPU's (hf_engine.generator_devices): sampling on a GPU draws from the GPU's
  generator, which ``torch.manual_seed`` reseeds, and which the engine once left reseeded with the last group's
  seed after every step.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewardline.services.modeling import resolve_device, resolve_dtype
from rewardline.trainer.config import RolloutConfig
from rewardline.trainer.rollout.base import RolloutRequest
from rewardline.trainer.rollout.hf_engine import HFEngine, generator_devices

GPU = os.environ.get("REWARDLINE_GPU_TESTS_DEVICE", "cuda")


def test_auto_is_bfloat16_on_a_gpu_and_float32_on_the_cpu():
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float32", "cuda") == "float32"


def test_auto_device_and_torchrun_ranks():
    if torch.cuda.is_available():
        assert resolve_device("auto") == "cuda"
        assert resolve_device("auto", local_rank=0) == resolve_device("cuda", local_rank=0) == "cuda:0"
    else:
        assert resolve_device("auto") == resolve_device("auto", local_rank=3) == "cpu"
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    assert resolve_device("cpu", local_rank=1) == "cpu"


def test_generator_devices_fork_the_models_gpu_and_only_it():
    assert generator_devices(torch.device("cpu")) == []
    assert generator_devices(torch.device("cuda", 1)) == [torch.device("cuda", 1)]


def generator_states(device: torch.device) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


@pytest.mark.parametrize("device", ["cpu", pytest.param(GPU, marks=pytest.mark.gpu)])
def test_rollouts_leave_the_global_generators_as_they_found_them(local_models, device):
    """Two groups sampled under their own seeds; the global generators of the CPU and of the model's device are
    where they were, and a group's samples do not depend on the generator state before the call."""
    model = AutoModelForCausalLM.from_pretrained(local_models / "policy", dtype=torch.float32).to(device)
    engine = HFEngine(model, AutoTokenizer.from_pretrained(local_models / "policy"), RolloutConfig(max_new_tokens=6))
    prompt = tuple(engine.tokenizer("What is 2 + 3?")["input_ids"])
    requests = [RolloutRequest(f"g{i}", i, "What is 2 + 3?", prompt, seed=100 + i) for i in range(2)]
    torch.manual_seed(1)
    before = generator_states(model.device)
    first = [c.token_ids for c in engine.generate(requests, 3, lambda done: None)]
    after = generator_states(model.device)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    torch.manual_seed(2)  # another global state: the same samples
    assert [c.token_ids for c in engine.generate(requests, 3, lambda done: None)] == first
