from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_STATE_UNSPECIFIED: _ClassVar[StreamState]
    STREAM_STATE_INGESTING: _ClassVar[StreamState]
    STREAM_STATE_READY: _ClassVar[StreamState]
    STREAM_STATE_LIVE: _ClassVar[StreamState]
    STREAM_STATE_INTERRUPTED: _ClassVar[StreamState]
STREAM_STATE_UNSPECIFIED: StreamState
STREAM_STATE_INGESTING: StreamState
STREAM_STATE_READY: StreamState
STREAM_STATE_LIVE: StreamState
STREAM_STATE_INTERRUPTED: StreamState

class IngestFileRequest(_message.Message):
    __slots__ = ("stream_id", "path", "data", "fps", "resume", "ray")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    RAY_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    path: str
    data: bytes
    fps: float
    resume: bool
    ray: bool
    def __init__(self, stream_id: _Optional[str] = ..., path: _Optional[str] = ..., data: _Optional[bytes] = ..., fps: _Optional[float] = ..., resume: _Optional[bool] = ..., ray: _Optional[bool] = ...) -> None: ...

class IngestUploadRequest(_message.Message):
    __slots__ = ("start", "piece")
    START_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    start: UploadStart
    piece: bytes
    def __init__(self, start: _Optional[_Union[UploadStart, _Mapping]] = ..., piece: _Optional[bytes] = ...) -> None: ...

class UploadStart(_message.Message):
    __slots__ = ("stream_id", "name", "fps", "resume", "ray")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    RAY_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    name: str
    fps: float
    resume: bool
    ray: bool
    def __init__(self, stream_id: _Optional[str] = ..., name: _Optional[str] = ..., fps: _Optional[float] = ..., resume: _Optional[bool] = ..., ray: _Optional[bool] = ...) -> None: ...

class IngestProgress(_message.Message):
    __slots__ = ("stream_id", "position_s", "duration_s", "frames_decoded", "frames_sampled", "tokens_seen", "tokens_kept", "chunks_committed", "done", "stream")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_S_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DECODED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SEEN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_KEPT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    position_s: float
    duration_s: float
    frames_decoded: int
    frames_sampled: int
    tokens_seen: int
    tokens_kept: int
    chunks_committed: int
    done: bool
    stream: StreamInfo
    def __init__(self, stream_id: _Optional[str] = ..., position_s: _Optional[float] = ..., duration_s: _Optional[float] = ..., frames_decoded: _Optional[int] = ..., frames_sampled: _Optional[int] = ..., tokens_seen: _Optional[int] = ..., tokens_kept: _Optional[int] = ..., chunks_committed: _Optional[int] = ..., done: _Optional[bool] = ..., stream: _Optional[_Union[StreamInfo, _Mapping]] = ...) -> None: ...

class IngestFramesRequest(_message.Message):
    __slots__ = ("start", "frame")
    START_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    start: LiveStart
    frame: Frame
    def __init__(self, start: _Optional[_Union[LiveStart, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class LiveStart(_message.Message):
    __slots__ = ("stream_id", "fps")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    fps: float
    def __init__(self, stream_id: _Optional[str] = ..., fps: _Optional[float] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("timestamp_s", "encoded", "raw")
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    timestamp_s: float
    encoded: bytes
    raw: RawFrame
    def __init__(self, timestamp_s: _Optional[float] = ..., encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawFrame, _Mapping]] = ...) -> None: ...

class RawFrame(_message.Message):
    __slots__ = ("rgb", "width", "height")
    RGB_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    rgb: bytes
    width: int
    height: int
    def __init__(self, rgb: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class LiveProgress(_message.Message):
    __slots__ = ("stream_id", "frames_received", "frames_sampled", "frames_dropped", "chunks_committed", "position_s", "done", "stream")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    POSITION_S_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    frames_received: int
    frames_sampled: int
    frames_dropped: int
    chunks_committed: int
    position_s: float
    done: bool
    stream: StreamInfo
    def __init__(self, stream_id: _Optional[str] = ..., frames_received: _Optional[int] = ..., frames_sampled: _Optional[int] = ..., frames_dropped: _Optional[int] = ..., chunks_committed: _Optional[int] = ..., position_s: _Optional[float] = ..., done: _Optional[bool] = ..., stream: _Optional[_Union[StreamInfo, _Mapping]] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("start_s", "end_s")
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    start_s: float
    end_s: float
    def __init__(self, start_s: _Optional[float] = ..., end_s: _Optional[float] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("stream_id", "question", "top_k", "time_range", "max_new_tokens", "score_margin")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    question: str
    top_k: int
    time_range: TimeRange
    max_new_tokens: int
    score_margin: float
    def __init__(self, stream_id: _Optional[str] = ..., question: _Optional[str] = ..., top_k: _Optional[int] = ..., time_range: _Optional[_Union[TimeRange, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., score_margin: _Optional[float] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("start_s", "end_s", "score", "chunk_index", "picture_times_s")
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    PICTURE_TIMES_S_FIELD_NUMBER: _ClassVar[int]
    start_s: float
    end_s: float
    score: float
    chunk_index: int
    picture_times_s: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., score: _Optional[float] = ..., chunk_index: _Optional[int] = ..., picture_times_s: _Optional[_Iterable[float]] = ...) -> None: ...

class AskTimings(_message.Message):
    __slots__ = ("retrieve_ms", "load_ms", "prefill_ms", "first_token_ms", "generate_ms", "total_ms", "question_ms", "search_ms", "repack_ms")
    RETRIEVE_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    QUESTION_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    REPACK_MS_FIELD_NUMBER: _ClassVar[int]
    retrieve_ms: float
    load_ms: float
    prefill_ms: float
    first_token_ms: float
    generate_ms: float
    total_ms: float
    question_ms: float
    search_ms: float
    repack_ms: float
    def __init__(self, retrieve_ms: _Optional[float] = ..., load_ms: _Optional[float] = ..., prefill_ms: _Optional[float] = ..., first_token_ms: _Optional[float] = ..., generate_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., question_ms: _Optional[float] = ..., search_ms: _Optional[float] = ..., repack_ms: _Optional[float] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("stream_id", "answer", "evidence", "timings", "tokens_generated", "model")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    answer: str
    evidence: _containers.RepeatedCompositeFieldContainer[Evidence]
    timings: AskTimings
    tokens_generated: int
    model: str
    def __init__(self, stream_id: _Optional[str] = ..., answer: _Optional[str] = ..., evidence: _Optional[_Iterable[_Union[Evidence, _Mapping]]] = ..., timings: _Optional[_Union[AskTimings, _Mapping]] = ..., tokens_generated: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class AskStreamResponse(_message.Message):
    __slots__ = ("delta", "response")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    delta: str
    response: AskResponse
    def __init__(self, delta: _Optional[str] = ..., response: _Optional[_Union[AskResponse, _Mapping]] = ...) -> None: ...

class AskAcrossRequest(_message.Message):
    __slots__ = ("question", "stream_ids", "time_range", "results", "top_k", "max_new_tokens", "score_margin")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    STREAM_IDS_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    question: str
    stream_ids: _containers.RepeatedScalarFieldContainer[str]
    time_range: TimeRange
    results: int
    top_k: int
    max_new_tokens: int
    score_margin: float
    def __init__(self, question: _Optional[str] = ..., stream_ids: _Optional[_Iterable[str]] = ..., time_range: _Optional[_Union[TimeRange, _Mapping]] = ..., results: _Optional[int] = ..., top_k: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., score_margin: _Optional[float] = ...) -> None: ...

class AskAcrossResult(_message.Message):
    __slots__ = ("score", "response")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    score: float
    response: AskResponse
    def __init__(self, score: _Optional[float] = ..., response: _Optional[_Union[AskResponse, _Mapping]] = ...) -> None: ...

class SkippedStream(_message.Message):
    __slots__ = ("stream_id", "reason")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    reason: str
    def __init__(self, stream_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AskAcrossResponse(_message.Message):
    __slots__ = ("results", "streams_searched", "skipped", "timings", "model")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_SEARCHED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AskAcrossResult]
    streams_searched: int
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedStream]
    timings: AskTimings
    model: str
    def __init__(self, results: _Optional[_Iterable[_Union[AskAcrossResult, _Mapping]]] = ..., streams_searched: _Optional[int] = ..., skipped: _Optional[_Iterable[_Union[SkippedStream, _Mapping]]] = ..., timings: _Optional[_Union[AskTimings, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("new", "watch_id", "after_event_id")
    NEW_FIELD_NUMBER: _ClassVar[int]
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    new: NewWatch
    watch_id: str
    after_event_id: str
    def __init__(self, new: _Optional[_Union[NewWatch, _Mapping]] = ..., watch_id: _Optional[str] = ..., after_event_id: _Optional[str] = ...) -> None: ...

class NewWatch(_message.Message):
    __slots__ = ("stream_id", "question", "match", "webhook_url")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    question: str
    match: str
    webhook_url: str
    def __init__(self, stream_id: _Optional[str] = ..., question: _Optional[str] = ..., match: _Optional[str] = ..., webhook_url: _Optional[str] = ...) -> None: ...

class WatchInfo(_message.Message):
    __slots__ = ("watch_id", "stream_id", "question", "match", "webhook_url", "created_unix", "chunks_checked", "events", "last_event_id", "webhook_delivered_id")
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_DELIVERED_ID_FIELD_NUMBER: _ClassVar[int]
    watch_id: str
    stream_id: str
    question: str
    match: str
    webhook_url: str
    created_unix: float
    chunks_checked: int
    events: int
    last_event_id: str
    webhook_delivered_id: str
    def __init__(self, watch_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., question: _Optional[str] = ..., match: _Optional[str] = ..., webhook_url: _Optional[str] = ..., created_unix: _Optional[float] = ..., chunks_checked: _Optional[int] = ..., events: _Optional[int] = ..., last_event_id: _Optional[str] = ..., webhook_delivered_id: _Optional[str] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("watch", "event_id", "stream_id", "chunk_index", "start_s", "end_s", "answer", "score", "checked_unix", "pending")
    WATCH_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CHECKED_UNIX_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    watch: WatchInfo
    event_id: str
    stream_id: str
    chunk_index: int
    start_s: float
    end_s: float
    answer: str
    score: float
    checked_unix: float
    pending: bool
    def __init__(self, watch: _Optional[_Union[WatchInfo, _Mapping]] = ..., event_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., chunk_index: _Optional[int] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., answer: _Optional[str] = ..., score: _Optional[float] = ..., checked_unix: _Optional[float] = ..., pending: _Optional[bool] = ...) -> None: ...

class ListWatchesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWatchesResponse(_message.Message):
    __slots__ = ("watches",)
    WATCHES_FIELD_NUMBER: _ClassVar[int]
    watches: _containers.RepeatedCompositeFieldContainer[WatchInfo]
    def __init__(self, watches: _Optional[_Iterable[_Union[WatchInfo, _Mapping]]] = ...) -> None: ...

class DeleteWatchRequest(_message.Message):
    __slots__ = ("watch_id",)
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    watch_id: str
    def __init__(self, watch_id: _Optional[str] = ...) -> None: ...

class GetStreamRequest(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    def __init__(self, stream_id: _Optional[str] = ...) -> None: ...

class StreamInfo(_message.Message):
    __slots__ = ("stream_id", "state", "source", "duration_s", "frames_decoded", "frames_sampled", "frames_kept", "tokens_seen", "tokens_kept", "chunks", "bytes_stored", "fps", "model", "created_unix", "updated_unix", "frames_dropped", "kv_storage", "frames_lost", "retention_age_s", "retention_bytes", "chunks_dropped", "bytes_dropped", "bytes_cold", "source_path")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DECODED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_KEPT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SEEN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_KEPT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    KV_STORAGE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_LOST_FIELD_NUMBER: _ClassVar[int]
    RETENTION_AGE_S_FIELD_NUMBER: _ClassVar[int]
    RETENTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    BYTES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    BYTES_COLD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    state: StreamState
    source: str
    duration_s: float
    frames_decoded: int
    frames_sampled: int
    frames_kept: int
    tokens_seen: int
    tokens_kept: int
    chunks: int
    bytes_stored: int
    fps: float
    model: str
    created_unix: float
    updated_unix: float
    frames_dropped: int
    kv_storage: str
    frames_lost: int
    retention_age_s: float
    retention_bytes: int
    chunks_dropped: int
    bytes_dropped: int
    bytes_cold: int
    source_path: str
    def __init__(self, stream_id: _Optional[str] = ..., state: _Optional[_Union[StreamState, str]] = ..., source: _Optional[str] = ..., duration_s: _Optional[float] = ..., frames_decoded: _Optional[int] = ..., frames_sampled: _Optional[int] = ..., frames_kept: _Optional[int] = ..., tokens_seen: _Optional[int] = ..., tokens_kept: _Optional[int] = ..., chunks: _Optional[int] = ..., bytes_stored: _Optional[int] = ..., fps: _Optional[float] = ..., model: _Optional[str] = ..., created_unix: _Optional[float] = ..., updated_unix: _Optional[float] = ..., frames_dropped: _Optional[int] = ..., kv_storage: _Optional[str] = ..., frames_lost: _Optional[int] = ..., retention_age_s: _Optional[float] = ..., retention_bytes: _Optional[int] = ..., chunks_dropped: _Optional[int] = ..., bytes_dropped: _Optional[int] = ..., bytes_cold: _Optional[int] = ..., source_path: _Optional[str] = ...) -> None: ...

class ListStreamsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListStreamsResponse(_message.Message):
    __slots__ = ("streams",)
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.RepeatedCompositeFieldContainer[StreamInfo]
    def __init__(self, streams: _Optional[_Iterable[_Union[StreamInfo, _Mapping]]] = ...) -> None: ...

class DeleteStreamRequest(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    def __init__(self, stream_id: _Optional[str] = ...) -> None: ...

class GetFramesRequest(_message.Message):
    __slots__ = ("stream_id", "from_s", "to_s", "max_frames", "nearest")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_S_FIELD_NUMBER: _ClassVar[int]
    TO_S_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    NEAREST_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    from_s: float
    to_s: float
    max_frames: int
    nearest: bool
    def __init__(self, stream_id: _Optional[str] = ..., from_s: _Optional[float] = ..., to_s: _Optional[float] = ..., max_frames: _Optional[int] = ..., nearest: _Optional[bool] = ...) -> None: ...

class Picture(_message.Message):
    __slots__ = ("time_s", "chunk_index", "image", "format")
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    time_s: float
    chunk_index: int
    image: bytes
    format: str
    def __init__(self, time_s: _Optional[float] = ..., chunk_index: _Optional[int] = ..., image: _Optional[bytes] = ..., format: _Optional[str] = ...) -> None: ...

class GetFramesResponse(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Picture]
    def __init__(self, frames: _Optional[_Iterable[_Union[Picture, _Mapping]]] = ...) -> None: ...

class SetRetentionRequest(_message.Message):
    __slots__ = ("stream_id", "max_age_s", "max_bytes")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    max_age_s: float
    max_bytes: int
    def __init__(self, stream_id: _Optional[str] = ..., max_age_s: _Optional[float] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class DeleteStreamResponse(_message.Message):
    __slots__ = ("keys_deleted",)
    KEYS_DELETED_FIELD_NUMBER: _ClassVar[int]
    keys_deleted: int
    def __init__(self, keys_deleted: _Optional[int] = ...) -> None: ...
