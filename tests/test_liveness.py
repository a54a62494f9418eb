"""Liveness: status messages at a fixed rate, end of stream with the final seq, and subscriber
health whose thresholds come from what the publisher announces (real sockets, a real
publisher process for SIGSTOP; thresholds with an injected clock)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from decision_bridge.health import ALIVE_STATUS_PERIODS, StreamHealth
from decision_bridge.liveness import (
    StreamEvent,
    StreamReport,
    decode_report,
    encode_report,
)
from decision_bridge.schema import SchemaError
from decision_bridge.subscriber import MaskSubscriber
from models.backends.common import Precision
from stream.config import PipelineConfig
from tests.conftest import require_shared
from tests.pipeline_helpers import LOOPBACK_ANY, running, subscribe
from tests.source_helpers import image_folder

MS = 1_000_000


def _report(kind=StreamEvent.STATUS, **changes) -> StreamReport:
    base = StreamReport(kind=kind, stream_id="cam0", run_id="r1", state="live", last_seq=4, published=5, dropped=0,
                        fps=0.5, mask_fps=0.5, live=True, max_age_ms=500.0, period_ms=200.0, reconnects=0,
                        publish_mono_ns=1, publish_wall_ns=2, reason="ended" if kind is StreamEvent.EOS else None)
    return replace(base, **changes)


# --- wire format ----------------------------------------------------------------------------------------------------


def test_reports_round_trip_and_bad_ones_are_refused():
    for report in (_report(), _report(StreamEvent.EOS, last_seq=9), _report(fps=None, mask_fps=None)):
        parts = encode_report(report)
        assert parts[0] == (b"status/cam0" if report.kind is StreamEvent.STATUS else b"eos/cam0")
        assert decode_report(parts) == report
    good = encode_report(_report())
    with pytest.raises(SchemaError, match=r"unsupported roadseg\.stream version 2"):
        decode_report([good[0], good[1].replace(b'"version":1', b'"version":2')])
    with pytest.raises(SchemaError, match=r"unknown 'hello'"):
        decode_report([good[0], good[1].replace(b'"kind":"status"', b'"kind":"hello"')])
    with pytest.raises(SchemaError, match="does not match"):
        decode_report([b"status/cam1", good[1]])
    with pytest.raises(SchemaError, match="reason of an eos"):
        encode_report(_report(StreamEvent.EOS, reason="bored"))


# --- thresholds from the announced rates (injected clock) ------------------------------------------------------


def _mask_header(seq: int, run_id: str = "r1"):
    from tests.test_decision_bridge import make_header

    return replace(make_header(seq=seq), run_id=run_id)


def test_slow_stream_stays_alive_between_frames_and_a_silent_one_dies_after_three_periods():
    health = StreamHealth()
    now = 0
    health.on_mask(_mask_header(0), now)
    for _ in range(9):  # 1.8 s of status every 200 ms and no mask: a 0.5 fps stream between frames
        now += 200 * MS
        health.on_report(_report(), now)
        status = health.status(now, alive_timeout_ns=500 * MS, min_rate_hz=None)
        assert status.alive and status.fresh and status.valid, status
    silent_limit = now + ALIVE_STATUS_PERIODS * 200 * MS
    assert health.status(silent_limit, alive_timeout_ns=500 * MS, min_rate_hz=None).alive
    dead = health.status(silent_limit + 1, alive_timeout_ns=500 * MS, min_rate_hz=None)
    assert not dead.alive and not dead.valid


def test_masks_that_stop_while_status_flows_are_not_fresh():
    health = StreamHealth()
    health.on_mask(_mask_header(0), 0)
    now = 0
    while now < 6 * 1000 * MS:  # 3 mask periods of a 0.5 fps stream
        now += 200 * MS
        health.on_report(_report(), now)
    assert health.status(now, alive_timeout_ns=500 * MS, min_rate_hz=None).fresh
    now += 200 * MS
    health.on_report(_report(state="stalled"), now)
    status = health.status(now, alive_timeout_ns=500 * MS, min_rate_hz=None)
    assert status.alive and not status.fresh and not status.valid and status.state == "stalled"


def test_end_of_stream_counts_the_tail_it_never_saw_and_a_new_run_is_not_a_gap():
    health = StreamHealth()
    for seq in (0, 1, 3):
        health.on_mask(_mask_header(seq), seq * 100 * MS)
    health.on_report(_report(StreamEvent.EOS, last_seq=6, reason="ended"), 400 * MS)
    status = health.status(400 * MS, alive_timeout_ns=500 * MS, min_rate_hz=None)
    assert status.ended and status.final_seq == 6 and not status.valid
    assert (status.gaps, status.missed) == (2, 1 + 3)  # seq 2, then 4..6
    health.on_mask(_mask_header(0, run_id="r2"), 500 * MS)
    status = health.status(500 * MS, alive_timeout_ns=500 * MS, min_rate_hz=None)
    assert not status.ended and status.last_seq == 0 and status.run_id == "r2"


def test_a_lost_frame_zero_is_a_gap_when_the_schema_says_it_is_known():
    """SCHEMA.md section 6: frames before a run's first mask are known lost when its dropped_before
    equals its seq, or when a status of the run said no frame had been captured yet."""
    told = StreamHealth()
    told.on_mask(replace(_mask_header(2), dropped_before=2), 0)
    assert (told.status(0, alive_timeout_ns=500 * MS, min_rate_hz=None).gaps, told.missed) == (1, 2)
    listening = StreamHealth()
    listening.on_report(_report(last_seq=-1), 0)
    listening.on_mask(replace(_mask_header(1), dropped_before=0), 1)  # e.g. frame 0 lost on the way
    assert (listening.gaps, listening.missed) == (1, 1)
    late = StreamHealth()  # joined mid-run: what came before is not ours to count
    late.on_report(_report(last_seq=40), 0)
    late.on_mask(replace(_mask_header(41), dropped_before=0), 1)
    assert (late.gaps, late.missed) == (0, 0)


# --- a real pipeline ----------------------------------------------------------------------------------------------


async def _drain(sub: MaskSubscriber, until, timeout_s: float = 60.0) -> list:
    masks: list = []
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "timed out"
        masks.extend(sub.poll(0))
        await asyncio.sleep(0.01)
    return masks


async def test_replay_ends_with_eos_carrying_the_final_seq_after_the_last_mask(tmp_path):
    folder = image_folder(tmp_path, 8, broken=(3, 7))  # the last frame is lost too: only eos can say so
    config = PipelineConfig(sources=(f"cam={folder}",), model="demo", precision=Precision.FP32,
                            zmq_address=LOOPBACK_ANY, zmq_wait_subscriber_s=30.0, viewer=None, stats_interval_s=0)
    async with running(config) as (pipeline, task):
        sub = await subscribe(pipeline, task)
        try:
            masks = await _drain(sub, lambda: sub.status("cam").ended)
            masks.extend(sub.poll(0))
        finally:
            sub.close()
        await task
    assert [m.header.seq for m in masks] == [0, 1, 2, 4, 5, 6]
    assert {m.header.run_id for m in masks} == {pipeline.run_id}
    status = sub.status("cam")
    assert status.final_seq == 7 and status.missed == 2 and status.gaps == 2
    assert sub.reports >= 1  # the eos (and any status sent while it ran)


async def test_status_flows_before_the_first_frame_and_between_slow_frames(tmp_path):
    folder = image_folder(tmp_path, 8)  # 8 s at 1 frame/s: still running when checked, however late it started
    config = PipelineConfig(sources=(f"cam={folder}",), model="demo", precision=Precision.FP32,
                            zmq_address=LOOPBACK_ANY, viewer=None, stats_interval_s=0, realtime=True,
                            replay_rate=1.0)
    async with running(config) as (pipeline, task):
        sub = await subscribe(pipeline, task)
        try:
            await _drain(sub, lambda: sub.status("cam").last_seq >= 0)
            seen_alive = []
            for _ in range(15):  # 1.5 s around a 1 s frame period (sleeping: the pipeline runs on this loop)
                await asyncio.sleep(0.1)
                sub.poll(0)
                seen_alive.append(sub.status("cam").alive)
            assert all(seen_alive), seen_alive
            assert sub.status("cam").valid
        finally:
            sub.close()
            pipeline.stop()


# --- a frozen publisher process ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform != "linux", reason="SIGSTOP semantics")
def test_a_publisher_frozen_by_sigstop_is_dead_within_a_second_and_a_half_fps_stream_is_not():
    frames = require_shared("cityscapes/leftImg8bit/val/frankfurt")
    address = f"tcp://127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "stream.cli", "run", "--source", f"cam={frames}", "--rate", "0.5",
               "--replay-mode", "live", "--zmq", address, "--viewer", "off", "--precision", "fp32"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    sub = MaskSubscriber(address, ["cam"])
    sub.connect()
    try:
        deadline = time.monotonic() + 120
        while sub.status("cam").last_seq < 0:  # model loaded, first mask out
            assert process.poll() is None and time.monotonic() < deadline, "publisher never published"
            sub.poll(0.1)
        alive = []
        for _ in range(30):  # 3 s: longer than a frame period of 2 s
            sub.poll(0.1)
            alive.append(sub.status("cam").alive)
        assert all(alive), alive
        process.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        while sub.status("cam").alive:
            sub.poll(0.02)
            assert time.monotonic() - stopped < 5, "still alive 5 s after SIGSTOP"
        assert time.monotonic() - stopped < 1.0
        process.send_signal(signal.SIGCONT)
        while not sub.status("cam").alive:
            sub.poll(0.05)
            assert time.monotonic() - stopped < 30, "never alive again after SIGCONT"
        process.send_signal(signal.SIGTERM)
        while not sub.status("cam").ended:
            sub.poll(0.05)
            assert time.monotonic() - stopped < 60, "no end of stream after SIGTERM"
        assert sub.status("cam").final_seq >= sub.status("cam").last_seq
    finally:
        sub.close()
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait(30)
