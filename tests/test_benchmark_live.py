"""The live-camera benchmark (benchmarks/live.py): its bookkeeping, and one tiny real run against
the RTSP test camera. No test here asserts a speed; they check that what it reports is measured."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import live
from benchmarks.stamp import encode_stamp
from stream.frame import Frame
from tests.rtsp_fixture import require_rtsp_server


class Header:
    def __init__(self, valid: bool) -> None:
        self.valid = valid


def frame(stream: str, seq: int, capture_ns: int, stamp_ns: int | None) -> Frame:
    image = encode_stamp(320, 192, stamp_ns) if stamp_ns is not None else np.zeros((192, 320, 3), np.uint8)
    return Frame(stream, seq, capture_ns, capture_ns, image)


def test_recorder_reads_stamps_and_finds_the_first_new_frame():
    recorder = live.Recorder("cam")
    ms = 1_000_000
    recorder(frame("cam", 0, 150 * ms, 100 * ms), Header(True), 200 * ms)  # an old frame, 100 ms old
    recorder(frame("other", 0, 150 * ms, 300 * ms), Header(True), 200 * ms)  # another stream: ignored
    recorder(frame("cam", 1, 900 * ms, None), Header(True), 950 * ms)  # no barcode
    recorder(frame("cam", 2, 1900 * ms, 400 * ms), Header(True), 2000 * ms)  # new, but 1.6 s old
    recorder(frame("cam", 3, 2050 * ms, 2000 * ms), Header(False), 2100 * ms)  # new and 100 ms old
    assert [m.stamp_ns for m in recorder.masks] == [100 * ms, None, 400 * ms, 2000 * ms]
    assert recorder.masks[0].age_ms == 100.0 and recorder.masks[1].age_ms is None
    assert recorder.first_stamped_after(0, 300 * ms) is recorder.masks[2]
    assert recorder.first_stamped_after(0, 300 * ms, max_age_ms=500) is recorder.masks[3]
    assert recorder.first_stamped_after(0, 3000 * ms) is None
    assert live.late(recorder.masks, 500) == {"late": 1, "late_marked_valid": 1}
    assert live.p50_max([1.0, None, 3.0]) == {"p50": 2.0, "max": 3.0, "runs": 3, "failed": 1}


def test_a_tiny_live_run_measures_latency_and_recovery(tmp_path, capsys):
    require_rtsp_server()
    out = tmp_path / "live.json"
    live.main(["--seconds", "3", "--warmup", "1", "--size", "320x192", "--precision", "fp32", "--restarts", "1",
               "--down", "1", "--stalls", "1", "--stall-hold", "0.5", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["command"].startswith("python -m benchmarks.live --seconds 3")
    assert results["machine"]["versions"]["torch"] and results["backend"]["precision"] == "fp32"

    steady = results["steady"]
    assert steady["masks"] > 0 and steady["masks"] == steady["camera_to_publish_ms"]["samples"]
    assert steady["stamps_unreadable"] == 0
    for key in ("camera_to_publish_ms", "capture_to_publish_ms", "camera_to_capture_ms"):
        p = steady[key]
        assert 0 < p["p50"] <= p["p99"] <= p["max"], (key, p)
    # Per frame, send -> publish is send -> capture plus capture -> publish: the shared clock works.
    assert steady["camera_to_publish_ms"]["p50"] > steady["capture_to_publish_ms"]["p50"]
    assert steady["frames_read_per_s"] > 0 and set(steady["dropped"]) <= {"superseded", "stale"}

    [restart] = results["restarts"]
    assert restart["reconnects_added"] >= 1
    assert restart["first_new_mask_s"] > 0 and restart["first_new_mask_age_ms"] > 0
    assert restart["within_budget_s"] >= restart["first_new_mask_s"]
    assert results["restart_summary"]["first_new_mask_s"]["failed"] == 0

    [stall] = results["stalls"]
    assert stall["stall_detected_s"] > 0 and stall["live_with_fresh_mask_s"] > 0
    assert results["stall_summary"]["live_with_fresh_mask_s"]["p50"] == stall["live_with_fresh_mask_s"]

    run = results["run_summary"]
    assert run["unaccounted"] == 0 and run["reconnects"] >= 2 and not run["errors"]
    assert "| camera send -> mask published |" in capsys.readouterr().out
