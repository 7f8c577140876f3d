"""What a client shows a longwatch server and how it checks the server: an API key and TLS.

The same `Credentials` serve the gRPC client (clients/client.py) and the HTTP side (WebRTC
signalling, clients/webrtc.py):

    creds = Credentials(api_key=os.environ["LONGWATCH_API_KEY"], tls_ca="ca.pem")
    with LongWatchClient("cams.example.org:50051", credentials=creds) as client: ...
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Credentials:
    """api_key: sent as `authorization: Bearer <key>` on every call (None: no key).
    tls: connect over TLS, checking the server against the system's CAs, or `tls_ca` when given
        (setting tls_ca, client_cert or client_key implies tls).
    client_cert, client_key: PEM files of a client certificate, for servers that ask for one.
    """

    api_key: str | None = None
    tls: bool = False
    tls_ca: PathLike | None = None
    client_cert: PathLike | None = None
    client_key: PathLike | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("a client certificate needs both its certificate and its key")
        if self.api_key is not None and (not self.api_key.strip() or "\n" in self.api_key):
            raise ValueError("the API key is empty or not one line")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None or self.client_cert is not None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key.strip()}"),) if self.api_key else ()

    def grpc_channel(self, target: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        """A channel to `target` that sends the key with every call, over TLS where asked."""
        if self.uses_tls:
            channel = grpc.secure_channel(
                target,
                grpc.ssl_channel_credentials(
                    root_certificates=_read(self.tls_ca),
                    private_key=_read(self.client_key),
                    certificate_chain=_read(self.client_cert),
                ),
                options=options,
            )
        else:
            channel = grpc.insecure_channel(target, options=options)
        if self.metadata:
            channel = grpc.intercept_channel(channel, _WithMetadata(self.metadata))
        return channel

    def http_headers(self) -> dict[str, str]:
        return dict((k.title(), v) for k, v in self.metadata)

    def ssl_context(self) -> ssl.SSLContext | None:
        """For HTTPS: the server checked against tls_ca (or the system's CAs); None without TLS."""
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(cafile=os.fspath(self.tls_ca) if self.tls_ca else None)
        if self.client_cert is not None and self.client_key is not None:
            context.load_cert_chain(os.fspath(self.client_cert), os.fspath(self.client_key))
        return context


NO_CREDENTIALS = Credentials()


def _read(path: PathLike | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None


class _WithMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the API key) to every call of a channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), *self._metadata),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def _intercept(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_unary(
        self, continuation: Callable, details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return self._intercept(continuation, details, request)

    def intercept_unary_stream(
        self, continuation: Callable, details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return self._intercept(continuation, details, request)

    def intercept_stream_unary(
        self, continuation: Callable, details: grpc.ClientCallDetails, requests: Iterator[Any]
    ) -> Any:
        return self._intercept(continuation, details, requests)

    def intercept_stream_stream(
        self, continuation: Callable, details: grpc.ClientCallDetails, requests: Iterator[Any]
    ) -> Any:
        return self._intercept(continuation, details, requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression
