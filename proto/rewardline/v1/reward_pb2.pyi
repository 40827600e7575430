from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_REWARD: _ClassVar[ModelKind]
    MODEL_KIND_UNCERTAINTY: _ClassVar[ModelKind]
    MODEL_KIND_JUDGE: _ClassVar[ModelKind]
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_REWARD: ModelKind
MODEL_KIND_UNCERTAINTY: ModelKind
MODEL_KIND_JUDGE: ModelKind

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("id", "prompt", "response", "messages", "reference")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: str
    response: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    reference: str
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[str] = ..., response: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., reference: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    def __init__(self, samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("rewards",)
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedCompositeFieldContainer[Reward]
    def __init__(self, rewards: _Optional[_Iterable[_Union[Reward, _Mapping]]] = ...) -> None: ...

class Reward(_message.Message):
    __slots__ = ("id", "score", "attributes", "model_revision", "truncated", "num_tokens", "cached", "uncertainty", "judgement", "error")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_REVISION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    JUDGEMENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    attributes: _containers.ScalarMap[str, float]
    model_revision: str
    truncated: bool
    num_tokens: int
    cached: bool
    uncertainty: Uncertainty
    judgement: Judgement
    error: Error
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., attributes: _Optional[_Mapping[str, float]] = ..., model_revision: _Optional[str] = ..., truncated: _Optional[bool] = ..., num_tokens: _Optional[int] = ..., cached: _Optional[bool] = ..., uncertainty: _Optional[_Union[Uncertainty, _Mapping]] = ..., judgement: _Optional[_Union[Judgement, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Uncertainty(_message.Message):
    __slots__ = ("std", "out_of_distribution", "epistemic_std", "aleatoric_std", "quantiles", "member_scores")
    STD_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    EPISTEMIC_STD_FIELD_NUMBER: _ClassVar[int]
    ALEATORIC_STD_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    MEMBER_SCORES_FIELD_NUMBER: _ClassVar[int]
    std: float
    out_of_distribution: bool
    epistemic_std: float
    aleatoric_std: float
    quantiles: _containers.RepeatedCompositeFieldContainer[Quantile]
    member_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, std: _Optional[float] = ..., out_of_distribution: _Optional[bool] = ..., epistemic_std: _Optional[float] = ..., aleatoric_std: _Optional[float] = ..., quantiles: _Optional[_Iterable[_Union[Quantile, _Mapping]]] = ..., member_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class Quantile(_message.Message):
    __slots__ = ("level", "value")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    level: float
    value: float
    def __init__(self, level: _Optional[float] = ..., value: _Optional[float] = ...) -> None: ...

class Judgement(_message.Message):
    __slots__ = ("mode", "verdict_probability", "expected_rating", "most_likely_rating", "rationale", "num_rationales", "unparsed")
    MODE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_RATING_FIELD_NUMBER: _ClassVar[int]
    MOST_LIKELY_RATING_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    NUM_RATIONALES_FIELD_NUMBER: _ClassVar[int]
    UNPARSED_FIELD_NUMBER: _ClassVar[int]
    mode: str
    verdict_probability: float
    expected_rating: float
    most_likely_rating: int
    rationale: str
    num_rationales: int
    unparsed: bool
    def __init__(self, mode: _Optional[str] = ..., verdict_probability: _Optional[float] = ..., expected_rating: _Optional[float] = ..., most_likely_rating: _Optional[int] = ..., rationale: _Optional[str] = ..., num_rationales: _Optional[int] = ..., unparsed: _Optional[bool] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("model_name", "revision", "kind", "attributes", "max_length", "backend", "device", "dtype", "truncation", "max_samples_per_request", "score_weights", "chat_template", "server_version", "ood_threshold", "uncertainty_kind", "num_members", "quantile_levels", "judge_template", "judge_mode")
    class ScoreWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SCORE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    OOD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_LEVELS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    JUDGE_MODE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    revision: str
    kind: ModelKind
    attributes: _containers.RepeatedScalarFieldContainer[str]
    max_length: int
    backend: str
    device: str
    dtype: str
    truncation: str
    max_samples_per_request: int
    score_weights: _containers.ScalarMap[str, float]
    chat_template: bool
    server_version: str
    ood_threshold: float
    uncertainty_kind: str
    num_members: int
    quantile_levels: _containers.RepeatedScalarFieldContainer[float]
    judge_template: str
    judge_mode: str
    def __init__(self, model_name: _Optional[str] = ..., revision: _Optional[str] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., attributes: _Optional[_Iterable[str]] = ..., max_length: _Optional[int] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., truncation: _Optional[str] = ..., max_samples_per_request: _Optional[int] = ..., score_weights: _Optional[_Mapping[str, float]] = ..., chat_template: _Optional[bool] = ..., server_version: _Optional[str] = ..., ood_threshold: _Optional[float] = ..., uncertainty_kind: _Optional[str] = ..., num_members: _Optional[int] = ..., quantile_levels: _Optional[_Iterable[float]] = ..., judge_template: _Optional[str] = ..., judge_mode: _Optional[str] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("id", "prompt", "response_a", "response_b", "reference")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_A_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_B_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: str
    response_a: str
    response_b: str
    reference: str
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[str] = ..., response_a: _Optional[str] = ..., response_b: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("id", "prob_a_preferred", "prob_a_preferred_a_first", "prob_a_preferred_a_second", "position_bias", "model_revision")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROB_A_PREFERRED_FIELD_NUMBER: _ClassVar[int]
    PROB_A_PREFERRED_A_FIRST_FIELD_NUMBER: _ClassVar[int]
    PROB_A_PREFERRED_A_SECOND_FIELD_NUMBER: _ClassVar[int]
    POSITION_BIAS_FIELD_NUMBER: _ClassVar[int]
    MODEL_REVISION_FIELD_NUMBER: _ClassVar[int]
    id: str
    prob_a_preferred: float
    prob_a_preferred_a_first: float
    prob_a_preferred_a_second: float
    position_bias: float
    model_revision: str
    def __init__(self, id: _Optional[str] = ..., prob_a_preferred: _Optional[float] = ..., prob_a_preferred_a_first: _Optional[float] = ..., prob_a_preferred_a_second: _Optional[float] = ..., position_bias: _Optional[float] = ..., model_revision: _Optional[str] = ...) -> None: ...
