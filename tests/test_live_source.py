"""The live camera source's logic (watchdog, reconnect, backoff, newest-frame hand-off)
through the same capture interface OpenCV's V4L2 and FFmpeg backends provide; the
cameras here are file-backed or scripted, since this machine has no /dev/video."""

from __future__ import annotations

import asyncio
import glob
import random
import threading
import time

import cv2
import numpy as np
import pytest

from stream.health import StreamState
from stream.sources import SourceOptions, open_source
from stream.sources.cameras import CameraSpec, parse_camera, redact_url, v4l2_opener
from stream.sources.live import Backoff, LiveCaptureSource, LiveOptions
from tests.conftest import require_shared

FAST = LiveOptions(stall_ms=400, backoff_initial_s=0.05, backoff_max_s=0.2, watchdog_period_s=0.02)
VIDEO = "videos/highway_vehicles.mp4"


class FileCamera:
    """A camera made of a video file: frames at ``fps`` in real time, looping, recording the
    properties the opener sets (the V4L2 device's view of the world)."""

    def __init__(self, path: str, fps: float = 50.0) -> None:
        self._cap = cv2.VideoCapture(path)
        self._period = 1.0 / fps
        self._next = time.monotonic() + self._period  # a real camera's first frame is one period away
        self.props: list[tuple[int, float]] = []
        self.released = threading.Event()

    def isOpened(self) -> bool:
        return self._cap.isOpened()

    def set(self, prop: int, value: float) -> bool:
        self.props.append((prop, value))
        return True

    def get(self, prop: int) -> float:
        return 0.0 if prop == cv2.CAP_PROP_POS_MSEC else self._cap.get(prop)  # like V4L2: no media time

    def read(self):
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + self._period, time.monotonic())
        ok, frame = self._cap.read()
        if not ok:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        return ok, frame

    def release(self) -> None:
        self._cap.release()
        self.released.set()


class ScriptedCamera:
    """Frames until ``hang`` is set; then read() blocks (a hung server) or, with ``repeat``,
    keeps returning the last frame (OpenCV's behaviour after a hang)."""

    def __init__(self, hang: threading.Event, repeat: bool = False) -> None:
        self._hang, self._repeat = hang, repeat
        self._n = 0
        self._last = np.zeros((48, 64, 3), np.uint8)

    def get(self, prop: int) -> float:
        return 0.0

    def read(self):
        if self._hang.is_set():
            if self._repeat:
                time.sleep(0.01)
                return True, self._last
            self._hang.wait(timeout=5)  # unblocked by the test's teardown at the latest
            return False, None
        time.sleep(0.02)
        self._n += 1
        frame = np.full((48, 64, 3), self._n % 250, np.uint8)
        self._last = frame
        return True, frame

    def release(self) -> None:
        pass


async def _until(predicate, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_v4l2_camera_logic_on_a_file_backed_capture(no_leaked_threads):
    video = str(require_shared(VIDEO))
    cameras: list[FileCamera] = []

    def factory(device, api):
        assert (device, api) == (0, cv2.CAP_V4L2)
        cameras.append(FileCamera(video))
        return cameras[-1]

    spec = parse_camera("camera:0?size=640x360&fps=30&fourcc=MJPG")
    source = LiveCaptureSource("front", "camera:0", v4l2_opener(spec, factory), options=FAST, max_frames=10)
    assert source.live and source.state is StreamState.CONNECTING
    await source.start()
    frames = [await asyncio.wait_for(source.recv(), 10) for _ in range(10)]
    assert [f.seq for f in frames] == sorted(f.seq for f in frames)
    assert all(f.image.shape == (720, 1280, 3) and f.source_id == "front" for f in frames)
    assert source.state is StreamState.LIVE
    props = [prop for prop, _ in cameras[0].props]
    # The pixel format is chosen before the size (sizes depend on it); one buffered frame: the newest.
    assert props.index(cv2.CAP_PROP_FOURCC) < props.index(cv2.CAP_PROP_FRAME_WIDTH)
    assert (cv2.CAP_PROP_BUFFERSIZE, 1) in cameras[0].props
    assert (cv2.CAP_PROP_FPS, 30.0) in cameras[0].props
    await source.close()
    await source.close()  # idempotent
    assert cameras[0].released.wait(2)
    assert source.state is StreamState.ENDED


async def test_newest_frame_wins_and_superseded_frames_are_counted():
    video = str(require_shared(VIDEO))
    source = LiveCaptureSource("cam", "cam", lambda: FileCamera(video, fps=100), options=FAST)
    await source.start()
    await asyncio.wait_for(source.recv(), 10)
    await asyncio.sleep(0.3)  # ~30 frames arrive while nobody pulls
    frame = await source.recv()
    newest_then = source.frames_read - 1
    await source.close()
    assert source.drops["superseded"] >= 10
    assert frame.seq == newest_then, "recv hands out the newest frame, not the oldest waiting"
    # Captured = the 2 handed out + superseded (+ one captured after recv, counted at close)
    assert source.frames_read == 2 + source.drops["superseded"] + source.drops["shutdown"]


@pytest.mark.parametrize("repeat", [False, True], ids=["read-blocks", "read-repeats-stale-frame"])
async def test_stall_is_detected_within_2s_and_the_camera_reconnects(repeat):
    hang = threading.Event()
    opened = []

    def opener():
        opened.append(ScriptedCamera(hang, repeat))
        return opened[-1]

    source = LiveCaptureSource("cam", "cam", opener, options=FAST)
    await source.start()
    await _until(lambda: source.state is StreamState.LIVE and source.frames_read > 3, 10, "live")
    hang.set()
    detected = await _until(lambda: source.state is not StreamState.LIVE, 5, "stall")
    assert detected < 2.0
    assert source.state in (StreamState.STALLED, StreamState.RECONNECTING)
    await _until(lambda: len(opened) >= 2, 5, "a reopen")
    hang.clear()  # the camera recovers
    await _until(lambda: source.state is StreamState.LIVE and source.reconnects >= 1, 10, "recovery")
    before = source.frames_read
    await _until(lambda: source.frames_read > before + 3, 5, "frames after recovery")
    hang.set()  # let any abandoned reader return
    await source.close()


class BurstCamera:
    """Like FFmpeg after opening an RTSP stream: ``backlog`` buffered frames at once, then real time."""

    def __init__(self, backlog: int) -> None:
        self._backlog, self._n = backlog, 0

    def get(self, prop: int) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        self._n += 1
        if self._n > self._backlog:
            time.sleep(0.04)
        return True, np.full((8, 8, 3), self._n % 250, np.uint8)

    def release(self) -> None:
        pass


async def test_backlog_buffered_while_connecting_is_skipped_and_counted():
    source = LiveCaptureSource("cam", "cam", lambda: BurstCamera(backlog=30), options=FAST)
    await source.start()
    frame = await asyncio.wait_for(source.recv(), 10)
    await source.close()
    assert source.drops["backlog"] == 30 and frame.seq == 30, "the first frame handed out is a fresh one"


async def test_camera_that_cannot_be_opened_keeps_retrying_with_capped_backoff():
    attempts: list[float] = []

    def opener():
        attempts.append(time.monotonic())
        raise OSError("connection refused")

    source = LiveCaptureSource("cam", "cam", opener, options=FAST)
    await source.start()
    await _until(lambda: len(attempts) >= 6, 10, "six attempts")
    assert source.state is StreamState.CONNECTING and source.reconnects == 0
    gaps = np.diff(attempts)
    assert gaps.max() < FAST.backoff_max_s + 0.3  # capped (plus scheduling slack)
    await source.close()
    assert source.state is StreamState.ENDED


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets():
    backoff = Backoff(0.25, 1.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays), "jittered"
    backoff.reset()
    assert backoff.next_delay() <= 0.25


def test_credentials_are_redacted():
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/stream1") == "rtsp://***@10.0.0.5:554/stream1"
    assert redact_url("rtsp://cam.local/s") == "rtsp://cam.local/s"


async def test_rtsp_source_spec_keeps_no_credentials_and_does_not_connect_at_open():
    source = await open_source("front", "rtsp://admin:hunter2@127.0.0.1:9/cam")
    try:
        assert "hunter2" not in source.spec and source.state is StreamState.CONNECTING
        assert source.live
    finally:
        await source.close()


async def test_camera_specs():
    assert parse_camera("/dev/video2?fps=15") == CameraSpec("/dev/video2", fps=15.0)
    source = await open_source("c", "camera:3?size=1280x720", SourceOptions())
    await source.close()


@pytest.mark.skipif(not glob.glob("/dev/video*"), reason="no V4L2 device on this machine")
async def test_real_v4l2_device_delivers_frames():
    device = sorted(glob.glob("/dev/video*"))[0]
    source = await open_source("dev", device, SourceOptions(max_frames=5))
    await source.start()
    frames = [await asyncio.wait_for(source.recv(), 15) for _ in range(5)]
    await source.close()
    assert all(f.image.ndim == 3 for f in frames)
