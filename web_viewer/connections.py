"""Connection hygiene aiohttp does not provide: a header timeout and a cap on half-sent requests.

aiohttp (3.9 to 3.14) has no timeout on receiving a request's headers: a client that connects
and sends half a request line is kept until the keep-alive timeout (3630 s by default in 3.14,
and before 3.14 not even that for a connection's first request). 1500 such connections were held
for over 150 s; a process with the usual 1024 file descriptors stops accepting anybody.

:class:`ConnectionGuard` wraps aiohttp's protocol (:class:`GuardedSite` listens with it):

* every new connection is *pending* until its first request reaches the application
  (:meth:`ConnectionGuard.middleware` marks it); a connection still pending after
  ``header_timeout_s`` gets ``408`` and is closed;
* at most ``max_pending_per_peer`` pending connections per remote address and ``max_pending``
  in all: beyond that, the *oldest* pending one is closed, not the new one, so a flood cannot
  lock out a real browser (its headers arrive within milliseconds: it is never the oldest).

Later requests on a kept-alive connection are covered by aiohttp's own ``keepalive_timeout``
(set to the same value by the server), which closes a connection idle or half-way through a
request that long after its previous response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
MAX_PENDING_PER_PEER = 32
MAX_PENDING = 512  # well below the usual 1024 file descriptors per process
TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def peer_host(transport: asyncio.BaseTransport | None) -> str:
    """The remote address of a connection ("" when unknown, e.g. a Unix socket)."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, plus its header deadline."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = peer_host(transport)
        self.guard._admit(self)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard._forget(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def expire(self) -> None:
        self.deadline = None
        if self.guard._forget(self) and self.transport is not None and not self.transport.is_closing():
            self.guard.counts["header_timeouts"] += 1
            log.debug("viewer: %s sent no complete request in %.1f s; closed", self.peer or "peer",
                      self.guard.header_timeout_s)
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()


class ConnectionGuard:
    """Header deadline and pending-connection caps for one server (see the module docstring)."""

    def __init__(self, *, header_timeout_s: float = HEADER_TIMEOUT_S,
                 max_pending_per_peer: int = MAX_PENDING_PER_PEER, max_pending: int = MAX_PENDING) -> None:
        if header_timeout_s <= 0 or max_pending_per_peer < 1 or max_pending < 1:
            raise ValueError("header_timeout_s must be > 0, the pending caps >= 1")
        self.header_timeout_s = header_timeout_s
        self.max_pending_per_peer = max_pending_per_peer
        self.max_pending = max_pending
        # Pending connections, oldest first (dicts keep insertion order): in all, and per peer.
        self._pending: dict[_GuardedProtocol, None] = {}
        self._by_peer: dict[str, dict[_GuardedProtocol, None]] = {}
        self._by_transport: dict[asyncio.BaseTransport, _GuardedProtocol] = {}
        self.counts = {"header_timeouts": 0, "pending_evicted": 0}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def protocol_factory(self, make_inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedProtocol(self, make_inner())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outermost middleware: a request arrived, so its connection's headers are complete."""
        protocol = self._by_transport.get(request.transport) if request.transport is not None else None
        if protocol is not None:
            self._forget(protocol)
        return await handler(request)

    def _admit(self, protocol: _GuardedProtocol) -> None:
        same_peer = self._by_peer.setdefault(protocol.peer, {})
        if len(same_peer) >= self.max_pending_per_peer:
            self._evict(next(iter(same_peer)))
        if len(self._pending) >= self.max_pending:
            self._evict(next(iter(self._pending)))
        self._pending[protocol] = None
        same_peer[protocol] = None
        assert protocol.transport is not None
        self._by_transport[protocol.transport] = protocol
        protocol.deadline = asyncio.get_running_loop().call_later(self.header_timeout_s, protocol.expire)

    def _evict(self, protocol: _GuardedProtocol) -> None:
        if self._forget(protocol) and protocol.transport is not None:
            self.counts["pending_evicted"] += 1
            protocol.transport.abort()

    def _forget(self, protocol: _GuardedProtocol) -> bool:
        """Stop tracking ``protocol`` (idempotent); True if it was pending."""
        if protocol not in self._pending:
            return False
        del self._pending[protocol]
        same_peer = self._by_peer.get(protocol.peer)
        if same_peer is not None:
            same_peer.pop(protocol, None)
            if not same_peer:
                del self._by_peer[protocol.peer]
        if protocol.transport is not None:
            self._by_transport.pop(protocol.transport, None)
        if protocol.deadline is not None:
            protocol.deadline.cancel()
            protocol.deadline = None
        return True


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, *,
                 backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._bind = (host, port)
        self._guard = guard

    @property
    def name(self) -> str:
        host, port = self._bind
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        host, port = self._bind
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.protocol_factory(server), host, port, backlog=self._backlog
        )


class DebugAccessLogger(AbstractAccessLogger):
    """One DEBUG line per request (a viewer polls every second: INFO would flood the log), and
    never the query string, which may carry the viewer token."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug('%s "%s %s" %d %.1f ms', request.remote, request.method, request.path,
                          response.status, time * 1000.0)


def access_log_kwargs() -> dict[str, Any]:
    """AppRunner keyword arguments for :class:`DebugAccessLogger`."""
    return {"access_log_class": DebugAccessLogger, "access_log": logging.getLogger("web_viewer.access")}
