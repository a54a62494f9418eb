"""Latest-frame fan-out from the pipeline to browser viewers.

A slow browser must never slow the pipeline, and nothing may grow with time:

* ``offer()`` (event-loop thread, every processed frame) only stores a
  reference in the stream's single pending slot, replacing (and counting) an
  unencoded older frame, and wakes the encoder. With no viewer connected it
  does not even wake it, so an unwatched viewer costs nothing.
* One encoder task takes the newest pending frame of each stream and renders
  it in an executor (overlay, downscale, JPEG; see :mod:`web_viewer.render`),
  never on the loop. Its default executor is private and small, so viewers
  cannot starve the pipeline's own executor work.
* Each client has a mailbox holding at most one unsent frame per stream (a newer
  frame replaces it: counted in ``superseded``) and its own sender task, so a
  client whose socket is full only ever blocks itself.
* Viewers that stop reading cannot lock out real ones: a client whose socket has
  taken nothing for ``send_deadline_s`` is dropped; a new viewer evicts a client
  stalled for ``STALLED_S`` when all ``MAX_CLIENTS`` slots are taken, and one remote
  address holds at most ``MAX_CLIENTS_PER_ADDRESS`` slots (its newest viewers win:
  its oldest, stalled ones first, make room). Dropped clients are aborted at once,
  never counted against the caps.

Wire protocol on ``/ws``: first a text message
``{"type": "hello", "classes": [{"id", "name", "color": [r, g, b]}, ...], "streams": [...]}``,
then one binary message per frame: a 4-byte big-endian length N, N bytes of
UTF-8 JSON ``{"stream", "seq", "width", "height", **info}``, then the JPEG bytes
(see :mod:`web_viewer.render` for the exact header rules).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, web

from web_viewer.connections import peer_host
from web_viewer.render import class_table, render_packet

log = logging.getLogger(__name__)

# Hard bounds: stream ids and viewers come from outside, memory must not follow them.
MAX_STREAMS = 64
MAX_CLIENTS = 32
MAX_CLIENTS_PER_ADDRESS = 8
# A send blocked this long (the viewer read nothing meanwhile) drops the client. A slow but
# reading link completes a send well within it (the socket takes a frame as soon as it read one).
SEND_DEADLINE_S = 10.0
# A client blocked in a send this long may be evicted to admit a new viewer when the hub is full.
STALLED_S = 1.0
# Two threads keep the viewer's CPU share bounded however many streams there are.
ENCODE_THREADS = 2
# How long close() waits for a client to acknowledge the close before aborting it.
CLOSE_TIMEOUT_S = 1.0
# How long close() waits for an encode already running in a thread (one encode takes ~10 ms).
ENCODE_DRAIN_TIMEOUT_S = 2.0
TASK_PREFIX = "viewer-"
# WebSocket close code 1013 "try again later" (not in every aiohttp's WSCloseCode).
CLOSE_TRY_AGAIN_LATER = 1013


@dataclass(slots=True)
class _Stream:
    """Per-stream state: at most one pending frame and one cached packet."""

    offered: int = 0
    pending: tuple[int, np.ndarray, np.ndarray, dict[str, Any]] | None = None
    # The newest encoded packet, so a viewer that connects while a stream is idle still sees it.
    last_packet: bytes | None = None
    error_logged: bool = False


@dataclass(eq=False, slots=True)
class _Client:
    """One connected viewer: a latest-only mailbox (stream -> packet) and a sender task."""

    client_id: int
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    peer: str = ""  # remote address
    mailbox: dict[str, bytes] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sent: int = 0
    in_flight: int = 0  # 1 while a send is blocked on a full socket
    blocked_since: float | None = None  # loop time the current send started
    superseded: int = 0
    mailbox_high_water: int = 0

    def deliver(self, stream_id: str, packet: bytes) -> bool:
        """Put a packet in the mailbox; True if it replaced an unsent one (O(1))."""
        replaced = stream_id in self.mailbox
        self.mailbox[stream_id] = packet
        if replaced:
            self.superseded += 1
        self.mailbox_high_water = max(self.mailbox_high_water, len(self.mailbox))
        self.wake.set()
        return replaced

    def take(self) -> bytes:
        # Oldest-waiting stream first (dict order; replacing keeps the position) = fair.
        stream_id = next(iter(self.mailbox))
        return self.mailbox.pop(stream_id)

    def stalled_for(self, now: float) -> float:
        return 0.0 if self.blocked_since is None else now - self.blocked_since

    def snapshot(self) -> dict[str, int]:
        return {
            "id": self.client_id,
            "sent": self.sent,
            "superseded": self.superseded,
            "pending": len(self.mailbox),
            "in_flight": self.in_flight,
            "mailbox_high_water": self.mailbox_high_water,
        }


class ViewerHub:
    """Latest-only frame fan-out; see the module docstring for the guarantees."""

    def __init__(
        self,
        *,
        jpeg_quality: int = 80,
        alpha: float = 0.5,
        max_width: int = 960,
        executor: concurrent.futures.Executor | None = None,
        send_deadline_s: float = SEND_DEADLINE_S,
    ) -> None:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in 0..1, got {alpha}")
        if max_width < 16:
            raise ValueError(f"max_width must be >= 16, got {max_width}")
        if not send_deadline_s > 0:
            raise ValueError(f"send_deadline_s must be > 0, got {send_deadline_s}")
        self._send_deadline_s = send_deadline_s
        self._render = functools.partial(
            render_packet, alpha=alpha, max_width=max_width, jpeg_quality=jpeg_quality
        )
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=ENCODE_THREADS, thread_name_prefix="viewer-encode"
        )
        self._streams: dict[str, _Stream] = {}
        self._clients: dict[int, _Client] = {}
        self._client_ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._encoder: asyncio.Task[None] | None = None
        self._in_flight: set[concurrent.futures.Future[bytes]] = set()
        self._closing: asyncio.Task[None] | None = None
        self._counts = dict.fromkeys(
            ("frames_offered", "frames_encoded", "frames_sent", "superseded", "pending_replaced",
             "encode_errors", "streams_rejected", "clients_rejected", "clients_total", "clients_evicted"),
            0,
        )  # fmt: skip

    # ---------------------------------------------------------------- pipeline side

    def offer(self, stream_id: str, image: np.ndarray, mask: np.ndarray, info: dict[str, Any]) -> None:
        """Store the newest frame of ``stream_id`` (O(1), no copy); call on the loop thread.

        The arrays are kept by reference until encoded: the caller must not modify
        them afterwards (pipeline frames are read-only, so this holds by design).
        """
        if self._closing is not None:
            return
        self._counts["frames_offered"] += 1
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._add_stream(stream_id)
            if stream is None:
                return
        stream.offered += 1
        if stream.pending is not None:
            self._counts["pending_replaced"] += 1
        stream.pending = (stream.offered, image, mask, info)
        if self._clients:
            self._wake.set()

    def _add_stream(self, stream_id: str) -> _Stream | None:
        if len(self._streams) >= MAX_STREAMS:
            if self._counts["streams_rejected"] == 0:
                log.warning("viewer: more than %d streams; ignoring %r and any later new ones",
                            MAX_STREAMS, stream_id)  # fmt: skip
            self._counts["streams_rejected"] += 1
            return None
        stream = self._streams[stream_id] = _Stream()
        return stream

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the encoder task on the running loop (idempotent)."""
        if self._closing is not None:
            raise RuntimeError("ViewerHub is closed")
        if self._encoder is None:
            self._encoder = asyncio.get_running_loop().create_task(
                self._encode_loop(), name=f"{TASK_PREFIX}encoder"
            )

    async def close(self) -> None:
        """Stop the encoder and all senders and close every client socket (idempotent)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._shutdown())
        # shield: a caller cancelled mid-close must not leave half-closed clients behind.
        await asyncio.shield(self._closing)

    async def _shutdown(self) -> None:
        tasks = [self._encoder] if self._encoder is not None else []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.close_clients(code=WSCloseCode.GOING_AWAY)
        for stream in self._streams.values():
            stream.pending = stream.last_packet = None
        # An encode already running cannot be interrupted; wait (off the loop) for it so
        # that after close() no viewer work runs and our threads can be joined at once.
        running = [asyncio.wrap_future(future) for future in list(self._in_flight)]
        done_in_time = True
        if running:
            _, late = await asyncio.wait(running, timeout=ENCODE_DRAIN_TIMEOUT_S)
            done_in_time = not late
        if self._own_executor:
            self._executor.shutdown(wait=done_in_time, cancel_futures=True)

    async def close_clients(self, *, code: int = WSCloseCode.GOING_AWAY) -> None:
        """Disconnect every viewer but keep the hub running (server shutdown hook)."""
        clients = list(self._clients.values())
        await asyncio.gather(*(self._drop_client(client, code) for client in clients))

    # ---------------------------------------------------------------- stats

    @property
    def stats(self) -> dict[str, Any]:
        """Counters since creation (JSON-able); ``superseded`` = per-client mailbox drops."""
        return {
            **self._counts,
            "clients": len(self._clients),
            "streams": sorted(self._streams),
            "per_client": [client.snapshot() for client in self._clients.values()],
        }

    # ---------------------------------------------------------------- encoder

    async def _encode_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._clients:
                continue  # pending frames stay in their slots for the next viewer
            jobs = self._take_pending()
            if jobs:
                await asyncio.gather(*(self._encode_one(stream_id, job) for stream_id, job in jobs))

    def _take_pending(self) -> list[tuple[str, tuple[int, np.ndarray, np.ndarray, dict[str, Any]]]]:
        jobs = []
        for stream_id, stream in self._streams.items():
            if stream.pending is not None:
                jobs.append((stream_id, stream.pending))
                stream.pending = None
        return jobs

    async def _encode_one(
        self,
        stream_id: str,
        job: tuple[int, np.ndarray, np.ndarray, dict[str, Any]],
    ) -> None:
        seq, image, mask, info = job
        stream = self._streams[stream_id]
        try:
            future = self._executor.submit(self._render, stream_id, seq, image, mask, info)
            # Tracked until the thread finishes (not just until we stop awaiting), so
            # close() can wait for it; discard runs on the worker thread (set ops are atomic).
            self._in_flight.add(future)
            future.add_done_callback(self._in_flight.discard)
            packet = await asyncio.wrap_future(future)
        except Exception as exc:  # one bad frame (shape, dtype, cv2.error) must not kill the viewer
            self._counts["encode_errors"] += 1
            if not stream.error_logged:  # once per stream: a broken source must not flood the log
                log.error("viewer: cannot render frame %s#%d: %s", stream_id, seq, exc)
                stream.error_logged = True
            return
        self._counts["frames_encoded"] += 1
        stream.last_packet = packet
        self._fan_out(stream_id, packet)

    def _fan_out(self, stream_id: str, packet: bytes) -> None:
        # The same bytes object goes to every client: fan-out costs no copies.
        for client in self._clients.values():
            if client.deliver(stream_id, packet):
                self._counts["superseded"] += 1

    # ---------------------------------------------------------------- clients

    async def serve_client(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport | None = None
    ) -> None:
        """Run one prepared WebSocket until it closes (call from the ``/ws`` handler).

        ``transport`` (``request.transport``) lets close() abort a client that
        never acknowledges the close because it stopped reading, and names its
        address for ``MAX_CLIENTS_PER_ADDRESS``.
        """
        peer = peer_host(transport)
        if self._closing is not None or not self._make_room(peer):
            if self._closing is None:
                self._counts["clients_rejected"] += 1
            await ws.close(code=CLOSE_TRY_AGAIN_LATER, message=b"viewer unavailable")
            return
        client = _Client(next(self._client_ids), ws, transport, peer)
        # The slot is taken now (a burst of new viewers must see it); frames may wait in the
        # mailbox, but the sender starts after the hello: no frame may precede it.
        self._clients[client.client_id] = client
        try:
            async with asyncio.timeout(self._send_deadline_s):
                await ws.send_str(self._hello())
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            log.debug("viewer: client %d did not take the hello: %r", client.client_id, exc)
            await self._drop_client(client, WSCloseCode.GOING_AWAY)
            return
        if self._closing is not None or client.client_id not in self._clients:  # closed or evicted meanwhile
            await self._drop_client(client, WSCloseCode.GOING_AWAY)
            return
        self._register(client)
        try:
            async for _msg in ws:
                pass  # the page sends nothing we need; iterating processes pings and close
        finally:
            await self._drop_client(client, WSCloseCode.OK)

    def _hello(self) -> str:
        return json.dumps({"type": "hello", "classes": class_table(), "streams": sorted(self._streams)})

    def _make_room(self, peer: str) -> bool:
        """Whether a new viewer from ``peer`` may connect, after evicting whom it displaces."""
        now = asyncio.get_running_loop().time()
        same_peer = [client for client in self._clients.values() if client.peer == peer]
        if len(same_peer) >= MAX_CLIENTS_PER_ADDRESS:
            # One address's newest viewer wins over its own oldest (the longest stalled first):
            # a tab reopened gets in, and a flood from one address only ever displaces itself.
            self._evict(max(same_peer, key=lambda c: (c.stalled_for(now), -c.client_id)), "per-address limit")
        if len(self._clients) < MAX_CLIENTS:
            return True
        stalled = max(self._clients.values(), key=lambda c: c.stalled_for(now))
        if stalled.stalled_for(now) < STALLED_S:
            return False  # every slot is a viewer that reads: refuse the newcomer
        self._evict(stalled, "full; stalled")
        return True

    def _evict(self, client: _Client, why: str) -> None:
        """Drop a client now, without waiting for it (it may never read again): its slot is free
        at once; its handler ends when the aborted socket reports the loss."""
        if self._clients.pop(client.client_id, None) is None:
            return
        self._counts["clients_evicted"] += 1
        log.debug("viewer: dropped client %d (%s): %s", client.client_id, client.peer or "?", why)
        client.mailbox.clear()
        if client.task is not None and client.task is not asyncio.current_task():
            client.task.cancel()
        if client.transport is not None:
            client.transport.abort()

    def _register(self, client: _Client) -> None:
        self._counts["clients_total"] += 1
        client.task = asyncio.get_running_loop().create_task(
            self._send_loop(client), name=f"{TASK_PREFIX}send-{client.client_id}"
        )
        for stream_id, stream in self._streams.items():
            # Show something at once; a pending (newer) frame will follow from the encoder.
            if stream.last_packet is not None and stream.pending is None:
                client.deliver(stream_id, stream.last_packet)
        self._wake.set()

    async def _send_loop(self, client: _Client) -> None:
        while True:
            await client.wake.wait()
            client.wake.clear()
            while client.mailbox:
                packet = client.take()
                client.in_flight = 1
                client.blocked_since = asyncio.get_running_loop().time()
                try:
                    async with asyncio.timeout(self._send_deadline_s):
                        await client.ws.send_bytes(packet)
                except TimeoutError:
                    self._evict(client, f"took no data for {self._send_deadline_s:g} s")
                    return
                except (ConnectionError, RuntimeError) as exc:  # peer gone; serve_client cleans up
                    log.debug("viewer: client %d send failed: %s", client.client_id, exc)
                    return
                finally:
                    client.in_flight = 0
                    client.blocked_since = None
                client.sent += 1
                self._counts["frames_sent"] += 1

    async def _drop_client(self, client: _Client, code: int) -> None:
        if self._clients.pop(client.client_id, None) is None:
            return  # already dropped (close() and the handler's finally race)
        client.mailbox.clear()
        if client.task is not None:
            client.task.cancel()
            await asyncio.gather(client.task, return_exceptions=True)
        await self._close_socket(client, code)

    async def _close_socket(self, client: _Client, code: int) -> None:
        transport = client.transport
        if client.ws.closed:
            # Closed by aiohttp (e.g. no pong in time): its plain close() keeps the socket until
            # the unsent backlog drains, which for a client that stopped reading is never.
            if transport is not None and transport.get_write_buffer_size() > 0:
                transport.abort()
            return
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
            # drain=False: a client that stopped reading would otherwise hold close() forever.
            await asyncio.wait_for(client.ws.close(code=code, drain=False), CLOSE_TIMEOUT_S)
        if transport is not None:
            # A plain close() keeps the socket until its unread backlog drains, which
            # for a stalled client is never; abort frees it now.
            transport.abort()
