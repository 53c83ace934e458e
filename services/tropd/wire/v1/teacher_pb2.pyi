from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_INT32: DType

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TokenizerFingerprint(_message.Message):
    __slots__ = ("sha256", "vocab_size", "bos_id", "eos_id", "pad_id")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    BOS_ID_FIELD_NUMBER: _ClassVar[int]
    EOS_ID_FIELD_NUMBER: _ClassVar[int]
    PAD_ID_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    def __init__(self, sha256: _Optional[str] = ..., vocab_size: _Optional[int] = ..., bos_id: _Optional[int] = ..., eos_id: _Optional[int] = ..., pad_id: _Optional[int] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("score", "top_k", "candidates", "logsumexp", "entropy", "rank", "generate")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    LOGSUMEXP_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    score: bool
    top_k: bool
    candidates: bool
    logsumexp: bool
    entropy: bool
    rank: bool
    generate: bool
    def __init__(self, score: _Optional[bool] = ..., top_k: _Optional[bool] = ..., candidates: _Optional[bool] = ..., logsumexp: _Optional[bool] = ..., entropy: _Optional[bool] = ..., rank: _Optional[bool] = ..., generate: _Optional[bool] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "revision", "backend", "dtype", "device", "vocab_size", "tokenizer", "max_sequence_length", "max_top_k", "max_candidates", "max_request_tokens", "capabilities", "server_version", "max_new_tokens")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    revision: str
    backend: str
    dtype: str
    device: str
    vocab_size: int
    tokenizer: TokenizerFingerprint
    max_sequence_length: int
    max_top_k: int
    max_candidates: int
    max_request_tokens: int
    capabilities: Capabilities
    server_version: str
    max_new_tokens: int
    def __init__(self, model_id: _Optional[str] = ..., revision: _Optional[str] = ..., backend: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., vocab_size: _Optional[int] = ..., tokenizer: _Optional[_Union[TokenizerFingerprint, _Mapping]] = ..., max_sequence_length: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_candidates: _Optional[int] = ..., max_request_tokens: _Optional[int] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., server_version: _Optional[str] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class ScoreItem(_message.Message):
    __slots__ = ("ids", "start", "end", "candidates")
    IDS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ids: Tensor
    start: int
    end: int
    candidates: Tensor
    def __init__(self, ids: _Optional[_Union[Tensor, _Mapping]] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., candidates: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("items", "top_k", "logprob_dtype", "return_logsumexp", "return_entropy", "return_rank")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_DTYPE_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOGSUMEXP_FIELD_NUMBER: _ClassVar[int]
    RETURN_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    RETURN_RANK_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    top_k: int
    logprob_dtype: DType
    return_logsumexp: bool
    return_entropy: bool
    return_rank: bool
    def __init__(self, items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ..., top_k: _Optional[int] = ..., logprob_dtype: _Optional[_Union[DType, str]] = ..., return_logsumexp: _Optional[bool] = ..., return_entropy: _Optional[bool] = ..., return_rank: _Optional[bool] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("logprobs", "topk_ids", "topk_logprobs", "candidate_logprobs", "logsumexp", "entropy", "rank")
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOPK_IDS_FIELD_NUMBER: _ClassVar[int]
    TOPK_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    LOGSUMEXP_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    logprobs: Tensor
    topk_ids: Tensor
    topk_logprobs: Tensor
    candidate_logprobs: Tensor
    logsumexp: Tensor
    entropy: Tensor
    rank: Tensor
    def __init__(self, logprobs: _Optional[_Union[Tensor, _Mapping]] = ..., topk_ids: _Optional[_Union[Tensor, _Mapping]] = ..., topk_logprobs: _Optional[_Union[Tensor, _Mapping]] = ..., candidate_logprobs: _Optional[_Union[Tensor, _Mapping]] = ..., logsumexp: _Optional[_Union[Tensor, _Mapping]] = ..., entropy: _Optional[_Union[Tensor, _Mapping]] = ..., rank: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_seconds", "compute_seconds")
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    queue_seconds: float
    compute_seconds: float
    def __init__(self, queue_seconds: _Optional[float] = ..., compute_seconds: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("results", "tokenizer_sha256", "model_id", "timing")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResult]
    tokenizer_sha256: str
    model_id: str
    timing: Timing
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResult, _Mapping]]] = ..., tokenizer_sha256: _Optional[str] = ..., model_id: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompts", "max_new_tokens", "temperature", "top_p", "seed", "stop_ids", "logprob_dtype")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_DTYPE_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[Tensor]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop_ids: _containers.RepeatedScalarFieldContainer[int]
    logprob_dtype: DType
    def __init__(self, prompts: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop_ids: _Optional[_Iterable[int]] = ..., logprob_dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class GenerateResult(_message.Message):
    __slots__ = ("ids", "logprobs", "finish_reason")
    IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ids: Tensor
    logprobs: Tensor
    finish_reason: str
    def __init__(self, ids: _Optional[_Union[Tensor, _Mapping]] = ..., logprobs: _Optional[_Union[Tensor, _Mapping]] = ..., finish_reason: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("results", "tokenizer_sha256", "model_id", "timing")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GenerateResult]
    tokenizer_sha256: str
    model_id: str
    timing: Timing
    def __init__(self, results: _Optional[_Iterable[_Union[GenerateResult, _Mapping]]] = ..., tokenizer_sha256: _Optional[str] = ..., model_id: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...
