"""longwatch.clients: the Python client, the `longwatch` command and its output formatting.

The client's public names are re-exported here lazily, so `import longwatch.clients.format`
does not pay for grpc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from longwatch.clients.client import (
        AlreadyExists,
        AskResult,
        AskStream,
        EvidenceSpan,
        InvalidArgument,
        LiveFrame,
        LongWatchClient,
        LongWatchError,
        NotFound,
        RetryPolicy,
        StreamSummary,
        Unavailable,
    )

__all__ = [
    "AlreadyExists",
    "AskResult",
    "AskStream",
    "EvidenceSpan",
    "InvalidArgument",
    "LiveFrame",
    "LongWatchClient",
    "LongWatchError",
    "NotFound",
    "RetryPolicy",
    "StreamSummary",
    "Unavailable",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from longwatch.clients import client

        return getattr(client, name)
    raise AttributeError(f"module 'longwatch.clients' has no attribute {name!r}")
