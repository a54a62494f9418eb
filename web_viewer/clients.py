"""One connected viewer of :class:`web_viewer.hub.ViewerHub`: its mailbox, its quality tier, its socket.

**JPEG quality per client.** Each client has a quality tier (``qualities``, default
80, 60, 40). A frame is encoded once per tier that some client is on at that moment
(the mask PNG once in all), so with every client keeping up there is one JPEG per
frame. A send is *slow* when the client did not drain its previous frame within a
frame period: the send blocked longer than the stream's period (the measured interval
between offers, at least ``MIN_FRAME_PERIOD_S``), or a newer frame replaced the one
waiting in its mailbox meanwhile (aiohttp blocks only when the transport's buffer is
full, so a backed-up socket shows as one long send every few frames, with
replacements in between). ``TIER_DOWN_AFTER`` slow sends in a row move the client
down a tier (one send over ``TIER_JUMP_S``: straight to the last tier);
``TIER_UP_AFTER_S`` without a slow send move it back up one. A client
blocked in a send for ``BLOCKED_SKIP_S`` asks for no tier of its own (it cannot take a
frame now; it gets the nearest tier encoded), so a stalled viewer never adds an
encode. Changes are counted (``tier_down``, ``tier_up`` in :attr:`ViewerHub.stats`).

**A smaller picture last.** Below the lowest quality is one more tier: that quality at
half the width (``SMALL_PICTURE_DIVISOR``; a quarter of the pixels, about a third of the
bytes). JPEG quality alone bottoms out: a 960-wide frame at quality 40 is still about
39 KiB with its mask, so a 60 kB/s link (a weak cellular uplink from the car) gets under
two of them a second, each over a second old. The same rules move a client there and
back, so a link that can take full-size frames in time sees the small picture only after a
send stalled for over ``TIER_JUMP_S``, and climbs back a tier per ``TIER_UP_AFTER_S``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from web_viewer.render import Picture

log = logging.getLogger(__name__)

# JPEG quality tiers, best first (then the half-width picture): a client that cannot keep up moves
# down (see the module docstring).
QUALITY_TIERS = (80, 60, 40)
SMALL_PICTURE_DIVISOR = 2  # the last tier's width: the hub's max_width over this
TIER_DOWN_AFTER = 2  # sends in a row slower than a frame period
TIER_UP_AFTER_S = 3.0  # this long without a slow send: one tier up
# One send this long goes straight to the last tier: such a link carries under a frame a second, and
# stepping down a tier per two sends would take several seconds, with the heartbeat's ping queued
# behind every frame (at 30 kB/s, two frames at quality 80 outlast the pong window and the viewer was
# dropped before it ever reached a picture it could take).
TIER_JUMP_S = 1.0
# A send is slow when it takes longer than the stream's frame period, but never below this: at 100
# frames/s a loaded machine's scheduling jitter alone would otherwise demote a healthy client.
MIN_FRAME_PERIOD_S = 0.05
BLOCKED_SKIP_S = 0.5  # a client blocked in a send this long gets no encode at its own tier
# How long close() waits for a client to acknowledge the close before aborting it.
CLOSE_TIMEOUT_S = 1.0


@dataclass(eq=False, slots=True)
class Client:
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
    tier: int = 0  # index into the hub's picture tiers: 0 is the best
    tier_since: float = 0.0  # loop time of the last tier change (or of the connect)
    last_slow: float = 0.0  # loop time of the last send slower than a frame period
    slow_sends: int = 0  # in a row
    tier_changes: int = 0
    replaced: bool = False  # a frame waiting in the mailbox was replaced since the last take

    def deliver(self, stream_id: str, packet: bytes) -> bool:
        """Put a packet in the mailbox; True if it replaced an unsent one (O(1))."""
        replaced = stream_id in self.mailbox
        self.mailbox[stream_id] = packet
        if replaced:
            self.superseded += 1
            self.replaced = True
        self.mailbox_high_water = max(self.mailbox_high_water, len(self.mailbox))
        self.wake.set()
        return replaced

    def take(self) -> tuple[str, bytes]:
        # Oldest-waiting stream first (dict order; replacing keeps the position) = fair.
        stream_id = next(iter(self.mailbox))
        return stream_id, self.mailbox.pop(stream_id)

    def stalled_for(self, now: float) -> float:
        return 0.0 if self.blocked_since is None else now - self.blocked_since

    def snapshot(self, tiers: Sequence[Picture]) -> dict[str, int]:
        return {
            "id": self.client_id,
            "sent": self.sent,
            "superseded": self.superseded,
            "pending": len(self.mailbox),
            "in_flight": self.in_flight,
            "mailbox_high_water": self.mailbox_high_water,
            "tier": self.tier,
            "quality": tiers[self.tier].quality,
            "max_width": tiers[self.tier].max_width,
            "tier_changes": self.tier_changes,
        }

    # ---------------------------------------------------------------- sending

    async def send_loop(
        self, deadline_s: float, *, on_sent: Callable[[str, float, bool], None], on_stuck: Callable[[], None]
    ) -> None:
        """Send the mailbox's packets as the socket takes them (the client's own task). After each send:
        ``on_sent(stream_id, started, lagging)``; a send blocked for ``deadline_s``: ``on_stuck()``, and stop."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.mailbox:
                stream_id, packet = self.take()
                lagging, self.replaced = self.replaced, False
                self.in_flight = 1
                started = self.blocked_since = asyncio.get_running_loop().time()
                try:
                    async with asyncio.timeout(deadline_s):
                        await self.ws.send_bytes(packet)
                except TimeoutError:
                    on_stuck()
                    return
                except (ConnectionError, RuntimeError) as exc:  # peer gone; serve_client cleans up
                    log.debug("viewer: client %d send failed: %s", self.client_id, exc)
                    return
                finally:
                    self.in_flight = 0
                    self.blocked_since = None
                self.sent += 1
                on_sent(stream_id, started, lagging)

    # ---------------------------------------------------------------- quality tier

    def next_tier(self, now: float, started: float, period_s: float, lagging: bool, n_tiers: int) -> int | None:
        """Record a send that started at ``started`` and ended ``now``; the tier to move to, or None.
        ``lagging``: a frame waiting for this send was replaced (the client fell a frame behind)."""
        if lagging or now - started > period_s:
            self.slow_sends += 1
            self.last_slow = now
            if now - started > TIER_JUMP_S and self.tier < n_tiers - 1:
                return n_tiers - 1
            if self.slow_sends >= TIER_DOWN_AFTER and self.tier < n_tiers - 1:
                return self.tier + 1
            return None
        self.slow_sends = 0
        if self.tier > 0 and now - max(self.last_slow, self.tier_since) >= TIER_UP_AFTER_S:
            return self.tier - 1
        return None

    def set_tier(self, tier: int, now: float) -> None:
        self.tier = tier
        self.tier_since = now
        self.slow_sends = 0
        self.tier_changes += 1

    # ---------------------------------------------------------------- socket

    async def close_socket(self, code: int) -> None:
        transport = self.transport
        if self.ws.closed:
            # Closed by aiohttp (e.g. no pong in time): its plain close() keeps the socket until
            # the unsent backlog drains, which for a client that stopped reading is never.
            if transport is not None and transport.get_write_buffer_size() > 0:
                transport.abort()
            return
        # drain=False: a client that stopped reading would otherwise hold close() forever. In its own
        # task, judged by asyncio.wait: when our sender was cancelled mid-send, aiohttp's shared drain
        # future is left cancelled (its _drain_helper awaits it unshielded), and the close frame's
        # drain then raises CancelledError, which must not read as this task being cancelled.
        closing = asyncio.ensure_future(self.ws.close(code=code, drain=False))
        closing.add_done_callback(self._note_unclean_close)
        try:
            await asyncio.wait({closing}, timeout=CLOSE_TIMEOUT_S)
        finally:
            # Timed out, or this task was cancelled: the close frame is not worth waiting for.
            closing.cancel()
            if transport is not None:
                # A plain close() keeps the socket until its unread backlog drains, which
                # for a stalled client is never; abort frees it now.
                transport.abort()

    def _note_unclean_close(self, closing: asyncio.Future[bool]) -> None:
        if closing.cancelled() or closing.exception() is not None:
            log.debug("viewer: client %d: no clean close: %r", self.client_id,
                      "cancelled" if closing.cancelled() else closing.exception())


def picture_tiers(qualities: Sequence[int], max_width: int, small_picture: bool) -> tuple[Picture, ...]:
    """The hub's tiers, best first: each quality at ``max_width``, then (``small_picture``) the lowest
    quality at a ``SMALL_PICTURE_DIVISOR``-th of the width."""
    if not qualities or any(not 1 <= q <= 100 for q in qualities) or list(qualities) != sorted(set(qualities),
                                                                                             reverse=True):
        raise ValueError(f"qualities must be distinct values in 1..100, best first, got {tuple(qualities)}")
    tiers = tuple(Picture(quality, max_width) for quality in qualities)
    if small_picture:
        tiers += (Picture(qualities[-1], max_width // SMALL_PICTURE_DIVISOR),)
    return tiers


def nearest(packets: dict[int, bytes], tier: int) -> bytes:
    """The packet of ``tier``, else of the nearest tier encoded (a client's tier may change mid-encode)."""
    packet = packets.get(tier)
    if packet is not None:
        return packet
    return packets[min(packets, key=lambda t: (abs(t - tier), t))]
