"""The one configuration of ``rewardline train``: a typed object with a section per part of the trainer.

Loaded from YAML and overridden by flags (``--rollout.n 8``) through services.config_loading; validated once
at start so that a bad value is reported with its field's name before any model is loaded. The list of
reward sources is YAML-only (a list of mappings has no sensible flag form); every other field has a flag.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rewardline.services.config import (
    AuthTokens,
    ClientSecurity,
    HealthPort,
    LogLevel,
    TlsCert,
    TlsClientCa,
    TlsKey,
    check_server_security,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LoraConfig(_Section):
    enabled: bool = Field(False, description="train LoRA adapters (peft) instead of every weight")
    r: int = Field(8, gt=0, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (the update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA path")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], description="module names that get adapters (comma-separated)"
    )


class PolicyConfig(_Section):
    path: Path = Field(..., description="the policy: a Hugging Face causal LM directory (safetensors)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights and compute dtype")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="where the policy, reference and value model train: cpu, cuda, cuda:N; auto: this process's GPU "
        "(LOCAL_RANK under torchrun) when CUDA is available, else cpu",
    )
    reference: Literal["auto", "copy", "adapters_off", "none"] = Field(
        "auto",
        description="the frozen reference of the KL term: a copy of the initial policy, the base with LoRA "
        "adapters off, or none (no KL); auto: adapters_off with LoRA, else copy (none when kl_coef is 0)",
    )
    lora: LoraConfig = LoraConfig()


class RolloutConfig(_Section):
    engine: Literal["hf", "vllm"] = Field("hf", description="transformers generate, or an in-process vLLM engine")
    prompts_per_step: int = Field(8, gt=0, description="prompts (groups) per training step, over all ranks")
    n: int = Field(4, gt=0, description="samples per prompt (the group size of GRPO/RLOO)")
    max_new_tokens: int = Field(32, gt=0, description="longest completion in tokens")
    max_prompt_tokens: int = Field(256, gt=0, description="longer prompts are cut from the left")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    top_k: int = Field(0, ge=0, description="top-k sampling (0: off)")
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto", description="render prompts with the tokenizer's chat template (auto: when it has one)"
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="0: synchronous (each step samples from the policy it then updates); k >= 1: asynchronous, the "
        "rollouts of the next steps are generated and scored while the current step updates, by a policy at most k "
        "updates old (trainer/rollout/pipeline.py)",
    )
    vllm_kv_cache_gib: float = Field(1.0, gt=0, description="vLLM CPU build: KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    vllm_engine_process: bool = Field(
        False,
        description="run vLLM's engine core in its own process (vLLM's multiprocessing mode): with max_staleness >= 1 "
        "generation then overlaps the update without sharing this process's interpreter lock; starts slower, and "
        "new weights are copied to it rather than handed over in place",
    )
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vLLM GPU build: memory fraction")


class DataConfig(_Section):
    train: list[Path] = Field([], description="prompt JSONL files, read in order (comma-separated)")
    watch_dir: Path | None = Field(
        None, description="a directory whose new *.jsonl files (by name) are read as they arrive"
    )
    poll_s: float = Field(2.0, gt=0, description="how often the watched directory is listed when idle")
    prompt_field: str = Field("prompt", description="the JSON key of the prompt")
    answer_field: str = Field("answer", description="the JSON key of the reference answer (optional in records)")
    loop: bool = Field(
        True, description="start over from the first file when every file is read (else wait for new files)"
    )

    @model_validator(mode="after")
    def _has_prompts(self) -> DataConfig:
        if not self.train and self.watch_dir is None:
            raise ValueError("give prompt files (data.train) or a directory to watch (data.watch_dir)")
        return self


class _SourceBase(_Section):
    name: str = Field(..., min_length=1, description="the source's name in metrics and logs")
    weight: float = Field(1.0, description="weight in the combined reward")
    uncertainty_penalty: float = Field(0.0, ge=0, description="λ in score − λ·std for sources that report uncertainty")
    mask_out_of_distribution: bool = Field(
        False, description="leave samples this source flags out of distribution out of the loss"
    )
    error_score: float | None = Field(
        None,
        description=(
            "the score of a sample this source refused (e.g. an empty response); None: leave it out of the loss"
        ),
    )


class GrpcSourceConfig(_SourceBase, ClientSecurity):
    """A rewardline service (reward, uncertainty or judge) reached over ScoreStream; TLS, a client certificate and a
    token file as ``ClientSecurity`` says (any of them left unset here comes from ``rewards.client``)."""

    type: Literal["grpc"] = "grpc"
    target: str = Field(..., min_length=1, description="host:port or dns:///name:port of the service")
    max_samples_per_request: int = Field(64, gt=0, description="samples per ScoreRequest written to the stream")
    reconnect_max_backoff_s: float = Field(5.0, gt=0, description="longest wait between reconnection attempts")


class PythonSourceConfig(_SourceBase):
    """A reward function ``module:function`` with TRL's signature ``fn(prompts, completions, **columns)``."""

    type: Literal["python"] = "python"
    function: str = Field(..., pattern=r"^[\w.]+:[\w.]+$", description="import path, module:function")
    kwargs: dict[str, object] = Field({}, description="extra keyword arguments passed on every call")
    max_concurrency: int = Field(
        16,
        gt=0,
        description="calls of the function in flight at once, each on its own thread (a slow or remote "
        "function does not hold the others up)",
    )


class TritonSourceConfig(_SourceBase):
    """A sequence-classification reward model hosted by NVIDIA Triton, called directly (KServe v2 gRPC), for
    users who run Triton and not rewardline's service; rendered and tokenized exactly as the service does."""

    type: Literal["triton"] = "triton"
    url: str = Field(..., min_length=1, description="host:port of Triton's gRPC endpoint")
    model: str = Field(..., min_length=1, description="the model's name in Triton")
    model_dir: Path = Field(
        ..., description="the model directory Triton serves (tokenizer, chat template, config, weights' revision)"
    )
    max_length: int | None = Field(
        None, gt=0, description="longest input in tokens; longer prompts are cut from the left (default: the model's)"
    )
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto", description="render with the tokenizer's chat template (auto: when it has one)"
    )
    score_weights: dict[str, float] | list[float] | None = Field(
        None, description="multi-attribute models: weights of the outputs in the score (default: the first)"
    )
    max_batch_size: int = Field(32, gt=0, description="samples per Triton call")
    concurrency: int = Field(4, gt=0, description="Triton calls in flight (its dynamic batcher merges them)")
    timeout_s: float = Field(60.0, gt=0, description="deadline of one Triton call")
    reconnect_max_backoff_s: float = Field(
        5.0, gt=0, description="longest wait between readiness checks while Triton is away"
    )


# Another source type (a Triton one, say) is a config class here, added to this union, and an entry in
# trainer/rewards/__init__.py: SOURCE_TYPES.
RewardSourceConfig = Annotated[GrpcSourceConfig | PythonSourceConfig | TritonSourceConfig, Field(discriminator="type")]


class RewardsConfig(_Section):
    sources: list[RewardSourceConfig] = Field(..., min_length=1, description="reward sources (YAML only)")
    client: ClientSecurity = Field(
        ClientSecurity(),
        description=(
            "TLS and token settings for every grpc source, each used where the source sets none of its own (flags "
            "--rewards.client.tls-ca, --rewards.client.token-file, ...: how a deployment mounts them for all sources)"
        ),
    )
    combine: Literal["sum", "normalize_then_sum", "sum_then_normalize"] = Field(
        "sum",
        description="sum: weighted sum of scores; normalize_then_sum: z-score each source over the batch first; "
        "sum_then_normalize: z-score the weighted sum",
    )
    max_wait_s: float | None = Field(
        None,
        gt=0,
        description=(
            "give up (exit 1) after waiting this long for one step's rewards (None: wait for the sources to come back)"
        ),
    )
    running_norm: bool = Field(
        False,
        description="divide the combined training reward by its running std over the whole run after subtracting its "
        "running mean (as OpenRLHF's reward normalisation; the running moments are checkpointed)",
    )
    clip: float | None = Field(
        None, gt=0, description="clip the combined training reward to [-clip, clip], after normalisation (None: off)"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> RewardsConfig:
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"reward source names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _client_defaults(self) -> RewardsConfig:
        """Each grpc source takes the ``client`` settings it does not set itself."""
        for i, source in enumerate(self.sources):
            if not isinstance(source, GrpcSourceConfig):
                continue
            inherited = {k: getattr(self.client, k) for k in self.client.model_fields_set - source.model_fields_set}
            if inherited:
                merged = {**source.model_dump(exclude_unset=True), **inherited}
                self.sources[i] = GrpcSourceConfig.model_validate(merged)
        return self


ALGORITHMS = ("grpo", "rloo", "ppo", "reinforce_plus_plus", "reinforce_plus_plus_baseline")
GROUP_ALGORITHMS = ("grpo", "rloo", "reinforce_plus_plus_baseline")  # a baseline from the other samples of a prompt


class AlgorithmConfig(_Section):
    name: Literal["grpo", "rloo", "ppo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"] = Field(
        "grpo",
        description="the advantage estimator: grpo (group-normalised), rloo (leave-one-out), ppo (GAE with a value "
        "model), reinforce_plus_plus (token returns whitened over the global batch), reinforce_plus_plus_baseline "
        "(group-centred rewards whitened over the global batch)",
    )
    clip_eps: float = Field(0.2, gt=0, description="ratio clipping: [1 − clip_eps, 1 + clip_eps_high]")
    clip_eps_high: float | None = Field(None, gt=0, description="upper clipping (default: clip_eps)")
    kl_coef: float = Field(0.04, ge=0, description="β of the KL term to the reference")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3",
        description="the KL term's estimator in the loss: k3 (GRPO's, unbiased), k2 (½ log-ratio², OpenRLHF's "
        "for REINFORCE++-baseline) or k1 (the log-ratio); the logged kl is k3 whichever is chosen",
    )
    kl_in: Literal["auto", "loss", "reward"] = Field(
        "auto",
        description="where the KL to the reference goes: loss (β·k3 per token, as GRPO) or reward (−β·k1 per token "
        "in the rewards, as REINFORCE++ and classic RLHF PPO); auto: reward for reinforce_plus_plus, else loss",
    )
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus coefficient")
    loss_aggregation: Literal["token", "sequence", "constant"] = Field(
        "token",
        description="token: mean over every completion token of the batch; sequence: mean of per-sequence means; "
        "constant: sum over tokens / (sequences × rollout.max_new_tokens), Dr. GRPO's length-unbiased normaliser",
    )
    epochs: int = Field(1, gt=0, description="optimisation passes over each batch of rollouts")
    tis_cap: float | None = Field(
        2.0,
        gt=0,
        description="truncated importance sampling: each token's loss is weighted by min(π_prox/μ, tis_cap), μ the "
        "rollout engine's probability recorded at generation, π_prox the trainer's before this step's update; it "
        "corrects both staleness and engine/trainer numerics (None: no correction, rollouts treated as on-policy)",
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO's dynamic sampling: drop prompt groups whose rewards are all equal (no gradient) and draw "
        "more prompts until the step has prompts_per_step groups, in at most dynamic_sampling_max_rounds extra rounds",
    )
    dynamic_sampling_max_rounds: int = Field(
        3, ge=0, description="dynamic sampling: extra generation rounds per step at most (then train on what there is)"
    )
    dynamic_sampling_oversample: float = Field(
        1.0,
        ge=1.0,
        description="dynamic sampling: an extra round draws this many times the groups still missing (verl's "
        "gen_batch_size above train_batch_size): each round is a generate-and-score round trip the update waits for, "
        "so drawing more at once takes fewer rounds; informative groups beyond prompts_per_step are left out, the "
        "batch stays prompts_per_step groups",
    )
    dynamic_sampling_metric: str | None = Field(
        None,
        description="dynamic sampling: the reward source whose scores decide (verl's filter_groups.metric: a group "
        "is dropped when this source scores all its samples the same, e.g. an exact-answer check that finds all right "
        "or all wrong, however a learned reward varies); None: every source must agree, so a continuous learned "
        "reward keeps every group",
    )
    mask_truncated: bool = Field(
        False,
        description="leave completions cut at rollout.max_new_tokens out of the loss (DAPO's overlong filtering)",
    )
    scale_rewards: bool = Field(True, description="GRPO: divide group-centred rewards by the group's std")
    # PPO
    value_model: Literal["head", "model"] = Field(
        "head",
        description=(
            "PPO: a value head on the policy's hidden states, or a separate value model (from the policy's weights)"
        ),
    )
    gamma: float = Field(1.0, ge=0, le=1, description="PPO: discount")
    lam: float = Field(0.95, ge=0, le=1, description="PPO: GAE λ")
    value_coef: float = Field(0.5, ge=0, description="PPO: value loss coefficient")
    value_clip: float | None = Field(0.2, gt=0, description="PPO: value clipping range (None: unclipped)")
    whiten_advantages: bool = Field(True, description="PPO: normalise advantages over the batch")


# transformers' scheduler names (get_scheduler) that the trainer offers; the demo's flag takes the same
LrSchedule = Literal["constant", "linear", "cosine"]


class OptimConfig(_Section):
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (comma-separated)")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping (None: off)")
    schedule: LrSchedule = Field("constant", description="learning-rate schedule after warm-up")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    micro_batch_size: int | None = Field(
        None, gt=0, description="sequences per forward/backward (None: the whole local batch)"
    )


class CheckpointConfig(_Section):
    every: int = Field(50, ge=0, description="checkpoint every N steps (0: only at the end and on SIGTERM)")
    keep: int = Field(2, gt=0, description="how many recent checkpoints to keep")


class ObservabilityConfig(_Section):
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics port (None: no exporter)")
    metrics_host: str = Field("127.0.0.1", description="address of the /metrics exporter")
    plot_every: int = Field(10, ge=0, description="rewrite reward.png and kl.png every N steps (0: only at the end)")
    progress: bool = Field(True, description="show a progress bar")


class ControlConfig(_Section):
    port: int | None = Field(
        None, ge=0, le=65535, description="gRPC TrainerService port (None: no control API; 0: any free port)"
    )
    host: str = Field(
        "127.0.0.1", description="address of the control API (loopback unless told otherwise: it can stop training)"
    )
    tls_cert: TlsCert = None
    tls_key: TlsKey = None
    tls_client_ca: TlsClientCa = None
    auth_tokens: AuthTokens = None
    health_port: HealthPort = None

    @model_validator(mode="after")
    def _security(self) -> ControlConfig:
        check_server_security(self.tls_cert, self.tls_key, self.tls_client_ca, self.health_port, self.port)
        return self


class DistributedConfig(_Section):
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto",
        description="torch.distributed backend under torchrun; auto: nccl when the policy is on a GPU, else gloo",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description=(
            "under torchrun: ddp (every rank holds the model) or fsdp (FSDP2: parameters, gradients and optimizer "
            "state sharded)"
        ),
    )


class TrainConfig(_Section):
    run_dir: Path = Field(Path("runs/train"), description="checkpoints, metrics.jsonl and plots go here")
    steps: int | None = Field(
        None, gt=0, description="stop after this many steps (None: run until stopped, as a daemon)"
    )
    seed: int = Field(0, description="seeds sampling, data-independent randomness and initialisation")
    threads: int | None = Field(1, gt=0, description="torch threads per process (None: torch's default)")
    log_level: LogLevel = Field("warning", description="log level (logs are JSON lines on stderr)")
    policy: PolicyConfig
    rollout: RolloutConfig = RolloutConfig()
    data: DataConfig
    rewards: RewardsConfig
    algorithm: AlgorithmConfig = AlgorithmConfig()
    optim: OptimConfig = OptimConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    control: ControlConfig = ControlConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.algorithm.name in GROUP_ALGORITHMS and self.rollout.n < 2:
            raise ValueError(f"rollout.n: {self.algorithm.name} compares samples of one prompt, so it needs n >= 2")
        if self.policy.reference == "adapters_off" and not self.policy.lora.enabled:
            raise ValueError("policy.reference: adapters_off needs policy.lora.enabled")
        if self.distributed.strategy == "fsdp" and self.policy.lora.enabled:
            raise ValueError("distributed.strategy: fsdp is not supported with LoRA adapters; use ddp")
        if self.algorithm.name == "ppo" and self.policy.lora.enabled and self.algorithm.value_model == "model":
            raise ValueError("algorithm.value_model: a separate value model is not supported with LoRA; use head")
        if self.rollout.vllm_engine_process and self.rollout.engine != "vllm":
            raise ValueError("rollout.vllm_engine_process: only with rollout.engine vllm")
        if self.algorithm.dynamic_sampling and self.algorithm.name not in GROUP_ALGORITHMS:
            raise ValueError(
                f"algorithm.dynamic_sampling: drops prompt groups whose rewards are all equal, which only a group "
                f"baseline makes gradient-free; use it with {', '.join(GROUP_ALGORITHMS)}, not {self.algorithm.name}"
            )
        metric = self.algorithm.dynamic_sampling_metric
        if metric is not None and metric not in {s.name for s in self.rewards.sources}:
            raise ValueError(
                f"algorithm.dynamic_sampling_metric: {metric!r} is not a reward source (sources: "
                f"{', '.join(s.name for s in self.rewards.sources)})"
            )
        return self

    @property
    def kl_in_reward(self) -> bool:
        """Whether the KL to the reference is a per-token reward (else a loss term)."""
        kl_in = self.algorithm.kl_in
        if kl_in == "auto":
            kl_in = "reward" if self.algorithm.name == "reinforce_plus_plus" else "loss"
        return kl_in == "reward" and self.reference_kind != "none"

    @property
    def reference_kind(self) -> Literal["copy", "adapters_off", "none"]:
        if self.algorithm.kl_coef == 0 or self.policy.reference == "none":
            return "none"
        if self.policy.reference == "auto":
            return "adapters_off" if self.policy.lora.enabled else "copy"
        return self.policy.reference


# Fields that may change between a run and its resumption without changing what the run computes.
_NOT_HASHED = {"steps", "log_level", "observability", "control", "checkpoint"}
# ... nor how the sources are reached (certificates and tokens rotate).
_NOT_HASHED_IN_REWARDS = {"client"}
_NOT_HASHED_IN_SOURCES = set(ClientSecurity.model_fields)


def config_hash(config: TrainConfig) -> str:
    """What a checkpoint records so that resuming under a different configuration is noticed."""
    data = config.model_dump(mode="json", exclude=_NOT_HASHED)
    data["rewards"] = {k: v for k, v in data["rewards"].items() if k not in _NOT_HASHED_IN_REWARDS}
    data["rewards"]["sources"] = [
        {k: v for k, v in source.items() if not (source.get("type") == "grpc" and k in _NOT_HASHED_IN_SOURCES)}
        for source in data["rewards"]["sources"]
    ]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
