"""Rollouts with an in-process vLLM engine, and new weights loaded into it in place after every update.

- In process and single-worker (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, executor ``uni``, eager): it starts in
  seconds on the CPU build and the engine's model lives in this process, which is what lets the update below
  hand it tensors without serialising them. ``rollout.vllm_engine_process`` runs the engine core in its own
  process instead (vLLM's multiprocessing mode): the scheduler, forward passes and sampling then run beside the
  trainer's update rather than taking turns with it for this process's interpreter lock, which is what
  asynchronous rollouts want; new weights then reach it as a safetensors file in shared memory, which its own
  loader reads in place (``reload_weights(weights_path=...)``).
- Streaming: each sample is its own request (with its own seed), driven through ``LLMEngine.step``; the samples
  that finish in an engine step are passed on to the reward sources together, while the others still generate.
- Behaviour log-probabilities: each sampled token's log-probability comes back with it (``logprobs=0``, the
  engine's ``processed_logprobs`` mode: after temperature, top-k and top-p, i.e. the distribution it was drawn
  from), for the importance weights of the off-policy loss.
- In-place update: ``collective_rpc("reload_weights", weights_iterator=...)`` is vLLM's own layer-wise
  reload (vllm/model_executor/model_loader/reload); it takes checkpoint-format names, so the policy's
  ``state_dict`` goes in as is. The prefix cache holds KV computed with the old weights and is reset.
  On a multi-process GPU engine the same call pickles the tensors to the worker; a production deployment at
  scale would stream them over NCCL instead (vLLM's weight-transfer engine), which this build cannot run.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from rewardline.services.modeling import configure_vllm
from rewardline.trainer.config import RolloutConfig
from rewardline.trainer.rollout.base import (
    Completion,
    OnComplete,
    RolloutRequest,
    completion_from_tokens,
    derive_seed,
    eos_token_ids,
)

K = TypeVar("K")


def _fast_single_process_settings(config: RolloutConfig) -> None:
    configure_vllm(config.vllm_kv_cache_gib)
    # Every reload warns that the rotary embedding got no weights: it has none to get (its tables are computed),
    # and the greedy-equality test shows the reload is complete.
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
    if logging.getLogger().level > logging.INFO:
        # Quiet by default: vLLM's start-up advice for CPU builds (tcmalloc, thread binding, triton) is not
        # actionable for a trainer; --log-level info shows it again.
        for name in ("vllm", "torch._library.triton"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\..*")


def sampled_logprobs(logprobs: Any) -> list[float]:
    """Each position's first entry, the sampled token's (with ``logprobs=0`` the only one), from vLLM's flat
    log-probs; an empty list when none were asked for."""
    if logprobs is None:
        return []
    return [logprobs.logprobs[start] for start in logprobs.start_indices]


class VLLMEngine:
    def __init__(
        self,
        model_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        config: RolloutConfig,
        dtype: Literal["float32", "bfloat16"],
        seed: int,
    ) -> None:
        _fast_single_process_settings(config)
        from vllm import LLM

        self.tokenizer = tokenizer
        self.config = config
        previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if config.vllm_engine_process else previous or "0"
        try:
            self.llm = LLM(
                model=str(model_dir),
                dtype=dtype,
                seed=seed,
                distributed_executor_backend="uni",
                enforce_eager=True,
                gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                use_tqdm_on_load=False,
                logprobs_mode="processed_logprobs",
            )
        finally:  # the setting is read when an engine starts; later engines in this process get their own
            if previous is None:
                os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
            else:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
        generation = self.llm.llm_engine.model_config.try_get_generation_config()
        self.eos_ids = eos_token_ids(generation.get("eos_token_id"), tokenizer)
        self._counter = 0
        self._weights_dir: Path | None = None  # engine in its own process: where new weights are written for it

    def _params(self, seed: int | None, max_tokens: int, greedy: bool = False):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if greedy:
            return SamplingParams(
                temperature=0.0, max_tokens=max_tokens, output_kind=RequestOutputKind.FINAL_ONLY, detokenize=False
            )
        return SamplingParams(
            n=1,
            seed=seed,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            top_k=self.config.top_k,
            max_tokens=max_tokens,
            output_kind=RequestOutputKind.FINAL_ONLY,
            detokenize=False,
            logprobs=0,  # the sampled token's own log-probability, nothing more
            flat_logprobs=True,  # in flat lists (per-position dicts of objects made generation 30% slower here)
        )

    def _run(
        self,
        requests: Mapping[K, tuple[Sequence[int], Any]],
        on_finished: Callable[[list[tuple[K, list[int], list[float]]]], None],
    ) -> None:
        """Adds every request, then steps the engine, calling ``on_finished([(key, token_ids, logprobs), ...])``
        with the requests that ended in each engine step (logprobs empty when not asked for)."""
        from vllm import RequestOutput

        engine = self.llm.llm_engine
        ids: dict[str, K] = {}
        for key, (prompt_ids, params) in requests.items():
            self._counter += 1
            request_id = f"r{self._counter}"  # outputs carry this id; vLLM's internal one has a random suffix
            engine.add_request(request_id, {"prompt_token_ids": list(prompt_ids)}, params)
            ids[request_id] = key
        while ids:
            ended = []
            for output in engine.step():
                if output.finished and output.request_id in ids:
                    assert isinstance(output, RequestOutput)  # a generating engine's: one CompletionOutput (n=1)
                    sample = output.outputs[0]
                    key = ids.pop(output.request_id)
                    ended.append((key, list(sample.token_ids), sampled_logprobs(sample.logprobs)))
            if ended:
                on_finished(ended)

    def generate(self, requests: Sequence[RolloutRequest], n: int, on_complete: OnComplete) -> list[Completion]:
        by_key = {(r.index, k): r for r in requests for k in range(n)}
        work = {
            key: (r.prompt_ids, self._params(derive_seed(r.seed, key[1]), self.config.max_new_tokens))
            for key, r in by_key.items()
        }
        done: dict[tuple[int, int], Completion] = {}

        def finished(ended: list[tuple[tuple[int, int], list[int], list[float]]]) -> None:
            completions = [
                completion_from_tokens(by_key[key], key[1], tokens, self.tokenizer, self.eos_ids, logprobs)
                for key, tokens, logprobs in ended
            ]
            for key_tokens, completion in zip(ended, completions):
                done[key_tokens[0]] = completion
            on_complete(completions)

        self._run(work, finished)
        return [done[key] for key in sorted(done)]

    def greedy(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        params = self._params(None, max_new_tokens, greedy=True)

        def finished(ended: list[tuple[int, list[int], list[float]]]) -> None:
            for i, tokens, _ in ended:
                out[i] = tokens

        self._run({i: (p, params) for i, p in enumerate(prompt_ids)}, finished)
        return [out[i] for i in range(len(prompt_ids))]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.config.vllm_engine_process:
            # The engine's process reads them from a safetensors file in shared memory (its own loader, in place).
            from safetensors.torch import save_file

            if self._weights_dir is None:
                shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
                self._weights_dir = Path(tempfile.mkdtemp(prefix="rewardline-weights-", dir=shm))
            tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in weights}
            save_file(tensors, self._weights_dir / "model.safetensors")
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self._weights_dir)})
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        engine = getattr(self, "llm", None)
        if engine is not None:
            if self.config.vllm_engine_process:  # stop the engine's process now rather than when collected
                engine.llm_engine.engine_core.shutdown()
            del self.llm
        if self._weights_dir is not None:
            shutil.rmtree(self._weights_dir, ignore_errors=True)
