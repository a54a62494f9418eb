"""Standalone RTSP test camera: a live H.264 stream whose frames carry their own send time.

Run with the *system* Python, which has GObject introspection (``gi``) and Debian's GStreamer RTSP
server; the project venv has neither::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--mount /cam] [--fps 25] [--size 640x360]

Once the server listens it prints exactly one line, ``READY rtsp://127.0.0.1:<port><mount>``, and
flushes stdout. SIGTERM or SIGINT stop it cleanly (exit status 0).

Every frame is rendered here in pure Python (no numpy: ``/usr/bin/python3`` need not have it) as
I420 and pushed into ``appsrc`` in real time at ``--fps``. Each frame shows

* a scrolling stripe pattern below the top band, so consecutive frames differ, and
* in the top band, a barcode of ``time.monotonic_ns()`` taken just before the buffer is pushed.
  CLOCK_MONOTONIC is shared by all processes on one host, so a client on the same machine can
  subtract the stamp from its own ``time.monotonic_ns()`` to get end-to-end latency
  (encode + RTP/RTSP + decode + its own buffering).

Barcode layout: MUST match ``benchmarks/stamp.py`` (which decodes it with numpy); change both
together. ``tests/test_rtsp_server.py`` renders a frame with this module and decodes it with that
one, so a mismatch fails a test. The layout is a grid of ``CELL`` x ``CELL`` luma blocks, each
aligned to a 16x16 H.264 macroblock so the encoder codes every cell as a flat block; the
grid starts one cell in from the top-left corner on a flat grey quiet zone (the whole band of
``BAND_HEIGHT`` rows), has ``ROWS`` rows of ``COLS`` cells, and every row starts with
``GUARD`` = (black, white): a reference pair that lets the reader pick its threshold and notice
when there is no barcode at all. The remaining ``DATA_COLS`` cells per row carry, row-major and
most significant bit first, the 64-bit stamp followed by its CRC-16/CCITT-FALSE; white is 1.
"""

from __future__ import annotations

import argparse
import binascii
import signal
import struct
import sys
import threading
import time
from typing import Any

# --- barcode layout (keep in step with benchmarks/stamp.py) ---------------------------------------
CELL = 16  # px; one H.264 macroblock, so a cell never shares a block with its neighbours
ORIGIN = (CELL, CELL)  # (x, y) of the grid's top-left corner: a one-cell quiet zone around it
ROWS = 5
GUARD = (0, 1)  # per row: a black then a white reference cell
DATA_COLS = 16
COLS = len(GUARD) + DATA_COLS
STAMP_BITS = 64
CRC_BITS = 16
BAND_HEIGHT = ORIGIN[1] + ROWS * CELL + CELL  # flat grey band holding the barcode and its quiet zone
MIN_WIDTH = ORIGIN[0] + COLS * CELL + CELL
assert ROWS * DATA_COLS == STAMP_BITS + CRC_BITS

# Luma levels (limited-range BT.601, what x264 and FFmpeg's default conversion expect).
Y_BLACK = 16
Y_WHITE = 235
Y_GREY = 128
UV_NEUTRAL = 128  # chroma of every pixel: the whole picture is grey-scale

STRIPE_PERIOD = 64  # px; the scrolling pattern repeats every STRIPE_PERIOD / STRIPE_STEP frames
STRIPE_STEP = 4  # px per frame, so consecutive frames always differ


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): catches any misread of up to 3 bits."""
    return binascii.crc_hqx(data, 0xFFFF)


def stamp_bits(ns: int) -> list[int]:
    """The ROWS * DATA_COLS payload bits for ``ns``: 64-bit stamp then its CRC, MSB first."""
    payload = struct.pack(">Q", ns & 0xFFFF_FFFF_FFFF_FFFF)
    word = (int.from_bytes(payload, "big") << CRC_BITS) | crc16_ccitt(payload)
    total = STAMP_BITS + CRC_BITS
    return [(word >> (total - 1 - i)) & 1 for i in range(total)]


class FrameRenderer:
    """Builds I420 frames as ``bytes``: the costly parts are precomputed, a frame is a few joins."""

    def __init__(self, width: int, height: int) -> None:
        if width % 8 or height % 2:
            raise ValueError(f"size {width}x{height}: width must be a multiple of 8, height even")
        if width < MIN_WIDTH or height < BAND_HEIGHT + 2:
            raise ValueError(f"size {width}x{height}: the barcode needs at least {MIN_WIDTH}x{BAND_HEIGHT + 2}")
        self.width = width
        self.height = height
        # With these sizes GStreamer's default I420 strides are exactly width and width / 2, so the
        # planes are packed without padding.
        self._chroma = bytes([UV_NEUTRAL]) * (2 * (width // 2) * (height // 2))
        self._stripe_row = bytes(40 + (175 * abs(2 * (x % STRIPE_PERIOD) - STRIPE_PERIOD)) // STRIPE_PERIOD
                                 for x in range(width + STRIPE_PERIOD))
        self._bodies: dict[int, bytes] = {}  # stripe offset -> everything after the band; only a few offsets
        self._quiet_rows = bytes([Y_GREY]) * (width * (BAND_HEIGHT - ORIGIN[1] - ROWS * CELL))
        self._top_rows = bytes([Y_GREY]) * (width * ORIGIN[1])
        self._left = bytes([Y_GREY]) * ORIGIN[0]
        self._right = bytes([Y_GREY]) * (width - ORIGIN[0] - COLS * CELL)
        self._cell = {0: bytes([Y_BLACK]) * CELL, 1: bytes([Y_WHITE]) * CELL}

    def luma_band(self, ns: int) -> bytes:
        """The top BAND_HEIGHT rows of the Y plane, with ``ns`` as a barcode."""
        bits = stamp_bits(ns)
        rows = [self._top_rows]
        for r in range(ROWS):
            cells = list(GUARD) + bits[r * DATA_COLS:(r + 1) * DATA_COLS]
            line = self._left + b"".join(self._cell[b] for b in cells) + self._right
            rows.append(line * CELL)
        rows.append(self._quiet_rows)
        return b"".join(rows)

    def body(self, index: int) -> bytes:
        """Everything after the band: the stripes for frame ``index`` and the neutral chroma planes."""
        offset = (index * STRIPE_STEP) % STRIPE_PERIOD
        if offset not in self._bodies:
            stripes = self._stripe_row[offset:offset + self.width] * (self.height - BAND_HEIGHT)
            self._bodies[offset] = stripes + self._chroma
        return self._bodies[offset]

    def frame(self, index: int, ns: int) -> bytes:
        """One I420 frame: barcode band, scrolling stripes below it, neutral chroma.

        Only the band depends on ``ns`` and it costs tens of microseconds, so a caller that takes
        the stamp after ``body(index)`` and right before this call pushes the frame within ~0.1 ms
        of its stamp (640x360).
        """
        return self.luma_band(ns) + self.body(index)


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--size", type=parse_size, default=(640, 360), help="WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    if not args.mount.startswith("/"):
        parser.error("--mount must start with '/'")
    if args.fps <= 0:
        parser.error("--fps must be positive")
    try:
        renderer = FrameRenderer(*args.size)
    except ValueError as exc:
        parser.error(str(exc))

    import gi  # only here, so the venv (no gi) can import this module's renderer for tests

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    width, height = args.size
    fps = args.fps
    # config-interval=-1: SPS/PPS go out with every keyframe, so a client that joins the shared
    # stream late (or reconnects) can start decoding at the next keyframe, at most one second away.
    launch = (
        f"( appsrc name=src is-live=true format=time do-timestamp=true block=false "
        f"caps=video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 "
        f"! queue max-size-buffers=2 leaky=downstream ! videoconvert "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bframes=0 threads=1 "
        f"! video/x-h264,profile=constrained-baseline "
        f"! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)

    lock = threading.Lock()
    current: dict[str, Any] = {}  # "src": the appsrc of the live media, if any

    def on_unprepared(media, appsrc):
        with lock:
            if current.get("src") is appsrc:
                current.pop("src", None)

    def on_media_configure(_factory, media):
        appsrc = media.get_element().get_by_name("src")
        media.connect("unprepared", on_unprepared, appsrc)
        with lock:
            current["src"] = appsrc

    factory.connect("media-configure", on_media_configure)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.mount, factory)
    # GstRTSPServer binds its listening socket with SO_REUSEADDR, so a server started right after
    # one was SIGKILLed (its connections still in TIME_WAIT) binds the same port.
    # create_source() rather than attach(): it raises the bind error (attach() only logs it).
    try:
        server.create_source(None).attach(None)
    except GLib.Error as exc:
        print(f"cannot listen on 127.0.0.1:{args.port}: {exc.message}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    stopping = threading.Event()

    def pump() -> None:
        """Push one frame per 1/fps of wall time; late ticks are skipped, never sent in a burst."""
        period_ns = 1_000_000_000 // fps
        index = 0
        deadline = time.monotonic_ns()
        while not stopping.is_set():
            now = time.monotonic_ns()
            if now < deadline:
                time.sleep((deadline - now) / 1e9)
                continue
            if now - deadline > period_ns:  # stalled (SIGSTOP, overload): resync, don't catch up
                deadline = now
            deadline += period_ns
            index += 1
            with lock:
                appsrc = current.get("src")
            if appsrc is None:
                continue
            renderer.body(index)  # cached; the first use of each stripe offset builds it before the stamp
            data = renderer.frame(index, time.monotonic_ns())
            appsrc.emit("push-buffer", Gst.Buffer.new_wrapped(data))  # FLUSHING etc: media is going away

    pusher = threading.Thread(target=pump, name="rtsp-test-pump", daemon=True)
    pusher.start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)

    print(f"READY rtsp://127.0.0.1:{args.port}{args.mount}", flush=True)
    try:
        loop.run()
    finally:
        stopping.set()
        pusher.join(timeout=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
