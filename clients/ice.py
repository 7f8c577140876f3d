"""Which addresses a WebRTC peer's ICE may use: the one place longwatch reaches into aioice.

aiortc's ICE agent (aioice) gathers a host candidate on every address of the machine except
127.0.0.1 and ::1, and has no option to choose them. A peer restricted to a set of addresses
(`LiveConfig.ice_addresses`, `longwatch serve --webrtc-address`; `WebRTCSender(ice_addresses=)`,
`longwatch stream --ice-address`) sends and answers ICE traffic on those addresses only:

1. Local side. `set_local_description` gathers the peer's host candidates on the addresses
   alone: aioice's `get_host_addresses` is replaced (once, `install`) by `_host_addresses`,
   which answers from a context variable set only around that call, so every other peer in the
   process keeps aioice's own answer.
2. Remote side, descriptions. `restrict_remote_sdp` removes the `a=candidate` lines on other
   addresses (mDNS `.local` names included, which would otherwise be resolved by multicast) from
   an offer or answer before aiortc reads it, so no connectivity check is sent anywhere else.
3. Remote side, later. A restricted peer's aioice connections drop candidates added after the
   description (trickle, `RTCPeerConnection.addIceCandidate`) on other addresses, and ignore
   connectivity checks arriving from other addresses. A socket bound to 127.0.0.1 can receive
   a datagram sent from the machine's own LAN address (a browser's other candidates pair with
   ours too); aioice would answer it and pair it as peer-reflexive, i.e. send to that address.

None (the default everywhere) changes nothing: aioice offers all the machine's addresses, as a
service reached by browsers on other machines needs. Tests, CI and the demo use 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aioice.ice import Connection
    from aiortc import RTCPeerConnection, RTCSessionDescription

log = logging.getLogger(__name__)

Address = tuple[str, int]

# The addresses the peer whose local description is being set may gather on; None: aioice's own.
_GATHER_ON: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "longwatch_ice_gather_on", default=None
)
_aioice_host_addresses: Callable[[bool, bool], list[str]] | None = None  # the original, once installed


def parse_ice_addresses(values: Iterable[str]) -> tuple[str, ...]:
    """IP address literals, in their canonical form, duplicates dropped; ValueError otherwise."""
    addresses: list[str] = []
    for value in values:
        try:
            address = str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"expected an IP address such as 127.0.0.1 or ::1, got {value!r}") from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ValueError("expected at least one IP address (leave the setting unset for all of them)")
    return tuple(addresses)


def address_list(text: str) -> list[str]:
    """An argparse type: "127.0.0.1" or "127.0.0.1,::1" (a flag's value, or a variable's) as IP addresses."""
    try:
        return list(parse_ice_addresses(part for part in text.split(",") if part.strip()))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def allows(addresses: tuple[str, ...], host: str) -> bool:
    """Whether a candidate's host (an IP literal, or an mDNS name: never) is one of `addresses`."""
    try:
        return str(ipaddress.ip_address(host)) in addresses
    except ValueError:
        return False


def check_bindable(addresses: tuple[str, ...]) -> None:
    """OSError naming the address if one is not this machine's (aioice would skip it silently)."""
    for address in addresses:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind((address, 0))
        except OSError as e:
            raise OSError(e.errno, f"cannot use WebRTC address {address}: {e.strerror}") from e


# --- local side -----------------------------------------------------------------------------


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """Stands in for `aioice.ice.get_host_addresses`: the addresses in force, else aioice's answer."""
    addresses = _GATHER_ON.get()
    if addresses is None:
        if _aioice_host_addresses is None:  # cannot happen: install() saves it before replacing it
            raise RuntimeError("longwatch's ICE address filter is in aioice without aioice's original")
        return _aioice_host_addresses(use_ipv4, use_ipv6)
    versions = {4} if use_ipv4 else set()
    versions |= {6} if use_ipv6 else set()
    return [a for a in addresses if ipaddress.ip_address(a).version in versions]


def install() -> None:
    """Put `_host_addresses` in place of aioice's `get_host_addresses`; calling it again is harmless.

    `Connection.gather_candidates` looks `get_host_addresses` up in the globals of aioice.ice at
    every call, so replacing that module attribute takes effect (a copy made by `from aioice.ice
    import get_host_addresses` elsewhere would not; neither aiortc nor aioice makes one). Without
    a restriction in force it returns aioice's own answer, so installing changes nothing else.
    """
    global _aioice_host_addresses
    import aioice.ice

    if aioice.ice.get_host_addresses is not _host_addresses:
        _aioice_host_addresses = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = _host_addresses


def uninstall() -> None:
    """Give aioice its own `get_host_addresses` back (connections already made keep their sockets)."""
    global _aioice_host_addresses
    import aioice.ice

    if aioice.ice.get_host_addresses is _host_addresses and _aioice_host_addresses is not None:
        aioice.ice.get_host_addresses = _aioice_host_addresses
        _aioice_host_addresses = None


async def set_local_description(
    pc: RTCPeerConnection, description: RTCSessionDescription, addresses: tuple[str, ...] | None
) -> None:
    """`pc.setLocalDescription(description)`, gathering host candidates on `addresses` only.

    Then the peer's ICE connections ignore remote candidates and checks from other addresses.
    addresses None: aioice's default, all of the machine's addresses but loopback.
    """
    if addresses is None:
        await pc.setLocalDescription(description)
        return
    install()
    token = _GATHER_ON.set(addresses)  # aiortc gathers inside this call (in tasks copying the context)
    try:
        await pc.setLocalDescription(description)
    finally:
        _GATHER_ON.reset(token)
    for connection in _connections(pc):
        _restrict_remote(connection, addresses)


# A 720p keyframe is about a hundred datagrams, and one event loop receives every peer's: the
# usual default socket buffer (about 208 KB) overflows when that loop stalls for a second or so
# (a busy machine, a long pass holding the GIL), and every datagram lost there costs a keyframe
# request. The kernel caps the size at net.core.rmem_max (root may raise that).
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


def enlarge_receive_buffers(pc: RTCPeerConnection, size: int = RECEIVE_BUFFER_BYTES) -> None:
    """Ask for `size`-byte receive buffers on the sockets of the peer's ICE connections.

    Call it once candidates are gathered (after `set_local_description`); a socket that refuses
    keeps its buffer: this only makes losses under load less likely.
    """
    for connection in _connections(pc):
        for protocol in getattr(connection, "_protocols", ()):
            transport = getattr(protocol, "transport", None)
            sock = None if transport is None else transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


# --- remote side ----------------------------------------------------------------------------


def restrict_remote_sdp(sdp: str, addresses: tuple[str, ...]) -> str:
    """The SDP without its `a=candidate` lines on other addresses.

    ValueError if it had candidates and none is left: the peers cannot connect then.
    """
    kept: list[str] = []
    dropped: list[str] = []
    lines = []
    for line in sdp.splitlines(keepends=True):
        host = _candidate_host(line)
        if host is None or allows(addresses, host):
            lines.append(line)
            kept += [] if host is None else [host]
        else:
            dropped.append(host)
    if dropped and not kept:
        raise ValueError(
            f"its ICE candidates are all on other addresses ({', '.join(dict.fromkeys(dropped))}) "
            f"than the ones WebRTC may use here ({', '.join(addresses)})"
        )
    return "".join(lines)


def _candidate_host(line: str) -> str | None:
    """The connection address of an `a=candidate:` line (RFC 8839 section 5.1), else None."""
    if not line.startswith("a=candidate:"):
        return None
    fields = line.split()  # foundation, component, transport, priority, address, port, "typ", type
    return fields[4] if len(fields) > 4 else ""


def _connections(pc: RTCPeerConnection) -> list[Connection]:
    """The aioice connections under a peer (one per ICE transport; aiortc keeps them private)."""
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    found: dict[int, Connection] = {}
    for dtls in transports:
        connection = getattr(dtls.transport.iceGatherer, "_connection", None)
        if connection is not None:
            found[id(connection)] = connection
    return list(found.values())


def _restrict_remote(connection: Connection, addresses: tuple[str, ...]) -> None:
    """Filter what reaches this connection later: trickled candidates and incoming checks."""
    if getattr(connection, "_longwatch_addresses", None) is not None:
        return
    add_remote_candidate = connection.add_remote_candidate
    request_received = connection.request_received

    async def add_allowed_candidate(candidate: Any) -> None:
        if candidate is None or allows(addresses, candidate.host):
            await add_remote_candidate(candidate)
        else:
            log.info("ignored a remote ICE candidate on %s: not one of %s", candidate.host, addresses)

    def answer_allowed_request(message: Any, addr: Address, protocol: Any) -> None:
        if allows(addresses, addr[0]):
            request_received(message, addr, protocol)
        else:
            log.debug("ignored an ICE check from %s: not one of %s", addr[0], addresses)

    connection.add_remote_candidate = add_allowed_candidate  # type: ignore[method-assign]
    connection.request_received = answer_allowed_request  # type: ignore[method-assign]
    connection._longwatch_addresses = addresses  # type: ignore[attr-defined]


def selected_pair(pc: RTCPeerConnection) -> tuple[Address, Address] | None:
    """(local, remote) address of the candidate pair ICE chose for the first transport, if any.

    Reads aioice's nominated pairs (not public API): for logs and tests, never for decisions.
    """
    for connection in _connections(pc):
        pairs = list(getattr(connection, "_nominated", {}).values())
        if pairs:
            return pairs[0].local_addr, pairs[0].remote_addr
    return None
