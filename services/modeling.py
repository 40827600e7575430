"""What every model kind, and the trainer, need to read a model directory and run it: written once.

The weights' revision and format, the tokenizer, the model's own length limit, the device and dtype to run on,
the pad id of batched inputs, and the environment vLLM reads at engine start. Heavy libraries (torch,
transformers) are imported inside the functions, so a caller that needs only the revision pays for neither.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Without a limit in the config or the tokenizer, what a model of this kind is assumed to take.
FALLBACK_MAX_LENGTH = 2048


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files; refuses pickled weights, which can run code when loaded."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
        hint = f" (found {', '.join(pickled)}: convert them to safetensors)" if pickled else ""
        raise ValueError(f"{model_dir} holds no .safetensors weights{hint}; rewardline loads safetensors only")
    return files


def weights_revision(model_dir: Path, extra_files: tuple[Path, ...] = ()) -> str:
    """sha256 over the weight files' names and bytes (first 16 hex digits): equal weights, equal revision."""
    digest = hashlib.sha256()
    for path in [*safetensors_files(model_dir), *extra_files]:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 23), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, with a pad token (its end-of-sequence token when it names none): batches of
    several lengths need one, and the pad positions are masked, so which token it is changes no score."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_max_length(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> int:
    """The model's own limit: max_position_embeddings, or the tokenizer's model_max_length when smaller."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    limits = [getattr(config.get_text_config(), "max_position_embeddings", None)]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    found = [int(x) for x in limits if x]
    return min(found) if found else FALLBACK_MAX_LENGTH


def pad_id_for(tokenizer: PreTrainedTokenizerBase, model_pad_id: int | None) -> int:
    for candidate in (model_pad_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the model has no pad token id and the tokenizer has neither a pad nor an eos token")


def resolve_device(device: str, local_rank: int | None = None) -> str:
    """``auto``: CUDA when there is a GPU, else the CPU. Under torchrun (``local_rank`` given), ``auto`` and a
    bare ``cuda`` mean this process's own GPU, so every rank of a node takes a different one."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but no CUDA device is available")
        if device == "cuda" and local_rank is not None:
            return f"cuda:{local_rank}"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on a GPU, float32 on CPU (bfloat16 matmuls are slower than float32 on most CPUs)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def configure_vllm(kv_cache_gib: float, threads_bind: str | None = None, log_level: str | None = None) -> None:
    """The environment an in-process vLLM engine reads when it starts; call before creating it.

    A single-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, with ``distributed_executor_backend="uni"``)
    starts in about 2.5 s on the CPU build instead of 30-40 s, and keeps the model in this process, where the
    trainer can hand it new weights without serialising them. The KV-cache size (GiB, CPU build) and the thread
    binding are stated explicitly; the other values yield to the user's environment."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(kv_cache_gib)))
    if log_level is not None:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", log_level.upper())
    else:
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    if threads_bind:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = threads_bind
