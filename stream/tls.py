"""TLS for both of the service's ports, from PEM files (SecuritySettings): gRPC and HTTP alike."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from longwatch.stream.settings import SecuritySettings


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the TLS {what} {path}: {e.strerror}") from None


def grpc_credentials(security: SecuritySettings) -> grpc.ServerCredentials:
    """Server credentials; with a client CA, a client must present a certificate it signed."""
    assert security.tls_cert is not None and security.tls_key is not None
    chain = _read(security.tls_cert, "certificate")
    key = _read(security.tls_key, "key")
    ca = _read(security.tls_client_ca, "client CA") if security.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
    )


def http_context(security: SecuritySettings) -> ssl.SSLContext:
    """The HTTP side's context: the same certificate, and the same client CA for mutual TLS."""
    assert security.tls_cert is not None and security.tls_key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(security.tls_cert, security.tls_key)
        if security.tls_client_ca is not None:
            context.load_verify_locations(security.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot use the TLS certificate {security.tls_cert}: {e}") from None
    return context
