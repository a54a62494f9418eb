"""``roadseg run --record DIR`` (issue 11): per stream an annotated video, the masks (PNG or npz)
and per-frame telemetry, written by the recorder's own thread from its own bounded queue, so a
slow disk drops recorded frames (counted) and never slows or loses live ones."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.backends.common import Precision
from stream.batcher import BatchConfig
from stream.config import PipelineConfig
from stream.sinks import recorder as recorder_module
from stream.sinks.recorder import RecordConfig, RecordError, RecorderSink, read_recording
from tests.pipeline_helpers import LOOPBACK_ANY, receive, running, subscribe

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 12
SOURCES = (f"a=synthetic:seed=1,size=160x96,frames={FRAMES}", f"b=synthetic:seed=2,size=128x64,frames={FRAMES}")


def _config(record: RecordConfig, **overrides) -> PipelineConfig:
    base = PipelineConfig(sources=SOURCES, model="demo", precision=Precision.FP32, zmq_address=LOOPBACK_ANY,
                          zmq_wait_subscriber_s=30.0, viewer=None, stats_interval_s=0, record=record,
                          batch=BatchConfig(max_batch=2, max_wait_ms=2))
    return replace(base, **overrides)


@pytest.mark.parametrize("masks", ["png", "npz"])
async def test_a_replay_leaves_video_masks_and_telemetry_equal_to_what_was_published(tmp_path, masks):
    record = RecordConfig(tmp_path / "rec", masks=masks)
    async with running(_config(record)) as (pipeline, task):
        sub = await subscribe(pipeline, task)
        try:
            messages = await receive(sub, 2 * FRAMES)
        finally:
            sub.close()
        summary = await asyncio.wait_for(task, 60)
    published = {(m.header.stream_id, m.header.seq): m.mask for m in messages}
    for stream_id, (width, height) in (("a", (160, 96)), ("b", (128, 64))):
        folder = record.directory / stream_id
        recorded = read_recording(folder)
        assert [seq for seq, _ in recorded] == list(range(FRAMES))
        for seq, mask in recorded:  # the ids, not colours: exactly the published masks
            assert mask.dtype == np.uint8 and np.array_equal(mask, published[(stream_id, seq)])
        video = cv2.VideoCapture(str(folder / "overlay.mp4"))
        assert video.get(cv2.CAP_PROP_FRAME_COUNT) == FRAMES
        ok, image = video.read()
        assert ok and image.shape == (height, width, 3) and image.std() > 5  # a picture, not a blank
        video.release()
        lines = [json.loads(line) for line in (folder / "telemetry.jsonl").read_text().splitlines()]
        assert [line["seq"] for line in lines] == list(range(FRAMES))
        assert all(line["stream"] == stream_id and line["latency_ms"] > 0 and line["valid"] for line in lines)
        assert set(lines[0]["timings_ms"]) == {"queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms"}
    run = json.loads((record.directory / "run.json").read_text())
    assert run["run_id"] == pipeline.run_id and run["masks"] == masks
    assert run["streams"] == {"a": {"recorded": FRAMES}, "b": {"recorded": FRAMES}} and run["dropped"] == {}
    assert not any(key.startswith("recorder:") for key in summary["dropped"])


async def test_a_stuck_disk_drops_recorded_frames_counted_and_never_live_ones(tmp_path, monkeypatch):
    gate = threading.Event()  # the writer blocks on its first frame until the run is over
    original = RecorderSink._write

    def stuck(self, result):
        gate.wait(60)
        original(self, result)

    monkeypatch.setattr(RecorderSink, "_write", stuck)
    monkeypatch.setattr(recorder_module, "RECORD_QUEUE_DEPTH", 3)
    record = RecordConfig(tmp_path / "rec", video=False)
    async with running(_config(record)) as (pipeline, task):
        sub = await subscribe(pipeline, task)
        try:
            messages = await receive(sub, 2 * FRAMES)  # every live mask arrives while the writer is stuck
        finally:
            sub.close()
        gate.set()
        summary = await asyncio.wait_for(task, 60)
    assert len(messages) == 2 * FRAMES and summary["frames"] == 2 * FRAMES
    dropped = summary["dropped"].get("recorder:queue_full", 0)
    run = json.loads((record.directory / "run.json").read_text())
    recorded = sum(entry["recorded"] for entry in run["streams"].values())
    assert dropped > 0 and run["dropped"] == {"queue_full": dropped}
    assert recorded + dropped == 2 * FRAMES  # every frame recorded or counted
    assert recorded <= 1 + 3  # the one being written and a full queue


def test_bad_record_folders_fail_before_anything_starts(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RecordError, match="is not a folder"):
        RecordConfig(a_file).check(["a"])
    (tmp_path / "old" / "a").mkdir(parents=True)
    (tmp_path / "old" / "a" / "telemetry.jsonl").write_text("{}\n")
    with pytest.raises(RecordError, match=r"already holds a recording of stream\(s\) \['a'\]"):
        RecordConfig(tmp_path / "old").check(["a", "b"])
    RecordConfig(tmp_path / "old").check(["b"])  # another stream may join the folder
    with pytest.raises(ValueError, match="'gif' is not a valid MaskFormat"):
        RecordConfig(tmp_path, masks="gif")


def test_the_cli_records_a_replay_and_refuses_to_overwrite_it(tmp_path):
    out = tmp_path / "rec"
    command = [sys.executable, "-m", "stream.cli", "run", "--source", "cam=synthetic:seed=4,size=96x64,frames=5",
               "--model", "demo", "--viewer", "off", "--zmq", "off", "--record", str(out), "--record-masks", "npz"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert [seq for seq, _ in read_recording(out / "cam")] == list(range(5))
    assert (out / "cam" / "overlay.mp4").stat().st_size > 0
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert again.returncode == 2 and "already holds a recording" in again.stderr, again.stderr
    assert "loading" not in again.stderr.lower()  # refused before the model loads
