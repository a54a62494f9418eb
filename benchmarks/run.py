"""Measure, in one run on one machine:

(a) model-only throughput and latency per backend, precision, batch size and input size
    (``backend.infer`` on frames already in memory: the ceiling), every configuration of a
    size and batch timed interleaved with the others;
(b) whole-pipeline throughput with 1, 2, 4, 8 replayed video streams (real decode,
    batching, ZeroMQ publish) as fast as it goes, each run bracketed by model-only blocks,
    and the pipeline / model-only ratios;
(c) capture->publish latency percentiles with the same stream counts paced below
    saturation, and that latency minus the model's own.

    python -m benchmarks.run --model dabnet-cityscapes --backends torch,onnxruntime \\
        --sizes 1024x512 --batches 1,4 --streams 1,2,4,8

Results: ``benchmarks/results/<machine>.json`` (with machine and library versions) and a
Markdown table on stdout for the README. Targets are ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.measure import (
    bracketed_rounds,
    median_round,
    model_latency_ms,
    paced_config,
    per_stream_frames,
    run_pipeline,
    time_interleaved,
)
from benchmarks.report import check_targets, machine_info, machine_name, markdown
from models.backends.base import InferenceBackend
from models.backends.common import DEVICE_CHOICES
from models.backends.registry import BackendError, create_backend
from models.cli_args import positive_float, size_arg
from models.store.registry import load_model
from stream.batcher import BatchConfig
from stream.config import PipelineConfig

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("ROADSEG_SHARED", REPO.parent / "shared"))
VIDEO = SHARED / "videos" / "highway_solid_white_right.mp4"
FRAME_POOL = 8  # distinct frames cycled through in model-only timing
BATCH_WAIT_MS = 4.0


def video_frames(count: int) -> list[np.ndarray]:
    """The first frames of the video the pipeline runs replay, so both measure the same input."""
    capture = cv2.VideoCapture(str(VIDEO))
    frames: list[np.ndarray] = []
    while len(frames) < count:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise SystemExit(f"benchmark video not found or unreadable: {VIDEO} (set ROADSEG_SHARED)")
    return frames


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--backends", default="torch,onnxruntime,openvino",
                        help="comma list; one that is not installed or cannot run here is skipped, saying why")
    parser.add_argument("--precisions", default="auto", help="comma list, or auto: fp32 + each backend's fast one")
    parser.add_argument("--sizes", default="", help="WxH list; default the model's native size")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=10, help="model-only calls per configuration")
    parser.add_argument("--rounds", type=int, default=3, help="bracketed pipeline runs per stream count")
    parser.add_argument("--frames", type=int, default=48, help="frames per pipeline run, over all streams")
    parser.add_argument("--load", type=positive_float, default=0.5,
                        help="paced latency runs: offered load as a fraction of the measured throughput")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def precisions_for(name: str, device: str, requested: str) -> list[str]:
    if requested != "auto":
        return requested.split(",")
    if device == "cuda":
        return ["fp32", "fp16"]
    return ["fp32", "bf16"] if name.startswith("torch") or name == "openvino" else ["fp32"]


Key = tuple[str, str]  # (backend, precision)


def build_backends(args: argparse.Namespace, model: Any, card: Any, device: str,
                   size: tuple[int, int]) -> dict[Key, InferenceBackend]:
    built: dict[Key, InferenceBackend] = {}
    for name in args.backends.split(","):
        for precision in precisions_for(name, device, args.precisions):
            try:
                built[(name, precision)] = create_backend(name, model, card, device=device, precision=precision,
                                                          input_size=size)  # type: ignore[arg-type]
            except (BackendError, ValueError) as exc:
                print(f"skip {name} {precision} {size}: {exc}", flush=True)
    return built


def model_only(args: argparse.Namespace, model: Any, card: Any, device: str,
               frames: list[np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    sizes = [size_arg(s) for s in args.sizes.split(",") if s] or [card.input.size]
    for size in sizes:
        backends = build_backends(args, model, card, device, size)
        labels = {f"{name}/{precision}": backend for (name, precision), backend in backends.items()}
        for batch in (int(b) for b in args.batches.split(",")):
            stats = time_interleaved(labels, frames, batch, args.repeats)
            baseline = stats.get("torch/fp32")
            for label, s in stats.items():
                name, precision = label.split("/")
                row = {"backend": name, "precision": precision, "size": f"{size[0]}x{size[1]}", "batch": batch,
                       "fps": s.fps, "latency_ms_p50": s.p50, "latency_ms_p99": s.p99,
                       "speedup_vs_torch_fp32": baseline.p50 / s.p50 if baseline else None}
                rows.append(row)
                print("model-only", row, flush=True)
        del backends, labels
    return rows


def pipeline(args: argparse.Namespace, results: dict[str, Any], model: Any, card: Any,
             frames: list[np.ndarray]) -> None:
    # The pipeline runs the fastest model-only configuration, batch size included: on a
    # CPU large batches are slower per frame, on a GPU they are the point.
    best = max(results["model_only"], key=lambda r: r["fps"])
    size = size_arg(best["size"])
    backend = create_backend(best["backend"], model, card, device=results["device"], precision=best["precision"],
                             input_size=size)
    base = PipelineConfig(sources=("x",), model=args.model, zmq_address="tcp://127.0.0.1:0", viewer=None,
                          stats_interval_s=0, batch=BatchConfig(max_batch=best["batch"], max_wait_ms=BATCH_WAIT_MS))
    described = {"backend": best["backend"], "precision": best["precision"], "size": best["size"],
                 "max_batch": best["batch"]}
    for streams in (int(s) for s in args.streams.split(",")):
        per_stream = per_stream_frames(args.frames, streams)
        config = replace(base, sources=tuple(f"s{i}={VIDEO}" for i in range(streams)), max_frames=per_stream)
        rounds = bracketed_rounds(config, backend, frames, best["batch"], args.rounds, block=max(3, args.repeats // 2))
        mid = median_round(rounds)
        row = {"streams": streams, **described, "frames": mid.summary["frames"], "fps": mid.summary["fps"],
               "model_only_fps": mid.model_fps, "pipeline_over_model_only": mid.ratio,
               "ratio_rounds": [r.ratio for r in rounds], "dropped": mid.summary["dropped_total"]}
        results["pipeline"].append(row)
        print("pipeline", row, flush=True)
        paced = run_pipeline(paced_config(config, streams, mid.summary["fps"], args.load, per_stream), backend)
        e2e = paced["latency_ms"]["end_to_end"]
        model_ms = model_latency_ms(paced)
        lat = {"streams": streams, **described, "rate_per_stream": args.load * mid.summary["fps"] / streams,
               "frames": paced["frames"], "fps": paced["fps"], "e2e_ms_p50": e2e["p50"], "e2e_ms_p99": e2e["p99"],
               "model_ms_p50": model_ms, "overhead_ms_p99": e2e["p99"] - model_ms,
               "dropped": paced["dropped_total"]}
        results["latency"].append(lat)
        print("latency", lat, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, card = load_model(args.model)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    frames = video_frames(FRAME_POOL)
    results: dict[str, Any] = {"machine": machine_info(), "model": card.model_id, "device": device,
                               "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
                               "settings": {"repeats": args.repeats, "rounds": args.rounds, "frames": args.frames,
                                            "load": args.load},
                               "model_only": [], "pipeline": [], "latency": []}
    results["model_only"] = model_only(args, model, card, device, frames)
    if not results["model_only"]:
        raise SystemExit("no backend could run")
    pipeline(args, results, model, card, frames)
    results["targets"] = check_targets(results)
    out = args.out or RESULTS / f"{machine_name()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
