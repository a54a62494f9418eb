"""Measure, in one run on one machine:

(a) model-only throughput and latency per backend, precision, batch size and input size
    (``backend.infer`` on frames already in memory: the ceiling);
(b) whole-pipeline throughput and capture->publish latency with 1, 2, 4, 8 replayed
    streams (real video decode, ZeroMQ publish), and the pipeline / model-only ratios.

    python -m benchmarks.run --model dabnet-cityscapes --backends torch,onnxruntime \\
        --sizes 1024x512 --batches 1,8 --streams 1,2,4,8

Results: ``benchmarks/results/<machine>.json`` (with machine and library versions) and a
Markdown table on stdout for the README. Targets are ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from models.backends.base import InferenceBackend
from models.backends.registry import BackendError, create_backend
from models.registry import load_model
from stream.batcher import BatchConfig
from stream.config import PipelineConfig
from stream.pipeline import Pipeline

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("ROADSEG_SHARED", REPO.parent / "shared"))
VIDEO = SHARED / "videos" / "highway_solid_white_right.mp4"
WARMUP = 3
PACKAGES = ("torch", "torchvision", "segmentation-models-pytorch", "onnxruntime", "onnxruntime-gpu",
            "tensorrt", "opencv-python-headless", "numpy", "pyzmq")


def machine_name() -> str:
    """A stable file name: the GPU model, or the CPU's core count (hosts here are ephemeral)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).lower().replace(" ", "-")
    return f"cpu-{os.cpu_count()}core-{platform.machine()}"


def machine_info() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"name": machine_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "arch": platform.machine(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "versions": versions}


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


def time_model(backend: InferenceBackend, frames: list[np.ndarray], batch: int, repeats: int) -> dict[str, float]:
    for _ in range(WARMUP):
        backend.infer(frames[:batch] * (batch // len(frames[:batch]) or 1))
    times = []
    for i in range(repeats):
        chunk = [frames[(i * batch + j) % len(frames)] for j in range(batch)]
        start = time.monotonic_ns()
        backend.infer(chunk)
        times.append((time.monotonic_ns() - start) / 1e6)
    return {"fps": batch * 1000 / statistics.mean(times), "latency_ms_p50": float(np.percentile(times, 50)),
            "latency_ms_p99": float(np.percentile(times, 99))}


def time_pipeline(config: PipelineConfig, backend: InferenceBackend) -> dict[str, Any]:
    summary = asyncio.run(Pipeline(config, lambda: backend).run())
    lat = summary["latency_ms"]
    return {"frames": summary["frames"], "fps": summary["fps"], "e2e_ms_p50": lat["end_to_end"]["p50"],
            "e2e_ms_p99": lat["end_to_end"]["p99"], "inference_ms_p50": lat["inference"]["p50"],
            "dropped": summary["dropped_total"]}


def size_text(size: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in size)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--precisions", default="auto", help="comma list, or auto: fp32 + each backend's fast one")
    parser.add_argument("--sizes", default="", help="WxH list; default the model's native size")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--frames", type=int, default=60, help="frames per stream in pipeline runs")
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def precisions_for(name: str, device: str, requested: str) -> list[str]:
    if requested != "auto":
        return requested.split(",")
    if device == "cuda":
        return ["fp32", "fp16"]
    return ["fp32", "bf16"] if name.startswith("torch") else ["fp32"]


def main() -> None:
    args = parse_args()
    model, card = load_model(args.model)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s] or [card.input.size]
    batches = [int(b) for b in args.batches.split(",")]
    frames = video_frames(8)
    results: dict[str, Any] = {"machine": machine_info(), "model": card.model_id, "device": device,
                               "model_only": [], "pipeline": []}
    best: tuple[float, str, str, tuple[int, int], int] | None = None
    for name in args.backends.split(","):
        for precision in precisions_for(name, device, args.precisions):
            for size in sizes:
                try:
                    backend = create_backend(name, model, card, device=device, precision=precision,
                                             input_size=size)  # type: ignore[arg-type]
                except (BackendError, ValueError) as exc:
                    print(f"skip {name} {precision} {size}: {exc}")
                    continue
                for batch in batches:
                    row = {"backend": name, "precision": precision, "size": size_text(size), "batch": batch,
                           **time_model(backend, frames, batch, args.repeats)}
                    results["model_only"].append(row)
                    print("model-only", row, flush=True)
                    if best is None or row["fps"] > best[0]:
                        best = (row["fps"], name, precision, size, batch)  # type: ignore[assignment]
    if best is None:
        raise SystemExit("no backend could run")
    # The pipeline runs the fastest model-only configuration, batch size included: on a
    # CPU large batches are slower per frame, on a GPU they are the point.
    model_fps, name, precision, size, best_batch = best
    backend = create_backend(name, model, card, device=device, precision=precision, input_size=size)
    base = PipelineConfig(sources=("x",), model=args.model, zmq_address="tcp://127.0.0.1:0", viewer=None,
                          stats_interval_s=0, max_frames=args.frames,
                          batch=BatchConfig(max_batch=best_batch, max_wait_ms=4))
    for streams in (int(s) for s in args.streams.split(",")):
        sources = tuple(f"s{i}={VIDEO}" for i in range(streams))
        row = time_pipeline(replace(base, sources=sources), backend)
        row.update(streams=streams, backend=name, precision=precision, size=size_text(size), max_batch=best_batch,
                   pipeline_over_model_only=row["fps"] / model_fps)
        results["pipeline"].append(row)
        print("pipeline", row, flush=True)
    out = args.out or RESULTS / f"{machine_name()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {out}")


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Model-only ({results['model']}, {results['machine']['name']}):", "",
             "| backend | precision | input | batch | frames/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    for r in results["model_only"]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['size']} | {r['batch']} | {r['fps']:.1f} "
                     f"| {r['latency_ms_p50']:.1f} | {r['latency_ms_p99']:.1f} |")
    lines += ["", "Pipeline (replayed video streams, decode + publish included):", "",
              "| streams | backend | precision | frames/s | pipeline / model-only | e2e p50 ms | e2e p99 ms |",
              "|---|---|---|---|---|---|---|"]
    for r in results["pipeline"]:
        lines.append(f"| {r['streams']} | {r['backend']} | {r['precision']} | {r['fps']:.1f} "
                     f"| {r['pipeline_over_model_only']:.2f} | {r['e2e_ms_p50']:.1f} | {r['e2e_ms_p99']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
