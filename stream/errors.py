"""The service's own errors, and their one mapping to gRPC status codes (applied only at the edge)."""

from __future__ import annotations

import grpc

from longwatch.memory.records import (
    ChunkNotFound,
    CorruptData,
    LeaseHeld,
    LeaseLost,
    StoreFull,
    StoreUnavailable,
    StreamExists,
    StreamNotFound,
)
from longwatch.proto.streams import InvalidStreamId
from longwatch.stream.decode import VideoDecodeError


class ServiceError(Exception):
    """Base of errors raised while serving a request."""


class BadRequest(ServiceError, ValueError):
    """The request itself is wrong: the client must change it."""


class StreamMissing(ServiceError):
    """The named stream does not exist."""


class NotReady(ServiceError):
    """The stream exists but cannot serve this request yet (or any more, with this model)."""


class StreamBusy(NotReady):
    """A live connection already feeds the stream: one sender per stream at a time."""


class CallEnded(ServiceError):
    """The caller cancelled or its deadline passed: the work for it stops (CANCELLED)."""


class Stopping(ServiceError):
    """The server is shutting down and takes no more frames; try again against a running one."""


class Unauthenticated(ServiceError):
    """No API key, or one the server does not know (UNAUTHENTICATED, HTTP 401)."""


class PermissionDenied(ServiceError):
    """The caller's role may not do this, or a path lies outside the ingest roots (HTTP 403)."""


class QuotaExceeded(ServiceError):
    """One of the tenant's limits would be passed; the message says which (RESOURCE_EXHAUSTED)."""


class DiskFull(ServiceError):
    """The state folder's disk has no room for what was sent (RESOURCE_EXHAUSTED)."""


_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidStreamId, grpc.StatusCode.INVALID_ARGUMENT),
    (VideoDecodeError, grpc.StatusCode.INVALID_ARGUMENT),
    (StreamMissing, grpc.StatusCode.NOT_FOUND),
    (StreamNotFound, grpc.StatusCode.NOT_FOUND),
    (StreamExists, grpc.StatusCode.ALREADY_EXISTS),
    (NotReady, grpc.StatusCode.FAILED_PRECONDITION),
    (Stopping, grpc.StatusCode.UNAVAILABLE),
    (CallEnded, grpc.StatusCode.CANCELLED),
    (CorruptData, grpc.StatusCode.DATA_LOSS),
    # No request names a chunk: the chunks read are those the stream's index lists, so one that
    # is not there is data the store lost.
    (ChunkNotFound, grpc.StatusCode.DATA_LOSS),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    # Another replica ingests the stream: try again (a lease whose holder died runs out), or
    # this ingest's lease passed to another writer: it was stopped (a conflict, ABORTED).
    (LeaseHeld, grpc.StatusCode.UNAVAILABLE),
    (LeaseLost, grpc.StatusCode.ABORTED),
    (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DiskFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status for an expected error; None for a bug (reported as INTERNAL)."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
