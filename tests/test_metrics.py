"""``/metrics`` (issue 11): the run's Prometheus exposition, made with prometheus_client and parsed
here with its own parser, from a real pipeline behind the real viewer: per-stage latency
histograms that count every published frame, drops by stream and cause, stream states and IoU."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from models.backends.common import Precision
from stream.config import PipelineConfig
from stream.metrics import STAGES
from tests.pipeline_helpers import running, wait_for
from tests.source_helpers import image_folder
from web_viewer.security import ViewerSecurity

TOKEN = "metrics-test-token-0123456789"


async def test_metrics_count_every_frame_by_stage_drop_cause_state_and_iou(tmp_path, cityscapes_mini):
    folder = image_folder(tmp_path, 6, broken=(2,))
    config = PipelineConfig(
        sources=(f"cam={folder}", f"gt=cityscapes:{cityscapes_mini}:val",
                 "slow=synthetic:seed=1,size=64x32,frames=100000"),  # keeps the run (and the viewer) up
        model="demo", precision=Precision.FP32, zmq_address=None, viewer=("127.0.0.1", 0), stats_interval_s=0,
        replay_rate=20.0, viewer_security=ViewerSecurity(token=TOKEN))
    async with running(config) as (pipeline, task):
        streams = pipeline.telemetry.streams
        await wait_for(lambda: all(sid in streams and streams[sid].frames >= n for sid, n in (("cam", 5), ("gt", 1)))
                       or task.done(), timeout_s=120, what="masks of both finite streams")
        assert not task.done()
        url = f"http://127.0.0.1:{pipeline.viewer_port}/metrics"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as refused:
                assert refused.status == 401  # the token guards /metrics like every other route
            async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
        published = {sid: s.frames for sid, s in streams.items()}
        pipeline.stop()
        await asyncio.wait_for(task, 60)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    counts = {(s.labels["stream"], s.labels["stage"]): s.value
              for s in families["roadseg_stage_latency_seconds"].samples if s.name.endswith("_count")}
    for stage in STAGES:  # every published frame observed once per stage (scraped after >= these many)
        assert counts[("cam", stage)] >= 5 and counts[("gt", stage)] >= 1
    assert counts[("cam", "inference")] <= published["cam"]
    dropped = {(s.labels["stream"], s.labels["cause"]): s.value for s in families["roadseg_frames_dropped"].samples}
    assert dropped[("cam", "decode_error")] == 1
    states = {(s.labels["stream"], s.labels["state"]): s.value for s in families["roadseg_stream_state"].samples}
    assert states[("slow", "live")] == 1 and states[("slow", "failed")] == 0
    assert sum(v for (sid, _), v in states.items() if sid == "cam") == 1  # exactly one state per stream
    ious = {s.labels["category"]: s.value for s in families["roadseg_iou"].samples if s.labels["stream"] == "gt"}
    assert "flat" in ious and 0 <= ious["flat"] <= 1  # ground truth exists only for "gt"
    assert not [s for s in families["roadseg_iou"].samples if s.labels["stream"] == "cam"]
    e2e = [s for s in families["roadseg_end_to_end_latency_seconds"].samples
           if s.name.endswith("_sum") and s.labels["stream"] == "cam"]
    assert e2e and e2e[0].value > 0
