"""The benchmark harness: interleaving, bracketing, target checks, and one tiny real run.

No test here asserts a speed; they check that what the harness reports is computed
from the right measurements.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import run as bench
from benchmarks.measure import (
    LatencyStats,
    PipelineRound,
    median_round,
    model_latency_ms,
    paced_config,
    per_stream_frames,
    time_interleaved,
)
from benchmarks.report import check_targets, markdown
from models.backends.base import BackendTimings, BatchOutput
from stream.config import PipelineConfig
from tests.conftest import require_shared


class RecordingBackend:
    name = "fake"
    model_id = "fake"
    device = "cpu"
    precision = "fp32"

    def __init__(self, label: str, calls: list[tuple[str, int]]) -> None:
        self.label, self.calls = label, calls

    def warmup(self, batch_sizes=(1,)) -> None:
        pass

    def infer(self, images):
        self.calls.append((self.label, len(images)))
        masks = [np.zeros(image.shape[:2], np.uint8) for image in images]
        return BatchOutput(masks, [True] * len(images), BackendTimings(0.0, 0.0, 0.0))


def test_interleaved_timing_rotates_the_order_and_times_every_backend_equally():
    calls: list[tuple[str, int]] = []
    backends = {key: RecordingBackend(key, calls) for key in ("a", "b", "c")}
    frames = [np.zeros((4, 6, 3), np.uint8)] * 3
    stats = time_interleaved(backends, frames, batch=2, repeats=3)
    timed = [label for label, _ in calls[-9:]]  # after each backend's warm-up calls
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(size == 2 for _, size in calls)
    assert {key: len(s.samples_ms) for key, s in stats.items()} == {"a": 3, "b": 3, "c": 3}


def test_latency_stats_fps_is_batch_over_median_call_time():
    stats = LatencyStats(batch=4, samples_ms=(100.0, 200.0, 10_000.0))  # one stray slow call
    assert stats.p50 == 200.0
    assert stats.fps == pytest.approx(20.0)


def test_median_round_keeps_a_whole_run_together():
    rounds = [PipelineRound(10.0, {"fps": fps}) for fps in (9.0, 5.0, 7.0)]
    assert median_round(rounds).summary["fps"] == 7.0
    assert median_round(rounds).ratio == pytest.approx(0.7)


def test_paced_runs_share_the_load_equally_between_streams():
    base = PipelineConfig(sources=("a", "b", "c", "d"))
    paced = paced_config(base, streams=4, total_fps=20.0, load=0.5, frames=12)
    assert paced.replay_rate == pytest.approx(2.5) and paced.max_frames == 12
    assert per_stream_frames(48, 8) == 8 and per_stream_frames(48, 1) == 48 and per_stream_frames(10, 4) == 8


def test_model_latency_sums_the_backend_stages():
    lat = {"preprocess": {"p50": 1.0}, "inference": {"p50": 10.0}, "postprocess": {"p50": 2.0}, "queue": {"p50": 99}}
    assert model_latency_ms({"latency_ms": lat}) == 13.0


def _results(model="dabnet-cityscapes", device="cpu", speedup=1.6, ratio=0.95) -> dict:
    return {
        "model": model, "device": device, "settings": {"load": 0.7}, "machine": {"name": "m"},
        "model_only": [{"backend": "onnxruntime", "precision": "fp32", "size": "1024x512", "batch": 1, "fps": 4.0,
                        "latency_ms_p50": 250.0, "latency_ms_p99": 260.0, "speedup_vs_torch_fp32": speedup}],
        "pipeline": [{"streams": 1, "backend": "onnxruntime", "precision": "fp32", "max_batch": 1, "fps": 3.8,
                      "model_only_fps": 4.0, "pipeline_over_model_only": ratio}],
        "latency": [{"streams": 1, "fps": 2.8, "e2e_ms_p50": 260.0, "e2e_ms_p99": 300.0, "model_ms_p50": 250.0,
                     "overhead_ms_p99": 50.0}],
    }


def test_cpu_targets_are_checked_against_the_issue_goals():
    results = _results()
    results["model_only"].append({"backend": "openvino", "precision": "bf16", "size": "1024x512", "batch": 1,
                                  "fps": 12.4, "latency_ms_p50": 80.0, "latency_ms_p99": 90.0})
    fastest = "fastest CPU backend (openvino bf16) / onnxruntime fp32, DABNet 1024x512"
    assert [(t["name"], t["met"]) for t in check_targets(results)] == [
        ("onnxruntime / torch fp32, DABNet 1024x512", True), (fastest, True), ("pipeline / model-only, 1 stream", True)]
    results["model_only"][1]["fps"] = 11.6  # 2.9x
    assert [t["met"] for t in check_targets(results)] == [True, False, True]
    missed = check_targets(_results(speedup=1.4, ratio=0.85))  # onnxruntime alone: fastest / ORT = 1x
    assert [t["met"] for t in missed] == [False, False, False]
    assert check_targets(_results(model="demo-synthetic")) == []  # the goals are stated for DABNet only


def test_gpu_targets_read_the_fp16_full_resolution_rows():
    results = _results(device="cuda")
    results["model_only"] = [
        {"backend": "tensorrt", "precision": "fp16", "size": "2048x1024", "batch": 8, "fps": 450.0,
         "latency_ms_p50": 17.0, "latency_ms_p99": 18.0},
        {"backend": "tensorrt", "precision": "fp16", "size": "2048x1024", "batch": 1, "fps": 200.0,
         "latency_ms_p50": 5.0, "latency_ms_p99": 6.0},
    ]
    results["pipeline"][0]["streams"] = results["latency"][0]["streams"] = 4
    verdicts = {t["name"]: t["met"] for t in check_targets(results)}
    assert verdicts == {
        "fp16 2048x1024 batch 8 frames/s (best backend)": True,
        "fp16 2048x1024 batch 1 latency ms (best backend)": False,
        "pipeline / model-only, 4 streams": True,
        "capture->publish p99 - model latency, 4 streams, ms": False,
    }


def test_markdown_shows_every_measured_row_and_the_targets():
    results = _results()
    results["targets"] = check_targets(results)
    text = markdown(results)
    assert "| onnxruntime | fp32 | 1024x512 | 1 | 4.0 | 250.0 | 260.0 | 1.60x |" in text
    assert "| 1 | onnxruntime | fp32 | 1 | 3.8 | 4.0 | 0.95 |" in text
    assert "| pipeline / model-only, 1 stream | 0.95 | >= 0.9 | yes |" in text


def test_a_tiny_real_run_writes_results(tmp_path, capsys):
    require_shared("videos/highway_solid_white_right.mp4")
    out = tmp_path / "r.json"
    bench.main(["--model", "demo", "--backends", "torch", "--precisions", "fp32", "--batches", "1",
                "--streams", "1", "--repeats", "2", "--rounds", "1", "--frames", "4", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["machine"]["versions"]["torch"]
    [row] = results["model_only"]
    assert row["speedup_vs_torch_fp32"] == 1.0 and row["fps"] > 0
    [piped] = results["pipeline"]
    assert piped["frames"] == 8 and piped["dropped"] == 0  # 4 requested, 8 is the per-stream minimum
    [paced] = results["latency"]
    assert paced["frames"] == 8 and paced["e2e_ms_p99"] >= paced["e2e_ms_p50"] > 0
    assert "| 1 | torch | fp32 | 1 |" in capsys.readouterr().out
