"""The RTSP test camera (tests/rtsp_server.py) as OpenCV sees it, and its send-time barcode."""

from __future__ import annotations

import itertools
import time

import cv2
import numpy as np
import pytest

from benchmarks import stamp
from benchmarks.stamp import decode_stamp, encode_stamp
from tests import rtsp_server
from tests.rtsp_fixture import RtspServer, require_rtsp_server

FPS = 25
SIZE = (640, 360)
READ_SECONDS = 3.0
MAX_AGE_NS = 2_000_000_000  # a stamp older than this at read time means a stuck or replayed stream
TIMEOUT_MS = 5000


@pytest.fixture
def tcp_rtsp(monkeypatch):
    """OpenCV's FFmpeg backend reads this variable at each open: RTSP over TCP (no UDP loss)."""
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


@pytest.fixture(scope="module")
def server():
    require_rtsp_server()
    with RtspServer(fps=FPS, size=SIZE) as srv:
        yield srv


def open_capture(url: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG,
                           [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, TIMEOUT_MS])
    assert cap.isOpened(), f"OpenCV could not open {url}"
    return cap


def read_rgb(cap: cv2.VideoCapture) -> tuple[np.ndarray, int]:
    """One frame as RGB and ``time.monotonic_ns()`` right after it was decoded."""
    ok, bgr = cap.read()
    read_ns = time.monotonic_ns()
    assert ok, "OpenCV read() failed"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), read_ns


def server_frame_as_rgb(width: int, height: int, ns: int) -> np.ndarray:
    """Render a frame with the server's own (numpy-free) code and expand its luma to full-range RGB."""
    i420 = rtsp_server.FrameRenderer(width, height).frame(3, ns)
    luma = np.frombuffer(i420, dtype=np.uint8, count=width * height).reshape(height, width).astype(np.float32)
    grey = np.clip((luma - 16) * 255 / 219, 0, 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def test_server_and_reader_share_one_layout():
    for name in ("CELL", "ORIGIN", "ROWS", "GUARD", "DATA_COLS", "COLS", "STAMP_BITS", "CRC_BITS"):
        assert getattr(rtsp_server, name) == getattr(stamp, name), name
    for ns in (0, 1, 123_456_789_012_345, 2**64 - 1):
        assert decode_stamp(server_frame_as_rgb(*SIZE, ns)) == ns
        assert decode_stamp(server_frame_as_rgb(320, 120, ns)) == ns
        assert decode_stamp(encode_stamp(*SIZE, ns)) == ns


def test_decode_stamp_rejects_what_is_not_a_stamp():
    rng = np.random.default_rng(0)
    width, height = SIZE
    for _ in range(50):
        assert decode_stamp(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) is None
    assert decode_stamp(np.zeros((height, width, 3), np.uint8)) is None
    assert decode_stamp(np.full((height, width, 3), 255, np.uint8)) is None
    assert decode_stamp(encode_stamp(*SIZE, 42)[:64]) is None  # cropped through the barcode

    good = encode_stamp(*SIZE, 987_654_321_000)
    x0, y0 = stamp.ORIGIN
    for row, col in ((0, 2), (2, 9), (4, 17)):  # any single flipped data cell fails the CRC
        bad = good.copy()
        y, x = y0 + row * stamp.CELL, x0 + col * stamp.CELL
        bad[y:y + stamp.CELL, x:x + stamp.CELL] ^= 255
        assert decode_stamp(bad) is None
    blurred = good.copy()  # a cell halfway between black and white is ambiguous, not guessed
    blurred[y0:y0 + stamp.CELL, x0 + 5 * stamp.CELL:x0 + 6 * stamp.CELL] = 128
    assert decode_stamp(blurred) is None


def test_opencv_reads_fresh_stamped_frames(server, tcp_rtsp):
    cap = open_capture(server.url)
    try:
        frames, reads = [], []
        deadline = time.monotonic() + READ_SECONDS
        while time.monotonic() < deadline:
            rgb, read_ns = read_rgb(cap)
            frames.append(rgb)
            reads.append(read_ns)
    finally:
        cap.release()

    assert len(frames) >= READ_SECONDS * FPS * 0.6, f"only {len(frames)} frames in {READ_SECONDS} s"
    assert frames[0].shape == (SIZE[1], SIZE[0], 3)
    below_band = rtsp_server.BAND_HEIGHT
    for previous, current in itertools.pairwise(frames):
        assert not np.array_equal(previous[below_band:], current[below_band:]), "the picture stopped moving"

    stamps = [decode_stamp(rgb) for rgb in frames]
    fresh = [s for s, r in zip(stamps, reads, strict=True) if s is not None and 0 <= r - s <= MAX_AGE_NS]
    assert len(fresh) >= 0.8 * len(frames), f"{len(fresh)}/{len(frames)} frames with a plausible stamp"
    readable = [s for s in stamps if s is not None]
    assert readable == sorted(readable), "stamps must increase frame to frame"


def test_new_capture_reads_again_after_restart(server, tcp_rtsp):
    port = server.port
    connected = open_capture(server.url)  # killed mid-stream: the port is left with live/TIME_WAIT sockets
    try:
        read_rgb(connected)
        restarted_ns = time.monotonic_ns()
        server.restart()
    finally:
        connected.release()
    assert server.port == port
    cap = open_capture(server.url)
    try:
        for _ in range(5):
            rgb, read_ns = read_rgb(cap)
            sent = decode_stamp(rgb)
            assert sent is not None
            assert restarted_ns < sent <= read_ns, "a frame from before the restart, or from the future"
    finally:
        cap.release()
