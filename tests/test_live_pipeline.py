"""Real-time behaviour of the whole pipeline: the staleness budget, failure isolation,
exact accounting, stops at any moment, and bad input refused before the model loads."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import replace
from typing import Any

import cv2
import numpy as np
import pytest

import stream.sources as sources
from models.backends.common import Precision
from stream.batcher import BatchConfig
from stream.config import PipelineConfig
from stream.pipeline import Pipeline
from stream.sources import SourceError
from stream.sources.base import ReplayMode
from stream.sources.limits import FrameLimits, OversizePolicy
from stream.sources.live import LiveCaptureSource, LiveOptions
from tests.conftest import require_shared
from tests.pipeline_helpers import LOOPBACK_ANY, receive, subscribe, torch_factory
from tests.test_live_source import FileCamera


class SlowBackend:
    """The real demo backend, made slow (a model too big for the machine) or faulty on demand."""

    def __init__(self, inner: Any, delay_s: float = 0.0, fail_width: int | None = None) -> None:
        self._inner, self._delay, self._fail_width = inner, delay_s, fail_width
        self.name, self.model_id = inner.name, inner.model_id
        self.device, self.precision = inner.device, inner.precision

    def infer(self, images):
        if self._fail_width is not None and any(img.shape[1] == self._fail_width for img in images):
            raise RuntimeError("backend exploded on this batch")
        time.sleep(self._delay)
        return self._inner.infer(images)

    def warmup(self, batch_sizes=(1,)):
        self._inner.warmup(batch_sizes)

    def close(self):
        self._inner.close()


def config(sources_: tuple[str, ...], **overrides: Any) -> PipelineConfig:
    base = PipelineConfig(sources=sources_, model="demo", precision=Precision.FP32, zmq_address=None, viewer=None,
                          stats_interval_s=0, batch=BatchConfig(max_batch=1, max_wait_ms=2))
    return replace(base, **overrides)


def pipeline(cfg: PipelineConfig, **backend: Any) -> Pipeline:
    make = torch_factory(cfg)
    return Pipeline(cfg, lambda: SlowBackend(make(), **backend))


def assert_every_frame_accounted(summary: dict[str, Any]) -> None:
    for sid, s in summary["streams"].items():
        assert s["unaccounted"] == 0, (sid, s)
        assert s["frames_in"] == s["published"] + sum(s["dropped"].values()), (sid, s)


@pytest.fixture
def file_cameras(monkeypatch):
    """``camera:N`` sources served by a looping dashcam video at 25 fps."""
    video = str(require_shared("videos/highway_solid_white_right.mp4"))

    def build_live(source_id, spec, options):
        return LiveCaptureSource(source_id, spec, lambda: FileCamera(video, fps=25), options=options.live,
                                 limits=options.limits, max_frames=options.max_frames, clock=options.clock)

    monkeypatch.setattr(sources, "_build_live", build_live)


async def test_slow_model_keeps_live_masks_within_the_age_budget(file_cameras):
    budget_ms = 300.0
    cfg = config(("a=camera:0", "b=camera:1"), zmq_address=LOOPBACK_ANY, max_age_ms=budget_ms)
    pipe = pipeline(cfg, delay_s=0.12)
    task = asyncio.create_task(pipe.run())
    sub = await subscribe(pipe, task)
    try:
        messages = await receive(sub, 40, timeout_s=60)
    finally:
        sub.close()
        pipe.stop()
    summary = await asyncio.wait_for(task, 30)
    ages = np.array([m.header.latency_ms for m in messages])
    assert all(m.header.live and m.header.max_age_ms == budget_ms for m in messages)
    assert (ages <= budget_ms).mean() >= 0.95, ages
    late = [m for m in messages if m.header.latency_ms > budget_ms]
    assert all(not m.header.valid and m.header.invalid_reason == "stale_frame" for m in late)
    third = len(ages) // 3
    assert np.median(ages[-third:]) <= np.median(ages[:third]) + 60, "latency creeps"
    drops = {cause for s in summary["streams"].values() for cause in s["dropped"]}
    assert "stale" in drops, summary["streams"]
    last_seq: dict[str, int] = {}
    for m in messages:  # every loss is a seq gap, and dropped_before says exactly how big
        assert m.header.dropped_before == m.header.seq - last_seq.get(m.header.stream_id, -1) - 1
        last_seq[m.header.stream_id] = m.header.seq
    assert any(m.header.dropped_before > 0 for m in messages)
    assert_every_frame_accounted(summary)


async def test_oversized_frame_and_failing_batch_cost_only_their_frames(tmp_path):
    folder = tmp_path / "drive"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((128, 256, 3), 60 * i, np.uint8))
    cv2.imwrite(str(folder / "1_huge.png"), np.zeros((8000, 8000, 3), np.uint8))
    cv2.imwrite(str(folder / "2_poison.png"), np.zeros((100, 333, 3), np.uint8))  # the backend fails on it
    cfg = config((f"drive={folder}", "syn=synthetic:frames=10"), frame_limits=FrameLimits(2048, 2048))
    summary = await asyncio.wait_for(pipeline(cfg, fail_width=333).run(), 120)
    assert summary["frames_per_stream"] == {"drive": 5, "syn": 10}  # the huge frame, downscaled, included
    assert summary["streams"]["drive"]["dropped"] == {"inference_error": 1}
    assert not summary["errors"]
    assert_every_frame_accounted(summary)

    rejecting = replace(cfg, frame_limits=FrameLimits(2048, 2048, OversizePolicy.REJECT))
    summary = await asyncio.wait_for(pipeline(rejecting, fail_width=333).run(), 120)
    assert summary["streams"]["drive"]["dropped"] == {"inference_error": 1, "oversize": 1}
    assert summary["streams"]["syn"]["published"] == 10
    assert_every_frame_accounted(summary)


async def test_stop_during_model_load_returns_at_once():
    threads_before = set(threading.enumerate())
    loading = asyncio.Event()

    def slow_factory():
        asyncio.run_coroutine_threadsafe(_set(loading), loop)
        time.sleep(20)  # a big model on a slow disk
        raise AssertionError("the load is abandoned, never awaited")

    async def _set(event):
        event.set()

    loop = asyncio.get_running_loop()
    pipe = Pipeline(config(("synthetic:frames=5",)), slow_factory)
    task = asyncio.create_task(pipe.run())
    await asyncio.wait_for(loading.wait(), 10)
    start = time.monotonic()
    pipe.stop()
    summary = await asyncio.wait_for(task, 10)
    assert time.monotonic() - start < 2.0
    assert summary["frames"] == 0 and not summary["errors"]
    # Only the abandoned load's thread is left, and it is a daemon: it cannot hold up the exit.
    left = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    assert [(t.name, t.daemon) for t in left] == [("infer", True)]


async def test_bad_source_is_refused_before_the_model_loads(tmp_path):
    calls = []
    pipe = Pipeline(config(("good=synthetic:frames=1", f"bad={tmp_path}/missing.mp4")),
                    lambda: calls.append(1))  # type: ignore[arg-type,return-value]
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"missing\.mp4"):
        await pipe.run()
    assert calls == [] and time.monotonic() - start < 1.0


async def test_lossless_replay_that_falls_behind_says_so_once(caplog):
    cfg = config(("synthetic:frames=40,fps=100",), realtime=True)
    with caplog.at_level(logging.WARNING):
        summary = await asyncio.wait_for(pipeline(cfg, delay_s=0.05).run(), 120)
    warnings = [r for r in caplog.records if "behind its recorded rate" in r.getMessage()]
    assert len(warnings) == 1
    stream = summary["streams"]["cam0"]
    assert stream["published"] == 40 and stream["lag_ms"] > 1000
    assert summary["latency_ms"]["end_to_end"]["max"] > 1000, "the lag shows as latency"


async def test_live_replay_mode_stays_on_time_by_skipping_late_frames(caplog):
    cfg = config(("synthetic:frames=40,fps=100",), realtime=True, replay_mode=ReplayMode.LIVE)
    with caplog.at_level(logging.WARNING):
        summary = await asyncio.wait_for(pipeline(cfg, delay_s=0.05).run(), 120)
    stream = summary["streams"]["cam0"]
    # The model keeps 1 frame in 5; the others are evicted by newer ones (or skipped as late when
    # even decoding cannot keep up), never queued up behind the model.
    assert sum(stream["dropped"].values()) > 5 and set(stream["dropped"]) <= {"superseded", "late", "stale"}
    assert stream["lag_ms"] < 200 and summary["latency_ms"]["end_to_end"]["p99"] < 500
    assert not [r for r in caplog.records if "behind its recorded rate" in r.getMessage()]
    assert_every_frame_accounted(summary)


async def test_failed_live_camera_never_stops_the_replay_stream():
    cfg = config(("dead=rtsp://127.0.0.1:9/cam", "syn=synthetic:frames=6"), live=LiveOptions(stall_ms=300))
    pipe = pipeline(cfg)
    task = asyncio.create_task(pipe.run())
    while pipe.telemetry.streams.get("syn") is None or pipe.telemetry.streams["syn"].frames < 6:
        await asyncio.sleep(0.05)
    status = pipe.stream_status()
    assert status["dead"]["state"] == "connecting" and status["syn"]["state"] == "ended"
    pipe.stop()
    summary = await asyncio.wait_for(task, 30)
    assert summary["streams"]["syn"]["published"] == 6 and summary["streams"]["dead"]["frames_in"] == 0


async def test_credentials_never_appear_in_logs_summary_or_viewer(caplog):
    import aiohttp

    secret = "hunter2"
    cfg = config((f"cam=rtsp://admin:{secret}@127.0.0.1:9/live", "syn=synthetic:frames=3"),
                 viewer=("127.0.0.1", 0), stats_interval_s=0.2, live=LiveOptions(stall_ms=300))
    pipe = pipeline(cfg)
    with caplog.at_level(logging.DEBUG):
        task = asyncio.create_task(pipe.run())
        while pipe.telemetry.streams.get("syn") is None or pipe.telemetry.streams["syn"].frames < 3:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a few failed connection attempts and a stats line
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{pipe.viewer_port}/api/streams") as response:
            api = await response.text()
        pipe.stop()
        summary = await asyncio.wait_for(task, 30)
    assert "rtsp://***@127.0.0.1:9/live" in api and "connecting" in api
    for text in (caplog.text, api, json.dumps(summary)):
        assert secret not in text
    assert summary["streams"]["cam"]["source"] == "rtsp://***@127.0.0.1:9/live"
