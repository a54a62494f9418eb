"""Live RTSP cameras end to end, against a real GStreamer RTSP server on loopback: the
server is killed and restarted, frozen with SIGSTOP, and served beside a healthy camera."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from models.backends.common import Precision
from stream.batcher import BatchConfig
from stream.config import PipelineConfig
from stream.pipeline import Pipeline
from stream.sources.live import LiveOptions
from tests.pipeline_helpers import LOOPBACK_ANY, subscribe, torch_factory, wait_for
from tests.rtsp_fixture import RtspServer, require_rtsp_server
from tests.test_live_pipeline import SlowBackend, assert_every_frame_accounted

SIZE = (320, 192)  # small frames: the 2-core machine decodes two cameras and runs the model


@pytest.fixture
def rtsp():
    require_rtsp_server()
    servers: list[RtspServer] = []

    def make(**kwargs: Any) -> RtspServer:
        server = RtspServer(fps=25, size=SIZE, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def config(*sources: str, **overrides: Any) -> PipelineConfig:
    base = PipelineConfig(sources=sources, model="demo", precision=Precision.FP32, zmq_address=None, viewer=None,
                          stats_interval_s=0, batch=BatchConfig(max_batch=2, max_wait_ms=2),
                          live=LiveOptions(stall_ms=1000))
    return replace(base, **overrides)


class Run:
    """A pipeline running in the test's loop, with per-stream publish times recorded."""

    def __init__(self, cfg: PipelineConfig, **backend: Any) -> None:
        make = torch_factory(cfg)
        self.pipeline = Pipeline(cfg, lambda: SlowBackend(make(), **backend))
        self.published: dict[str, list[float]] = {}
        self.pipeline.observers.append(
            lambda frame, _header, _ns: self.published.setdefault(frame.source_id, []).append(time.monotonic()))
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Run:
        self.task = asyncio.create_task(self.pipeline.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.pipeline.stop()
        assert self.task is not None
        self.summary = await asyncio.wait_for(self.task, 30)

    def count(self, stream: str, since: float = 0.0) -> int:
        return sum(1 for t in self.published.get(stream, []) if t >= since)

    def state(self, stream: str) -> str:
        return self.pipeline.stream_status()[stream]["state"]


async def test_server_killed_and_restarted_masks_resume_and_the_reconnect_is_counted(rtsp):
    server = rtsp()
    async with Run(config(f"cam={server.url}")) as run:
        await wait_for(lambda: run.count("cam") >= 10, 60, "masks from the camera")
        server.kill()
        await wait_for(lambda: run.state("cam") in ("reconnecting", "stalled"), 10, "the loss")
        await asyncio.sleep(2.0)  # down for a while: reopen attempts fail and back off
        server.restart()
        restarted = time.monotonic()
        await wait_for(lambda: run.count("cam", since=restarted) >= 1, 15, "masks after the restart")
        resumed_s = time.monotonic() - restarted
        assert not run.task.done(), "the pipeline never stopped"
        status = run.pipeline.stream_status()["cam"]
        assert status["reconnects"] >= 1 and status["state"] == "live"
    print(f"masks resumed {resumed_s:.2f} s after the restart")
    assert resumed_s < 6.0  # issue target 3 s; measured 1.5-2.5 s here (README), margin for a loaded CI
    assert_every_frame_accounted(run.summary)


async def test_frozen_server_is_reported_stalled_within_2s_and_live_after_sigcont(rtsp):
    server = rtsp()
    async with Run(config(f"cam={server.url}")) as run:
        await wait_for(lambda: run.count("cam") >= 10, 60, "masks from the camera")
        server.pause()
        paused = time.monotonic()
        await wait_for(lambda: run.state("cam") == "stalled", 10, "the stall")
        detected_s = time.monotonic() - paused
        await asyncio.sleep(1.0)
        server.resume()
        resumed = time.monotonic()
        await wait_for(lambda: run.state("cam") == "live" and run.count("cam", since=resumed) >= 3, 20,
                       "live again")
    print(f"stall reported {detected_s:.2f} s after SIGSTOP; live {time.monotonic() - resumed:.2f} s after SIGCONT")
    assert detected_s < 2.5  # watchdog 1 s + one read of buffered frames; margin for a loaded machine


async def test_stalled_camera_does_not_slow_the_healthy_one(rtsp):
    healthy, frozen = rtsp(), rtsp()
    async with Run(config(f"good={healthy.url}", f"bad={frozen.url}")) as run:
        await wait_for(lambda: run.count("good") >= 10 and run.count("bad") >= 10, 60, "both cameras")
        start = time.monotonic()
        await asyncio.sleep(4.0)
        both = run.count("good", since=start) / 4.0
        frozen.pause()
        await wait_for(lambda: run.state("bad") == "stalled", 10, "the stall")
        start = time.monotonic()
        await asyncio.sleep(4.0)
        alone = run.count("good", since=start) / 4.0
        frozen.resume()
    print(f"healthy camera: {both:.1f} masks/s beside a live camera, {alone:.1f} beside a stalled one")
    assert alone >= 0.9 * both


async def test_slow_model_for_a_minute_keeps_every_mask_within_the_budget(rtsp):
    """A model slower than the camera for a whole minute: the age of what is published stays
    flat within the budget and the frames it could not use are counted as stale/evicted."""
    server = rtsp()
    budget_ms = 400.0
    cfg = config(f"cam={server.url}", zmq_address=LOOPBACK_ANY, max_age_ms=budget_ms,
                 batch=BatchConfig(max_batch=1, max_wait_ms=2))
    async with Run(cfg, delay_s=0.15) as run:
        sub = await subscribe(run.pipeline, run.task)
        ages: list[float] = []
        valid: list[bool] = []
        end = time.monotonic() + 60
        try:
            while time.monotonic() < end:
                message = sub.recv(timeout_s=0)
                if message is None:
                    await asyncio.sleep(0.01)
                    continue
                ages.append(message.header.latency_ms)
                valid.append(message.header.valid)
        finally:
            sub.close()
    ages_ms = np.array(ages)
    print(f"{len(ages)} masks in 60 s, age p50 {np.median(ages_ms):.0f} ms, p99 {np.percentile(ages_ms, 99):.0f}, "
          f"max {ages_ms.max():.0f}; dropped {run.summary['streams']['cam']['dropped']}")
    assert len(ages) > 100
    # A mask that still ends up past the budget (a scheduling hiccup on a loaded machine) is
    # published flagged invalid; the planner never sees a stale mask marked valid.
    assert (ages_ms <= budget_ms).mean() >= 0.97
    assert all(v == (a <= budget_ms) for a, v in zip(ages, valid, strict=True))
    assert np.median(ages_ms[-len(ages) // 4:]) <= np.median(ages_ms[: len(ages) // 4]) + 50, "no creep"
    dropped = run.summary["streams"]["cam"]["dropped"]
    assert sum(dropped.values()) > len(ages), "the camera outpaces the model: most frames are dropped, counted"
    assert set(dropped) <= {"superseded", "stale", "backlog", "shutdown"}, dropped
    assert_every_frame_accounted(run.summary)
