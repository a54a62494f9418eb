"""Publish encoded mask messages on a ZeroMQ XPUB socket without ever blocking the event loop.

XPUB rather than PUB because XPUB hands subscription messages up to us: the publisher can
SEE when a subscriber has joined, which is how a replay run avoids the "slow joiner" problem
(sending frame 0 before the subscriber's subscription arrived, so it is silently lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Self

import zmq
from zmq.auth.thread import ThreadAuthenticator

from decision_bridge.curve import CurveServer
from decision_bridge.schema import DEFAULT_ADDRESS, LATEST_PREFIX, TOPIC_PREFIX, latest_topic, topic_for

log = logging.getLogger(__name__)

# How often wait_for_subscriber re-checks the socket; only used at start-up, so a few ms of
# extra join latency is irrelevant and polling avoids fd/edge-trigger subtleties of zmq.
SUBSCRIBER_POLL_S = 0.005
# Bound the work one send() may spend discarding subscription messages, so a burst of
# (un)subscriptions can never stall the publish path; the rest are read on the next call.
MAX_SUBSCRIPTIONS_PER_DRAIN = 64
# Every topic a publisher sends starts with one of these (masks, their single-frame form, status, eos, drivable
# space, bird's-eye grids, camera files).
TOPIC_KINDS = (TOPIC_PREFIX, LATEST_PREFIX, b"status/", b"eos/", b"road/", b"bev/", b"camera/")
MAX_STREAM_ID_BYTES = 255
# Room beyond the longest topic for what else the limit meets: a subscription's framing (ZMTP 3.1
# "\x09SUBSCRIBE" + prefix, older peers \x01 + prefix) and the handshake's READY command with its
# metadata (~30 bytes, more with a socket identity).
SUBSCRIPTION_FRAMING_BYTES = 64
# With CURVE the limit also meets the encrypted handshake (HELLO 200 bytes, INITIATE ~260 plus
# metadata) and each boxed command's nonce and MAC: room for those, still well under a 1 KB flood.
CURVE_FRAMING_BYTES = 512
MAX_SUBSCRIPTION_BYTES = max(len(kind) for kind in TOPIC_KINDS) + MAX_STREAM_ID_BYTES
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
_SUBSCRIBE = 1  # XPUB subscription message: first byte 1 = subscribe, 0 = unsubscribe
_UNSUBSCRIBE = 0


class PublisherError(RuntimeError):
    """The publisher cannot do what was asked (bind failed, not bound, socket closed)."""


class MaskPublisher:
    """Non-blocking XPUB publisher of ``roadseg.mask`` multipart messages.

    ``nodrop=False`` (default): a subscriber whose queue (``send_hwm`` messages) is full
    silently loses messages, and only that subscriber: a stalled debug tool can never starve
    the planner. It sees the loss as seq gaps. ``nodrop=True`` (XPUB_NODROP): a full queue
    makes :meth:`send` return False and count ``dropped_hwm`` instead, but then ONE slow
    subscriber makes the message drop for ALL of them; use it for replay/eval with a single,
    trusted subscriber. Memory bound per subscriber: ``send_hwm`` x message size.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        send_hwm: int = 1000,
        nodrop: bool = False,
        send_buffer_bytes: int | None = None,
        stream_ids: Iterable[str] | None = None,
        heartbeat: bool = True,
        context: zmq.Context | None = None,
        curve: CurveServer | None = None,
    ) -> None:
        self.address = address
        # CURVE (decision_bridge.curve): encrypted, and with curve.clients_dir only those clients
        # admitted, by a ZAP handler thread of this publisher's context (started in bind, stopped in close).
        self.curve = curve
        self._authenticator: ThreadAuthenticator | None = None
        self.send_hwm = send_hwm
        self.nodrop = nodrop
        self.send_buffer_bytes = send_buffer_bytes  # the kernel's socket buffer (SO_SNDBUF); None: the OS default
        self.sent = 0
        self.dropped_hwm = 0
        self.refused = 0  # sends refused for a full queue (nodrop), retried or not
        # Transport heartbeats drop a subscriber that stops answering. Off for lossless delivery: a
        # subscriber that stops reading also stops answering pings (they queue behind the unread
        # data), and lossless means waiting for it, not dropping it.
        self.heartbeat = heartbeat
        self.rejected_subscriptions = 0  # prefixes that match no topic this publisher can send
        # Subscriptions are applied by us (XPUB_MANUAL), only for prefixes of topics we can send:
        # those of ``stream_ids`` when given, else of any stream id up to MAX_STREAM_ID_BYTES. A peer
        # can then hold at most one subscription per such prefix, however many it sends.
        self._topics = None if stream_ids is None else tuple(
            prefix + sid.encode("utf-8") for sid in stream_ids for prefix in TOPIC_KINDS)
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket: zmq.Socket | None = None
        self._bound_address: str | None = None
        self._closed = False
        # Topic prefix -> subscribers holding it. XPUB_VERBOSER makes the XPUB report EVERY
        # subscribe and every unsubscribe (including the implicit ones when a subscriber
        # disconnects), not just the first/last per prefix, so these counts stay exact.
        self._subscriptions: Counter[bytes] = Counter()

    # ------------------------------------------------------------------ lifecycle

    def bind(self) -> str:
        """Bind the XPUB socket; returns the real endpoint (see :attr:`bound_address`)."""
        if self._closed:
            raise PublisherError(f"publisher for {self.address} is closed")
        if self._socket is not None:
            raise PublisherError(f"publisher already bound to {self._bound_address}")
        sock = self._context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)  # never hang shutdown on a dead subscriber
        sock.setsockopt(zmq.SNDHWM, self.send_hwm)
        sock.setsockopt(zmq.XPUB_NODROP, int(self.nodrop))
        if self.send_buffer_bytes is not None:
            sock.setsockopt(zmq.SNDBUF, self.send_buffer_bytes)
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        sock.setsockopt(zmq.XPUB_MANUAL, 1)
        # An XPUB receives nothing but subscriptions, and libzmq keeps every one it receives in a
        # trie (one node per byte) before we can refuse it: 30k prefixes of 1 KB cost 1.5 GB. No
        # real subscription is longer than our longest topic, so a peer sending one is hung up on.
        framing = CURVE_FRAMING_BYTES if self.curve is not None else SUBSCRIPTION_FRAMING_BYTES
        sock.setsockopt(zmq.MAXMSGSIZE, framing + self._longest_topic())
        # Transport heartbeats: a subscriber that stops answering (frozen, host gone) is disconnected
        # after the timeout, and its queue (up to send_hwm messages) freed, instead of kept forever.
        if self.heartbeat:
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        if self.curve is not None:
            self.curve.apply(sock)
            try:  # the ZAP handler is up before the first client can connect
                self._authenticator = self.curve.start_authenticator(self._context)
            except BaseException:
                sock.close(linger=0)
                raise
        try:
            sock.bind(self.address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._stop_authenticator()
            raise PublisherError(f"cannot bind mask publisher to {self.address!r}: {_explain(exc)}") from exc
        self._socket = sock
        self._bound_address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("mask publisher bound to %s", self._bound_address)
        return self._bound_address

    @property
    def bound_address(self) -> str:
        """The endpoint actually bound, with a wildcard port (``:0``/``:*``) resolved."""
        if self._bound_address is None:
            raise PublisherError(f"publisher for {self.address} is not bound")
        return self._bound_address

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket. ``linger_ms``: how long messages still queued may take to reach their
        subscribers (blocks up to that long when this publisher owns its context); 0 drops them.
        Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._socket is not None:
            self._socket.close(linger=linger_ms)
            self._socket = None
        self._stop_authenticator()
        if self._own_context:
            self._context.term()

    def _stop_authenticator(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()  # joins its thread and closes its sockets (before the context ends)
            self._authenticator = None

    def __enter__(self) -> Self:
        if self._socket is None:
            self.bind()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ subscribers

    @property
    def subscriptions(self) -> dict[bytes, int]:
        """Subscribed topic prefix -> number of subscribers holding it."""
        self._drain_subscriptions(limit=None)
        return dict(self._subscriptions)

    def subscriber_count(self, stream_id: str | None = None) -> int:
        """Subscriptions that receive ``stream_id``'s masks (any stream's when None), in either form.

        Equals the number of mask subscribers as long as each subscribes to one mask prefix, as
        :class:`~decision_bridge.subscriber.MaskSubscriber` does per stream (its status and
        end-of-stream subscriptions are not counted).
        """
        self._drain_subscriptions(limit=None)
        topics = (TOPIC_PREFIX, LATEST_PREFIX) if stream_id is None else (topic_for(stream_id), latest_topic(stream_id))
        return sum(n for prefix, n in self._subscriptions.items()
                   if any(t.startswith(prefix) or (stream_id is None and prefix.startswith(t)) for t in topics))

    def has_subscriber(self, stream_id: str | None = None) -> bool:
        return self.subscriber_count(stream_id) > 0

    async def wait_for_subscriber(
        self, timeout_s: float, stream_id: str | None = None, *, count: int = 1
    ) -> bool:
        """Wait until ``count`` subscribers (to ``stream_id``, if given) have joined; False on timeout.

        Once this returns True their subscriptions are installed in the XPUB, so the next
        :meth:`send` reaches them. Awaits in small sleeps: never blocks the event loop.
        """
        deadline = time.monotonic() + timeout_s
        while self.subscriber_count(stream_id) < count:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(SUBSCRIBER_POLL_S)
        return True

    def read_subscriptions(self, limit: int = MAX_SUBSCRIPTIONS_PER_DRAIN) -> bool:
        """Apply up to ``limit`` pending (un)subscriptions (bounded work, for an I/O loop); True when
        that was all of them."""
        return self._drain_subscriptions(limit)

    def _drain_subscriptions(self, limit: int | None = MAX_SUBSCRIPTIONS_PER_DRAIN) -> bool:
        sock = self._require_socket()
        reads = 0
        while limit is None or reads < limit:
            reads += 1
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return True
            if not msg:
                continue
            kind, prefix = msg[0], msg[1:]
            if kind == _SUBSCRIBE:
                if not self._serves(prefix):
                    self.rejected_subscriptions += 1
                    continue
                sock.setsockopt(zmq.SUBSCRIBE, prefix)  # for the peer whose message we just read
                self._subscriptions[prefix] += 1
            elif kind == _UNSUBSCRIBE and self._subscriptions[prefix] > 0:
                sock.setsockopt(zmq.UNSUBSCRIBE, prefix)
                self._subscriptions[prefix] -= 1
                if not self._subscriptions[prefix]:
                    del self._subscriptions[prefix]
        return False  # the limit came first: more may be waiting

    def _longest_topic(self) -> int:
        if self._topics is not None:
            return max((len(topic) for topic in self._topics), default=0)
        return MAX_SUBSCRIPTION_BYTES

    def _serves(self, prefix: bytes) -> bool:
        """Whether ``prefix`` can match a topic this publisher sends (else it only costs memory)."""
        if self._topics is not None:
            return any(topic.startswith(prefix) for topic in self._topics)
        if len(prefix) > MAX_SUBSCRIPTION_BYTES:
            return False
        return any(kind.startswith(prefix) or prefix.startswith(kind) for kind in TOPIC_KINDS)

    # ------------------------------------------------------------------ sending

    def send(self, parts: list[bytes], *, count_drop: bool = True) -> bool:
        """Queue one multipart message without blocking; False if it was dropped (HWM).
        ``count_drop=False``: the caller will retry (lossless delivery), so a refusal is not a loss."""
        sock = self._require_socket()
        self._drain_subscriptions()
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:
            # Only reachable with nodrop=True. libzmq checks the HWM on the first frame and
            # counts only complete messages, so a refused message was not partially sent.
            self.refused += 1
            self.dropped_hwm += int(count_drop)
            return False
        except zmq.ZMQError as exc:
            raise PublisherError(f"send on {self._bound_address} failed: {_explain(exc)}") from exc
        self.sent += 1
        return True

    def _require_socket(self) -> zmq.Socket:
        if self._socket is None:
            state = "closed" if self._closed else "not bound (call bind() first)"
            raise PublisherError(f"publisher for {self.address} is {state}")
        return self._socket


def _explain(exc: zmq.ZMQError) -> str:
    if exc.errno == zmq.EADDRINUSE:
        return "address already in use (another roadseg or publisher running?)"
    if exc.errno == zmq.EINVAL:
        return f"invalid address ({exc.strerror}); expected e.g. tcp://127.0.0.1:5555 or ipc:///tmp/x"
    return exc.strerror or str(exc)
