"""Latest-frame fan-out from the pipeline to browser viewers.

A slow browser must never slow the pipeline, and nothing may grow with time:

* ``offer()`` (event-loop thread, every processed frame) only stores a
  reference in the stream's single pending slot, replacing (and counting) an
  unencoded older frame, and wakes the encoder. With no viewer connected it
  does not even wake it, so an unwatched viewer costs nothing.
* One encoder task takes the newest pending frame of each stream and renders
  it in an executor (downscale, mask PNG, JPEG; see :mod:`web_viewer.render`),
  never on the loop. Its default executor is private and small, so viewers
  cannot starve the pipeline's own executor work.
* **Picture per client** (see :mod:`web_viewer.clients`): a frame is encoded once per tier
  (JPEG quality, then a half-width picture) some client is on; a client that falls behind moves
  down a tier, one that keeps up moves back (``tier_down``, ``tier_up`` in :attr:`ViewerHub.stats`).
* Each client has a mailbox holding at most one unsent frame per stream (a newer
  frame replaces it: counted in ``superseded``) and its own sender task, so a
  client whose socket is full only ever blocks itself.
* Viewers that stop reading cannot lock out real ones: a client whose socket has
  taken nothing for ``send_deadline_s`` is dropped; a new viewer evicts a client
  stalled for ``STALLED_S`` when all ``MAX_CLIENTS`` slots are taken, and one remote
  address holds at most ``MAX_CLIENTS_PER_ADDRESS`` slots (its newest viewers win:
  its oldest, stalled ones first, make room). Dropped clients are aborted at once,
  never counted against the caps.

Wire protocol on ``/ws`` (version 2): first a text message
``{"type": "hello", "v": 2, "classes": [{"id", "name", "color": [r, g, b]}, ...], "streams": [...],
"alpha": 0.5, "qualities": [80, 60, 40], "tiers": ["80", "60", "40", "40@480w"], "mask": "png-grey-ids"}``
(``alpha``: the overlay opacity a page starts with; ``tiers``: the pictures a client may be sent,
best first, ``"40@480w"`` being quality 40 at most 480 wide), then one binary message per frame:
a 4-byte big-endian length N, N bytes of UTF-8 JSON ``{"v": 2, "stream", "seq", "width", "height",
"quality", "jpeg_bytes", "mask_bytes", **telemetry}``, the camera JPEG, then the category ids as a
grey PNG of the JPEG's size (see :mod:`web_viewer.render`). The frame's telemetry rides in the same
message as its pixels, so a page that shows both shows them in step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, web

from web_viewer.clients import BLOCKED_SKIP_S, MIN_FRAME_PERIOD_S, QUALITY_TIERS, Client, nearest, picture_tiers
from web_viewer.connections import peer_host
from web_viewer.encoding import DEFAULT_FRAME_PERIOD_S, EncodeCost, Job, StreamSlot
from web_viewer.render import MASK_FORMAT, PACKET_VERSION, RenderedFrame, class_table, render_frame

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
# How long close() waits for an encode already running in a thread (one encode takes ~10 ms).
ENCODE_DRAIN_TIMEOUT_S = 2.0
TASK_PREFIX = "viewer-"
# WebSocket close code 1013 "try again later" (not in every aiohttp's WSCloseCode).
CLOSE_TRY_AGAIN_LATER = 1013


class ViewerHub:
    """Latest-only frame fan-out; see the module docstring for the guarantees."""

    def __init__(
        self,
        *,
        jpeg_quality: int = QUALITY_TIERS[0],
        alpha: float = 0.5,
        max_width: int = 960,
        executor: concurrent.futures.Executor | None = None,
        send_deadline_s: float = SEND_DEADLINE_S,
        qualities: Sequence[int] | None = None,
        small_picture: bool = True,
    ) -> None:
        """``jpeg_quality``: the best tier (lower default tiers below it are kept); ``qualities``: the
        tiers themselves, best first (one entry and no ``small_picture``: no adaptation);
        ``small_picture``: below the lowest quality, one more tier at that quality and half the width
        (a quarter of the pixels) for links too slow for any full-size picture; ``alpha``: the page's
        initial overlay opacity."""
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        tiers = tuple(qualities) if qualities is not None else (
            jpeg_quality, *(q for q in QUALITY_TIERS if q < jpeg_quality))
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in 0..1, got {alpha}")
        if max_width < 16:
            raise ValueError(f"max_width must be >= 16, got {max_width}")
        if not send_deadline_s > 0:
            raise ValueError(f"send_deadline_s must be > 0, got {send_deadline_s}")
        self._send_deadline_s = send_deadline_s
        self._qualities = tiers
        self._max_width = max_width
        self._tiers = picture_tiers(tiers, max_width, small_picture)
        self._alpha = alpha
        self._cost = EncodeCost()
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=ENCODE_THREADS, thread_name_prefix="viewer-encode"
        )
        self._streams: dict[str, StreamSlot] = {}
        self._clients: dict[int, Client] = {}
        self._client_ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._encoder: asyncio.Task[None] | None = None
        self._in_flight: set[concurrent.futures.Future[RenderedFrame]] = set()
        self._closing: asyncio.Task[None] | None = None
        self._counts = dict.fromkeys(
            ("frames_offered", "frames_encoded", "frames_sent", "superseded", "pending_replaced",
             "encode_errors", "streams_rejected", "clients_rejected", "clients_total", "clients_evicted",
             "tier_down", "tier_up"),
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
        stream.observe_offer(time.monotonic())
        if stream.pending is not None:
            self._counts["pending_replaced"] += 1
        stream.pending = (stream.offered, image, mask, info)
        if self._clients:
            self._wake.set()

    def _add_stream(self, stream_id: str) -> StreamSlot | None:
        if len(self._streams) >= MAX_STREAMS:
            if self._counts["streams_rejected"] == 0:
                log.warning("viewer: more than %d streams; ignoring %r and any later new ones",
                            MAX_STREAMS, stream_id)  # fmt: skip
            self._counts["streams_rejected"] += 1
            return None
        stream = self._streams[stream_id] = StreamSlot()
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
            stream.pending = None
            stream.last_packets = {}
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
        """Counters since creation (JSON-able); ``superseded`` = per-client mailbox drops; ``encode``:
        mean cost per frame (downscale, mask PNG, JPEG per picture tier, in ms and bytes)."""
        return {
            **self._counts,
            "clients": len(self._clients),
            "streams": sorted(self._streams),
            "qualities": list(self._qualities),
            "tiers": self.tier_labels,
            "encode": self._cost.summary(self._max_width),
            "per_client": [client.snapshot(self._tiers) for client in self._clients.values()],
        }

    @property
    def tier_labels(self) -> list[str]:
        """The tiers, best first: ``"80"``, ..., ``"40@480w"`` (the small picture)."""
        return [picture.label(self._max_width) for picture in self._tiers]

    # ---------------------------------------------------------------- encoder

    async def _encode_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._clients:
                continue  # pending frames stay in their slots for the next viewer
            jobs = self._take_pending()
            if jobs:
                tiers = self._tiers_wanted()
                await asyncio.gather(*(self._encode_one(stream_id, job, tiers) for stream_id, job in jobs))

    def _tiers_wanted(self) -> list[int]:
        """The tiers some client that can take a frame now is on: one JPEG per frame while every client
        keeps up; a client blocked in a send (stalled) adds none."""
        now = asyncio.get_running_loop().time()
        tiers = {client.tier for client in self._clients.values() if client.stalled_for(now) < BLOCKED_SKIP_S}
        return sorted(tiers or {min(client.tier for client in self._clients.values())})

    def _take_pending(self) -> list[tuple[str, Job]]:
        jobs = []
        for stream_id, stream in self._streams.items():
            if stream.pending is not None:
                jobs.append((stream_id, stream.pending))
                stream.pending = None
        return jobs

    async def _encode_one(self, stream_id: str, job: Job, tiers: Sequence[int]) -> None:
        seq, image, mask, info = job
        stream = self._streams[stream_id]
        pictures = [self._tiers[tier] for tier in tiers]
        try:
            future = self._executor.submit(render_frame, stream_id, seq, image, mask, info, pictures=pictures)
            # Tracked until the thread finishes (not just until we stop awaiting), so
            # close() can wait for it; discard runs on the worker thread (set ops are atomic).
            self._in_flight.add(future)
            future.add_done_callback(self._in_flight.discard)
            rendered = await asyncio.wrap_future(future)
        except Exception as exc:  # one bad frame (shape, dtype, cv2.error) must not kill the viewer
            self._counts["encode_errors"] += 1
            if not stream.error_logged:  # once per stream: a broken source must not flood the log
                log.error("viewer: cannot render frame %s#%d: %s", stream_id, seq, exc)
                stream.error_logged = True
            return
        self._counts["frames_encoded"] += 1
        self._cost.add(rendered)
        packets = {tier: rendered.packets[self._tiers[tier]] for tier in tiers}
        stream.last_packets = packets
        self._fan_out(stream_id, packets)

    def _fan_out(self, stream_id: str, packets: dict[int, bytes]) -> None:
        # The same bytes object goes to every client of a tier: fan-out costs no copies.
        for client in self._clients.values():
            if client.deliver(stream_id, nearest(packets, client.tier)):
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
        client = Client(next(self._client_ids), ws, transport, peer)
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
        return json.dumps({"type": "hello", "v": PACKET_VERSION, "classes": class_table(),
                           "streams": sorted(self._streams), "alpha": self._alpha,
                           "qualities": list(self._qualities), "tiers": self.tier_labels, "mask": MASK_FORMAT})

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

    def _evict(self, client: Client, why: str) -> None:
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

    def _register(self, client: Client) -> None:
        self._counts["clients_total"] += 1
        client.tier_since = asyncio.get_running_loop().time()
        client.task = asyncio.get_running_loop().create_task(
            client.send_loop(
                self._send_deadline_s,
                on_sent=functools.partial(self._sent, client),
                on_stuck=functools.partial(self._evict, client, f"took no data for {self._send_deadline_s:g} s"),
            ),
            name=f"{TASK_PREFIX}send-{client.client_id}",
        )
        for stream_id, stream in self._streams.items():
            # Show something at once; a pending (newer) frame will follow from the encoder.
            if stream.last_packets and stream.pending is None:
                client.deliver(stream_id, nearest(stream.last_packets, client.tier))
        self._wake.set()

    def _sent(self, client: Client, stream_id: str, started: float, lagging: bool) -> None:
        self._counts["frames_sent"] += 1
        self._adapt(client, stream_id, started, lagging)

    def _adapt(self, client: Client, stream_id: str, started: float, lagging: bool) -> None:
        """Move ``client`` down a quality tier when its socket backs up, up again when it keeps up.
        ``lagging``: a frame waiting for this send was replaced (the client fell a frame behind)."""
        now = asyncio.get_running_loop().time()
        stream = self._streams.get(stream_id)
        period = max(stream.period_s if stream is not None else DEFAULT_FRAME_PERIOD_S, MIN_FRAME_PERIOD_S)
        tier = client.next_tier(now, started, period, lagging, len(self._tiers))
        if tier is None:
            return
        labels = self.tier_labels
        log.debug("viewer: client %d: picture %s -> %s", client.client_id, labels[client.tier], labels[tier])
        counter = "tier_down" if tier > client.tier else "tier_up"
        client.set_tier(tier, now)
        self._counts[counter] += 1

    async def _drop_client(self, client: Client, code: int) -> None:
        if self._clients.pop(client.client_id, None) is None:
            return  # already dropped (close() and the handler's finally race)
        client.mailbox.clear()
        if client.task is not None:
            client.task.cancel()
            await asyncio.gather(client.task, return_exceptions=True)
        await client.close_socket(code)
