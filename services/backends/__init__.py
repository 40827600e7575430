"""Where the forward pass runs: in-process transformers (``hf``, ``hf_causal``), a vLLM engine (``vllm``) or an
NVIDIA Triton Inference Server (``triton``). Each backend is one module behind one small interface (``base``):
``make_classifier`` and ``make_judge_backend`` import only the one chosen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rewardline.services.backends.base import ClassifierBackend, JudgeBackend
    from rewardline.services.config import ServeConfig


def make_classifier(config: ServeConfig, model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> ClassifierBackend:
    """The configured backend for a sequence-classification checkpoint (imported only when chosen)."""
    if config.backend == "hf":
        from rewardline.services.backends.hf import HFClassifier

        return HFClassifier(model_dir, tokenizer, config.device, config.dtype, config.trust_remote_code)
    if config.backend == "triton":
        from rewardline.services.backends.triton import TritonClassifier

        assert config.triton_url is not None  # ServeConfig refuses backend triton without it
        return TritonClassifier(
            model_dir,
            tokenizer,
            config.triton_url,
            config.triton_model or config.name,
            timeout_s=config.triton_timeout_s,
            concurrency=config.triton_concurrency,
        )
    if config.backend == "vllm":
        from rewardline.services.backends.vllm import VLLMClassifier

        return VLLMClassifier.from_config(config, model_dir)
    raise ValueError(f"unknown backend {config.backend!r}")


def make_judge_backend(
    config: ServeConfig, model_dir: Path, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> JudgeBackend:
    """The configured engine for a causal-LM judge (imported only when chosen)."""
    if config.backend == "hf":
        from rewardline.services.backends.hf_causal import HFCausalLM

        return HFCausalLM(
            model_dir, tokenizer, config.device, config.dtype, config.trust_remote_code, config.judge_hf_share_prefixes
        )
    if config.backend == "vllm":
        from rewardline.services.backends.vllm import VLLMJudge

        return VLLMJudge.from_config(config, model_dir, max_length)
    raise ValueError(f"backend {config.backend!r} cannot serve a judge (a generative model): use hf or vllm")
