"""End to end: real sources, real model, real ZeroMQ subscriber, real aiohttp viewer."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import threading
from dataclasses import replace
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from models.backends.common import Precision
from models.classes import CLASS_NAMES
from stream.batcher import BatchConfig
from stream.config import PipelineConfig
from stream.pipeline import Pipeline
from stream.sources.files import ImageListSource
from tests.pipeline_helpers import LOOPBACK_ANY, receive, running, subscribe, torch_factory, wait_for

# Cityscapes labelId ranges per category, written out independently of models.classes.
CATEGORY_OF_LABEL = {7: 1, 8: 1, 11: 2, 12: 2, 13: 2, 17: 3, 19: 3, 20: 3, 21: 4, 22: 4, 23: 5, 24: 6, 25: 6,
                     26: 7, 27: 7, 28: 7, 31: 7, 32: 7, 33: 7}
# cityscapesScripts labels.py: ignoreInEval although in a category (parking, rail track, guard rail,
# bridge, tunnel, polegroup, caravan, trailer): scored by no IoU.
IGNORED_LABELS = (9, 10, 14, 15, 16, 18, 29, 30)
UNSCORED = 255


def independent_truth(label_path) -> np.ndarray:
    ids = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    assert ids is not None, label_path
    truth = np.zeros(ids.shape, np.uint8)
    for label, category in CATEGORY_OF_LABEL.items():
        truth[ids == label] = category
    truth[np.isin(ids, IGNORED_LABELS)] = UNSCORED
    return truth


def independent_mean_iou(truths, preds) -> tuple[float, list[float | None]]:
    per_class = []
    for c in range(len(CLASS_NAMES)):
        pairs = list(zip(truths, preds, strict=True))
        inter = sum(int(np.logical_and(t == c, p == c).sum()) for t, p in pairs)
        union = sum(int((np.logical_or(t == c, p == c) & (t != UNSCORED)).sum()) for t, p in pairs)
        per_class.append(inter / union if union else None)
    present = [v for v in per_class if v is not None]
    return sum(present) / len(present), per_class


def config(sources: tuple[str, ...], **overrides: Any) -> PipelineConfig:
    base = PipelineConfig(sources=sources, model="demo", precision=Precision.FP32, zmq_address=LOOPBACK_ANY,
                          zmq_wait_subscriber_s=30.0, viewer=None, stats_interval_s=0,
                          batch=BatchConfig(max_batch=4, max_wait_ms=2))
    return replace(base, **overrides)


async def test_cityscapes_replay_every_frame_in_order_with_matching_iou(cityscapes_root):
    cfg = config(sources=(f"val=cityscapes:{cityscapes_root}:val",))
    async with running(cfg) as (pipeline, task):
        sub = await subscribe(pipeline, task)
        try:
            messages = await receive(sub, 10)
            summary = await asyncio.wait_for(task, 60)
            assert sub.recv(timeout_s=0.2) is None, "no message beyond the 10 frames"
        finally:
            sub.close()
    assert [m.header.seq for m in messages] == list(range(10))
    assert all(m.header.stream_id == "val" for m in messages)
    truths, preds = [], []
    for m in messages:
        assert m.mask.shape == (1024, 2048) and m.mask.dtype == np.uint8
        assert set(np.unique(m.mask)) <= set(range(len(CLASS_NAMES)))
        assert m.header.classes == CLASS_NAMES and m.header.valid
        assert m.header.capture_mono_ns < m.header.publish_mono_ns
        name = m.header.frame_name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        truths.append(independent_truth(cityscapes_root / "gtFine" / "val" / "frankfurt" / name))
        preds.append(m.mask)
        frame_miou, _ = independent_mean_iou(truths[-1:], preds[-1:])
        assert m.header.iou is not None and m.header.iou.mean == pytest.approx(frame_miou, abs=1e-9)
    expected_mean, expected_per_class = independent_mean_iou(truths, preds)
    assert summary["frames"] == 10 and summary["dropped_total"] == 0 and not summary["errors"]
    assert summary["iou"]["mean_iou"] == pytest.approx(expected_mean, abs=1e-9)
    for name, value in zip(CLASS_NAMES, expected_per_class, strict=False):
        got = summary["iou"]["per_class"][name]
        assert (got is None and value is None) or got == pytest.approx(value, abs=1e-9)


async def test_viewer_websocket_delivers_jpeg_frames_while_running():
    cfg = config(sources=("synthetic:frames=2000,fps=30",), realtime=True, zmq_address=None,
                 zmq_wait_subscriber_s=0, viewer=("127.0.0.1", 0))
    async with running(cfg) as (pipeline, task):
        await wait_for(lambda: pipeline.viewer_port is not None or task.done(), what="viewer start")
        url = f"http://127.0.0.1:{pipeline.viewer_port}/ws"
        jpegs: list[tuple[dict[str, Any], np.ndarray]] = []
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            while len(jpegs) < 3:
                msg = await asyncio.wait_for(ws.receive(), 30)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    (length,) = struct.unpack(">I", msg.data[:4])
                    meta = json.loads(msg.data[4 : 4 + length])
                    image = cv2.imdecode(np.frombuffer(msg.data[4 + length :], np.uint8), cv2.IMREAD_COLOR)
                    assert image is not None, "JPEG did not decode"
                    jpegs.append((meta, image))
        assert not task.done(), "the pipeline was still running while frames arrived"
    seqs = [meta["seq"] for meta, _ in jpegs]
    assert seqs == sorted(seqs) and all(meta["stream"] == "cam0" for meta, _ in jpegs)
    assert all(image.shape[1] == 512 for _, image in jpegs)


def _socket_fds() -> int:
    fds = os.listdir("/proc/self/fd")
    return sum(1 for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")
               and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"))


async def test_shutdown_leaves_no_thread_task_or_socket():
    threads_before = set(threading.enumerate())
    sockets_before = _socket_fds()
    cfg = config(sources=("synthetic:frames=12", "b=synthetic:seed=2,frames=12"), zmq_wait_subscriber_s=0,
                 viewer=("127.0.0.1", 0))
    async with running(cfg) as (_pipeline, task):
        summary = await asyncio.wait_for(task, 60)
    assert summary["frames"] == 24
    await asyncio.sleep(0.05)
    leftover_threads = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    assert not leftover_threads
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert _socket_fds() <= sockets_before


async def test_stop_finishes_queued_frames_and_returns():
    cfg = config(sources=("synthetic:",), zmq_wait_subscriber_s=0)  # endless
    async with running(cfg) as (pipeline, task):
        await wait_for(lambda: pipeline.telemetry.frames >= 5, what="5 frames")
        pipeline.stop()
        summary = await asyncio.wait_for(task, 30)
    assert summary["frames"] >= 5 and not summary["errors"]
    # Frames already read when stop() came were still published, none dropped.
    assert summary["frames_read_per_stream"] == {"cam0": summary["frames"]}
    assert summary["dropped_total"] == 0


async def test_corrupt_image_is_counted_and_other_stream_carries_on(tmp_path):
    for name, value in (("a.png", 40), ("c.png", 90)):
        cv2.imwrite(str(tmp_path / name), np.full((64, 128, 3), value, np.uint8))
    (tmp_path / "b.png").write_bytes(b"corrupt")
    cfg = config(sources=(f"folder={tmp_path}", "syn=synthetic:frames=6"), zmq_wait_subscriber_s=0)
    async with running(cfg) as (_, task):
        summary = await asyncio.wait_for(task, 60)
    assert summary["frames_per_stream"] == {"folder": 2, "syn": 6}
    assert summary["dropped"] == {"folder:decode_error": 1}
    assert not summary["errors"]


async def test_stream_failing_midway_is_reported_and_others_finish(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 128, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((64, 128, 3), np.uint8))
    original = ImageListSource._read

    def flaky(self):
        if self.source_id == "bad" and self._index == 1:
            raise OSError("disk went away")
        return original(self)

    monkeypatch.setattr(ImageListSource, "_read", flaky)
    cfg = config(sources=(f"bad={tmp_path}", "good=synthetic:frames=5"), zmq_wait_subscriber_s=0)
    async with running(cfg) as (_, task):
        summary = await asyncio.wait_for(task, 60)
    assert summary["frames_per_stream"] == {"bad": 1, "good": 5}
    (error,) = summary["errors"]
    assert "bad" in error and "disk went away" in error


async def test_static_void_mask_is_applied_to_its_stream_only(tmp_path):
    void_png = tmp_path / "bonnet.png"
    bonnet = np.zeros((64, 128), np.uint8)
    bonnet[48:, :] = 255  # bottom quarter; scaled to each frame size
    cv2.imwrite(str(void_png), bonnet)
    cfg = config(sources=("masked=synthetic:frames=2", "plain=synthetic:frames=2"), zmq_wait_subscriber_s=30,
                 void_masks=(f"masked={void_png}",))
    async with running(cfg) as (pipeline, task):
        sub = await subscribe(pipeline, task)
        try:
            messages = await receive(sub, 4)
        finally:
            sub.close()
        await asyncio.wait_for(task, 60)
    by_stream = {m.header.stream_id: m.mask for m in messages if m.header.seq == 1}
    masked, plain = by_stream["masked"], by_stream["plain"]
    assert (masked[192:] == 0).all(), "every pixel under the void mask is void"
    assert np.array_equal(masked[:192], plain[:192]), "pixels outside the mask are untouched"
    assert (plain[192:] != 0).any()


async def test_void_mask_for_unknown_stream_is_rejected(tmp_path):
    void_png = tmp_path / "v.png"
    cv2.imwrite(str(void_png), np.zeros((8, 8), np.uint8))
    cfg = config(sources=("a=synthetic:frames=1",), zmq_wait_subscriber_s=0, void_masks=(f"b={void_png}",))
    with pytest.raises(ValueError, match="unknown stream"):
        async with running(cfg) as (_, task):
            await asyncio.wait_for(task, 60)


async def test_a_taken_viewer_port_fails_the_start_and_closes_the_bound_publisher():
    """Outputs open in order (bridge, then viewer): when the viewer cannot bind, the bridge that did
    is closed again, its thread and socket included, before the error reaches the user."""
    import socket

    from web_viewer.app import ViewerError

    threads_before = set(threading.enumerate())
    sockets_before = _socket_fds()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config(sources=("synthetic:frames=3",), zmq_wait_subscriber_s=0, viewer=("127.0.0.1", port))
        pipeline = Pipeline(cfg, torch_factory(cfg))
        with pytest.raises(ViewerError, match="already in use"):
            await asyncio.wait_for(pipeline.run(), 30)
        await asyncio.sleep(0.05)
        assert not [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
        assert _socket_fds() <= sockets_before + 1  # the test's own listening socket
