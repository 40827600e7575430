"""The configurations of ``rewardline triton build-repo`` and ``rewardline triton start``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rewardline.services.config import LogLevel

TRITON_MODEL_NAME = r"^[A-Za-z0-9_.-]+$"


class TritonRepoConfig(BaseModel):
    """What goes into a generated model repository's config.pbtxt."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: Path = Field(
        ..., description="model directory (Hugging Face sequence-classification checkpoint, safetensors)"
    )
    out: Path = Field(..., description="model repository to write (created; other models in it are left alone)")
    name: str | None = Field(
        None, pattern=TRITON_MODEL_NAME, description="the model's name in Triton (default: the model directory's name)"
    )
    max_batch_size: int = Field(64, gt=0, description="most rows Triton puts in one forward pass")
    max_queue_delay_us: int = Field(
        1000, ge=0, description="dynamic batcher: how long a request may wait for others to batch with"
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="dynamic batcher: batch sizes to prefer, comma-separated"
    )
    instances: int = Field(1, gt=0, description="model instances (on a GPU cluster: per GPU)")
    instance_kind: Literal["cpu", "gpu"] = Field("cpu", description="KIND_CPU here; KIND_GPU on a GPU cluster")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights and compute dtype inside Triton"
    )
    num_threads: int = Field(0, ge=0, description="torch threads per instance (0: torch's default)")
    copy_model: bool = Field(
        False, description="copy the model directory into the repository (default: reference it by absolute path)"
    )
    force: bool = Field(False, description="replace an existing model of the same name in the repository")


class TritonStartConfig(BaseModel):
    """How to run the tritonserver that nvidia-pytriton bundles, on one model repository."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    repo: Path = Field(..., description="model repository (from `rewardline triton build-repo`)")
    host: str = Field("127.0.0.1", description="address every endpoint listens on")
    grpc_port: int = Field(8001, ge=1, le=65535, description="gRPC (KServe v2) port")
    http_port: int | None = Field(None, ge=1, le=65535, description="HTTP (KServe v2) port (default: HTTP off)")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Prometheus metrics port (default: metrics off)")
    python_env: Path | None = Field(
        None,
        description=(
            "environment whose python3 runs the Python-backend stub: torch, transformers, numpy<2 (default: "
            ".venv-triton beside this environment)"
        ),
    )
    cache_dir: Path | None = Field(
        None, description="where the backend directory is assembled (default: ~/.cache/rewardline/triton)"
    )
    model_control_mode: Literal["none", "explicit"] = Field(
        "none",
        description=(
            "none: serve every model of the repository; explicit: serve load_models, and load or unload others "
            "through Triton's API"
        ),
    )
    load_models: list[str] = Field(
        default_factory=list, description="explicit mode: models loaded at start, comma-separated (empty: all)"
    )
    exit_timeout_s: int = Field(30, ge=0, description="on SIGTERM, how long in-flight requests may take to finish")
    log_verbose: int = Field(0, ge=0, description="tritonserver --log-verbose level")
    log_level: LogLevel = Field("warning", description="log level of this launcher (JSON lines on stderr)")

    @model_validator(mode="after")
    def _load_models_need_explicit_mode(self) -> TritonStartConfig:
        if self.load_models and self.model_control_mode != "explicit":
            raise ValueError("load_models needs model_control_mode explicit (in mode none every model is served)")
        return self
