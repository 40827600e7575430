"""The configuration of ``rewardline serve``: one typed, validated object for every service kind."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rewardline.services.client import ChannelSettings
    from rewardline.services.tls import ClientTLS, ServerTLS

ServiceKind = Literal["reward", "uncertainty", "judge"]
LogLevel = Literal["debug", "info", "warning", "error"]

# --- Security settings every server shares (a service here, the trainer's control API): one definition each, so a
# flag means the same on every program. Files are re-read when they change: certificates rotate and tokens are
# revoked without a restart.
TlsCert = Annotated[
    Path | None,
    Field(
        description=(
            "PEM certificate (chain) of this server: with tls_key, every port but health_port speaks TLS; reloaded "
            "when the file changes"
        )
    ),
]
TlsKey = Annotated[Path | None, Field(description="PEM private key of tls_cert")]
TlsClientCa = Annotated[
    Path | None,
    Field(description="PEM CA certificate(s): clients must present a certificate signed by one (mutual TLS)"),
]
AuthTokens = Annotated[
    Path | None,
    Field(
        description=(
            "YAML list of accepted tokens [{name, sha256, scopes}] (services/auth.py): calls need 'authorization: "
            "Bearer TOKEN' with the method's scope; health stays open; re-read when it changes"
        )
    ),
]
HealthPort = Annotated[
    int | None,
    Field(
        ge=0,
        le=65535,
        description=(
            "a plaintext port that serves only grpc.health.v1, for kubelet's native gRPC probes, which can send "
            "neither TLS nor a token (off when unset)"
        ),
    ),
]


def check_server_security(
    tls_cert: Path | None, tls_key: Path | None, tls_client_ca: Path | None, health_port: int | None, *ports: int | None
) -> None:
    """ValueError for settings that cannot work together (the files themselves are checked when the server starts)."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together (--tls-cert FILE --tls-key FILE)")
    if tls_client_ca is not None and tls_cert is None:
        raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
    if health_port and health_port in {p for p in ports if p}:
        raise ValueError(f"health_port {health_port} is another port of this server")


def make_server_tls(tls_cert: Path | None, tls_key: Path | None, tls_client_ca: Path | None) -> ServerTLS | None:
    from rewardline.services.tls import ServerTLS

    if tls_cert is None or tls_key is None:
        return None
    return ServerTLS(cert=tls_cert, key=tls_key, client_ca=tls_client_ca)


def beyond_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from other machines (any name but localhost counts)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True


class ClientSecurity(BaseModel):
    """How a client (``rewardline score``/``info``/``control``, the trainer's reward sources, the adapters) trusts
    a server and proves itself: TLS with a CA, a client certificate for mutual TLS, a bearer token from a file."""

    model_config = ConfigDict(extra="forbid")

    tls: bool = Field(False, description="speak TLS, trusting the system's CAs (implied by tls_ca and tls_cert)")
    tls_ca: Path | None = Field(None, description="PEM CA certificate(s) to trust for the server's certificate")
    tls_cert: Path | None = Field(None, description="PEM client certificate, for mutual TLS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_server_name: str | None = Field(
        None, description="the name the server's certificate must carry (default: the target's host)"
    )
    token_file: Path | None = Field(
        None,
        description=(
            "a file holding a bearer token (a mounted Secret), sent as 'authorization: Bearer TOKEN' on every call; "
            "read again on each new call, so a rotated token is picked up"
        ),
    )

    @model_validator(mode="after")
    def _client_certificate_pairs(self) -> ClientSecurity:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (a client certificate and its key)")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None or self.tls_server_name is not None

    def client_tls(self) -> ClientTLS | None:
        from rewardline.services.tls import ClientTLS

        if not self.uses_tls:
            return None
        return ClientTLS(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key, server_name=self.tls_server_name)

    def channel_settings(self, base: ChannelSettings | None = None) -> ChannelSettings:
        """The client's channel settings (``base``, or the defaults) with this TLS and token."""
        import dataclasses

        from rewardline.services.client import ChannelSettings

        return dataclasses.replace(base or ChannelSettings(), tls=self.client_tls(), token_file=self.token_file)


class ClientTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field("127.0.0.1:50051", min_length=1, description="host:port or dns:///name:port of the service")
    timeout: float = Field(60.0, gt=0, description="deadline of each call, in seconds")


class ScoreCommandConfig(ClientSecurity, ClientTarget):
    """``rewardline score``: samples from a JSONL file, or one prompt and response, scored by a running service."""

    input: Path | None = Field(None, description="JSONL with id, prompt, response (or messages) per line")
    prompt: str | None = Field(None, description="the prompt of one sample (without --input)")
    response: str | None = Field(None, description="the response of one sample (without --input)")


class InfoCommandConfig(ClientSecurity, ClientTarget):
    """``rewardline info``: what a running service serves (GetInfo)."""

    timeout: float = Field(10.0, gt=0, description="deadline of the call, in seconds")


class ServeConfig(BaseModel):
    """Everything a service process needs besides its model's own files."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: ServiceKind = Field("reward", description="which kind of reward model this service serves")
    model: Path = Field(..., description="model directory (Hugging Face format, safetensors weights)")
    model_name: str | None = Field(
        None, description="name reported by GetInfo and metrics (default: the directory name)"
    )
    backend: Literal["hf", "triton", "vllm"] = Field("hf", description="where the forward pass runs")
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port")
    metrics_port: int = Field(9090, ge=0, le=65535, description="Prometheus /metrics port (0: no exporter)")
    metrics_host: str | None = Field(
        None,
        description=(
            "address of the /metrics exporter (default: host, so Prometheus reaches it where it reaches the service; "
            "127.0.0.1 keeps it on the machine)"
        ),
    )
    http_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description=(
            "HTTP/JSON port, served beside gRPC by the same process and batcher: the proto in JSON (/v1/score, "
            "/v1/compare, /v1/info), OpenRLHF's /get_reward, vLLM's /classify, /health and /ready (off when unset)"
        ),
    )
    tls_cert: TlsCert = None
    tls_key: TlsKey = None
    tls_client_ca: TlsClientCa = None
    auth_tokens: AuthTokens = None
    health_port: HealthPort = None
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights and compute dtype")
    max_length: int | None = Field(None, gt=0, description="longest input in tokens (default: the model's)")
    truncation: Literal["left", "error"] = Field(
        "left", description="left: keep the response, cut the prompt from the left; error: refuse"
    )
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto", description="render with the tokenizer's chat template (auto: when it has one)"
    )
    score_weights: dict[str, float] | list[float] | None = Field(
        None,
        description=(
            "multi-attribute models: weights of the attributes in score, by name (a=0.7,b=0.3) or in order "
            "(0.7,0.3); default: the first"
        ),
    )
    trust_remote_code: bool = Field(False, description="allow model code shipped with the checkpoint")
    max_batch_tokens: int = Field(16384, gt=0, description="token budget of one forward batch (padded tokens for hf)")
    max_batch_size: int = Field(64, gt=0, description="most samples in one forward batch")
    max_batch_padding: float | Literal["auto", "off"] = Field(
        "auto",
        description=(
            "padded backends (hf, triton): the most padding a batch may carry, as a fraction of its real tokens; "
            "what does not fit waits for the next batch (auto: the backend's choice, 0.1 for transformers "
            "classifiers on CPU, no limit elsewhere)"
        ),
    )
    max_wait_ms: float = Field(
        0.0, ge=0, description="hold a small batch this long for more samples (0: start as soon as the backend is free)"
    )
    max_queue_samples: int = Field(2048, gt=0, description="samples that may wait; beyond, RESOURCE_EXHAUSTED")
    max_samples_per_request: int = Field(256, gt=0, description="most samples in one ScoreRequest")
    max_stream_samples: int | None = Field(
        None,
        gt=0,
        description=(
            "samples one ScoreStream may have waiting or being scored; beyond, the server reads no more of it until "
            "some are answered (flow control slows the sender) (default: a quarter of max_queue_samples)"
        ),
    )
    empty_response: Literal["score", "refuse"] = Field(
        "score",
        description=(
            "a sample whose response is empty (a policy that ended at once): score it like any other, or refuse it "
            "with INVALID_ARGUMENT"
        ),
    )
    max_message_mb: float = Field(16.0, gt=0, description="largest gRPC message accepted")
    cache_size: int = Field(8192, ge=0, description="recent rewards kept for repeated inputs (0: no cache)")
    grace_period_s: float = Field(30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish")
    max_connection_age_s: float | None = Field(
        None,
        gt=0,
        description=(
            "close each client connection after this long (clients reconnect and re-resolve DNS, so new replicas "
            "get traffic); calls in flight get grace_period_s"
        ),
    )
    receive_window_kb: int | None = Field(
        None,
        ge=64,
        description=(
            "fix each call's HTTP/2 receive window at this size instead of letting gRPC grow it to megabytes (BDP "
            "probing): a ScoreStream sender is then held within about this much of unread messages (64: ~2,000 "
            "small samples ahead, against ~110,000 with the grown window); large requests over slow links transfer "
            "slower"
        ),
    )
    num_threads: int | None = Field(None, gt=0, description="torch threads for the forward pass (default: torch's)")
    compute_nice: int = Field(
        10,
        ge=0,
        le=19,
        description=(
            "the nice value the forward-pass and tokenizing threads run at (Linux; never below the process's own), "
            "so that refusals, health and small requests are answered at once on a busy CPU; idle cycles still go "
            "to compute (0: off)"
        ),
    )
    log_level: LogLevel = Field("warning", description="log level (logs are JSON lines on stderr)")
    # triton
    triton_url: str | None = Field(None, description="backend triton: host:port of Triton's gRPC endpoint")
    triton_model: str | None = Field(
        None, description="backend triton: the model's name in Triton (default: the service's model name)"
    )
    triton_timeout_s: float = Field(30.0, gt=0, description="backend triton: deadline of one forward call to Triton")
    triton_concurrency: int = Field(
        4, gt=0, description="backend triton: batches in flight to Triton at once (its dynamic batcher merges them)"
    )
    # judge
    judge_mode: Literal["verdict", "rating", "rationale_verdict", "rationale_rating"] = Field(
        "verdict",
        description=(
            "judge: verdict = P(positive) over positive+negative; rating = expected rating 1..K mapped to "
            "judge_rating_range; rationale_*: write a rationale first, then read the verdict or rating after "
            "judge_marker"
        ),
    )
    judge_template: str | None = Field(
        None,
        description=(
            "judge: template of Score: built-in verify or rubric, or a Jinja2 file (default: verify for verdict "
            "modes, rubric for rating modes)"
        ),
    )
    judge_pairwise_template: str = Field(
        "pairwise", description="judge: template of Compare (built-in pairwise or a Jinja2 file)"
    )
    judge_positive: list[str] = Field(
        ["Yes"], description="judge: labels of the positive verdict (their probabilities add up)"
    )
    judge_negative: list[str] = Field(["No"], description="judge: labels of the negative verdict")
    judge_rating_scale: int = Field(5, ge=2, le=9, description="judge: ratings run from 1 to this K (one token each)")
    judge_rating_range: tuple[float, float] = Field(
        (0.0, 1.0),
        description="judge: rating modes map the expected rating from [1, K] linearly onto this range (low,high)",
    )
    judge_rubric: str = Field(
        "Is it correct, complete and clearly stated?",
        description="judge: the rubric the rubric template rates against (trusted text)",
    )
    judge_marker: str | None = Field(
        None,
        description=(
            "judge: rationale modes: the text after which the verdict or rating is read (default: 'Verdict:' or "
            "'Rating:')"
        ),
    )
    judge_rationales: int = Field(
        1, ge=1, le=32, description="judge: rationale modes: rationales sampled per sample; the score is their mean"
    )
    judge_max_rationale_tokens: int = Field(
        128,
        gt=0,
        description=(
            "judge: rationale modes: most tokens of one rationale (one that reaches it without the marker is unparsed)"
        ),
    )
    judge_temperature: float = Field(
        0.0,
        ge=0,
        description="judge: rationale modes: sampling temperature (0: greedy; needs > 0 when judge_rationales > 1)",
    )
    judge_seed: int = Field(0, description="judge: seed of sampled rationales")
    judge_hf_share_prefixes: bool = Field(
        True,
        description=(
            "judge on backend hf: compute the head that samples of one batch share (a GRPO group's prompt) once, as "
            "vLLM's prefix cache does"
        ),
    )
    # vllm
    vllm_prefix_caching: bool = Field(
        True, description="backend vllm: reuse the KV cache of shared prefixes (a GRPO group's prompt)"
    )
    vllm_kv_cache_gib: int = Field(1, gt=0, description="backend vllm on CPU: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)")
    vllm_max_num_seqs: int | None = Field(
        None, gt=0, description="backend vllm: most sequences in one engine step (default: vLLM's)"
    )
    vllm_max_num_batched_tokens: int | None = Field(
        None, gt=0, description="backend vllm: most tokens in one engine step (default: vLLM's)"
    )
    vllm_block_size: int | None = Field(
        None,
        gt=0,
        description=(
            "backend vllm: tokens per KV-cache block, the unit prefix caching shares (default: vLLM's; 128 on CPU, "
            "longer than many judge prompts' shared head)"
        ),
    )
    vllm_cpu_threads_bind: str | None = Field(
        None,
        description=(
            "backend vllm on CPU: cores for the engine's threads, e.g. 0-1 (VLLM_CPU_OMP_THREADS_BIND; default: "
            "vLLM's auto, which leaves one core free)"
        ),
    )

    @field_validator("score_weights", mode="before")
    @classmethod
    def _weights_from_text(cls, value: object) -> object:
        if isinstance(value, str):
            if "=" in value:
                return dict(pair.split("=", 1) for pair in value.split(",") if pair.strip())
            return [v for v in value.split(",") if v.strip()]
        return value

    @field_validator("max_batch_padding")
    @classmethod
    def _padding_not_negative(cls, value: float | str) -> float | str:
        if isinstance(value, float) and value < 0:
            raise ValueError("max_batch_padding must be >= 0, auto or off")
        return value

    @model_validator(mode="after")
    def _security(self) -> ServeConfig:
        check_server_security(
            self.tls_cert,
            self.tls_key,
            self.tls_client_ca,
            self.health_port,
            self.port,
            self.http_port,
            self.metrics_port,
        )
        return self

    @model_validator(mode="after")
    def _triton_needs_url(self) -> ServeConfig:
        if self.backend == "triton" and not self.triton_url:
            raise ValueError("backend triton needs triton_url (--triton-url HOST:PORT)")
        return self

    @model_validator(mode="after")
    def _judge_sampling(self) -> ServeConfig:
        if self.judge_rationales > 1 and self.judge_temperature == 0:
            raise ValueError(
                "judge_rationales > 1 needs judge_temperature > 0 (greedy rationales would all be the same)"
            )
        low, high = self.judge_rating_range
        if not low < high:
            raise ValueError(f"judge_rating_range must be (low, high) with low < high, got {self.judge_rating_range}")
        return self

    def resolved_max_length(self, model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> int:
        """``max_length``, or the model's own limit; ValueError when the batch budget could never hold it."""
        from rewardline.services.modeling import default_max_length

        max_length = self.max_length or default_max_length(model_dir, tokenizer)
        if self.max_batch_tokens < max_length:
            raise ValueError(
                f"max_batch_tokens={self.max_batch_tokens} is below max_length={max_length}: the longest input "
                "could never run"
            )
        return max_length

    @property
    def server_tls(self) -> ServerTLS | None:
        return make_server_tls(self.tls_cert, self.tls_key, self.tls_client_ca)

    @property
    def name(self) -> str:
        return self.model_name or Path(self.model).name or Path(self.model).resolve().name
