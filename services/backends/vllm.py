"""The ``vllm`` backend: a vLLM engine in the service's process, for judges and for classifiers.

- ``VLLMJudge`` (generative judges): candidate-token log-probabilities read with ``SamplingParams(max_tokens=1,
  logprob_token_ids=[...])``, which returns the exact raw log-probabilities of exactly those tokens (not a top-k
  that may miss one), and rationales with ``generate`` and a stop string. Prefix caching (on by default) makes
  the samples of a GRPO group, which share the judge prompt's head, pay for it once (on CPU with 32-token
  blocks: see ``engine_arguments``).
- ``VLLMClassifier`` (reward and uncertainty models): the pooling runner's ``classify`` with
  ``PoolingParams(use_activation=False)``, i.e. the raw logits; vLLM packs sequences of mixed length without
  padding, hence ``cost_model = "packed"``.

The engine runs in-process (``LLM``), with the fast single-process settings (``modeling.configure_vllm``,
``distributed_executor_backend="uni"``, ``enforce_eager`` on CPU: it starts in seconds on the CPU build). Its
calls block, and its CPU worker binds the threads of whichever thread created it, so the engine is created
on, and only ever called from, one dedicated thread; the event loop stays free to take requests meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from rewardline.services.backends.base import CostModel, Generated
from rewardline.services.compute_threads import start_compute_thread
from rewardline.services.modeling import configure_vllm

if TYPE_CHECKING:
    from rewardline.services.config import ServeConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
CPU_JUDGE_BLOCK_SIZE = 32


def engine_arguments(config: ServeConfig, model_dir: Path, max_model_len: int | None, runner: str) -> dict[str, Any]:
    from vllm.platforms import current_platform

    on_cpu = current_platform.device_type == "cpu"
    args: dict[str, Any] = {
        "model": str(model_dir),
        "runner": runner,
        "dtype": "float32" if (config.dtype == "auto" and on_cpu) else config.dtype,
        "enforce_eager": on_cpu,  # CUDA graphs only exist on a GPU
        "distributed_executor_backend": "uni",
        "enable_prefix_caching": config.vllm_prefix_caching,
        "trust_remote_code": config.trust_remote_code,
        "seed": config.judge_seed,
    }
    if max_model_len:
        args["max_model_len"] = max_model_len
    if config.vllm_max_num_seqs:
        args["max_num_seqs"] = config.vllm_max_num_seqs
    if config.vllm_max_num_batched_tokens:
        args["max_num_batched_tokens"] = config.vllm_max_num_batched_tokens
    if config.vllm_block_size:
        args["block_size"] = config.vllm_block_size
    elif on_cpu and runner == "generate" and config.vllm_prefix_caching:
        # Prefix caching shares whole blocks, and on CPU a block is 128 tokens by default: longer than the head a
        # GRPO group's judge prompts share (template + prompt), which then shared nothing and only paid for the
        # hashing (0.7x the throughput of caching off in bench/judge_throughput.py). 32 is the smallest block
        # the CPU attention takes; with it caching made that benchmark ~1.5x faster than caching off.
        args["block_size"] = CPU_JUDGE_BLOCK_SIZE
    return args


def engine_threads(config: ServeConfig) -> int:
    """Threads of the in-process engine: ``num_threads``, else as many as cores in ``vllm_cpu_threads_bind``, else
    the process's torch threads.

    vLLM sizes its CPU worker's OpenMP team only when it spawns the worker (multiprocessing executor); in-process
    the engine computes with whatever team its calling thread has, and a new thread's team follows
    OMP_NUM_THREADS, not the main thread's ``torch.set_num_threads``: the first version here ran on one thread of
    two (half the throughput of `vllm serve`) under OMP_NUM_THREADS=1."""
    import torch

    if config.num_threads:
        return config.num_threads
    if config.vllm_cpu_threads_bind and config.vllm_cpu_threads_bind not in ("auto", "nobind"):
        return len(cpu_list(config.vllm_cpu_threads_bind))
    return torch.get_num_threads()


def cpu_list(spec: str) -> list[int]:
    """ "0-3,6" -> [0, 1, 2, 3, 6] (the first NUMA node's list when several are given with "|")."""
    cpus: list[int] = []
    for part in spec.split("|")[0].split(","):
        if "-" in part:
            low, high = part.split("-")
            cpus += range(int(low), int(high) + 1)
        elif part.strip():
            cpus.append(int(part))
    return cpus


class _Engine:
    """One ``vllm.LLM`` living on one thread: created there and called only there."""

    def __init__(self, config: ServeConfig, model_dir: Path, max_model_len: int | None, runner: str) -> None:
        configure_vllm(config.vllm_kv_cache_gib, config.vllm_cpu_threads_bind, config.log_level)
        self.threads = engine_threads(config)
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"vllm-{runner}",
            initializer=start_compute_thread,
            initargs=(self.threads,),
        )
        self.args = engine_arguments(config, model_dir, max_model_len, runner)
        self.llm = self._executor.submit(self._create).result()
        from vllm.platforms import current_platform

        self.device = current_platform.device_type
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")

    def _create(self) -> Any:
        from vllm import LLM

        return LLM(**self.args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _prompts(contexts: Sequence[Sequence[int]]) -> list[Any]:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=list(ids)) for ids in contexts]


class VLLMJudge:
    """A causal LM on vLLM behind the ``JudgeBackend`` interface."""

    name = "vllm"
    cost_model: CostModel = "packed"
    max_padding: float | None = None  # packed: no padding
    concurrency = 1

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.device = engine.device
        self.dtype = engine.dtype

    @classmethod
    def from_config(cls, config: ServeConfig, model_dir: Path, max_length: int) -> VLLMJudge:
        return cls(_Engine(config, model_dir, max_length, runner="generate"))

    def logprobs_sync(self, contexts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> np.ndarray:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(token_ids), detokenize=False)
        outputs = self.engine.llm.generate(_prompts(contexts), params, use_tqdm=False)
        table = np.empty((len(contexts), len(token_ids)), dtype=np.float64)
        for row, output in enumerate(outputs):
            position = output.outputs[0].logprobs[0]  # the one generated position: token id -> Logprob
            table[row] = [position[t].logprob for t in token_ids]
        return table

    def generate_sync(
        self, contexts: Sequence[Sequence[int]], n: int, max_tokens: int, temperature: float, stop: str, seed: int
    ) -> list[list[Generated]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=[stop],
            include_stop_str_in_output=True,
            seed=seed if temperature > 0 else None,
        )
        outputs = self.engine.llm.generate(_prompts(contexts), params, use_tqdm=False)
        return [[Generated(c.text, len(c.token_ids)) for c in output.outputs] for output in outputs]

    async def next_token_logprobs(self, contexts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> np.ndarray:
        return await self.engine.call(self.logprobs_sync, contexts, token_ids)

    async def generate(
        self, contexts: Sequence[Sequence[int]], *, n: int, max_tokens: int, temperature: float, stop: str, seed: int
    ) -> list[list[Generated]]:
        return await self.engine.call(self.generate_sync, contexts, n, max_tokens, temperature, stop, seed)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self.engine.close()


class VLLMClassifier:
    """A sequence-classification checkpoint on vLLM's pooling runner behind the ``ClassifierBackend`` interface."""

    name = "vllm"
    cost_model: CostModel = "packed"
    max_padding: float | None = None  # packed: no padding
    concurrency = 1

    def __init__(self, engine: _Engine, num_outputs: int) -> None:
        self.engine = engine
        self.device = engine.device
        self.dtype = engine.dtype
        self.num_outputs = num_outputs

    @classmethod
    def from_config(cls, config: ServeConfig, model_dir: Path) -> VLLMClassifier:
        from transformers import AutoConfig

        num_outputs = int(AutoConfig.from_pretrained(model_dir, trust_remote_code=config.trust_remote_code).num_labels)
        return cls(_Engine(config, model_dir, config.max_length, runner="pooling"), num_outputs)

    def forward(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Synchronous classify (the benchmark's in-process reference calls this directly)."""
        from vllm import PoolingParams

        outputs = self.engine.llm.classify(
            _prompts(batch), pooling_params=PoolingParams(use_activation=False), use_tqdm=False
        )
        return np.asarray([o.outputs.probs for o in outputs], dtype=np.float32).reshape(len(batch), self.num_outputs)

    async def classify(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        return await self.engine.call(self.forward, batch)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self.engine.close()
