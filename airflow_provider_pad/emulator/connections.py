"""
Track uvicorn's client connections so that a fault can close one without any HTTP response.

ASGI gives an application no way to abort its connection: a handler that returns without
responding makes uvicorn send a 500. The emulator therefore serves with a subclass of
uvicorn's h11 protocol that registers each connection's transport under the client address,
which the ASGI scope also carries as ``scope["client"]``.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

ClientAddress = tuple[str, int]


class ConnectionRegistry:
    """Open connections' transports by client address. Only uvicorn's event loop thread uses it."""

    def __init__(self) -> None:
        self._transports: dict[ClientAddress, asyncio.BaseTransport] = {}

    def add(self, transport: asyncio.BaseTransport) -> None:
        address = _client_address(transport)
        if address is not None:
            self._transports[address] = transport

    def discard(self, transport: asyncio.BaseTransport) -> None:
        address = _client_address(transport)
        if address is not None and self._transports.get(address) is transport:
            del self._transports[address]

    def abort(self, client: ClientAddress | list[object] | None) -> bool:
        """Close the connection of ``client`` at once, without TLS close_notify, and return whether it was found."""
        if client is None:
            return False
        transport = self._transports.get((str(client[0]), int(client[1])))  # type: ignore[call-overload]
        if transport is None:
            return False
        transport.abort()  # type: ignore[attr-defined]
        return True


def tracked_protocol_class(registry: ConnectionRegistry) -> type[H11Protocol]:
    """Build an h11 protocol class that records each connection in ``registry``."""

    class TrackedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            registry.add(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            registry.discard(self.transport)
            super().connection_lost(exc)

        def shutdown(self) -> None:
            # uvicorn closes an idle connection on stop with a TLS close_notify and then waits
            # for the client's reply, which an idle pooled client never sends. Aborting ends
            # the connection at once, so stop() does not wait for the graceful shutdown timeout.
            if self.cycle is None or self.cycle.response_complete:
                self.transport.abort()
            else:
                super().shutdown()

    return TrackedH11Protocol


def _client_address(transport: asyncio.BaseTransport) -> ClientAddress | None:
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or len(peer) < 2:
        return None
    return str(peer[0]), int(peer[1])
