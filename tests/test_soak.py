"""The soak benchmark (benchmarks/soak.py): its arithmetic on known numbers, and a real leak check.

The leak check runs the soak itself in a tiny configuration against the RTSP test camera: three
SIGKILL + restart cycles a few seconds apart, then threads and fds must be back at their count
from before the first restart (+ a small tolerance), every restart must have reconnected, and the
report must hold together. It asserts no speed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import soak, soak_report
from benchmarks.stamp import encode_stamp
from stream.frame import Frame
from tests.rtsp_fixture import require_rtsp_server

MS = 1_000_000
RESTARTS = 3


class Header:
    valid = True


def window(index: int, t_end_s: float, rss_mb: float, p50: float | None, p99: float | None, *, faults=(),
           threads: int = 7, fds: int = 20) -> dict:
    return {"index": index, "t_end_s": t_end_s, "faults": list(faults),
            "camera_to_publish_ms": {"p50": p50, "p99": p99, "max": p99, "samples": 10},
            "resources": {"rss_mb": rss_mb, "peak_rss_mb": rss_mb, "threads": threads, "os_threads": threads + 5,
                          "fds": fds}}


def test_slope_is_least_squares():
    assert soak_report.slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert soak_report.slope([0, 1, 2, 3], [0, 1, 1, 2]) == pytest.approx(0.6)  # numpy.polyfit's answer too
    assert soak_report.slope([0, 1, 2, 3], [0, 1, 1, 2]) == pytest.approx(np.polyfit([0, 1, 2, 3], [0, 1, 1, 2], 1)[0])
    assert soak_report.slope([1.0], [5.0]) is None and soak_report.slope([2, 2], [1, 3]) is None


def test_summary_fits_after_the_warmup_and_latency_on_fault_free_windows_only():
    hour = 3600.0
    # Window 0 is the warm-up: left out of every fit; its closing sample is the threads/fds baseline.
    windows = [window(0, 600, 900.0, 500.0, 900.0, threads=7, fds=20),
               window(1, 1200, 100.0, 100.0, 200.0, threads=9, fds=30),
               window(2, 1800, 105.0, 100.5, 201.0),
               window(3, 2400, 110.0, 999.0, 999.0, faults=["restart"], threads=8),  # not in the latency fits
               window(4, 3000, 115.0, 101.5, 203.0)]
    restarts = [{"reconnected": True}, {"reconnected": False}]
    end = {"rss_mb": 115.0, "threads": 10, "os_threads": 12, "fds": 22}
    summary = soak_report.summarize(windows, restarts, [], warmup_windows=1, end=end)
    assert summary["rss_mb_per_h"] == pytest.approx(5.0 / 600 * hour)  # 30 MB/h
    assert summary["p50_ms_per_h"] == pytest.approx(0.5 / 600 * hour)  # 3 ms/h, the faulted window skipped
    assert summary["p99_ms_per_h"] == pytest.approx(1.0 / 600 * hour)
    assert summary["first_fault_free_p99_ms"] == 200.0 and summary["fault_free_windows"] == 3
    assert summary["after_warmup"]["threads"] == 7 and summary["fit_span_s"] == 2400.0
    assert summary["restarts_reconnected"] == 1 and summary["peak_rss_mb"] == 900.0

    verdicts = {t["name"].split(" ")[0]: t["met"] for t in soak_report.targets(summary)}
    # 30 MB/h > 20; p99 6 ms/h < 10 % of 200 = 20; threads 10 > 7 + 2; fds 22 <= 20 + 2; 1 of 2 restarts.
    assert verdicts == {"RSS": False, "p99": True, "threads": False, "os_threads": True, "fds": True,
                        "restarts": False}
    # Too short a span to judge a slope: shown, not judged.
    short = soak_report.targets({**summary, "fit_span_s": 60.0})
    assert short[0]["value"] == summary["rss_mb_per_h"] and short[0]["met"] is None


def test_window_recorder_keeps_one_window_and_watches_for_a_new_frame():
    recorder = soak.WindowRecorder("cam")

    def publish(stream: str, stamp_ns: int | None, capture_ns: int, publish_ns: int) -> None:
        image = encode_stamp(320, 192, stamp_ns) if stamp_ns is not None else np.zeros((192, 320, 3), np.uint8)
        recorder(Frame(stream, 0, capture_ns, capture_ns, image), Header(), publish_ns)

    publish("cam", 100 * MS, 150 * MS, 200 * MS)
    publish("other", 100 * MS, 150 * MS, 200 * MS)  # another stream: ignored
    publish("cam", None, 250 * MS, 260 * MS)  # no barcode
    recorder.watch(300 * MS)
    publish("cam", 290 * MS, 310 * MS, 400 * MS)  # sent before the watch: old
    publish("cam", 350 * MS, 360 * MS, 450 * MS)  # the first new one
    publish("cam", 360 * MS, 370 * MS, 460 * MS)
    assert recorder.found_ns == 450 * MS
    first = recorder.take()
    assert first["masks"] == 5 and first["stamps_unreadable"] == 1
    assert first["camera_to_publish_ms"]["samples"] == 4 and first["camera_to_publish_ms"]["max"] == 110.0
    assert first["capture_to_publish_ms"]["p50"] == 90.0
    # The next window starts empty: the soak does not grow with the masks it has seen.
    assert recorder.take()["masks"] == 0 and not recorder.camera_ms and not recorder.capture_ms


def test_three_restarts_leak_no_threads_or_fds(tmp_path, capsys):
    require_rtsp_server()
    out = tmp_path / "soak.json"
    # 6 windows of 3 s; the resource baseline is taken at 3 s, restarts at 6.5, 11.5 and 16.5 s (each
    # down 1 s); the last one runs to its recovery, then threads and fds get up to 20 s to come back.
    # With the viewer served and watched: its hub's threads and sockets are in the count too.
    results = soak.main(["--minutes", "0.3", "--window-s", "3", "--warmup-windows", "1", "--restart-every", "5",
                         "--down", "1", "--size", "320x192", "--precision", "fp32", "--viewer", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["command"].startswith("python -m benchmarks.soak --minutes 0.3")
    assert results["machine"]["versions"]["torch"] and results["backend"]["precision"] == "fp32"

    restarts = results["restarts"]
    assert len(restarts) == RESTARTS, restarts
    for restart in restarts:
        assert restart["reconnected"] and restart["reconnects_added"] >= 1 and restart["first_new_mask_s"] > 0
    assert results["run_summary"]["reconnects"] >= RESTARTS and not results["run_summary"]["errors"]
    assert results["run_summary"]["unaccounted"] == 0

    # The leak check: after the last reconnect, back to the count from before the first restart.
    before, end = results["summary"]["after_warmup"], results["end"]
    for key in soak_report.COUNTED:
        assert end[key] <= before[key] + soak_report.COUNT_TOLERANCE, (key, before, end)
    verdicts = {t["name"]: t["met"] for t in results["targets"]}
    assert all(met for name, met in verdicts.items() if not name.startswith(("RSS", "p99"))), verdicts

    windows = results["windows"]
    assert [w["index"] for w in windows] == list(range(6)) and results["summary"]["windows_measured"] == 5
    assert not windows[0]["faults"] and sum(bool(w["faults"]) for w in windows) >= RESTARTS
    for w in windows:
        assert w["masks"] > 0 and w["resources"]["rss_mb"] > 0 and w["resources"]["fds"] > 0
        p = w["camera_to_publish_ms"]
        assert 0 < p["p50"] <= p["p99"] <= p["max"], w
    # The subscriber really took the masks (it joins after the first masks: a few fewer in all).
    assert results["subscriber"]["received"] > 0 and results["subscriber"]["rejected"] == 0
    assert sum(w["subscriber_received"] for w in windows) <= results["subscriber"]["received"]
    # The viewer watched throughout: frames reached it and it was still connected at the end.
    viewer = results["viewer"]
    assert viewer["received"] > 0 and viewer["connected_at_end"], viewer
    assert sum(w["viewer_received"] for w in windows) <= viewer["received"]
    assert "| restarts reconnected | 3/3 | all | PASS |" in capsys.readouterr().out
